//! A short schemathesis pass over the served OpenAPI document, against a real server, over
//! every operation but the endless event stream: no generated request gets a 5xx, every
//! response conforms to the document (status, content type, headers, schema), requests the
//! schemas refuse are refused (negative data) and those they allow are accepted (positive
//! data; `tests/schemathesis.toml` names the few rules JSON Schema cannot state), methods
//! the document does not list are refused with `Allow`. The coverage and fuzzing phases, deterministic generation, a few
//! examples per operation (well under a minute).
//!
//! schemathesis is pinned in `tests/schemathesis-requirements.txt` and installed by
//! scripts/install-language-toolchains.sh (which scripts/test.sh runs); a missing install
//! fails the test with that command, it never skips.

use std::path::PathBuf;

use cortex_artifacts as art;
use serde_json::json;

use crate::server::Server;

/// What each response is checked for.
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
response_headers_conformance,response_schema_conformance,negative_data_rejection,\
missing_required_header,unsupported_method,positive_data_acceptance";

fn schemathesis() -> PathBuf {
    let tools = std::env::var_os("CORTEX_LANG_TOOLS").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/cortex/lang-tools")
    });
    let bin = tools.join("schemathesis-venv/bin/schemathesis");
    assert!(bin.exists(), "{} is missing: run scripts/install-language-toolchains.sh", bin.display());
    bin
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_requests_get_no_5xx_and_responses_match_the_openapi_document() {
    let bin = schemathesis();
    let s = Server::start().await;
    let dev = s.developer_in("t").await;
    let digest = s.upload(&dev, art::HELLO).await;
    s.deploy(&dev, "hello", &digest, json!({})).await;
    let url = s.url("/v1/openapi.json");
    let auth = format!("Authorization: Bearer {}", s.admin());
    // It keeps a cache (`.schemathesis/`) in its working directory: the test's temp dir.
    let cwd = s.dir.path().to_path_buf();
    let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemathesis.toml");
    // Bounded by coreutils' `timeout`, which kills it past 300 s.
    let run = tokio::task::spawn_blocking(move || {
        std::process::Command::new("timeout")
            .current_dir(cwd)
            .arg("300")
            .arg(bin)
            .arg("--config-file")
            .arg(config)
            .arg("run")
            .arg(url)
            .args(["-H", &auth, "-H", "X-Cortex-Tenant: t"])
            .args(["--checks", CHECKS])
            .args(["--phases", "coverage,fuzzing", "--max-examples", "3", "--generation-deterministic"])
            .args(["--request-timeout", "10", "--no-color"])
            // Streams that follow forever.
            .args(["--exclude-name", "GET /v1/events/stream"])
            .args(["--exclude-name", "GET /v1/agents/{name}/logs/stream"])
            .output()
    });
    let out = run.await.unwrap().expect("schemathesis runs");
    let report = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "schemathesis found failures:\n{report}");
    assert!(report.contains("passed"), "{report}");
    // The server is still up.
    assert_eq!(s.client.get(s.url("/healthz")).send().await.unwrap().status(), 200);
}
