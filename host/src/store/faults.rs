//! A store wrapper that injects faults, for cluster tests: added latency, transient errors
//! before a call reaches the store, responses lost after a write committed, a network
//! partition and a paused process. Each [`Faulty`] has its own [`FaultControls`], so nodes
//! sharing one inner store each get their own faults; a test switches them at run time
//! through the cheap handle [`Faulty::controls`].
//!
//! Every call goes through one gate, in this order: it is counted, waits while the wrapper
//! is paused, sleeps the added latency, then fails at once while partitioned or when the
//! error [`Rate`] picks it (nothing reaches the inner store). Otherwise the inner store
//! answers; a write it applied may then be answered with an error instead (the response
//! "lost" after the commit) when the drop [`Rate`] picks it. Injected errors are
//! [`StoreError::Backend`] with `transient: true` and a message starting `injected fault`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;

use futures_util::future::BoxFuture;

use super::wrapper::{Call, Wrapper, WrapsDocuments, WrapsFeed, WrapsGraph, WrapsRecords};
use super::{Result, Store, StoreError};

/// Which calls a fault picks.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Rate {
    /// None.
    #[default]
    Never,
    /// Every call.
    Always,
    /// Every `k`-th eligible call (the k-th, 2k-th, ...; counted from when the rate was
    /// set). `Every(0)` picks none.
    Every(u64),
    /// Each eligible call with probability `fraction` (0.0..=1.0), drawn from an RNG seeded
    /// with the plan's [`FaultPlan::seed`]: the same calls in the same order pick the same.
    Fraction(f64),
}

/// Added latency before every call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Latency {
    /// The least added.
    pub min: Duration,
    /// The most added (uniform between `min` and `max`, from the seeded RNG).
    pub max: Duration,
}

impl Latency {
    /// Always `d`.
    pub fn fixed(d: Duration) -> Self {
        Self { min: d, max: d }
    }

    /// Uniform in `min..=max`.
    pub fn range(min: Duration, max: Duration) -> Self {
        Self { min, max: max.max(min) }
    }
}

/// Every fault of a wrapper at once (see [`FaultControls::set_plan`]); the default is none.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FaultPlan {
    /// Latency added to every call.
    pub latency: Option<Latency>,
    /// Calls failed before they reach the store (reads and writes).
    pub errors: Rate,
    /// Writes applied, then answered with an error (counted among successful writes).
    pub drop_after_commit: Rate,
    /// Every call fails at once, `wait_for` too (even one already waiting).
    pub partitioned: bool,
    /// Every call waits until resumed.
    pub paused: bool,
    /// Seed of the RNG behind [`Rate::Fraction`] and latency ranges.
    pub seed: u64,
}

/// What a wrapper has done, for assertions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultStats {
    /// Calls made through the wrapper.
    pub calls: u64,
    /// Calls answered with an injected error before reaching the store (errors and
    /// partition).
    pub injected_errors: u64,
    /// Writes applied by the store, then answered with an injected error.
    pub dropped_after_commit: u64,
}

#[derive(Clone, Copy, Default)]
struct Switches {
    paused: bool,
    partitioned: bool,
}

struct Picks {
    latency: Option<Latency>,
    errors: Rate,
    drops: Rate,
    /// Eligible calls seen since `errors` was set.
    error_n: u64,
    /// Successful writes seen since `drops` was set.
    drop_n: u64,
    rng: u64,
}

impl Picks {
    /// splitmix64: small, seedable, good enough for picking calls.
    fn next(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn pick(&mut self, error: bool) -> bool {
        let (rate, n) = if error { (self.errors, &mut self.error_n) } else { (self.drops, &mut self.drop_n) };
        *n += 1;
        let n = *n;
        match rate {
            Rate::Never => false,
            Rate::Always => true,
            Rate::Every(k) => k != 0 && n.is_multiple_of(k),
            Rate::Fraction(f) => self.unit() < f,
        }
    }

    fn latency(&mut self) -> Option<Duration> {
        let l = self.latency?;
        let span = l.max.saturating_sub(l.min).as_nanos();
        if span == 0 {
            return Some(l.min);
        }
        let extra = u64::try_from(u128::from(self.next()) % (span + 1)).unwrap_or(0);
        Some(l.min + Duration::from_nanos(extra))
    }
}

/// The switches and counters of one [`Faulty`]: cheap to clone (an `Arc`), safe to use
/// from any task or thread while calls run.
pub struct FaultControls {
    switches: watch::Sender<Switches>,
    picks: Mutex<Picks>,
    calls: AtomicU64,
    injected: AtomicU64,
    dropped: AtomicU64,
}

impl FaultControls {
    fn new(plan: FaultPlan) -> Self {
        let c = Self {
            switches: watch::Sender::new(Switches::default()),
            picks: Mutex::new(Picks {
                latency: None,
                errors: Rate::Never,
                drops: Rate::Never,
                error_n: 0,
                drop_n: 0,
                rng: 0,
            }),
            calls: AtomicU64::new(0),
            injected: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        };
        c.set_plan(plan);
        c
    }

    fn picks(&self) -> std::sync::MutexGuard<'_, Picks> {
        self.picks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Replace every fault with `plan` (counters are kept; the RNG restarts from its seed).
    pub fn set_plan(&self, plan: FaultPlan) {
        {
            let mut p = self.picks();
            *p = Picks {
                latency: plan.latency,
                errors: plan.errors,
                drops: plan.drop_after_commit,
                error_n: 0,
                drop_n: 0,
                rng: plan.seed,
            };
        }
        self.switches.send_modify(|s| {
            s.paused = plan.paused;
            s.partitioned = plan.partitioned;
        });
    }

    /// Remove every fault: no latency, no errors, healed, resumed.
    pub fn clear(&self) {
        self.set_plan(FaultPlan::default());
    }

    /// Add `latency` to every call (`None`: none).
    pub fn set_latency(&self, latency: Option<Latency>) {
        self.picks().latency = latency;
    }

    /// Fail the calls `rate` picks before they reach the store.
    pub fn set_errors(&self, rate: Rate) {
        let mut p = self.picks();
        p.errors = rate;
        p.error_n = 0;
    }

    /// Answer the successful writes `rate` picks with an error after they were applied.
    pub fn set_drop_after_commit(&self, rate: Rate) {
        let mut p = self.picks();
        p.drops = rate;
        p.drop_n = 0;
    }

    /// Cut the wrapper off from the store: every call fails at once until [`Self::heal`].
    pub fn partition(&self) {
        self.switches.send_modify(|s| s.partitioned = true);
    }

    /// End a [`Self::partition`].
    pub fn heal(&self) {
        self.switches.send_modify(|s| s.partitioned = false);
    }

    /// Hold every new call until [`Self::resume`] (calls past the gate finish).
    pub fn pause(&self) {
        self.switches.send_modify(|s| s.paused = true);
    }

    /// Let held calls proceed.
    pub fn resume(&self) {
        self.switches.send_modify(|s| s.paused = false);
    }

    /// Whether the wrapper is partitioned.
    pub fn is_partitioned(&self) -> bool {
        self.switches.borrow().partitioned
    }

    /// Whether the wrapper is paused.
    pub fn is_paused(&self) -> bool {
        self.switches.borrow().paused
    }

    /// The counters.
    pub fn stats(&self) -> FaultStats {
        FaultStats {
            calls: self.calls.load(Ordering::SeqCst),
            injected_errors: self.injected.load(Ordering::SeqCst),
            dropped_after_commit: self.dropped.load(Ordering::SeqCst),
        }
    }

    /// Calls made through the wrapper.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    /// Calls failed before reaching the store.
    pub fn injected_errors(&self) -> u64 {
        self.injected.load(Ordering::SeqCst)
    }

    /// Writes applied, then answered with an error.
    pub fn dropped_after_commit(&self) -> u64 {
        self.dropped.load(Ordering::SeqCst)
    }

    fn injected(&self, why: &str, op: &'static str) -> StoreError {
        self.injected.fetch_add(1, Ordering::SeqCst);
        fault(format!("injected fault: {why} ({op})"))
    }

    /// The gate before the inner store: count, wait while paused, sleep, fail.
    async fn enter(&self, op: &'static str) -> Result<()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let mut rx = self.switches.subscribe();
        // The sender lives as long as `self`: `wait_for` cannot fail here.
        let _ = rx.wait_for(|s| !s.paused).await;
        let latency = self.picks().latency();
        if let Some(d) = latency {
            tokio::time::sleep(d).await;
        }
        if self.switches.borrow().partitioned {
            return Err(self.injected("partitioned", op));
        }
        if self.picks().pick(true) {
            return Err(self.injected("error", op));
        }
        Ok(())
    }

    /// After a write the store answered: maybe lose the response.
    fn leave<T>(&self, op: &'static str, out: Result<T>) -> Result<T> {
        match out {
            Ok(v) => {
                if self.picks().pick(false) {
                    self.dropped.fetch_add(1, Ordering::SeqCst);
                    return Err(fault(format!("injected fault: response lost after commit ({op})")));
                }
                Ok(v)
            }
            Err(e) => Err(e),
        }
    }
}

fn fault(message: String) -> StoreError {
    StoreError::Backend { message, transient: true, source: None }
}

/// A [`Store`] over another that injects the faults of its [`FaultControls`].
pub struct Faulty {
    inner: Arc<dyn Store>,
    controls: Arc<FaultControls>,
}

impl Faulty {
    /// Wrap `inner`, with no fault yet.
    pub fn new(inner: Arc<dyn Store>) -> Self {
        Self::with_plan(inner, FaultPlan::default())
    }

    /// Wrap `inner` with the faults of `plan` from the first call.
    pub fn with_plan(inner: Arc<dyn Store>, plan: FaultPlan) -> Self {
        Self { inner, controls: Arc::new(FaultControls::new(plan)) }
    }

    /// The handle that switches this wrapper's faults and reads its counters.
    pub fn controls(&self) -> Arc<FaultControls> {
        self.controls.clone()
    }

    /// The wrapped store.
    pub fn inner(&self) -> &Arc<dyn Store> {
        &self.inner
    }
}

impl Wrapper for Faulty {
    fn inner(&self) -> &dyn Store {
        self.inner.as_ref()
    }

    /// Every call passes the gate (latency, injected errors, a partition, a pause); a
    /// write's applied answer may then be dropped.
    fn around<'a, T: Send + 'a>(&'a self, call: Call, f: BoxFuture<'a, Result<T>>) -> BoxFuture<'a, Result<T>> {
        Box::pin(async move {
            self.controls.enter(call.op).await?;
            let out = f.await;
            if call.write { self.controls.leave(call.op, out) } else { out }
        })
    }
}

impl WrapsDocuments for Faulty {}
impl WrapsRecords for Faulty {}
impl WrapsGraph for Faulty {}

#[async_trait::async_trait]
impl WrapsFeed for Faulty {
    async fn wrapped_wait_for(&self, tenant: &str, after: u64, timeout: Duration) -> Result<u64> {
        self.controls.enter("wait_for").await?;
        let mut rx = self.controls.switches.subscribe();
        tokio::select! {
            out = self.inner.wait_for(tenant, after, timeout) => out,
            // A partition cuts a wait already under way too.
            _ = rx.wait_for(|s| s.partitioned) => Err(self.controls.injected("partitioned", "wait_for")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{
        DocumentStore, EmbeddedStore, FeedStore, Quota, REGISTRY_FEED, RecordKind, RecordOp, RecordStore, Scope,
    };

    fn setup() -> (tempfile::TempDir, Arc<dyn Store>, Faulty, Arc<FaultControls>) {
        let dir = tempfile::tempdir().unwrap();
        let inner: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let faulty = Faulty::new(inner.clone());
        let controls = faulty.controls();
        (dir, inner, faulty, controls)
    }

    fn scope() -> Scope {
        Scope::new("t", "a")
    }

    fn injected(e: &StoreError) -> bool {
        e.is_transient() && e.to_string().contains("injected fault")
    }

    #[tokio::test(start_paused = true)]
    async fn latency_is_added_to_every_call() {
        let (_dir, _inner, store, controls) = setup();
        controls.set_latency(Some(Latency::fixed(Duration::from_secs(3))));
        let start = tokio::time::Instant::now();
        store.put(&scope(), "c", "k", "1", None).await.unwrap();
        store.get(&scope(), "c", "k").await.unwrap();
        assert!(start.elapsed() >= Duration::from_secs(6), "two calls, 3 s each (virtual clock)");

        controls.set_latency(Some(Latency::range(Duration::from_secs(1), Duration::from_secs(2))));
        for _ in 0..5 {
            let start = tokio::time::Instant::now();
            store.get(&scope(), "c", "k").await.unwrap();
            assert!(start.elapsed() >= Duration::from_secs(1));
        }
        assert_eq!(controls.stats(), FaultStats { calls: 7, injected_errors: 0, dropped_after_commit: 0 });
    }

    #[tokio::test]
    async fn injected_errors_are_transient_and_apply_nothing() {
        let (_dir, inner, store, controls) = setup();
        controls.set_errors(Rate::Every(2));
        store.put(&scope(), "c", "a", "1", None).await.unwrap();
        let e = store.put(&scope(), "c", "b", "1", None).await.unwrap_err();
        assert!(injected(&e), "{e}");
        assert_eq!(inner.get(&scope(), "c", "b").await.unwrap(), None, "the failed put reached nothing");
        assert_eq!(inner.feed_head("t").await.unwrap(), 1, "no change event either");

        controls.set_errors(Rate::Always);
        let op = RecordOp::Put { kind: RecordKind::Tenant, key: "x".into(), value: b"{}".to_vec(), expected: None };
        let e = store.record_apply(None, &[op], Quota::NONE).await.unwrap_err();
        assert!(injected(&e), "{e}");
        assert_eq!(inner.record_get(RecordKind::Tenant, "x").await.unwrap(), None);
        assert_eq!(inner.feed_head(REGISTRY_FEED).await.unwrap(), 0);
        assert!(injected(&store.get(&scope(), "c", "a").await.unwrap_err()), "reads fail too");
        assert_eq!(controls.injected_errors(), 3);

        // A seeded fraction picks the same calls every time.
        let picked = |seed| async move {
            let (_dir, _inner, store, controls) = setup();
            controls.set_plan(FaultPlan { errors: Rate::Fraction(0.5), seed, ..FaultPlan::default() });
            let mut out = Vec::new();
            for _ in 0..32 {
                out.push(store.feed_head("t").await.is_err());
            }
            out
        };
        let a = picked(7).await;
        assert_eq!(a, picked(7).await);
        assert!(a.contains(&true) && a.contains(&false), "{a:?}");

        controls.clear();
        store.get(&scope(), "c", "a").await.unwrap();
    }

    #[tokio::test]
    async fn dropped_responses_follow_an_applied_write() {
        let (_dir, inner, store, controls) = setup();
        controls.set_drop_after_commit(Rate::Always);
        let e = store.put(&scope(), "c", "k", "1", None).await.unwrap_err();
        assert!(e.is_transient() && e.to_string().contains("after commit"), "{e}");
        assert_eq!(inner.get(&scope(), "c", "k").await.unwrap().unwrap().revision, 1, "the write was applied");
        // The retry a caller makes meets its own write.
        let e = store.put(&scope(), "c", "k", "1", Some(0)).await.unwrap_err();
        assert!(matches!(e, StoreError::Conflict { current: 1 }), "{e}");

        let op = RecordOp::Put { kind: RecordKind::Node, key: "n1".into(), value: b"{}".to_vec(), expected: None };
        assert!(store.record_apply(None, &[op], Quota::NONE).await.is_err());
        assert!(inner.record_get(RecordKind::Node, "n1").await.unwrap().is_some());

        // Reads are never dropped; neither are failed writes.
        assert!(store.get(&scope(), "c", "k").await.unwrap().is_some());
        assert_eq!(controls.stats(), FaultStats { calls: 4, injected_errors: 0, dropped_after_commit: 2 });

        controls.set_drop_after_commit(Rate::Every(2));
        assert!(store.put(&scope(), "c", "x", "1", None).await.is_ok());
        assert!(store.put(&scope(), "c", "y", "1", None).await.is_err());
        assert!(inner.get(&scope(), "c", "y").await.unwrap().is_some());
        assert_eq!(controls.dropped_after_commit(), 3);
    }

    #[tokio::test]
    async fn a_partition_fails_everything_until_healed() {
        let (_dir, inner, store, controls) = setup();
        let other = Faulty::new(inner.clone());
        controls.partition();
        assert!(controls.is_partitioned());
        assert!(injected(&store.put(&scope(), "c", "k", "1", None).await.unwrap_err()));
        assert!(injected(&store.ping().await.unwrap_err()));
        assert!(injected(&store.wait_for("t", 0, Duration::from_secs(60)).await.unwrap_err()));
        assert_eq!(inner.get(&scope(), "c", "k").await.unwrap(), None);
        // Another node over the same store is not cut off.
        other.put(&scope(), "c", "k", "1", None).await.unwrap();

        controls.heal();
        assert_eq!(store.get(&scope(), "c", "k").await.unwrap().unwrap().value, "1");

        // A wait already under way is cut by the partition.
        let store = Arc::new(store);
        let waiting = {
            let store = store.clone();
            tokio::spawn(async move { store.wait_for("t", 1, Duration::from_secs(3600)).await })
        };
        wait_until(|| controls.calls() == 4).await;
        controls.partition();
        let e = waiting.await.unwrap().unwrap_err();
        assert!(injected(&e), "{e}");
        assert_eq!(controls.injected_errors(), 4);
    }

    #[tokio::test]
    async fn a_paused_wrapper_holds_calls_until_resumed() {
        let (_dir, inner, store, controls) = setup();
        let store = Arc::new(store);
        controls.pause();
        let call = {
            let store = store.clone();
            tokio::spawn(async move { store.put(&scope(), "c", "k", "1", None).await })
        };
        // The call reached the gate...
        wait_until(|| controls.calls() == 1).await;
        // ...and is held there (a short wait is evidence it is still blocked, nothing more).
        let mut call = call;
        assert!(tokio::time::timeout(Duration::from_millis(50), &mut call).await.is_err(), "still blocked");
        assert_eq!(inner.get(&scope(), "c", "k").await.unwrap(), None, "not applied while paused");
        controls.resume();
        assert_eq!(call.await.unwrap().unwrap(), 1);
        assert_eq!(inner.get(&scope(), "c", "k").await.unwrap().unwrap().revision, 1);
    }

    /// Poll `cond` until it holds (a deadline guards against a hang).
    async fn wait_until(cond: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(tokio::time::Instant::now() < deadline, "condition not reached");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}
