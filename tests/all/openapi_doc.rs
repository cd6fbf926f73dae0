//! The served OpenAPI document, checked by independent tools: openapi-spec-validator (PyPI)
//! says it is a valid OpenAPI 3.1 document, and openapi-typescript (npm) generates a typed
//! client from it that `tsc --strict` compiles together with a use of it
//! (`tests/openapi-client/check.ts`, whose `@ts-expect-error` lines prove the types precise).
//!
//! Both are pinned (`tests/openapi-validator-requirements.txt`,
//! `tests/openapi-client/package-lock.json`) and installed by
//! scripts/install-language-toolchains.sh; a missing install fails the test with that
//! command, it never skips.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::server::Server;

fn tools() -> PathBuf {
    std::env::var_os("CORTEX_LANG_TOOLS").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/cortex/lang-tools")
    })
}

fn installed(bin: PathBuf) -> PathBuf {
    assert!(bin.exists(), "{} is missing: run scripts/install-language-toolchains.sh", bin.display());
    bin
}

fn client_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi-client")
}

/// The document as the server serves it, written to `dir/openapi.json`.
async fn served_document(s: &Server) -> PathBuf {
    let r = s.client.get(s.url("/v1/openapi.json")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let path = s.dir.path().join("openapi.json");
    std::fs::write(&path, r.bytes().await.unwrap()).unwrap();
    path
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_spec_validator_accepts_the_served_document() {
    let validator = installed(tools().join("openapi-validator-venv/bin/openapi-spec-validator"));
    let s = Server::start().await;
    let doc = served_document(&s).await;
    let out = tokio::task::spawn_blocking(move || run(Command::new(validator).arg(&doc))).await.unwrap();
    assert!(out.contains(": OK"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_typescript_client_generated_from_the_document_compiles_with_typed_paths() {
    let dir = client_dir();
    let generate = installed(dir.join("node_modules/.bin/openapi-typescript"));
    let tsc = installed(dir.join("node_modules/.bin/tsc"));
    let s = Server::start().await;
    let doc = served_document(&s).await;
    // The check and the client it imports, side by side in the test's own directory.
    let work = s.dir.path().join("client");
    std::fs::create_dir_all(work.join("gen")).unwrap();
    std::fs::copy(dir.join("check.ts"), work.join("check.ts")).unwrap();
    let api = work.join("gen/api.ts");
    tokio::task::spawn_blocking(move || {
        run(Command::new(generate).arg(&doc).arg("-o").arg(&api));
        let text = std::fs::read_to_string(&api).unwrap();
        // Named operations, not anonymous ones.
        assert!(text.contains("deployAgent: {") && text.contains("invokeAgent: {"), "no operation ids");
        run(Command::new(tsc).current_dir(&work).args([
            "--noEmit",
            "--strict",
            "--noUnusedLocals",
            "--target",
            "es2022",
            "--module",
            "esnext",
            "--moduleResolution",
            "bundler",
            "check.ts",
        ]));
    })
    .await
    .unwrap();
}
