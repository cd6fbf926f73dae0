//! Module references and uploads over HTTP: a module is named by its digest, a unique
//! digest prefix or `name:tag` everywhere (get, delete, deploy, upgrade); a tag moves to the
//! newest upload without moving a running agent; `HEAD` tells a client the server has the
//! bytes; a large upload answers 202 and compiles in the background (ready or failed, and
//! resumed by a restart).

use cortex_artifacts as art;
use cortex_host::registry::{ModuleRecord, ModuleStatus, scoped};
use cortex_host::store::RecordKind;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::server::{Answer, Server, answer};

async fn upload(s: &Server, token: &str, path: &str, query: &str) -> Answer {
    let bytes = std::fs::read(path).unwrap();
    answer(s.req(Method::POST, &format!("/v1/modules{query}"), token).body(bytes).send().await.unwrap()).await
}

async fn call(s: &Server, method: Method, path: &str, token: &str, body: Option<Value>) -> Answer {
    let mut r = s.req(method, path, token);
    if let Some(b) = body {
        r = r.json(&b);
    }
    answer(r.send().await.unwrap()).await
}

/// The module once its status is no longer `compiling` (bounded wait).
async fn settled(s: &Server, token: &str, digest: &str) -> Value {
    s.module_settled(token, digest, std::time::Duration::from_secs(60)).await
}

fn tags(m: &Value) -> Vec<String> {
    m["tags"]
        .as_array()
        .map(|t| t.iter().map(|t| format!("{}:{}", t["name"].as_str().unwrap(), t["tag"].as_str().unwrap())).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modules_are_named_by_digest_prefix_or_name_tag_everywhere() {
    let s = Server::start().await;
    let dev = s.developer_in("acme").await;
    let v1 = upload(&s, &dev, art::HELLO, "?name=greeter&tag=v1").await;
    assert_eq!(v1.status, StatusCode::CREATED, "{}", v1.text);
    let d1 = v1.body["digest"].as_str().unwrap().to_owned();
    assert_eq!(tags(&v1.body), ["greeter:v1"]);
    assert_eq!(v1.body["tags"][0]["by"], "test-developer", "who tagged it");
    assert!(v1.body["tags"][0]["at_ms"].as_u64().unwrap() > 0, "when");
    assert_eq!(v1.body["status"], "ready");

    // Get by full digest, by a prefix, by name:tag.
    for r in [d1.clone(), d1[..8].to_owned(), d1[..20].to_owned(), "greeter:v1".to_owned()] {
        assert_eq!(s.get_json(&dev, &format!("/v1/modules/{r}")).await["digest"], d1.as_str(), "{r}");
    }
    // Too short a prefix, a malformed reference, an unknown one.
    let short = call(&s, Method::GET, &format!("/v1/modules/{}", &d1[..7]), &dev, None).await;
    assert_eq!(short.status, StatusCode::BAD_REQUEST, "{}", short.text);
    assert!(short.text.contains("at least 8"), "{}", short.text);
    let bad = call(&s, Method::GET, "/v1/modules/Greeter:v1", &dev, None).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let other = if d1.starts_with('0') { "1".repeat(12) } else { "0".repeat(12) };
    assert_eq!(call(&s, Method::GET, &format!("/v1/modules/{other}"), &dev, None).await.status, StatusCode::NOT_FOUND);
    assert_eq!(call(&s, Method::GET, "/v1/modules/greeter:v9", &dev, None).await.status, StatusCode::NOT_FOUND);

    // Deploy by name:tag: the agent records the digest.
    let agent = s.deploy_with(&dev, "g", "greeter:v1", json!({})).await;
    assert_eq!(agent["module"], d1.as_str());
    // A second upload under the same name takes `latest` (the default tag) and moves it.
    let v2 = upload(&s, &dev, art::HOSTILE, "?name=greeter").await;
    assert_eq!(v2.status, StatusCode::CREATED, "{}", v2.text);
    let d2 = v2.body["digest"].as_str().unwrap().to_owned();
    let v3 = upload(&s, &dev, art::COUNTER, "?name=greeter&tag=latest").await;
    let d3 = v3.body["digest"].as_str().unwrap().to_owned();
    assert_eq!(s.get_json(&dev, "/v1/modules/greeter").await["digest"], d3.as_str(), "bare name = name:latest");
    assert!(tags(&s.get_json(&dev, &format!("/v1/modules/{d2}")).await).is_empty(), "the tag moved off d2");
    // The tag route moves it back, and the running agent does not move with tags.
    let moved =
        call(&s, Method::POST, &format!("/v1/modules/{}/tags", &d2[..10]), &dev, Some(json!({"name": "greeter"})))
            .await;
    assert_eq!(moved.status, StatusCode::OK, "{}", moved.text);
    assert_eq!(s.get_json(&dev, "/v1/modules/greeter:latest").await["digest"], d2.as_str());
    assert_eq!(s.get_json(&dev, "/v1/agents/g").await["module"], d1.as_str());
    // One module may carry several names.
    let also = call(
        &s,
        Method::POST,
        &format!("/v1/modules/{d1}/tags"),
        &dev,
        Some(json!({"name": "hello", "tag": "stable"})),
    )
    .await;
    assert_eq!(tags(&also.body), ["greeter:v1", "hello:stable"]);
    // A bad tag is refused with the rule.
    let bad_tag = upload(&s, &dev, art::HELLO, "?name=greeter&tag=Bad").await;
    assert_eq!(bad_tag.status, StatusCode::BAD_REQUEST, "{}", bad_tag.text);

    // Upgrade by prefix, delete by name:tag (refused while used, then done).
    let up = call(&s, Method::POST, "/v1/agents/g/upgrade", &dev, Some(json!({"module": &d3[..12]}))).await;
    assert_eq!(up.status, StatusCode::OK, "{}", up.text);
    assert_eq!(up.body["module"], d3.as_str());
    let unused = call(&s, Method::DELETE, "/v1/modules/greeter:latest", &dev, None).await;
    assert_eq!(unused.status, StatusCode::NO_CONTENT, "d2 is not used: {}", unused.text);
    let used = call(&s, Method::DELETE, &format!("/v1/modules/{}", &d3[..8]), &dev, None).await;
    assert_eq!((used.status, used.code.as_str()), (StatusCode::CONFLICT, "module_in_use"));

    // Another tenant's names and prefixes are not seen.
    let other = s.developer_in("other").await;
    assert_eq!(call(&s, Method::GET, "/v1/modules/greeter:v1", &other, None).await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        call(&s, Method::GET, &format!("/v1/modules/{}", &d1[..8]), &other, None).await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_downloads_as_uploaded_for_its_own_tenant_only() {
    let s = Server::start().await;
    let dev = s.developer_in("acme").await;
    let observer = s.token(Some("acme"), cortex_host::api::Role::Observer);
    let up = upload(&s, &dev, art::HELLO, "?name=greeter&tag=v1").await;
    assert_eq!(up.status, StatusCode::CREATED, "{}", up.text);
    let digest = up.body["digest"].as_str().unwrap().to_owned();
    let original = std::fs::read(art::HELLO).unwrap();
    // By every kind of reference, by any role that reads modules.
    for (r, token) in [(digest.clone(), &dev), (digest[..10].to_owned(), &observer), ("greeter:v1".to_owned(), &dev)] {
        let resp = s.req(Method::GET, &format!("/v1/modules/{r}/wasm"), token).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{r}");
        assert_eq!(resp.headers()["content-type"], "application/wasm");
        assert!(resp.bytes().await.unwrap() == original, "{r}: the bytes uploaded");
    }
    // Another tenant: not found, by digest as by name, whether or not it has the same bytes.
    let other = s.developer_in("other").await;
    for r in [digest.clone(), digest[..8].to_owned(), "greeter:v1".to_owned()] {
        let a = call(&s, Method::GET, &format!("/v1/modules/{r}/wasm"), &other, None).await;
        assert_eq!((a.status, a.code.as_str()), (StatusCode::NOT_FOUND, "not_found"), "{r}: {}", a.text);
        assert!(!a.text.contains("asm"), "{}", a.text);
    }
    let missing = call(&s, Method::GET, &format!("/v1/modules/{}/wasm", "0".repeat(64)), &dev, None).await;
    assert_eq!((missing.status, missing.code.as_str()), (StatusCode::NOT_FOUND, "not_found"), "{}", missing.text);
    // The other tenant's upload of the same component is its own; its deletion leaves acme's.
    let theirs = upload(&s, &other, art::HELLO, "").await;
    assert_eq!(theirs.body["digest"], digest.as_str());
    assert_eq!(
        call(&s, Method::DELETE, &format!("/v1/modules/{digest}"), &other, None).await.status,
        StatusCode::NO_CONTENT
    );
    let after = call(&s, Method::GET, &format!("/v1/modules/{digest}/wasm"), &other, None).await;
    assert_eq!(after.status, StatusCode::NOT_FOUND);
    let resp = s.req(Method::GET, &format!("/v1/modules/{digest}/wasm"), &dev).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.bytes().await.unwrap() == original);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ambiguous_prefix_is_refused_listing_the_candidates() {
    let s = Server::start().await;
    let dev = s.developer_in("acme").await;
    let up = upload(&s, &dev, art::HELLO, "").await;
    let rec: ModuleRecord = serde_json::from_value(up.body).unwrap();
    // Digests are SHA-256: two records sharing 8 leading characters are written directly.
    for tail in ['1', '2'] {
        let digest = format!("abcdef01{}", tail.to_string().repeat(56));
        let fake = ModuleRecord { digest: digest.clone(), ..rec.clone() };
        s.state.registry.put(RecordKind::Module, &scoped("acme", &digest), &fake, Some(0)).await.unwrap();
    }
    let a = call(&s, Method::GET, "/v1/modules/abcdef01", &dev, None).await;
    assert_eq!((a.status, a.code.as_str()), (StatusCode::CONFLICT, "ambiguous_module_ref"), "{}", a.text);
    assert!(
        a.text.contains(&format!("abcdef01{}", "1".repeat(56)))
            && a.text.contains(&format!("abcdef01{}", "2".repeat(56))),
        "{}",
        a.text
    );
    // One more character settles it.
    assert_eq!(s.get_json(&dev, "/v1/modules/abcdef012").await["digest"], format!("abcdef01{}", "2".repeat(56)));
    let deploy = call(&s, Method::POST, "/v1/agents", &dev, Some(json!({"name": "x", "module": "abcdef01"}))).await;
    assert_eq!(deploy.code, "ambiguous_module_ref", "deploy resolves the same way: {}", deploy.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_tells_a_client_whether_the_server_has_the_bytes() {
    let s = Server::start().await;
    let dev = s.developer_in("acme").await;
    let digest = cortex_host::runtime::digest(&std::fs::read(art::HELLO).unwrap());
    let head = |s: &Server| s.req(Method::HEAD, &format!("/v1/modules/{digest}"), &dev).send();
    assert_eq!(head(&s).await.unwrap().status(), StatusCode::NOT_FOUND);
    assert_eq!(upload(&s, &dev, art::HELLO, "").await.status, StatusCode::CREATED);
    let r = head(&s).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.bytes().await.unwrap().is_empty(), "HEAD has no body");
    // The same bytes again: 200, the same record.
    assert_eq!(upload(&s, &dev, art::HELLO, "").await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_upload_answers_202_and_compiles_in_the_background() {
    // Every plugin is over 1000 bytes: each upload goes the background way.
    let s = Server::start_with(|c| c.modules.async_compile_bytes = 1000).await;
    let dev = s.developer_in("acme").await;
    let up = upload(&s, &dev, art::HELLO, "?name=hello").await;
    assert_eq!(up.status, StatusCode::ACCEPTED, "{}", up.text);
    assert_eq!(up.body["status"], "compiling");
    let digest = up.body["digest"].as_str().unwrap().to_owned();
    // The same bytes while compiling join it (202) or find it ready (200): never a second module.
    let again = upload(&s, &dev, art::HELLO, "").await;
    assert!(matches!(again.status, StatusCode::ACCEPTED | StatusCode::OK), "{}", again.text);
    let m = settled(&s, &dev, &digest).await;
    assert_eq!(m["status"], "ready", "{m}");
    assert!(m["exports"].as_array().unwrap().iter().any(|e| e == "handle"), "{m}");
    assert_eq!(tags(&m), ["hello:latest"]);
    s.deploy_with(&dev, "h", "hello", json!({})).await;
    assert_eq!(s.invoke_ok(&dev, "h", "async").await, "Hello, async!");
    assert_eq!(s.get_json(&dev, "/v1/modules").await.as_array().unwrap().len(), 1);

    // A component the host refuses fails in the background, with the code a synchronous
    // upload would answer, and cannot be deployed.
    let up = upload(&s, &dev, art::FOREIGN_IMPORT, "").await;
    assert_eq!(up.status, StatusCode::ACCEPTED, "{}", up.text);
    let bad = up.body["digest"].as_str().unwrap().to_owned();
    let m = settled(&s, &dev, &bad).await;
    assert_eq!(m["status"], "failed", "{m}");
    assert_eq!(m["error"]["code"], "unknown_import", "{m}");
    let d = call(&s, Method::POST, "/v1/agents", &dev, Some(json!({"name": "f", "module": bad}))).await;
    assert_eq!((d.status, d.code.as_str()), (StatusCode::CONFLICT, "module_failed"), "{}", d.text);
    // Bytes that are not a component at all are refused at once.
    let junk = answer(s.req(Method::POST, "/v1/modules", &dev).body(vec![7u8; 2000]).send().await.unwrap()).await;
    assert_eq!(
        (junk.status, junk.code.as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "not_a_component"),
        "{}",
        junk.text
    );
    // A small upload still answers at once.
    let small = Server::start().await;
    let dev2 = small.developer_in("acme").await;
    assert_eq!(upload(&small, &dev2, art::HELLO, "").await.status, StatusCode::CREATED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_left_compiling_is_not_deployable_and_a_restart_compiles_it() {
    let s = Server::start().await;
    let dev = s.developer_in("acme").await;
    let up = upload(&s, &dev, art::HELLO, "?name=hello").await;
    let digest = up.body["digest"].as_str().unwrap().to_owned();
    // What a server stopped in the middle of a compile leaves: the bytes and a record in
    // status compiling (written here, so the stop is never too late).
    let key = scoped("acme", &digest);
    let (mut rec, rev) = s.state.registry.get::<ModuleRecord>(RecordKind::Module, &key).await.unwrap().unwrap();
    rec.status = ModuleStatus::Compiling;
    rec.exports.clear();
    s.state.registry.put(RecordKind::Module, &key, &rec, Some(rev)).await.unwrap();
    let d = call(&s, Method::POST, "/v1/agents", &dev, Some(json!({"name": "h", "module": "hello"}))).await;
    assert_eq!((d.status, d.code.as_str()), (StatusCode::CONFLICT, "module_not_ready"), "{}", d.text);

    let dir = s.stop().await;
    let s = Server::start_in(dir, |_| {}).await;
    let m = settled(&s, &dev, &digest).await;
    assert_eq!(m["status"], "ready", "{m}");
    assert!(m["exports"].as_array().unwrap().iter().any(|e| e == "handle"), "{m}");
    assert_eq!(tags(&m), ["hello:latest"], "the labels survive the compile");
    s.deploy_with(&dev, "h", "hello", json!({})).await;
    assert_eq!(s.invoke_ok(&dev, "h", "again").await, "Hello, again!");
}

/// A compile program that is not a build of Cortex (a bench harness, an embedder's own
/// binary) does not know `__compile`: started as a compile child it runs as itself, and if
/// it loads a component it would start a compile child of its own, and so on (a fork bomb).
/// A compile child never starts one: the load fails with an error that says what is wrong,
/// and nothing is spawned. The test plays both parts: run normally, it starts this test
/// binary again the way a compile child is started (the request in its environment),
/// running only this test; in there, it loads a component with a compile program that
/// leaves a mark if it ever runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compile_child_never_starts_a_compile_child() {
    use cortex_host::runtime::{CompileConfig, EngineConfig, Runtime};
    const PROGRAM: &str = "CORTEX_TEST_COMPILE_PROGRAM";
    const NAME: &str = "modules::a_compile_child_never_starts_a_compile_child";
    if let Some(program) = std::env::var_os("CORTEX_COMPILE_REQUEST").and(std::env::var_os(PROGRAM)) {
        // The child's part: as if a non-Cortex compile program were loading an upload.
        let compile = CompileConfig { program: Some(program.into()), ..CompileConfig::default() };
        let rt = Runtime::new(EngineConfig { compile, ..EngineConfig::default() }, None).unwrap();
        let Err(err) = rt.load(&std::fs::read(art::HELLO).unwrap()).await else { panic!("the load must fail") };
        let text = err.to_string();
        assert!(text.contains("must be a build of Cortex"), "{text}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mark = dir.path().join("ran");
    let program = dir.path().join("compiler.sh");
    std::fs::write(&program, format!("#!/bin/sh\ntouch '{}'\nexit 1\n", mark.display())).unwrap();
    let mut perms = std::fs::metadata(&program).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&program, perms).unwrap();
    let out = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", NAME, "--nocapture", "--test-threads=1"])
        .env("CORTEX_COMPILE_REQUEST", "{}")
        .env(PROGRAM, &program)
        .output()
        .await
        .unwrap();
    let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{log}");
    assert!(log.contains("1 passed"), "the child ran the test: {log}");
    assert!(!mark.exists(), "a compile child started the compile program: {log}");
    // The mark is what a started program leaves (the check above can fail).
    std::process::Command::new(&program).status().unwrap();
    assert!(mark.exists());
}
