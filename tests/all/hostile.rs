//! Hostile guests end with their typed outcome, within their limit, and the host goes on.

use std::time::Duration;

use cortex_artifacts as art;
use cortex_host::runtime::{AgentContext, FUEL_SLICE, Limits, Outcome, Report};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::{Sandbox, TICK, limits, text};
use crate::server::{Server, answer};

/// A benign invocation right after a hostile one must work in the same process.
async fn benign_still_works(sb: &Sandbox) {
    let hello = sb.load(art::HELLO).await;
    let r = sb.invoke(&hello, "after", &limits()).await;
    assert_eq!(text(&r), "Hello, after!");
}

/// Run `input` on the hostile agent and return the report, checking that it ended by its
/// deadline. Not a measure of speed: the slack is wide enough for a loaded machine, and
/// still tells an invocation cut at its deadline from one left to run its course.
async fn hostile(sb: &Sandbox, input: &str, limits: &Limits) -> Report {
    let m = sb.load(art::HOSTILE).await;
    let r = sb.invoke(&m, input, limits).await;
    let bound = limits.timeout + 20 * TICK;
    assert!(r.stats.wall_time <= bound, "{input}: took {:?}, over {bound:?} ({})", r.stats.wall_time, r.outcome);
    r
}

/// Run `input` on `bulk-memory` (plugins/wat/bulk-memory.wat).
async fn bulk(sb: &Sandbox, input: &str, limits: &Limits) -> Report {
    let m = sb.load(art::BULK_MEMORY).await;
    sb.invoke(&m, input, limits).await
}

/// Fuel `bulk-memory` burns before its `l`, `t` and `m` endings: 64 fills of 1 MiB, at
/// one unit a byte.
const BURNT: u64 = 64 << 20;

/// Fuel out of reach: a test of another limit never runs out of it.
const UNLIMITED_FUEL: u64 = u64::MAX / 2;

#[tokio::test]
async fn infinite_loop_runs_out_of_fuel() {
    let sb = Sandbox::new();
    let l = Limits { fuel: 50_000_000, ..limits() };
    let r = hostile(&sb, "loop", &l).await;
    assert_eq!(r.outcome, Outcome::FuelExhausted { limit: 50_000_000 });
    assert_eq!(r.stats.fuel_used, 50_000_000);
    benign_still_works(&sb).await;
}

#[tokio::test]
async fn infinite_loop_hits_the_deadline() {
    let sb = Sandbox::new();
    let l = Limits { fuel: UNLIMITED_FUEL, timeout: Duration::from_millis(300), ..limits() };
    let r = hostile(&sb, "loop", &l).await;
    assert_eq!(r.outcome, Outcome::DeadlineExceeded { limit_ms: 300 });
    assert!(r.stats.wall_time >= Duration::from_millis(300));
    benign_still_works(&sb).await;
}

#[tokio::test]
async fn a_deadline_from_outside_cuts_an_invocation_without_messaging() {
    // The agent's own limit is 10 s; its request must end in 300 ms. No messaging link:
    // the deadline is the invocation's own, not the link's, and the earliest wins.
    let sb = Sandbox::new();
    let m = sb.load(art::HOSTILE).await;
    let l = Limits { fuel: UNLIMITED_FUEL, ..limits() };
    let ctx =
        AgentContext { deadline: Some(std::time::Instant::now() + Duration::from_millis(300)), ..sb.agent("t1", "a1") };
    assert!(ctx.messaging.is_none());
    let r = sb.runtime.invoke(&m, &ctx, &l, b"loop").await;
    match r.outcome {
        Outcome::DeadlineExceeded { limit_ms } => assert!(limit_ms <= 300, "cut at {limit_ms} ms, not by the request"),
        other => panic!("expected deadline_exceeded, got {other}"),
    }
    // A deadline later than the agent's own limit does not lengthen it.
    let l = Limits { timeout: Duration::from_millis(300), ..l };
    let ctx = AgentContext { deadline: Some(std::time::Instant::now() + Duration::from_secs(60)), ..ctx };
    let r = sb.runtime.invoke(&m, &ctx, &l, b"loop").await;
    assert_eq!(r.outcome, Outcome::DeadlineExceeded { limit_ms: 300 });
    benign_still_works(&sb).await;
}

#[tokio::test]
async fn deadline_inside_a_host_call_does_not_panic() {
    // GHSA-xjhv-v822-pf94: dropping a call while the guest is blocked in a host call.
    let sb = Sandbox::new();
    let l = Limits { fuel: UNLIMITED_FUEL, timeout: Duration::from_millis(300), ..limits() };
    let r = hostile(&sb, "sleep:10000", &l).await;
    assert_eq!(r.outcome, Outcome::DeadlineExceeded { limit_ms: 300 });
    benign_still_works(&sb).await;
}

#[tokio::test]
async fn memory_bomb_hits_the_memory_limit() {
    let sb = Sandbox::new();
    let l = Limits { memory_bytes: 32 << 20, ..limits() };
    let r = hostile(&sb, "grow", &l).await;
    assert!(
        matches!(&r.outcome, Outcome::MemoryLimit { message } if message.contains("memory limit")),
        "{}",
        r.outcome
    );
    assert!(r.stats.peak_memory <= 32 << 20);
    assert!(r.stats.peak_memory > 16 << 20, "the bomb should get close to the limit first");
    benign_still_works(&sb).await;
}

#[tokio::test]
async fn huge_initial_memory_is_refused_at_instantiation() {
    let sb = Sandbox::new();
    let m = sb.load(art::HUGE_MEMORY).await;
    let r = sb.invoke(&m, "", &limits()).await;
    assert!(matches!(&r.outcome, Outcome::MemoryLimit { .. }), "{}", r.outcome);
    benign_still_works(&sb).await;
}

#[tokio::test]
async fn table_growth_hits_the_table_limit() {
    let sb = Sandbox::new();
    let m = sb.load(art::TABLE_GROW).await;
    let l = Limits { table_elements: 50_000, ..limits() };
    let r = sb.invoke(&m, "", &l).await;
    assert!(matches!(&r.outcome, Outcome::MemoryLimit { message } if message.contains("table")), "{}", r.outcome);
    benign_still_works(&sb).await;
}

#[tokio::test]
async fn deep_recursion_traps_with_stack_overflow() {
    let sb = Sandbox::new();
    let r = hostile(&sb, "recurse", &limits()).await;
    match &r.outcome {
        Outcome::Trap { kind, backtrace, .. } => {
            assert_eq!(kind, "stack_overflow");
            assert!(!backtrace.is_empty(), "a trap carries a wasm backtrace");
        }
        other => panic!("expected a stack overflow trap, got {other}"),
    }
    benign_still_works(&sb).await;
}

#[tokio::test]
async fn giant_output_is_refused() {
    let sb = Sandbox::new();
    let l = Limits { output_bytes: 1 << 20, ..limits() };
    let r = hostile(&sb, "big-output:2000000", &l).await;
    assert_eq!(r.outcome, Outcome::OutputTooLarge { size: 2_000_000, limit: 1 << 20 });
    // Just under the limit is fine.
    let r = hostile(&sb, &format!("big-output:{}", 1 << 20), &l).await;
    assert_eq!(r.outcome.output().map(<[u8]>::len), Some(1 << 20));
}

#[tokio::test]
async fn trap_and_panic_are_traps_with_a_reason() {
    let sb = Sandbox::new();
    let r = hostile(&sb, "trap", &limits()).await;
    assert!(
        matches!(&r.outcome, Outcome::Trap { kind, backtrace, .. } if kind == "unreachable" && !backtrace.is_empty()),
        "{}",
        r.outcome
    );
    let r = hostile(&sb, "panic", &limits()).await;
    match &r.outcome {
        Outcome::Trap { message, .. } => assert!(message.contains("hostile panic"), "{message}"),
        other => panic!("expected a trap, got {other}"),
    }
    benign_still_works(&sb).await;
}

#[tokio::test]
async fn host_call_flood_hits_the_host_call_limit() {
    let sb = Sandbox::new();
    let l = Limits { host_calls: 200, ..limits() };
    let r = hostile(&sb, "flood", &l).await;
    assert_eq!(r.outcome, Outcome::HostCallLimit { limit: 200 });
    assert_eq!(r.stats.host_calls, 200);
    benign_still_works(&sb).await;
}

#[tokio::test]
async fn oversized_key_and_value_are_refused_before_io() {
    let sb = Sandbox::new();
    let r = hostile(&sb, "oversize-key", &limits()).await;
    assert!(text(&r).starts_with("error:too-large:"), "{}", text(&r));
    let r = hostile(&sb, "oversize-value", &limits()).await;
    assert!(text(&r).starts_with("error:too-large:"), "{}", text(&r));
    // Nothing was written for either.
    let page = cortex_host::store::DocumentStore::list(
        sb.store.as_ref(),
        &cortex_host::store::Scope::new("t1", "a1"),
        "hostile",
        "",
        10,
        None,
    )
    .await
    .unwrap();
    assert!(page.documents.is_empty());
}

#[tokio::test]
async fn network_and_files_are_denied_with_errors_the_guest_sees() {
    let sb = Sandbox::new();
    let net = text(&hostile(&sb, "net", &limits()).await);
    assert!(net.contains("denied") && !net.contains("connected"), "{net}");
    let files = text(&hostile(&sb, "files", &limits()).await);
    assert!(files.contains("denied") && !files.contains("read"), "{files}");
}

#[tokio::test]
async fn stdout_is_captured_and_bounded() {
    let sb = Sandbox::new();
    let l = Limits { log_bytes: 1000, ..limits() };
    let r = hostile(&sb, "print:5000", &l).await;
    assert_eq!(text(&r), "printed");
    assert_eq!(r.logs.stdout.len(), 1000);
    assert!(r.logs.truncated);
}

#[tokio::test]
async fn runaway_guests_do_not_starve_benign_ones() {
    let sb = std::sync::Arc::new(Sandbox::new());
    let hostile = sb.load(art::HOSTILE).await;
    let hello = sb.load(art::HELLO).await;
    let runaway = Limits { fuel: UNLIMITED_FUEL, timeout: Duration::from_secs(1), ..limits() };
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (sb, m, l) = (sb.clone(), hostile.clone(), runaway.clone());
        tasks.push(tokio::spawn(async move { (false, sb.invoke(&m, "loop", &l).await) }));
    }
    for i in 0..16 {
        let (sb, m) = (sb.clone(), hello.clone());
        tasks.push(tokio::spawn(async move { (true, sb.invoke(&m, &format!("b{i}"), &limits()).await) }));
    }
    let (mut ok, mut stopped) = (0, 0);
    for t in tasks {
        let (benign, r) = t.await.unwrap();
        if benign {
            assert!(r.outcome.is_ok(), "benign invocation failed: {}", r.outcome);
            ok += 1;
        } else {
            assert_eq!(r.outcome.code(), "deadline_exceeded");
            stopped += 1;
        }
    }
    assert_eq!((ok, stopped), (16, 64));
}

#[tokio::test]
async fn memory_written_by_one_invocation_is_not_seen_by_the_next() {
    let sb = Sandbox::new();
    let m = sb.load(art::HOSTILE).await;
    // Sequential invocations reuse the same pool slots; every one must start from zeros.
    for i in 0..20 {
        let r = sb.invoke(&m, "probe", &limits()).await;
        assert_eq!(text(&r), "clean", "invocation {i} saw a previous invocation's memory");
    }
}

#[tokio::test]
async fn fuel_burnt_before_a_deadline_is_reported() {
    // Used to report the few hundred units burnt before `handle`'s loop (wasmtime loses
    // the count of a function that makes no call when it is interrupted).
    let sb = Sandbox::new();
    let l = Limits { fuel: UNLIMITED_FUEL, timeout: Duration::from_millis(300), ..limits() };
    let r = bulk(&sb, "l", &l).await;
    assert_eq!(r.outcome, Outcome::DeadlineExceeded { limit_ms: 300 });
    assert!(r.stats.fuel_used >= BURNT, "reported {} units, burnt at least {BURNT}", r.stats.fuel_used);
    benign_still_works(&sb).await;
}

#[tokio::test]
async fn fuel_burnt_before_a_trap_is_reported() {
    let sb = Sandbox::new();
    let l = Limits { fuel: UNLIMITED_FUEL, ..limits() };
    let r = bulk(&sb, "t", &l).await;
    assert!(matches!(&r.outcome, Outcome::Trap { kind, .. } if kind == "integer_division_by_zero"), "{}", r.outcome);
    assert!(r.stats.fuel_used >= BURNT, "reported {} units, burnt at least {BURNT}", r.stats.fuel_used);
    // Counted to within one slice: the burn and a few instructions around it.
    assert!(r.stats.fuel_used < BURNT + 2 * FUEL_SLICE, "reported {} units", r.stats.fuel_used);
}

#[tokio::test]
async fn fuel_burnt_before_the_memory_limit_is_reported() {
    let sb = Sandbox::new();
    let l = Limits { fuel: UNLIMITED_FUEL, memory_bytes: 64 << 20, ..limits() };
    let r = bulk(&sb, "m", &l).await;
    assert!(matches!(&r.outcome, Outcome::MemoryLimit { .. }), "{}", r.outcome);
    assert!(r.stats.fuel_used >= BURNT, "reported {} units, burnt at least {BURNT}", r.stats.fuel_used);
}

#[tokio::test]
async fn fuel_exhaustion_reports_the_whole_budget_used() {
    let sb = Sandbox::new();
    let l = Limits { fuel: BURNT / 2, ..limits() };
    let r = bulk(&sb, "l", &l).await;
    assert_eq!(r.outcome, Outcome::FuelExhausted { limit: BURNT / 2 });
    assert_eq!(r.stats.fuel_used, BURNT / 2);
}

#[tokio::test]
async fn one_memory_fill_past_the_deadline_is_never_ok() {
    // One `memory.fill` of 257 MiB cannot be interrupted and takes tens of milliseconds;
    // the deadline is 1 ms and fuel is out of reach. The guest returns `ok(none)` right
    // after the fill, with no check in between: the answer came after the deadline.
    let sb = Sandbox::new();
    let l = Limits { fuel: UNLIMITED_FUEL, memory_bytes: 512 << 20, timeout: Duration::from_millis(1), ..limits() };
    let r = bulk(&sb, "F", &l).await;
    assert_eq!(r.outcome, Outcome::DeadlineExceeded { limit_ms: 1 });
    // Given the time, the same fill is fine.
    let l = Limits { timeout: Duration::from_secs(60), ..l };
    let r = bulk(&sb, "F", &l).await;
    assert_eq!(r.outcome, Outcome::Ok { output: None });
    // It was charged one unit of fuel a byte.
    assert!(r.stats.fuel_used >= 257 << 20, "reported {} units", r.stats.fuel_used);
    benign_still_works(&sb).await;
}

#[tokio::test]
async fn exit_0_is_ok_and_a_failed_exit_is_an_exit_outcome() {
    let sb = Sandbox::new();
    let r = hostile(&sb, "exit:0", &limits()).await;
    assert_eq!(r.outcome, Outcome::Ok { output: None });
    assert_eq!(r.logs.stdout, b"exiting\n");
    let r = hostile(&sb, "exit:3", &limits()).await;
    // WASI 0.2 `exit` carries success or failure only: `std::process::exit(3)` in a
    // `wasm32-wasip2` guest arrives as failure, code 1.
    assert_eq!(r.outcome, Outcome::Exit { code: 1 });
    assert_eq!(r.outcome.code(), "exit");
    assert_eq!(r.logs.stdout, b"exiting\n");
    benign_still_works(&sb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http_an_exit_is_204_or_422_and_the_fuel_header_counts_a_runaway() {
    // Fuel out of reach of the deadline below: the quota's default highest fuel (10 billion)
    // is burnt by a loop in about a second on a fast machine.
    let s = Server::start_with(|c| c.quotas.max_fuel = UNLIMITED_FUEL).await;
    let dev = s.developer_in("t").await;
    let hostile = s.upload(&dev, art::HOSTILE).await;
    s.deploy(&dev, "hostile", &hostile, json!({})).await;
    let (status, body) = s.invoke(&dev, "hostile", "exit:0").await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let r = answer(s.req(Method::POST, "/v1/agents/hostile/invoke", &dev).body("exit:3").send().await.unwrap()).await;
    assert_eq!((r.status, r.code.as_str()), (StatusCode::UNPROCESSABLE_ENTITY, "exit"), "{}", r.text);

    let bulk = s.upload(&dev, art::BULK_MEMORY).await;
    s.deploy_with(&dev, "bulk", &bulk, json!({ "limits": { "timeout_ms": 300, "fuel": UNLIMITED_FUEL } })).await;
    let r = s.req(Method::POST, "/v1/agents/bulk/invoke", &dev).body("l").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::GATEWAY_TIMEOUT);
    let header = |n: &str| r.headers().get(n).and_then(|v| v.to_str().ok()).map(str::to_owned).unwrap_or_default();
    assert_eq!(header("x-cortex-outcome"), "deadline_exceeded");
    let used: u64 = header("x-cortex-fuel").parse().unwrap();
    assert!(used >= BURNT, "x-cortex-fuel: {used}, burnt at least {BURNT}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agents_log_ring_is_bounded_in_bytes() {
    let s = Server::start_with(|c| c.http.log_ring_bytes = 128 << 10).await;
    let dev = s.developer_in("t").await;
    let hostile = s.upload(&dev, art::HOSTILE).await;
    s.deploy(&dev, "hostile", &hostile, json!({})).await;
    // Ten lines of 60,000 bytes (each within the invocation's own 64 KiB log limit).
    for _ in 0..10 {
        assert_eq!(s.invoke_ok(&dev, "hostile", "print:60000").await, "printed");
    }
    let logs = s.get_json(&dev, "/v1/agents/hostile/logs?limit=1000").await;
    let lines = logs.as_array().unwrap();
    let bytes: usize = lines.iter().filter_map(|l| l["message"].as_str()).map(str::len).sum();
    assert_eq!(lines.len(), 2, "two lines of 60,000 bytes fit in 128 KiB, not three: {} lines", lines.len());
    assert!(bytes <= 128 << 10, "{bytes} bytes");
    // The newest lines are the ones kept.
    let seqs: Vec<u64> = lines.iter().filter_map(|l| l["seq"].as_u64()).collect();
    assert_eq!(seqs, [9, 10], "{:?}", lines.iter().map(|l| &l["seq"]).collect::<Vec<&Value>>());
}
