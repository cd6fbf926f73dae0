//! Hostile guests end with their typed outcome, within their limit, and the host goes on.

use std::time::Duration;

use cortex_artifacts as art;
use cortex_host::runtime::{Limits, Outcome};

use crate::common::{Sandbox, TICK, limits, text};

/// A benign invocation right after a hostile one must work in the same process.
async fn benign_still_works(sb: &Sandbox) {
    let hello = sb.load(art::HELLO).await;
    let r = sb.invoke(&hello, "after", &limits()).await;
    assert_eq!(text(&r), "Hello, after!");
}

/// Run `input` on the hostile agent and return the report, checking the wall-clock bound.
async fn hostile(sb: &Sandbox, input: &str, limits: &Limits) -> cortex_host::runtime::Report {
    let m = sb.load(art::HOSTILE).await;
    let r = sb.invoke(&m, input, limits).await;
    let bound = limits.timeout + 2 * TICK;
    assert!(r.stats.wall_time <= bound, "{input}: took {:?}, over {bound:?} ({})", r.stats.wall_time, r.outcome);
    r
}

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
    let l = Limits { fuel: u64::MAX / 2, timeout: Duration::from_millis(300), ..limits() };
    let r = hostile(&sb, "loop", &l).await;
    assert_eq!(r.outcome, Outcome::DeadlineExceeded { limit_ms: 300 });
    assert!(r.stats.wall_time >= Duration::from_millis(300));
    benign_still_works(&sb).await;
}

#[tokio::test]
async fn deadline_inside_a_host_call_does_not_panic() {
    // GHSA-xjhv-v822-pf94: dropping a call while the guest is blocked in a host call.
    let sb = Sandbox::new();
    let l = Limits { timeout: Duration::from_millis(300), ..limits() };
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
    let runaway = Limits { fuel: u64::MAX / 2, timeout: Duration::from_secs(1), ..limits() };
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
