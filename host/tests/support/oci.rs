//! Distribution through a real OCI registry (Debian's `docker-registry`, the CNCF
//! distribution registry, installed by scripts/install-language-toolchains.sh) started by
//! each test on 127.0.0.1: the real `cortex push`, then a real `cortex serve` deploying
//! from `oci://` references.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use super::{Serve, art, cortex};

// `cortex push NAME:TAG REF` from a module on the server (a child module: it uses this
// file's registry and helpers).
#[path = "../process/push_from_server.rs"]
mod push_from_server;

const REGISTRY_BIN: &str = "docker-registry";

/// A `docker-registry serve` child on 127.0.0.1, storage in a temp dir.
struct Registry {
    child: Child,
    /// `127.0.0.1:PORT`.
    host: String,
    _dir: tempfile::TempDir,
}

impl Registry {
    /// A registry; with `user`, requiring that user's basic auth (an htpasswd file).
    async fn start(user: Option<(&str, &str)>) -> Registry {
        let found =
            std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(REGISTRY_BIN).is_file()));
        assert!(
            found,
            "`{REGISTRY_BIN}` is not installed: run scripts/install-language-toolchains.sh (it installs Debian's docker-registry)"
        );
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let host = format!("127.0.0.1:{port}");
        let mut cfg = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {host}\n  secret: test-secret\n",
            dir.path().join("data").display()
        );
        if let Some((name, password)) = user {
            let out =
                Command::new("htpasswd").args(["-Bbn", name, password]).output().expect("htpasswd (apache2-utils)");
            assert!(out.status.success(), "htpasswd: {}", String::from_utf8_lossy(&out.stderr));
            let file = dir.path().join("htpasswd");
            std::fs::write(&file, &out.stdout).unwrap();
            cfg.push_str(&format!("auth:\n  htpasswd:\n    realm: cortex-test\n    path: {}\n", file.display()));
        }
        let cfg_path = dir.path().join("config.yml");
        std::fs::write(&cfg_path, cfg).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new(REGISTRY_BIN)
            .args(["serve", cfg_path.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let r = Registry { child, host, _dir: dir };
        let client = reqwest::Client::new();
        for _ in 0..400 {
            if let Ok(resp) = client.get(format!("http://{}/v2/", r.host)).send().await
                && (resp.status() == StatusCode::OK || resp.status() == StatusCode::UNAUTHORIZED)
            {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the registry on {} never answered", r.host);
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `cortex push SOURCE REF` with `env` (and `stdin`, if given); exit code, stdout, stderr.
fn push(source: &str, reference: &str, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let mut c = cortex(&["push", source, reference]);
    c.args(args).envs(env.iter().copied());
    let out = c.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// Run `c` with `line` on its stdin; expect success, return its stdout.
fn with_stdin(mut c: Command, line: &str) -> Vec<u8> {
    use std::io::Write;
    let mut child = c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(format!("{line}\n").as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// Push and expect success: the pinned reference printed.
fn pushed(source: &str, reference: &str) -> String {
    let (code, out, err) = push(source, reference, &[], &[]);
    assert_eq!(code, Some(0), "push {reference}: {err}");
    assert!(out.starts_with(&format!("{reference}@sha256:")), "{out}");
    out
}

/// The server's configuration for pulling from `insecure` (plain http) registries, with
/// `module_limit` bytes the largest module.
fn serve(data: &Path, insecure: &[&str], module_limit: u64) -> Serve {
    let list = format!("[{}]", insecure.iter().map(|h| format!("{h:?}")).collect::<Vec<_>>().join(","));
    let env = [
        ("CORTEX_CFG__OCI__INSECURE_REGISTRIES".to_owned(), list),
        ("CORTEX_CFG__HTTP__MODULE_LIMIT_BYTES".to_owned(), module_limit.to_string()),
        // What the pulls log, for the test that no secret is in it.
        ("CORTEX_LOG".to_owned(), "cortex_host=debug,reqwest=debug".to_owned()),
    ];
    Serve::start_env(data, None, &env)
}

struct Api<'a> {
    s: &'a Serve,
    client: reqwest::Client,
}

impl Api<'_> {
    async fn call(&self, method: reqwest::Method, path: &str, token: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut req = self.client.request(method, format!("{}{path}", self.s.base)).bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    async fn tenant(&self, name: &str) {
        let admin = self.s.token(None, "platform-admin");
        let (s, b) = self.call(reqwest::Method::POST, "/v1/tenants", &admin, Some(json!({"name": name}))).await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
    }

    async fn deploy(&self, token: &str, name: &str, module: &str) -> (StatusCode, Value) {
        self.call(reqwest::Method::POST, "/v1/agents", token, Some(json!({"name": name, "module": module}))).await
    }

    async fn invoke(&self, token: &str, name: &str, input: &str) -> String {
        let r = self
            .client
            .post(format!("{}/v1/agents/{name}/invoke", self.s.base))
            .bearer_auth(token)
            .body(input.to_owned())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        r.text().await.unwrap()
    }
}

fn digest_of(pinned: &str) -> &str {
    pinned.split_once('@').unwrap().1
}

/// A file of `size` bytes that starts like a component.
fn big_wasm(dir: &Path, size: usize) -> PathBuf {
    let mut bytes = b"\0asm\x0d\x00\x01\x00".to_vec();
    bytes.resize(size, 0);
    let path = dir.join("big.wasm");
    std::fs::write(&path, bytes).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_agents_deploy_from_oci_references_pinned_to_their_digest_until_an_upgrade() {
    let reg = Registry::start(None).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let limit = 8 << 20;
    let mut s = serve(&data, &[&reg.host], limit);
    let repo = format!("{}/team/agent", reg.host);
    let v1 = pushed(art::HELLO, &format!("{repo}:v1"));

    let api = Api { s: &s, client: reqwest::Client::new() };
    api.tenant("t").await;
    let dev = s.token(Some("t"), "developer");
    let (st, a) = api.deploy(&dev, "a", &format!("oci://{repo}:v1")).await;
    assert_eq!(st, StatusCode::CREATED, "{a}");
    assert_eq!(a["oci"], json!({"reference": format!("{repo}:v1"), "digest": digest_of(&v1)}));
    assert_eq!(api.invoke(&dev, "a", "cpu:1").await, "Hello, cpu:1!");
    // The module is the tenant's, as if uploaded.
    let (_, modules) = api.call(reqwest::Method::GET, "/v1/modules", &dev, None).await;
    assert!(modules.as_array().unwrap().iter().any(|m| m["digest"] == a["module"]), "{modules}");

    // The tag moves: the running agent does not, nor after a restart.
    let v2 = pushed(art::COMPUTE, &format!("{repo}:v1"));
    assert_ne!(v1, v2);
    assert_eq!(api.invoke(&dev, "a", "cpu:1").await, "Hello, cpu:1!");
    drop(api);
    drop(s);
    s = serve(&data, &[&reg.host], limit);
    let api = Api { s: &s, client: reqwest::Client::new() };
    let dev = s.token(Some("t"), "developer");
    assert_eq!(api.invoke(&dev, "a", "cpu:1").await, "Hello, cpu:1!", "a restart does not resolve the tag again");

    // An upgrade resolves it again; a rollback goes back to the first digest.
    let (st, a2) = api
        .call(reqwest::Method::POST, "/v1/agents/a/upgrade", &dev, Some(json!({"module": format!("oci://{repo}:v1")})))
        .await;
    assert_eq!(st, StatusCode::OK, "{a2}");
    assert_eq!(a2["oci"]["digest"], digest_of(&v2));
    assert_eq!(a2["previous_oci"]["digest"], digest_of(&v1));
    assert_ne!(api.invoke(&dev, "a", "cpu:1").await, "Hello, cpu:1!");
    let (st, a3) = api.call(reqwest::Method::POST, "/v1/agents/a/rollback", &dev, None).await;
    assert_eq!(st, StatusCode::OK, "{a3}");
    assert_eq!(a3["oci"]["digest"], digest_of(&v1));
    assert_eq!(api.invoke(&dev, "a", "cpu:1").await, "Hello, cpu:1!");

    // A digest-pinned reference, with or without its tag.
    let (st, b) = api.deploy(&dev, "b", &format!("oci://{v1}")).await;
    assert_eq!(st, StatusCode::CREATED, "{b}");
    assert_eq!(api.invoke(&dev, "b", "x").await, "Hello, x!");
    let (st, c) = api.deploy(&dev, "c", &format!("oci://{repo}@{}", digest_of(&v1))).await;
    assert_eq!(st, StatusCode::CREATED, "{c}");

    // Refusals, each with its code: a digest the registry does not have, a tag it does not
    // have, a registry not listed (the same one under another name), a malformed reference.
    let wrong = format!("oci://{repo}:v1@sha256:{}", "0".repeat(64));
    for (module, status, code) in [
        (wrong.as_str(), 404, "oci_not_found"),
        (&format!("oci://{repo}:nope"), 404, "oci_not_found"),
        (&format!("oci://localhost:{}/team/agent:v1", reg.host.rsplit_once(':').unwrap().1), 403, "oci_not_allowed"),
        ("oci://10.0.0.1/x/y:v1", 403, "oci_not_allowed"),
        (&format!("oci://{repo}"), 400, "oci_invalid_reference"),
    ] {
        let (st, p) = api.deploy(&dev, "refused", module).await;
        assert_eq!((st.as_u16(), p["code"].as_str().unwrap_or("")), (status, code), "{module}: {p}");
    }

    // An artifact over the module limit is refused before its component is read.
    let big = big_wasm(dir.path(), (limit + 1) as usize);
    pushed(big.to_str().unwrap(), &format!("{repo}:big"));
    let (st, p) = api.deploy(&dev, "big", &format!("oci://{repo}:big")).await;
    assert_eq!((st.as_u16(), p["code"].as_str()), (413, Some("oci_too_large")), "{p}");

    // A container image (another config media type) is not an agent.
    let image = push_image_manifest(&reg.host, "team/image").await;
    let (st, p) = api.deploy(&dev, "image", &format!("oci://{}/team/image:{image}", reg.host)).await;
    assert_eq!((st.as_u16(), p["code"].as_str()), (422, Some("oci_bad_artifact")), "{p}");
}

/// Push a minimal container-image manifest (config `application/vnd.oci.image.config.v1+json`)
/// by hand to `repo`, tagged `img`; returns the tag.
async fn push_image_manifest(host: &str, repo: &str) -> &'static str {
    let client = reqwest::Client::new();
    let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#.to_vec();
    let digest = format!("sha256:{}", cortex_host::secrets::sha256_hex(&config));
    let r = client.post(format!("http://{host}/v2/{repo}/blobs/uploads/")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let sep = if location.contains('?') { '&' } else { '?' };
    let url = if location.starts_with("http") { location } else { format!("http://{host}{location}") };
    let r = client
        .put(format!("{url}{sep}digest={digest}"))
        .header("content-type", "application/octet-stream")
        .body(config.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "{}", r.text().await.unwrap());
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest, "size": config.len()},
        "layers": []
    });
    let r = client
        .put(format!("http://{host}/v2/{repo}/manifests/img"))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "{}", r.text().await.unwrap());
    "img"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_credentials_are_pushed_with_and_pulled_with_for_their_own_tenant_only() {
    const PASSWORD: &str = "s3cret-registry-pw";
    let reg = Registry::start(Some(("alice", PASSWORD))).await;
    let reference = format!("{}/team/private:v1", reg.host);

    // Push: refused without credentials, done with them (from the environment or stdin).
    let (code, _, err) = push(art::HELLO, &reference, &[], &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("oci_unauthorized"), "{err}");
    let (code, _, err) =
        push(art::HELLO, &reference, &["--username", "alice"], &[("CORTEX_REGISTRY_PASSWORD", "wrong")]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("oci_unauthorized"), "{err}");
    let (code, out, err) =
        push(art::HELLO, &reference, &["--username", "alice"], &[("CORTEX_REGISTRY_PASSWORD", PASSWORD)]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with(&format!("{reference}@sha256:")), "{out}");
    with_stdin(cortex(&["push", art::HELLO, &reference, "--username", "alice", "--password-stdin"]), PASSWORD);

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s = serve(&data, &[&reg.host], 8 << 20);
    let api = Api { s: &s, client: reqwest::Client::new() };
    api.tenant("one").await;
    api.tenant("two").await;
    let admin_one = s.token(Some("one"), "tenant-admin");
    let dev_one = s.token(Some("one"), "developer");
    let dev_two = s.token(Some("two"), "developer");
    let module = format!("oci://{reference}");
    let path = format!("/v1/registries/{}", reg.host);
    let creds = json!({"username": "alice", "password": PASSWORD});

    // Without the tenant's credentials, the registry refuses the pull.
    let (st, p) = api.deploy(&dev_one, "a", &module).await;
    assert_eq!((st.as_u16(), p["code"].as_str()), (422, Some("oci_unauthorized")), "{p}");
    // Only tenant-admins store credentials.
    let (st, _) = api.call(reqwest::Method::PUT, &path, &dev_one, Some(creds)).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    // `cortex registries put`, the password on stdin.
    let mut put = cortex(&["registries", "put", &reg.host, "--username", "alice", "--password-stdin", "--json"]);
    put.env("CORTEX_URL", &s.base).env("CORTEX_TOKEN", &admin_one);
    let v: Value = serde_json::from_slice(&with_stdin(put, PASSWORD)).unwrap();
    assert_eq!(v["registry"], reg.host.as_str());
    let (st, list) = api.call(reqwest::Method::GET, "/v1/registries", &admin_one, None).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(list[0]["registry"], reg.host.as_str());
    assert_eq!(list[0]["username"], "alice");
    assert!(!list.to_string().contains(PASSWORD) && !v.to_string().contains(PASSWORD), "{list} {v}");
    assert!(list[0].get("password").is_none(), "{list}");

    // Tenant one pulls with its credentials; tenant two does not get them.
    let (st, a) = api.deploy(&dev_one, "a", &module).await;
    assert_eq!(st, StatusCode::CREATED, "{a}");
    assert_eq!(api.invoke(&dev_one, "a", "x").await, "Hello, x!");
    let (st, p) = api.deploy(&dev_two, "a", &module).await;
    assert_eq!((st.as_u16(), p["code"].as_str()), (422, Some("oci_unauthorized")), "{p}");
    let (_, list_two) =
        api.call(reqwest::Method::GET, "/v1/registries", &s.token(Some("two"), "tenant-admin"), None).await;
    assert_eq!(list_two, json!([]));

    // Deleted credentials are no longer used.
    let (st, _) = api.call(reqwest::Method::DELETE, &path, &admin_one, None).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (st, p) = api.deploy(&dev_one, "b", &module).await;
    assert_eq!((st.as_u16(), p["code"].as_str()), (422, Some("oci_unauthorized")), "{p}");
    // A tenant's credentials go with it: a later tenant of the name does not get them.
    let admin_two = s.token(Some("two"), "tenant-admin");
    let (st, _) =
        api.call(reqwest::Method::PUT, &path, &admin_two, Some(json!({"username": "bob", "password": "x"}))).await;
    assert_eq!(st, StatusCode::CREATED);
    let platform = s.token(None, "platform-admin");
    let (st, _) = api.call(reqwest::Method::DELETE, "/v1/tenants/two", &platform, None).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    api.tenant("two").await;
    let (_, list_two) =
        api.call(reqwest::Method::GET, "/v1/registries", &s.token(Some("two"), "tenant-admin"), None).await;
    assert_eq!(list_two, json!([]));
    let log = std::fs::read_to_string(format!("{}.stderr", s.data)).unwrap_or_default();
    assert!(!log.contains(PASSWORD), "the password is in the server's log");
}

#[test]
fn push_refuses_bad_arguments_with_2_and_a_file_that_is_not_wasm_with_1_before_connecting() {
    // Port 1 on loopback: nothing listens, and nothing is asked of it.
    let (code, _, err) = push(art::HELLO, "127.0.0.1:1/team/agent", &[], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("oci_invalid_reference") && err.contains("give a tag or a digest"), "{err}");
    let (code, _, err) = push(art::HELLO, "127.0.0.1:1/team/agent:v1", &["--username", "u"], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("needs a password"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("agent.txt");
    std::fs::write(&text, "not wasm").unwrap();
    let (code, _, err) = push(text.to_str().unwrap(), "127.0.0.1:1/team/agent:v1", &[], &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("is not a WebAssembly file"), "{err}");
}
