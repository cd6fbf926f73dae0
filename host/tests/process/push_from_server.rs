//! `cortex push NAME:TAG REF`: a module the server has, pushed to a real registry without a
//! file of it on the client; and `cortex modules download`.

use reqwest::StatusCode;

use super::{Api, Registry, digest_of, push, pushed, serve};
use crate::{art, cortex};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_on_the_server_is_pushed_by_name_tag_and_downloaded() {
    let reg = Registry::start(None).await;
    let dir = tempfile::tempdir().unwrap();
    let s = serve(&dir.path().join("data"), &[&reg.host], 8 << 20);
    let api = Api { s: &s, client: reqwest::Client::new() };
    api.tenant("t").await;
    let dev = s.token(Some("t"), "developer");
    let conn = [("CORTEX_URL", s.base.as_str()), ("CORTEX_TOKEN", dev.as_str()), ("SOURCE_DATE_EPOCH", "1")];

    let up = cortex(&["modules", "upload", art::HELLO, "--name", "hello", "--tag", "v1", "--json"])
        .envs(conn)
        .output()
        .unwrap();
    assert!(up.status.success(), "{}", String::from_utf8_lossy(&up.stderr));

    // Pushed from the server by name:tag: the same artifact as pushed from the file.
    let repo = format!("{}/team/hello", reg.host);
    let (code, from_server, err) = push("hello:v1", &format!("{repo}:v1"), &[], &conn);
    assert_eq!(code, Some(0), "{err}");
    assert!(from_server.starts_with(&format!("{repo}:v1@sha256:")), "{from_server}");
    let (code, from_file, err) = push(art::HELLO, &format!("{repo}:file"), &[], &[("SOURCE_DATE_EPOCH", "1")]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(digest_of(&from_server), digest_of(&from_file), "same component, same artifact");

    // Deployable from the registry, in another tenant.
    api.tenant("u").await;
    let other = s.token(Some("u"), "developer");
    let (st, a) = api.deploy(&other, "a", &format!("oci://{from_server}")).await;
    assert_eq!(st, StatusCode::CREATED, "{a}");
    assert_eq!(api.invoke(&other, "a", "x").await, "Hello, x!");

    // A module the server does not have (or has for another tenant only): refused, nothing pushed.
    let (code, _, err) = push("nope:v1", &format!("{repo}:nope"), &[], &conn);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("not_found") && err.contains("nope:v1"), "{err}");
    let other_conn = [("CORTEX_URL", s.base.as_str()), ("CORTEX_TOKEN", other.as_str())];
    let (code, _, err) = push("hello:v1", &format!("{repo}:nope"), &[], &other_conn);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("not_found"), "{err}");
    // A path that does not exist is a missing file, not a module reference.
    let (code, _, err) = push("./missing.wasm", &format!("{repo}:nope"), &[], &conn);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("no such file"), "{err}");
    pushed(art::HELLO, &format!("{repo}:still-pushable"));

    // `cortex modules download`: the bytes uploaded, to a file or to stdout.
    let file = dir.path().join("hello.wasm");
    let out = cortex(&["modules", "download", "hello:v1", "-o", file.to_str().unwrap()]).envs(conn).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let original = std::fs::read(art::HELLO).unwrap();
    assert!(std::fs::read(&file).unwrap() == original, "the file holds the bytes uploaded");
    let out = cortex(&["modules", "download", "hello:v1"]).envs(conn).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stdout == original, "stdout holds the bytes uploaded");
}
