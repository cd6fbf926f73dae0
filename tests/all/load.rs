//! Each class of bad component is refused at load with a typed reason; good ones are cached.
//! Compile bombs are refused by static bounds, or stopped by the compile child's limits.

use std::time::Duration;

use cortex_artifacts::{self as art, bombs};
use cortex_host::runtime::{CompileConfig, EngineConfig, LoadError, Runtime, World};

use crate::common::{Sandbox, assert_children_gone, compile_config, engine_config, limits, text, watching_children};

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
    // It was compiled, then refused: its artifact is not kept.
    assert!(walk(&sb.dir.path().join("cache")).iter().all(|p| p.extension().is_none_or(|e| e != "cwasm")));
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

/// A runtime whose compile bounds are `compile` (timeout `timeout`), nothing else changed.
fn bounded(dir: &std::path::Path, timeout: Duration, compile: CompileConfig) -> Runtime {
    let cfg = EngineConfig { compile_timeout: timeout, compile, ..engine_config() };
    Runtime::new(cfg, Some(&dir.join("cache"))).unwrap()
}

/// Load `bytes` on `rt` while watching for the compile child; returns the refusal and the
/// pids of the children seen while it ran.
async fn refuse_watching(rt: &Runtime, bytes: &[u8]) -> (LoadError, Vec<u32>) {
    match watching_children(rt.load(bytes)).await {
        (Ok(m), _) => panic!("expected a refusal, loaded {m:?}"),
        (Err(e), seen) => (e, seen),
    }
}

/// A runtime with the test's compile bounds, on a cache that already holds `hello` (compiled
/// with the default bounds), so that checking it still serves depends on no bound.
async fn bounded_with_hello(dir: &std::path::Path, timeout: Duration, compile: CompileConfig) -> Runtime {
    let hello = std::fs::read(art::HELLO).unwrap();
    Runtime::new(engine_config(), Some(&dir.join("cache"))).unwrap().load(&hello).await.unwrap();
    bounded(dir, timeout, compile)
}

/// Nothing of a refused compile is left, and the same runtime still admits and runs a
/// good component.
async fn assert_stopped_and_serving(rt: &Runtime, seen: &[u32]) {
    assert_children_gone(seen);
    let hello = rt.load(&std::fs::read(art::HELLO).unwrap()).await.unwrap();
    assert!(hello.from_cache);
    let sb = Sandbox::new();
    assert_eq!(text(&rt.invoke(&hello, &sb.agent("t", "a"), &limits(), b"after").await), "Hello, after!");
}

#[tokio::test]
async fn obvious_compile_bombs_are_refused_before_compiling() {
    let sb = Sandbox::new();
    // Over the default 10,000 locals in one function.
    let e = refuse(&sb, &bombs::component(&[bombs::body(20_000, &[])])).await;
    assert_eq!(e.code(), "too_many_locals", "{e}");
    assert!(e.to_string().contains("20000 locals, over the limit of 10000"), "{e}");
    // One function over the default 2 MiB.
    let e = refuse(&sb, &bombs::long_function(3 << 20)).await;
    assert_eq!(e.code(), "function_too_large", "{e}");
    assert!(e.to_string().contains("over the limit of 2097152"), "{e}");
    // Nothing was compiled, so nothing was cached.
    assert!(walk(&sb.dir.path().join("cache")).iter().all(|p| p.extension().is_none_or(|e| e != "cwasm")));

    // Total code and function count, with limits of the test's choosing.
    let dir = tempfile::tempdir().unwrap();
    let compile = CompileConfig { max_functions: 10, max_code_bytes: 1000, ..compile_config() };
    let rt = bounded(dir.path(), Duration::from_secs(600), compile);
    let e = rt.load(&bombs::component(&vec![bombs::body(0, &[]); 11])).await.unwrap_err();
    assert_eq!(e.code(), "too_many_functions", "{e}");
    let e =
        rt.load(&bombs::component(&[bombs::body(0, &[0x01; 600]), bombs::body(0, &[0x01; 600])])).await.unwrap_err();
    assert_eq!(e.code(), "code_too_large", "{e}");
}

#[tokio::test]
async fn a_compile_over_its_time_bound_is_refused_and_its_child_killed() {
    // Within every static bound (40 KB, 4,000 locals), but about 40 million values to
    // compile: far beyond 300 ms. Memory is out of reach, so only the time bound can trip.
    let bomb = bombs::quadratic(4_000, 10_000);
    let dir = tempfile::tempdir().unwrap();
    let compile = CompileConfig { memory_bytes: 64 << 30, ..compile_config() };
    let rt = bounded_with_hello(dir.path(), Duration::from_millis(300), compile).await;
    let (e, seen) = refuse_watching(&rt, &bomb).await;
    assert_eq!(e.code(), "compile_timeout", "{e}");
    assert_stopped_and_serving(&rt, &seen).await;
}

#[tokio::test]
async fn a_compile_over_its_memory_bound_is_refused_and_its_child_gone() {
    // Within every static bound (400 KB, 4,000 locals), but its compilation needs about
    // 2 GB; time is out of reach, so only the 512 MiB memory bound can trip.
    let bomb = bombs::locals_across_blocks(4_000, 40_000);
    let dir = tempfile::tempdir().unwrap();
    let compile = CompileConfig { memory_bytes: 512 << 20, ..compile_config() };
    let rt = bounded_with_hello(dir.path(), Duration::from_secs(3600), compile).await;
    let (e, seen) = refuse_watching(&rt, &bomb).await;
    assert_eq!(e.code(), "compile_memory", "{e}");
    assert_stopped_and_serving(&rt, &seen).await;
}
