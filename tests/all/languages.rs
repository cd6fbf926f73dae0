//! Agents written in Python, JavaScript, TypeScript, Go and C (plugins/{python,js,go,c}),
//! built from source by scripts/build-languages.sh and run through the same load path as
//! the Rust agents: each is admitted, invoked concurrently (its compare-and-swap counter
//! ends exact), has its WASI attempts denied with errors it sees, and loads from the
//! compiled-artifact cache after a restart.
//!
//! A missing toolchain fails the test with the command that installs it
//! (scripts/install-language-toolchains.sh); it never skips.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cortex_host::runtime::{EngineConfig, Limits, Runtime};
use cortex_host::store::{DocumentStore, Scope};

use crate::common::{Sandbox, engine_config, limits, text};

/// Language components are large (Python 18 MB, JavaScript 12 MB): generous limits.
fn lang_limits() -> Limits {
    Limits { memory_bytes: 256 << 20, timeout: Duration::from_secs(30), fuel: 20_000_000_000, ..limits() }
}

/// Builds one language's counter agent (incremental; the script takes a file lock, so
/// test processes running side by side build each language once) and returns its path.
fn build(lang: &str) -> PathBuf {
    build_target(lang, &format!("{lang}-counter.wasm"))
}

/// Builds the script's target `lang` (a language, or an example such as `js-model`) and
/// returns the path of its component `file` in the script's output folder.
pub(crate) fn build_target(lang: &str, file: &str) -> PathBuf {
    static IN_PROCESS: Mutex<()> = Mutex::new(());
    let _guard = IN_PROCESS.lock().unwrap_or_else(|e| e.into_inner());
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    // <target>/tmp -> <target>/cortex-languages, where the script puts it by default too.
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().unwrap().join("cortex-languages");
    let script = root.join("scripts/build-languages.sh");
    let started = Instant::now();
    let result = Command::new("bash").arg(&script).arg("--out").arg(&out).arg(lang).current_dir(root).output();
    let output = match result {
        Ok(o) => o,
        Err(e) => panic!("cannot run {}: {e}", script.display()),
    };
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "building the {lang} agent failed ({}):\n{stderr}\n\
         If a toolchain is missing, install them all with: scripts/install-language-toolchains.sh",
        output.status
    );
    eprintln!("{lang}: build step {:?}: {}", started.elapsed(), stderr.trim());
    out.join(file)
}

/// The tests' engine, with room for compiling 12-18 MB components while other tests
/// compile theirs on a loaded 2-core machine (up to ~70 s seen; the default bound is 120 s).
fn lang_engine_config() -> EngineConfig {
    EngineConfig { compile_timeout: Duration::from_secs(600), ..engine_config() }
}

/// A `Sandbox` (real store in a temp dir) whose runtime uses `lang_engine_config`.
fn sandbox() -> Sandbox {
    let Sandbox { store, dir, .. } = Sandbox::new();
    let runtime = Runtime::new(lang_engine_config(), Some(&dir.path().join("cache"))).unwrap();
    Sandbox { runtime, store, dir }
}

async fn check_language(lang: &str) {
    let path = build(lang);
    let bytes = std::fs::read(&path).unwrap();
    let sb = Arc::new(sandbox());

    // Admission: the same load path as a Rust agent; imports only WASI and our package.
    let started = Instant::now();
    let m = match sb.runtime.load(&bytes).await {
        Ok(m) => m,
        Err(e) => panic!("{lang}: loading {} failed: [{}] {e}", path.display(), e.code()),
    };
    eprintln!("{lang}: {} bytes, first load {:?}", bytes.len(), started.elapsed());
    assert!(!m.from_cache);
    for import in &m.shape.imports {
        assert!(
            import.starts_with("wasi:") || import.starts_with("cortex:agent/"),
            "{lang}: unexpected import {import}"
        );
        assert!(!import.contains("/graph@") && !import.contains("/messaging@"), "{lang}: imports {import}");
    }

    // 4 tasks x 10 invocations of the compare-and-swap counter end at exactly 40, every
    // value seen once.
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (sb, m) = (sb.clone(), m.clone());
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..10 {
                let r = sb.invoke(&m, "hits", &lang_limits()).await;
                seen.push(text(&r).parse::<u64>().unwrap());
                assert!(
                    r.logs.records.iter().any(|l| l.message == "counted"),
                    "the agent logs through cortex:agent/runtime: {:?}",
                    r.logs.records
                );
            }
            seen
        }));
    }
    let mut all = BTreeSet::new();
    for t in tasks {
        for v in t.await.unwrap() {
            assert!(all.insert(v), "{lang}: value {v} was returned twice: a lost update");
        }
    }
    assert_eq!(all, (1..=40).collect::<BTreeSet<u64>>(), "{lang}");
    // Empty input counts under "default"; the stored document is a JSON number.
    assert_eq!(text(&sb.invoke(&m, "", &lang_limits()).await), "1");
    let doc = sb.store.get(&Scope::new("t1", "a1"), "counters", "hits").await.unwrap().unwrap();
    assert_eq!((doc.value.as_str(), doc.revision), ("40", 40), "{lang}: one revision per increment");

    // WASI attempts are denied at run time with an error the agent sees, not a trap.
    let r = sb.invoke(&m, "probe-wasi", &lang_limits()).await;
    let probe = text(&r);
    eprintln!("{lang}: probe-wasi -> {probe}");
    assert!(!probe.contains("allowed"), "{lang}: {probe}");
    assert!(probe.contains("file: denied") || probe.contains("file: unreachable"), "{lang}: {probe}");
    assert!(probe.contains("socket: denied") || probe.contains("socket: unreachable"), "{lang}: {probe}");

    // A restart: a new runtime on the same cache folder loads the compiled code from the
    // cache (milliseconds, not the seconds of a compile) and the counter goes on.
    let restarted = Runtime::new(lang_engine_config(), Some(&sb.dir.path().join("cache"))).unwrap();
    let started = Instant::now();
    let cached = restarted.load(&bytes).await.unwrap();
    eprintln!("{lang}: cached load after restart {:?}", started.elapsed());
    assert!(cached.from_cache, "{lang}: second load in a new runtime did not come from the cache");
    let r = restarted.invoke(&cached, &sb.agent("t1", "a1"), &lang_limits(), b"hits").await;
    assert_eq!(text(&r), "41", "{lang}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn python_agent_counts_exactly_is_denied_wasi_and_loads_from_cache() {
    check_language("python").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn javascript_agent_counts_exactly_is_denied_wasi_and_loads_from_cache() {
    check_language("js").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn typescript_agent_counts_exactly_is_denied_wasi_and_loads_from_cache() {
    check_language("ts").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn go_agent_counts_exactly_is_denied_wasi_and_loads_from_cache() {
    check_language("go").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn c_agent_counts_exactly_is_denied_wasi_and_loads_from_cache() {
    check_language("c").await;
}
