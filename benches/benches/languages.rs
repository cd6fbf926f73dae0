//! Language agents (plugins/{python,js,go,c}, built by scripts/build-languages.sh) next to
//! the Rust counter: per language, the component's size, the first load (compile), the
//! cached load (a new `Runtime` on the same cache folder, as after a restart) and the
//! cost of one invocation of the counter (fresh instance, a get and a compare-and-swap
//! put, a log record). Prints a Markdown table (also written to
//! `<target>/cortex-languages/bench.md`).
//!
//! Run: `cargo bench -p cortex-benches --bench languages`; only some languages:
//! `CORTEX_BENCH_LANGS=python,c cargo bench -p cortex-benches --bench languages`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cortex_artifacts as art;
use cortex_host::runtime::{AgentContext, CompileConfig, EngineConfig, Limits, Runtime};

/// The default engine; a bench harness cannot be its own compile child: this crate's
/// `cortex-bench-compile` is.
fn engine_config() -> EngineConfig {
    let compile =
        CompileConfig { program: Some(env!("CARGO_BIN_EXE_cortex-bench-compile").into()), ..Default::default() };
    EngineConfig { compile, ..EngineConfig::default() }
}
use cortex_host::store::EmbeddedStore;

const LANGS: [&str; 6] = ["rust", "python", "js", "ts", "go", "c"];

fn out_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).parent().unwrap().join("cortex-languages")
}

/// The component of `lang`, built from source if needed (Rust: tests/artifacts).
fn component(lang: &str) -> PathBuf {
    if lang == "rust" {
        return PathBuf::from(art::COUNTER);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let status = Command::new("bash")
        .arg(root.join("scripts/build-languages.sh"))
        .arg("--out")
        .arg(out_dir())
        .arg(lang)
        .current_dir(root)
        .status()
        .unwrap();
    assert!(status.success(), "building {lang} failed; install toolchains with scripts/install-language-toolchains.sh");
    out_dir().join(format!("{lang}-counter.wasm"))
}

fn limits() -> Limits {
    Limits { memory_bytes: 256 << 20, timeout: Duration::from_secs(30), fuel: 20_000_000_000, ..Limits::default() }
}

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if ms >= 100.0 { format!("{ms:.0} ms") } else { format!("{ms:.2} ms") }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

struct Row {
    lang: String,
    size: usize,
    first: Duration,
    cached: Duration,
    invoke: Duration,
    invoke_p90: Duration,
}

fn measure(rt: &tokio::runtime::Runtime, lang: &str) -> Row {
    let path = component(lang);
    let bytes = std::fs::read(&path).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let store = Arc::new(EmbeddedStore::open(&dir.path().join("store")).unwrap());
    let agent = AgentContext::new("bench", "bench", Default::default(), store);

    // First load: compile (and write the cache).
    let runtime = Runtime::new(engine_config(), Some(&cache)).unwrap();
    let t = Instant::now();
    let m = rt.block_on(runtime.load(&bytes)).unwrap();
    let first = t.elapsed();
    assert!(!m.from_cache);
    drop((m, runtime));

    // Cached load: a new runtime on the same cache folder, three times.
    let mut cached = Vec::new();
    let mut last = None;
    for _ in 0..3 {
        let runtime = Runtime::new(engine_config(), Some(&cache)).unwrap();
        let t = Instant::now();
        let m = rt.block_on(runtime.load(&bytes)).unwrap();
        cached.push(t.elapsed());
        assert!(m.from_cache, "{lang}: not loaded from the cache");
        last = Some((runtime, m));
    }
    let (runtime, m) = last.unwrap();

    // Per invocation: warm up, then time each call of the counter.
    let n = if bytes.len() > 1 << 20 { 30 } else { 200 };
    for _ in 0..3 {
        assert!(rt.block_on(runtime.invoke(&m, &agent, &limits(), b"warm")).outcome.is_ok());
    }
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let r = rt.block_on(runtime.invoke(&m, &agent, &limits(), b"hits"));
        times.push(t.elapsed());
        assert!(r.outcome.is_ok(), "{lang}: {}", r.outcome);
    }
    times.sort();
    let invoke_p90 = times[n * 9 / 10];
    Row { lang: lang.into(), size: bytes.len(), first, cached: median(cached), invoke: median(times), invoke_p90 }
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let wanted = std::env::var("CORTEX_BENCH_LANGS").ok();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut rows = Vec::new();
    for lang in LANGS {
        if wanted.as_deref().is_some_and(|w| !w.split(',').any(|x| x.trim() == lang)) {
            continue;
        }
        eprintln!("languages: measuring {lang} ...");
        rows.push(measure(&rt, lang));
    }
    let mut table = String::new();
    writeln!(table, "| language | component | first load (compile) | cached load (restart) | invocation (median) | invocation (p90) |").unwrap();
    writeln!(table, "|---|---:|---:|---:|---:|---:|").unwrap();
    for r in &rows {
        writeln!(
            table,
            "| {} | {:.1} MB | {} | {} | {} | {} |",
            r.lang,
            r.size as f64 / 1e6,
            ms(r.first),
            ms(r.cached),
            ms(r.invoke),
            ms(r.invoke_p90)
        )
        .unwrap();
    }
    println!("\n== languages (EngineConfig::default(); invocation = fresh instance + get + CAS put + log)\n{table}");
    std::fs::create_dir_all(out_dir()).unwrap();
    std::fs::write(out_dir().join("bench.md"), &table).unwrap();
}
