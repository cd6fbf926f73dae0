//! Each class of bad component is refused at load with a typed reason; good ones are cached.

use cortex_artifacts as art;
use cortex_host::runtime::{LoadError, Runtime, World};

use crate::common::{Sandbox, engine_config, limits, text};

async fn refuse(sb: &Sandbox, bytes: &[u8]) -> LoadError {
    match sb.runtime.load(bytes).await {
        Ok(m) => panic!("expected a refusal, loaded {m:?}"),
        Err(e) => e,
    }
}

#[tokio::test]
async fn rejects_bytes_that_are_not_a_component() {
    let sb = Sandbox::new();
    let e = refuse(&sb, b"").await;
    assert_eq!(e.code(), "not_a_component");
    assert!(e.to_string().contains("empty"), "{e}");

    // A random, deterministic byte soup.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let junk: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    assert_eq!(refuse(&sb, &junk).await.code(), "not_a_component");

    // The smallest valid core module: magic and version 1.
    let e = refuse(&sb, b"\0asm\x01\0\0\0").await;
    assert_eq!(e.code(), "not_a_component");
    assert!(e.to_string().contains("core WebAssembly module"), "{e}");
}

#[tokio::test]
async fn rejects_truncated_component() {
    let sb = Sandbox::new();
    let hello = std::fs::read(art::HELLO).unwrap();
    let e = refuse(&sb, &hello[..hello.len() / 2]).await;
    assert_eq!(e.code(), "invalid_component", "{e}");
}

#[tokio::test]
async fn rejects_component_without_handle_export() {
    let sb = Sandbox::new();
    let e = refuse(&sb, &std::fs::read(art::NOT_AN_AGENT).unwrap()).await;
    assert_eq!(e.code(), "missing_export");
    let msg = e.to_string();
    assert!(msg.contains("`handle`") && msg.contains("wasi:cli/run"), "{msg}");
}

#[tokio::test]
async fn rejects_component_with_unknown_import() {
    let sb = Sandbox::new();
    let e = refuse(&sb, &std::fs::read(art::FOREIGN_IMPORT).unwrap()).await;
    assert_eq!(e.code(), "unknown_import");
    assert!(e.to_string().contains("evil:backdoor/shell"), "{e}");
}

#[tokio::test]
async fn rejects_wasi_http_import() {
    let sb = Sandbox::new();
    let e = refuse(&sb, &std::fs::read(art::WASI_HTTP_IMPORT).unwrap()).await;
    assert_eq!(e.code(), "denied_import");
    assert!(e.to_string().contains("wasi:http/outgoing-handler"), "{e}");
}

#[tokio::test]
async fn messaging_outside_the_service_is_unavailable_not_a_trap() {
    let sb = Sandbox::new();
    let m = sb.load(art::MESSENGER).await;
    assert!(m.shape.imports.iter().any(|i| i == "cortex:agent/messaging@0.1.0"), "{:?}", m.shape.imports);
    // A bare runtime (as `cortex run` uses) has no other agents to reach.
    for input in ["send:b:x", "call:b:x", "publish:news:x"] {
        let out = text(&sb.invoke(&m, input, &limits()).await);
        assert!(out.starts_with("error:messaging-unavailable:"), "{input}: {out}");
    }
}

#[tokio::test]
async fn reports_world_imports_and_exports() {
    let sb = Sandbox::new();
    let hello = sb.load(art::HELLO).await;
    assert_eq!(hello.shape.world, World::Tool);
    assert!(hello.shape.exports.iter().any(|e| e == "handle"));
    assert!(!hello.shape.imports.iter().any(|i| i.contains("documents")), "{:?}", hello.shape.imports);
    let counter = sb.load(art::COUNTER).await;
    assert_eq!(counter.shape.world, World::Agent);
    assert!(counter.shape.imports.iter().any(|i| i == "cortex:agent/documents@0.1.0"));
    // Components that import sockets and filesystem (as Python ones do) load fine.
    let hostile = sb.load(art::HOSTILE).await;
    assert!(hostile.shape.imports.iter().any(|i| i.starts_with("wasi:sockets/")), "{:?}", hostile.shape.imports);
    assert!(hostile.shape.imports.iter().any(|i| i.starts_with("wasi:filesystem/")));
}

#[tokio::test]
async fn second_load_comes_from_the_artifact_cache_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(art::HELLO).unwrap();
    let cache = dir.path().join("cache");
    {
        let rt = Runtime::new(engine_config(), Some(&cache)).unwrap();
        assert!(!rt.load(&bytes).await.unwrap().from_cache);
    }
    // A new runtime (as after a restart) with the same folder reuses the artifact.
    let rt = Runtime::new(engine_config(), Some(&cache)).unwrap();
    let m = rt.load(&bytes).await.unwrap();
    assert!(m.from_cache);

    // A corrupted artifact is never deserialized: it is recompiled and still runs.
    let artifact = walk(&cache).into_iter().find(|p| p.extension().is_some_and(|e| e == "cwasm")).unwrap();
    let mut raw = std::fs::read(&artifact).unwrap();
    let mid = raw.len() / 2;
    raw[mid] ^= 0xff;
    std::fs::write(&artifact, &raw).unwrap();
    let rt = Runtime::new(engine_config(), Some(&cache)).unwrap();
    let m = rt.load(&bytes).await.unwrap();
    assert!(!m.from_cache);
    let sb = Sandbox::new();
    let r = rt.invoke(&m, &sb.agent("t", "a"), &limits(), b"cache").await;
    assert_eq!(text(&r), "Hello, cache!");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() { out.extend(walk(&p)) } else { out.push(p) }
    }
    out
}
