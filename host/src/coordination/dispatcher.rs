//! One task per watching agent: read the feed after the cursor, deliver, then persist.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{Delivery, DispatchSettings, Host, dead_letter_key, watched};
use crate::registry::{CursorRecord, DeadLetter, Letter, Watch, now_ms, scoped};
use crate::store::{Fence, Fenced, RecordKind, Store, StoreError};

/// A running dispatcher. Dropping it asks the task to stop (at its next wait, or after
/// the batch in flight).
#[derive(Debug)]
pub struct Watcher {
    /// The watches it serves.
    pub watches: Vec<Watch>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
    /// The cursor as the task last read or moved it ([`NO_CURSOR`] before).
    cursor: Arc<AtomicU64>,
    /// The lease its writes are fenced by, if any.
    pub fence: Option<Fence>,
}

/// The cursor of a watcher that has not read it yet.
const NO_CURSOR: u64 = u64::MAX;

impl Watcher {
    /// The feed sequence number the watcher has taken everything up to, once it has read
    /// its cursor (for its lag behind the feed head).
    pub fn cursor(&self) -> Option<u64> {
        Some(self.cursor.load(Ordering::Relaxed)).filter(|c| *c != NO_CURSOR)
    }

    /// Stop at once, the way a crash would (a batch in flight is abandoned and its cursor
    /// not moved), and wait until the task is gone.
    pub async fn halt(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Start the dispatcher of `tenant/agent`, under the [supervisor](super::supervisor) (a
/// panic restarts it from its persisted cursor). It holds the host weakly: it ends when the
/// host is dropped, when the agent is gone or stopped, or when the [`Watcher`] is dropped.
pub fn spawn(
    host: Weak<dyn Host>,
    tenant: String,
    agent: String,
    watches: Vec<Watch>,
    settings: DispatchSettings,
    fence: Option<Fence>,
) -> Watcher {
    let (stop, stopped) = watch::channel(false);
    let w = watches.clone();
    let cursor = Arc::new(AtomicU64::new(NO_CURSOR));
    let shown = cursor.clone();
    let f = fence.clone();
    let task = super::supervisor::supervise(host.clone(), "watcher", move || {
        let d = Dispatcher {
            host: host.clone(),
            tenant: tenant.clone(),
            agent: agent.clone(),
            watches: w.clone(),
            settings: settings.clone(),
            stopped: stopped.clone(),
            shown: shown.clone(),
            fence: f.clone(),
        };
        d.run()
    });
    Watcher { watches, stop, task: Some(task), cursor, fence }
}

struct Dispatcher {
    host: Weak<dyn Host>,
    tenant: String,
    agent: String,
    watches: Vec<Watch>,
    settings: DispatchSettings,
    stopped: watch::Receiver<bool>,
    /// Where [`Watcher::cursor`] reads the cursor.
    shown: Arc<AtomicU64>,
    /// The lease every write of the dispatcher is fenced by.
    fence: Option<Fence>,
}

/// Why the loop ends early.
enum End {
    /// Asked to stop, host dropped, or agent gone.
    Stop,
}

type Step<T> = Result<T, End>;

impl Dispatcher {
    fn host(&self) -> Step<Arc<dyn Host>> {
        if *self.stopped.borrow() {
            return Err(End::Stop);
        }
        self.host.upgrade().ok_or(End::Stop)
    }

    fn store(&self) -> Step<Arc<dyn Store>> {
        let store = self.host()?.store();
        Ok(match &self.fence {
            Some(f) => Arc::new(Fenced::new(store, f.clone())),
            None => store,
        })
    }

    /// Sleep `d`, or end when asked to stop.
    async fn sleep(&mut self, d: Duration) -> Step<()> {
        tokio::select! {
            () = tokio::time::sleep(d) => Ok(()),
            _ = self.stopped.wait_for(|s| *s) => Err(End::Stop),
        }
    }

    /// Run a store call; on a backend error log it, back off and try again.
    async fn retry_store<T, F, Fut>(&mut self, what: &str, f: F) -> Step<T>
    where
        F: Fn(Arc<dyn Store>) -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let mut backoff = self.settings.backoff;
        loop {
            let store = self.store()?;
            match f(store).await {
                Ok(v) => return Ok(v),
                Err(e @ StoreError::Fenced { .. }) => {
                    tracing::warn!(tenant = %self.tenant, agent = %self.agent, error = %e, "change feed: lease lost, stopping");
                    return Err(End::Stop);
                }
                Err(e) => {
                    tracing::warn!(tenant = %self.tenant, agent = %self.agent, error = %e, "change feed: {what} failed");
                    self.sleep(backoff).await?;
                    backoff = (backoff * 2).min(self.settings.max_backoff);
                }
            }
        }
    }

    /// The persisted cursor and its revision; a missing one starts at the feed head.
    async fn load_cursor(&mut self) -> Step<(u64, u64)> {
        let key = scoped(&self.tenant, &self.agent);
        let tenant = self.tenant.clone();
        loop {
            let k = key.clone();
            let found = self
                .retry_store("reading the cursor", |s| {
                    let k = k.clone();
                    async move { s.record_get(RecordKind::Cursor, &k).await }
                })
                .await?;
            if let Some((bytes, rev)) = &found {
                match serde_json::from_slice::<CursorRecord>(bytes) {
                    Ok(c) => {
                        self.shown.store(c.seq, Ordering::Relaxed);
                        return Ok((c.seq, *rev));
                    }
                    Err(e) => tracing::error!(tenant = %self.tenant, agent = %self.agent, error = %e,
                        "change feed: unreadable cursor; starting at the head"),
                }
            }
            let t = tenant.clone();
            let head = self.retry_store("reading the feed head", |s| {
                let t = t.clone();
                async move { s.feed_head(&t).await }
            });
            let head = head.await?;
            let expected = found_rev(&found);
            let k = key.clone();
            let put = self
                .retry_store("writing the cursor", |s| {
                    let k = k.clone();
                    async move {
                        let rec = CursorRecord { seq: head, updated_ms: now_ms() };
                        let bytes = serde_json::to_vec(&rec).map_err(|e| StoreError::Corrupted(e.to_string()))?;
                        match s.record_put(RecordKind::Cursor, &k, bytes, Some(expected)).await {
                            Ok(rev) => Ok(Some(rev)),
                            Err(StoreError::Conflict { .. }) => Ok(None),
                            Err(e) => Err(e),
                        }
                    }
                })
                .await?;
            if let Some(rev) = put {
                self.shown.store(head, Ordering::Relaxed);
                return Ok((head, rev));
            }
            // Someone else wrote the cursor meanwhile: read it again.
        }
    }

    /// Move the cursor to `seq` (compare-and-swap on `rev`). On a conflict the record was
    /// moved or deleted by someone else: follow it (or end if it is gone).
    async fn save_cursor(&mut self, seq: u64, rev: u64) -> Step<(u64, u64)> {
        let key = scoped(&self.tenant, &self.agent);
        let saved = self
            .retry_store("writing the cursor", |s| {
                let key = key.clone();
                async move {
                    let rec = CursorRecord { seq, updated_ms: now_ms() };
                    let bytes = serde_json::to_vec(&rec).map_err(|e| StoreError::Corrupted(e.to_string()))?;
                    match s.record_put(RecordKind::Cursor, &key, bytes, Some(rev)).await {
                        Ok(rev) => Ok(Some(rev)),
                        Err(StoreError::Conflict { current: 0 }) => Ok(None),
                        Err(StoreError::Conflict { .. }) => Ok(Some(0)),
                        Err(e) => Err(e),
                    }
                }
            })
            .await?;
        match saved {
            None => Err(End::Stop),
            Some(0) => {
                tracing::info!(tenant = %self.tenant, agent = %self.agent, "change feed: the cursor moved elsewhere");
                self.load_cursor().await
            }
            Some(rev) => {
                self.shown.store(seq, Ordering::Relaxed);
                Ok((seq, rev))
            }
        }
    }

    async fn run(mut self) {
        let Err(End::Stop) = self.run_loop().await;
        tracing::debug!(tenant = %self.tenant, agent = %self.agent, "change-feed dispatcher ended");
    }

    async fn run_loop(&mut self) -> Step<std::convert::Infallible> {
        let (mut cursor, mut rev) = self.load_cursor().await?;
        let tenant = self.tenant.clone();
        loop {
            let limit = self.settings.batch_size.max(1);
            let t = tenant.clone();
            let events = self
                .retry_store("reading the feed", |s| {
                    let t = t.clone();
                    async move { s.feed_since(&t, cursor, limit).await }
                })
                .await?;
            let Some(last) = events.last().map(|e| e.seq) else {
                // Caught up: wait for a write (no busy loop), or for a stop.
                let store = self.store()?;
                let head = tokio::select! {
                    head = store.wait_for(&tenant, cursor, self.settings.idle_wait) => head,
                    _ = self.stopped.wait_for(|s| *s) => return Err(End::Stop),
                };
                drop(store);
                match head {
                    // The tenant's feed was purged (it starts again at 1): follow it.
                    Ok(head) if head < cursor => (cursor, rev) = self.save_cursor(head, rev).await?,
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(%tenant, agent = %self.agent, error = %e, "change feed: waiting failed");
                        self.sleep(self.settings.backoff).await?;
                    }
                }
                continue;
            };
            let batch: Vec<_> = events.iter().filter(|e| watched(&self.watches, e)).cloned().collect();
            if !batch.is_empty() {
                let mut backoff = self.settings.backoff;
                let mut attempt = 0;
                let failure = loop {
                    attempt += 1;
                    let host = self.host()?;
                    // A trace of its own, linked to the spans that made the writes.
                    let span = crate::telemetry::otel::delivery_span_linked(
                        "change",
                        &tenant,
                        &self.agent,
                        batch.iter().filter_map(|e| e.trace.as_ref()),
                    );
                    let delivery =
                        tracing::Instrument::instrument(host.deliver(&tenant, &self.agent, &batch), span).await;
                    let what = match &delivery {
                        Delivery::Delivered => Some("delivered"),
                        Delivery::Failed { .. } if attempt >= self.settings.attempts.max(1) => Some("dead_lettered"),
                        Delivery::Failed { .. } => Some("retried"),
                        Delivery::Gone => Some("gone"),
                        Delivery::Throttled(_) => None,
                    };
                    if let Some(what) = what {
                        host.count(&tenant, what);
                    }
                    drop(host);
                    match delivery {
                        Delivery::Delivered => break None,
                        Delivery::Gone => return Err(End::Stop),
                        // Over the tenant's quotas: wait, and do not count it as an attempt.
                        Delivery::Throttled(wait) => {
                            attempt -= 1;
                            self.sleep(wait).await?;
                        }
                        Delivery::Failed { code, message, .. } => {
                            tracing::info!(%tenant, agent = %self.agent, attempt, %code, %message,
                                first = events[0].seq, last, "change feed: batch failed");
                            if attempt >= self.settings.attempts.max(1) {
                                break Some((code, message));
                            }
                            self.sleep(backoff).await?;
                            backoff = (backoff * 2).min(self.settings.max_backoff);
                        }
                    }
                };
                if let Some((code, message)) = failure {
                    let first = events[0].seq;
                    let now = now_ms();
                    let id = format!("{first:020}-{last:020}");
                    let letter = DeadLetter {
                        id: id.clone(),
                        tenant: tenant.clone(),
                        agent: self.agent.clone(),
                        content: Letter::Changes { first_seq: first, last_seq: last, events: batch },
                        attempts: attempt,
                        error_code: code,
                        error: message,
                        created_ms: now,
                        updated_ms: now,
                    };
                    let key = dead_letter_key(&tenant, &self.agent, &id);
                    let bytes = serde_json::to_vec(&letter).map_err(|e| {
                        tracing::error!(error = %e, "change feed: cannot encode a dead letter");
                        End::Stop
                    })?;
                    self.retry_store("writing a dead letter", |s| {
                        let (key, bytes) = (key.clone(), bytes.clone());
                        async move { s.record_put(RecordKind::DeadLetter, &key, bytes, None).await }
                    })
                    .await?;
                    tracing::warn!(%tenant, agent = %self.agent, %id, "change feed: batch parked as a dead letter");
                }
            }
            (cursor, rev) = self.save_cursor(last, rev).await?;
        }
    }
}

fn found_rev(found: &Option<(Vec<u8>, u64)>) -> u64 {
    found.as_ref().map_or(0, |(_, rev)| *rev)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::registry::Registry;
    use crate::store::ChangeEvent;
    use crate::store::{EmbeddedStore, Scope};

    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Mode {
        Take,
        Fail,
        /// Take the batch, then never return (a crash before the cursor moves).
        Hang,
        /// Panic (once: the mode becomes `Take`).
        PanicOnce,
    }

    struct Fake {
        store: Arc<dyn Store>,
        mode: Mutex<Mode>,
        calls: Mutex<Vec<Vec<u64>>>,
        restarts: Mutex<Vec<&'static str>>,
    }

    #[async_trait::async_trait]
    impl Host for Fake {
        fn store(&self) -> Arc<dyn Store> {
            self.store.clone()
        }

        async fn deliver(&self, _tenant: &str, _agent: &str, events: &[ChangeEvent]) -> Delivery {
            self.calls.lock().unwrap().push(events.iter().map(|e| e.seq).collect());
            let mode = std::mem::replace(&mut *self.mode.lock().unwrap(), Mode::Take);
            match mode {
                Mode::Take => Delivery::Delivered,
                Mode::Fail => {
                    *self.mode.lock().unwrap() = Mode::Fail;
                    Delivery::Failed { code: "agent_error".into(), message: "no".into(), agent: None }
                }
                Mode::Hang => {
                    *self.mode.lock().unwrap() = Mode::Hang;
                    std::future::pending().await
                }
                Mode::PanicOnce => panic!("a delivery panics (test)"),
            }
        }

        fn task_restarted(&self, kind: &'static str) {
            self.restarts.lock().unwrap().push(kind);
        }
    }

    fn settings() -> DispatchSettings {
        DispatchSettings {
            attempts: 2,
            backoff: Duration::from_millis(1),
            idle_wait: Duration::from_millis(200),
            ..DispatchSettings::default()
        }
    }

    fn watches() -> Vec<Watch> {
        vec![Watch { collection: "orders".into(), prefix: String::new() }]
    }

    async fn until(what: &str, f: impl Fn() -> bool) {
        for _ in 0..1000 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("timed out waiting for {what}");
    }

    async fn cursor(reg: &Registry) -> u64 {
        reg.get::<CursorRecord>(RecordKind::Cursor, "t/w").await.unwrap().unwrap().0.seq
    }

    async fn until_cursor(reg: &Registry, seq: u64) {
        for _ in 0..1000 {
            if cursor(reg).await == seq {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("the cursor did not reach {seq}");
    }

    fn setup() -> (tempfile::TempDir, Arc<Fake>, Registry) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&dir.path().join("s")).unwrap());
        let fake = Arc::new(Fake {
            store: store.clone(),
            mode: Mutex::new(Mode::Take),
            calls: Mutex::default(),
            restarts: Mutex::default(),
        });
        (dir, fake, Registry::new(store))
    }

    fn start(fake: &Arc<Fake>) -> Watcher {
        let host: Weak<dyn Host> = Arc::downgrade(fake) as Weak<dyn Host>;
        spawn(host, "t".into(), "w".into(), watches(), settings(), None)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_cursor_moves_only_after_a_batch_is_taken() {
        let (_dir, fake, reg) = setup();
        let scope = Scope::new("t", "writer");
        reg.store().put(&scope, "orders", "before", "{}", None).await.unwrap();
        assert_eq!(super::super::start_cursor(&reg, "t", "w").await.unwrap(), 1);
        for k in ["a", "b"] {
            reg.store().put(&scope, "orders", k, "{}", None).await.unwrap();
        }
        reg.store().put(&scope, "other", "x", "{}", None).await.unwrap();
        *fake.mode.lock().unwrap() = Mode::Hang;
        let w = start(&fake);
        until("the first delivery", || !fake.calls.lock().unwrap().is_empty()).await;
        w.halt().await;
        assert_eq!(cursor(&reg).await, 1, "not moved: the batch never returned");
        let first = fake.calls.lock().unwrap()[0].clone();
        assert_eq!(first, vec![2, 3], "only watched events, from the cursor on");

        *fake.mode.lock().unwrap() = Mode::Take;
        let w = start(&fake);
        until("the redelivery", || fake.calls.lock().unwrap().len() == 2).await;
        assert_eq!(fake.calls.lock().unwrap()[1], first, "the same batch again");
        // Past the unwatched event too.
        until_cursor(&reg, 4).await;
        // New writes wake the dispatcher.
        reg.store().put(&scope, "orders", "c", "{}", None).await.unwrap();
        until("the wake-up", || fake.calls.lock().unwrap().len() == 3).await;
        assert_eq!(fake.calls.lock().unwrap()[2], vec![5]);
        w.halt().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_watcher_that_panics_is_restarted_and_still_delivers_every_event() {
        let (_dir, fake, reg) = setup();
        let scope = Scope::new("t", "writer");
        super::super::start_cursor(&reg, "t", "w").await.unwrap();
        for k in ["a", "b", "c"] {
            reg.store().put(&scope, "orders", k, "{}", None).await.unwrap();
        }
        *fake.mode.lock().unwrap() = Mode::PanicOnce;
        let w = start(&fake);
        until_cursor(&reg, 3).await;
        assert_eq!(*fake.restarts.lock().unwrap(), vec!["watcher"], "one restart, counted");
        // The batch the panic interrupted comes again, whole; nothing after it is skipped.
        assert_eq!(*fake.calls.lock().unwrap(), vec![vec![1, 2, 3], vec![1, 2, 3]]);
        // The restarted watcher goes on with new writes, each delivered once.
        for k in ["d", "e"] {
            reg.store().put(&scope, "orders", k, "{}", None).await.unwrap();
        }
        until_cursor(&reg, 5).await;
        let calls = fake.calls.lock().unwrap().clone();
        let taken: Vec<u64> = calls[1..].iter().flatten().copied().collect();
        assert_eq!(taken, vec![1, 2, 3, 4, 5], "every event taken once after the restart: {calls:?}");
        assert_eq!(fake.restarts.lock().unwrap().len(), 1);
        w.halt().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_batch_is_retried_then_parked_and_skipped() {
        let (_dir, fake, reg) = setup();
        let scope = Scope::new("t", "writer");
        super::super::start_cursor(&reg, "t", "w").await.unwrap();
        *fake.mode.lock().unwrap() = Mode::Fail;
        reg.store().put(&scope, "orders", "a", "{}", None).await.unwrap();
        let w = start(&fake);
        until_cursor(&reg, 1).await;
        assert_eq!(*fake.calls.lock().unwrap(), vec![vec![1], vec![1]], "two attempts");
        let letters = super::super::dead_letters(&reg, "t", "w").await.unwrap();
        assert_eq!(letters.len(), 1);
        let Letter::Changes { first_seq: 1, last_seq: 1, events } = &letters[0].content else {
            panic!("{:?}", letters[0])
        };
        assert_eq!((letters[0].attempts, events[0].key.as_str()), (2, "a"));
        // Deleting the agent's records ends the dispatcher at its next cursor write.
        super::super::forget(&reg, "t", "w").await.unwrap();
        assert!(super::super::dead_letters(&reg, "t", "w").await.unwrap().is_empty());
        w.halt().await;
    }
}
