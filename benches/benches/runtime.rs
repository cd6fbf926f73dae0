//! Runtime benchmarks, each against a baseline measured in the same run:
//!
//! (a) instantiate + `handle` + drop of `hello` through Cortex vs bare wasmtime with the same
//!     engine config;
//! (b) one `documents.get` round trip from the guest (N gets minus zero gets, divided by N);
//! (c) a CPU-bound and a memory-bound guest with fuel and epochs on, each alone, and off.
//!
//! Ratios are printed at the end (`== ratios`). Run: `cargo bench -p cortex-benches`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cortex_artifacts as art;
use cortex_host::capabilities::AgentError;
use cortex_host::runtime::{AgentContext, CompileConfig, EngineConfig, Limits, Module, Runtime, wasmtime_config};
use cortex_host::store::{DocumentStore, EmbeddedStore, Scope};
use criterion::{Criterion, criterion_group, criterion_main};
use wasmtime::component::{Component, ComponentExportIndex, InstancePre, Linker, ResourceTable};
use wasmtime::{Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

/// Mean time per iteration of each measured case, for the ratio table.
static MEANS: Mutex<BTreeMap<String, (Duration, u64)>> = Mutex::new(BTreeMap::new());

fn record(name: &str, total: Duration, iters: u64) {
    let mut m = MEANS.lock().unwrap_or_else(|e| e.into_inner());
    let e = m.entry(name.to_owned()).or_default();
    e.0 += total;
    e.1 += iters;
}

fn mean(name: &str) -> Option<f64> {
    let m = MEANS.lock().unwrap_or_else(|e| e.into_inner());
    m.get(name).map(|(t, n)| t.as_secs_f64() / *n as f64)
}

fn tokio() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn engine_config() -> EngineConfig {
    // A bench harness cannot be its own compile child: this crate's `cortex-bench-compile` is.
    let compile =
        CompileConfig { program: Some(env!("CARGO_BIN_EXE_cortex-bench-compile").into()), ..Default::default() };
    EngineConfig { max_instances: 64, compile, ..EngineConfig::default() }
}

struct Cortex {
    runtime: Runtime,
    agent: AgentContext,
    _dir: tempfile::TempDir,
}

impl Cortex {
    fn new(rt: &tokio::runtime::Runtime, cfg: EngineConfig) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let runtime = Runtime::new(cfg, None).unwrap();
        let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        rt.block_on(store.put(&Scope::new("bench", "bench"), "c", "k", r#"{"n":1}"#, None)).unwrap();
        let agent = AgentContext::new("bench", "bench", Default::default(), store);
        Self { runtime, agent, _dir: dir }
    }

    fn load(&self, rt: &tokio::runtime::Runtime, path: &str) -> Arc<Module> {
        rt.block_on(self.runtime.load(&std::fs::read(path).unwrap())).unwrap()
    }

    async fn run(&self, m: &Module, limits: &Limits, input: &[u8]) {
        let r = self.runtime.invoke(m, &self.agent, limits, input).await;
        assert!(r.outcome.is_ok(), "{}", r.outcome);
    }
}

/// Bare wasmtime: same engine config, WASI linked, nothing else.
struct Bare {
    wasi: WasiCtx,
    table: ResourceTable,
}

impl WasiView for Bare {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

fn bare_pre(path: &str) -> (Engine, InstancePre<Bare>, ComponentExportIndex) {
    let engine = Engine::new(&wasmtime_config(&engine_config())).unwrap();
    let component = Component::from_file(&engine, path).unwrap();
    let mut linker = Linker::<Bare>::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).unwrap();
    linker.define_unknown_imports_as_traps(&component).unwrap();
    let pre = linker.instantiate_pre(&component).unwrap();
    let handle = component.get_export_index(None, "handle").unwrap();
    (engine, pre, handle)
}

async fn bare_call(engine: &Engine, pre: &InstancePre<Bare>, handle: &ComponentExportIndex, input: &[u8]) {
    let mut store = Store::new(engine, Bare { wasi: WasiCtxBuilder::new().build(), table: ResourceTable::new() });
    store.set_fuel(u64::MAX / 2).unwrap();
    store.set_epoch_deadline(u64::MAX / 2);
    let instance = pre.instantiate_async(&mut store).await.unwrap();
    let f = instance.get_typed_func::<(&[u8],), (Result<Option<Vec<u8>>, AgentError>,)>(&mut store, handle).unwrap();
    let (r,) = f.call_async(&mut store, (input,)).await.unwrap();
    assert!(r.is_ok());
}

fn timed<F: std::future::Future<Output = ()>>(
    rt: &tokio::runtime::Runtime,
    name: &str,
    iters: u64,
    mut f: impl FnMut() -> F,
) -> Duration {
    let total = rt.block_on(async {
        let start = Instant::now();
        for _ in 0..iters {
            f().await;
        }
        start.elapsed()
    });
    record(name, total, iters);
    total
}

fn invoke_hello(c: &mut Criterion) {
    let rt = tokio();
    let cortex = Cortex::new(&rt, engine_config());
    let hello = cortex.load(&rt, art::HELLO);
    let limits = Limits::default();
    let (engine, pre, handle) = bare_pre(art::HELLO);
    let mut g = c.benchmark_group("a_invoke_hello");
    g.bench_function("bare_wasmtime", |b| {
        b.iter_custom(|n| timed(&rt, "a/bare", n, || bare_call(&engine, &pre, &handle, b"bench")))
    });
    g.bench_function("cortex", |b| {
        b.iter_custom(|n| timed(&rt, "a/cortex", n, || cortex.run(&hello, &limits, b"bench")))
    });
    g.finish();
}

const GETS: u32 = 1000;

fn documents_get(c: &mut Criterion) {
    let rt = tokio();
    let cortex = Cortex::new(&rt, engine_config());
    let kv = cortex.load(&rt, art::KV);
    let limits = Limits { host_calls: u64::from(GETS) + 10, ..Limits::default() };
    let zero = b"getn:0:c/k".to_vec();
    let many = format!("getn:{GETS}:c/k").into_bytes();
    let mut g = c.benchmark_group("b_documents_get");
    g.bench_function("getn_0", |b| b.iter_custom(|n| timed(&rt, "b/zero", n, || cortex.run(&kv, &limits, &zero))));
    g.bench_function(format!("getn_{GETS}"), |b| {
        b.iter_custom(|n| timed(&rt, "b/many", n, || cortex.run(&kv, &limits, &many)))
    });
    g.finish();
}

fn limits_cost(c: &mut Criterion) {
    let rt = tokio();
    let variants = [("none", false, false), ("fuel", true, false), ("epoch", false, true), ("both", true, true)];
    let mut g = c.benchmark_group("c_limits");
    g.sample_size(20);
    for (label, fuel, epoch) in variants {
        let cortex =
            Cortex::new(&rt, EngineConfig { fuel_metering: fuel, epoch_interruption: epoch, ..engine_config() });
        let compute = cortex.load(&rt, art::COMPUTE);
        let limits = Limits { fuel: u64::MAX / 2, timeout: Duration::from_secs(60), ..Limits::default() };
        for (kind, input) in [("cpu", &b"cpu:20000"[..]), ("mem", &b"mem:10"[..])] {
            let key = format!("c/{kind}/{label}");
            g.bench_function(format!("{kind}_{label}"), |b| {
                b.iter_custom(|n| timed(&rt, &key, n, || cortex.run(&compute, &limits, input)))
            });
        }
    }
    g.finish();
}

fn ratios(_c: &mut Criterion) {
    let us = |s: f64| s * 1e6;
    println!("\n== ratios (same run; lower is better)");
    if let (Some(c), Some(b)) = (mean("a/cortex"), mean("a/bare")) {
        println!("(a) hello invoke: cortex {:.1} us, bare wasmtime {:.1} us, ratio {:.2}", us(c), us(b), c / b);
    }
    if let (Some(m), Some(z)) = (mean("b/many"), mean("b/zero")) {
        println!("(b) documents.get round trip: {:.2} us per get", us((m - z) / f64::from(GETS)));
    }
    for kind in ["cpu", "mem"] {
        let Some(none) = mean(&format!("c/{kind}/none")) else { continue };
        let parts: Vec<String> = ["fuel", "epoch", "both"]
            .iter()
            .filter_map(|l| mean(&format!("c/{kind}/{l}")).map(|v| format!("{l} {:.2}x", v / none)))
            .collect();
        println!("(c) {kind}-bound guest, relative to no limits ({:.0} us): {}", us(none), parts.join(", "));
    }
}

criterion_group!(benches, invoke_hello, documents_get, limits_cost, ratios);
criterion_main!(benches);
