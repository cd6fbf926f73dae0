//! Group commit of record writes: concurrent writers hand their write to one task, which
//! commits what is queued at that moment (up to [`GroupCommitSettings::max_ops`] writes or
//! [`GroupCommitSettings::max_bytes`] bytes) in **one** store transaction
//! ([`RecordStore::record_apply`]) and then answers each writer. A durable send costs one
//! commit (one `fsync` on the embedded store) per batch instead of one per message.
//!
//! Each write keeps the meaning it has alone ([`RecordStore::record_put_within`]):
//!
//! - it is answered only after its batch committed (or failed): `Ok` means durable;
//! - a batch holds the writes of one tenant with one quota, checked in its transaction;
//! - a transaction is all or nothing, so when one write of a batch is refused (a
//!   compare-and-swap [`StoreError::Conflict`], a [`StoreError::QuotaExceeded`]) the
//!   batch's writes are committed one at a time instead: the refused write alone fails,
//!   each writer gets its own answer;
//! - a backend that cannot apply several records at once (a non-transient backend error of
//!   `record_apply`) gets the writes one at a time too, each with its own answer;
//! - any other store error (a transient one stays transient) reaches every writer of the
//!   batch.
//!
//! No timer: the task takes what is queued when it is free, so a lone write is committed
//! at once, alone, through the same call as without group commit; writes batch only while
//! a commit is running. The queue is bounded in writes and in bytes: a writer waits for
//! room (backpressure). The task holds the store weakly and ends when the [`GroupCommit`]
//! is dropped.

use std::sync::{Arc, OnceLock, Weak};

use futures_util::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use crate::store::{self, Quota, RecordKind, RecordOp, RecordStore, StoreError, record_tenant};

/// How large batches and the queue may grow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupCommitSettings {
    /// Most writes in one transaction (at least 1).
    pub max_ops: usize,
    /// Most bytes (keys and values) in one transaction; a larger write goes alone.
    pub max_bytes: usize,
    /// Most writes waiting for their commit; a writer beyond waits for room.
    pub queue: usize,
    /// Most bytes waiting for their commit (a larger write counts as this many).
    pub queue_bytes: usize,
    /// Writes of a refused batch committed at once, one transaction each (a backend
    /// without `record_apply` serves concurrent single writes in parallel).
    pub fallback_concurrency: usize,
}

impl Default for GroupCommitSettings {
    fn default() -> Self {
        Self { max_ops: 512, max_bytes: 4 << 20, queue: 8192, queue_bytes: 64 << 20, fallback_concurrency: 16 }
    }
}

/// One write waiting for its commit.
struct Item {
    op: RecordOp,
    quota: Quota,
    size: usize,
    reply: oneshot::Sender<store::Result<u64>>,
    /// Its room in the queue's bytes, given back once answered.
    _bytes: OwnedSemaphorePermit,
}

impl Item {
    fn tenant(&self) -> &str {
        match &self.op {
            RecordOp::Put { key, .. } | RecordOp::Delete { key, .. } => record_tenant(key),
            RecordOp::PutDocument { scope, .. } => &scope.tenant,
        }
    }

    fn answer(self, result: store::Result<u64>) {
        // A writer that gave up waiting (its future was dropped) needs no answer.
        let _ = self.reply.send(result);
    }
}

/// The group-commit writer of one store (see the module docs).
pub struct GroupCommit {
    store: Weak<dyn RecordStore>,
    settings: GroupCommitSettings,
    /// The queue to the task, started by the first write (inside the runtime).
    queue: OnceLock<mpsc::Sender<Item>>,
    bytes: Arc<Semaphore>,
    /// Batches committed in one transaction (more than one write), for tests and stats.
    batches: Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit").field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl GroupCommit {
    /// A writer for `store` (held weakly: a write after the store is gone fails).
    pub fn new(store: Arc<dyn RecordStore>, settings: GroupCommitSettings) -> Self {
        let queue_bytes = settings.queue_bytes.clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
        Self {
            store: Arc::downgrade(&store),
            settings: GroupCommitSettings { queue_bytes, ..settings },
            queue: OnceLock::new(),
            bytes: Arc::new(Semaphore::new(queue_bytes)),
            batches: Arc::default(),
        }
    }

    /// [`RecordStore::record_put_within`],
    /// committed with the writes queued beside it; returns the new revision.
    pub async fn put(
        &self,
        kind: RecordKind,
        key: String,
        value: Vec<u8>,
        expected: Option<u64>,
        quota: Quota,
    ) -> store::Result<u64> {
        self.apply(RecordOp::Put { kind, key, value, expected }, quota).await
    }

    /// One write, committed with the writes queued beside it: for a put the new revision,
    /// for a delete 1 if the record existed, else 0.
    pub async fn apply(&self, op: RecordOp, quota: Quota) -> store::Result<u64> {
        let size = match &op {
            RecordOp::Put { key, value, .. } => key.len() + value.len(),
            RecordOp::Delete { key, .. } => key.len(),
            RecordOp::PutDocument { collection, key, value, .. } => collection.len() + key.len() + value.len(),
        };
        let weight = u32::try_from(size.clamp(1, self.settings.queue_bytes)).unwrap_or(u32::MAX);
        let bytes = self.bytes.clone().acquire_many_owned(weight).await.map_err(|_| closed())?;
        let (reply, answer) = oneshot::channel();
        let item = Item { op, quota, size, reply, _bytes: bytes };
        self.sender().send(item).await.map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }

    /// Batches of more than one write committed in one transaction so far.
    pub fn batches(&self) -> u64 {
        self.batches.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Writes queued and not yet taken by the task.
    pub fn queued(&self) -> usize {
        self.queue.get().map_or(0, |q| q.max_capacity() - q.capacity())
    }

    fn sender(&self) -> &mpsc::Sender<Item> {
        self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::channel(self.settings.queue.max(1));
            let task = Task { store: self.store.clone(), settings: self.settings, batches: self.batches.clone() };
            tokio::spawn(task.run(rx));
            tx
        })
    }
}

/// The error of a write whose writer is gone (the host shutting down).
fn closed() -> StoreError {
    StoreError::Backend { message: "the store's writer has stopped".into(), transient: true, source: None }
}

/// The same error again, for another writer of a failed batch (the source, which cannot be
/// copied, is kept in the message).
fn replicate(e: &StoreError) -> StoreError {
    match e {
        StoreError::Conflict { current } => StoreError::Conflict { current: *current },
        StoreError::Backend { transient, .. } => {
            StoreError::Backend { message: e.to_string(), transient: *transient, source: None }
        }
        StoreError::Corrupted(m) => StoreError::Corrupted(m.clone()),
        StoreError::QuotaExceeded(m) => StoreError::QuotaExceeded(m.clone()),
        StoreError::Fenced { key, held, carried } => {
            StoreError::Fenced { key: key.clone(), held: *held, carried: *carried }
        }
        StoreError::Open { path, source } => {
            StoreError::Open { path: path.clone(), source: std::io::Error::new(source.kind(), source.to_string()) }
        }
    }
}

struct Task {
    store: Weak<dyn RecordStore>,
    settings: GroupCommitSettings,
    batches: Arc<std::sync::atomic::AtomicU64>,
}

impl Task {
    async fn run(self, mut rx: mpsc::Receiver<Item>) {
        let max_ops = self.settings.max_ops.max(1);
        let mut carried: Option<Item> = None;
        loop {
            // Wait for a first write, then take what else is queued now: no timer.
            let first = match carried.take() {
                Some(item) => item,
                None => match rx.recv().await {
                    Some(item) => item,
                    None => break,
                },
            };
            let mut bytes = first.size;
            let mut drained = vec![first];
            while drained.len() < max_ops {
                let Ok(item) = rx.try_recv() else { break };
                if bytes.saturating_add(item.size) > self.settings.max_bytes {
                    carried = Some(item);
                    break;
                }
                bytes += item.size;
                drained.push(item);
            }
            let Some(store) = self.store.upgrade() else {
                for item in drained {
                    item.answer(Err(closed()));
                }
                continue;
            };
            for group in by_tenant(drained) {
                self.commit(store.as_ref(), group).await;
            }
        }
    }

    /// Commit one tenant's writes (one quota) and answer each.
    async fn commit(&self, store: &dyn RecordStore, mut items: Vec<Item>) {
        if items.len() == 1
            && let Some(item) = items.pop()
        {
            let result = one(store, &item).await;
            item.answer(result);
            return;
        }
        let quota = items[0].quota;
        let ops: Vec<RecordOp> = items.iter().map(|i| i.op.clone()).collect();
        match store.record_apply(None, &ops, quota).await {
            Ok(revisions) => {
                self.batches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                for (i, item) in items.into_iter().enumerate() {
                    item.answer(Ok(revisions.get(i).copied().unwrap_or(0)));
                }
            }
            Err(StoreError::Conflict { .. } | StoreError::QuotaExceeded(_)) => {
                // One of them is refused: each alone, so that only it fails.
                self.one_at_a_time(store, items).await;
            }
            Err(e @ StoreError::Backend { transient: false, .. }) => {
                tracing::debug!(error = %e, n = items.len(), "group commit: batch refused; writing one at a time");
                self.one_at_a_time(store, items).await;
            }
            Err(e) => {
                for item in items {
                    item.answer(Err(replicate(&e)));
                }
            }
        }
    }

    async fn one_at_a_time(&self, store: &dyn RecordStore, items: Vec<Item>) {
        futures_util::stream::iter(items)
            .map(|item| async move {
                let result = one(store, &item).await;
                item.answer(result);
            })
            .buffered(self.settings.fallback_concurrency.max(1))
            .collect::<Vec<()>>()
            .await;
    }
}

/// A write alone, exactly as without group commit.
async fn one(store: &dyn RecordStore, item: &Item) -> store::Result<u64> {
    match &item.op {
        RecordOp::Put { kind, key, value, expected } => {
            store.record_put_within(*kind, key, value.clone(), *expected, item.quota).await
        }
        RecordOp::Delete { kind, key, expected: None } => store.record_delete(*kind, key).await.map(u64::from),
        RecordOp::Delete { .. } | RecordOp::PutDocument { .. } => store
            .record_apply(None, std::slice::from_ref(&item.op), item.quota)
            .await
            .map(|r| r.first().copied().unwrap_or(0)),
    }
}

/// `items` split by tenant and quota, each group in queue order, the groups in the order of
/// their first write.
fn by_tenant(items: Vec<Item>) -> Vec<Vec<Item>> {
    let mut groups: Vec<Vec<Item>> = Vec::new();
    for item in items {
        match groups.iter_mut().find(|g| g[0].tenant() == item.tenant() && g[0].quota == item.quota) {
            Some(g) => g.push(item),
            None => groups.push(vec![item]),
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;
    use crate::coordination::mailbox::{enqueue_grouped, mailbox_prefix, new_message};
    use crate::store::{EmbeddedStore, Fence, Usage};

    /// An embedded store that can hold its first single write until released, and fail
    /// `record_apply`, counting the calls of each.
    struct Gated {
        inner: EmbeddedStore,
        hold: Mutex<Option<oneshot::Receiver<()>>>,
        holding: AtomicBool,
        apply_fails: Mutex<Option<bool>>,
        puts: AtomicUsize,
        applies: AtomicUsize,
    }

    impl Gated {
        fn open(path: &std::path::Path) -> Self {
            Self {
                inner: EmbeddedStore::open(path).unwrap(),
                hold: Mutex::new(None),
                holding: AtomicBool::new(false),
                apply_fails: Mutex::new(None),
                puts: AtomicUsize::new(0),
                applies: AtomicUsize::new(0),
            }
        }

        /// Hold the next single write until the returned sender is used or dropped.
        fn hold_next(&self) -> oneshot::Sender<()> {
            let (tx, rx) = oneshot::channel();
            *self.hold.lock().unwrap() = Some(rx);
            tx
        }
    }

    #[async_trait::async_trait]
    impl RecordStore for Gated {
        async fn record_get(&self, kind: RecordKind, key: &str) -> store::Result<Option<(Vec<u8>, u64)>> {
            self.inner.record_get(kind, key).await
        }
        async fn record_put_within(
            &self,
            kind: RecordKind,
            key: &str,
            value: Vec<u8>,
            expected: Option<u64>,
            quota: Quota,
        ) -> store::Result<u64> {
            self.puts.fetch_add(1, Ordering::SeqCst);
            let hold = self.hold.lock().unwrap().take();
            if let Some(rx) = hold {
                self.holding.store(true, Ordering::SeqCst);
                let _ = rx.await;
            }
            self.inner.record_put_within(kind, key, value, expected, quota).await
        }
        async fn record_delete(&self, kind: RecordKind, key: &str) -> store::Result<bool> {
            self.inner.record_delete(kind, key).await
        }
        async fn record_list(&self, kind: RecordKind, prefix: &str) -> store::Result<Vec<(String, Vec<u8>)>> {
            self.inner.record_list(kind, prefix).await
        }
        async fn audit_append(&self, event: Vec<u8>, tenant: Option<&str>) -> store::Result<(u64, Option<u64>)> {
            self.inner.audit_append(event, tenant).await
        }
        async fn audit_list(
            &self,
            tenant: Option<&str>,
            since: u64,
            limit: usize,
        ) -> store::Result<Vec<(u64, Vec<u8>)>> {
            self.inner.audit_list(tenant, since, limit).await
        }
        async fn purge_tenant_documents(&self, tenant: &str) -> store::Result<u64> {
            self.inner.purge_tenant_documents(tenant).await
        }
        async fn usage(&self, tenant: &str) -> store::Result<Usage> {
            self.inner.usage(tenant).await
        }
        async fn ping(&self) -> store::Result<()> {
            self.inner.ping().await
        }
        async fn record_apply(&self, fence: Option<&Fence>, ops: &[RecordOp], quota: Quota) -> store::Result<Vec<u64>> {
            self.applies.fetch_add(1, Ordering::SeqCst);
            let fails = *self.apply_fails.lock().unwrap();
            match fails {
                Some(transient) => Err(StoreError::Backend {
                    message: if transient { "the disk is busy" } else { "record_apply is not supported" }.into(),
                    transient,
                    source: None,
                }),
                None => self.inner.record_apply(fence, ops, quota).await,
            }
        }
    }

    async fn until(what: &str, f: impl Fn() -> bool) {
        for _ in 0..2000 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("timed out waiting for {what}");
    }

    type Sends = Vec<tokio::task::JoinHandle<store::Result<bool>>>;

    /// Hold a first send in the store, queue `bodies` behind it (one batch), release.
    async fn batch_behind_a_held_send(
        store: &Arc<Gated>,
        writer: &Arc<GroupCommit>,
        bodies: Vec<(Vec<u8>, Option<&'static str>, Quota)>,
    ) -> (store::Result<bool>, Vec<store::Result<bool>>) {
        let release = store.hold_next();
        let w = writer.clone();
        let first = tokio::spawn(async move {
            enqueue_grouped(&w, &new_message("t", "b", "a", None, b"first", None), Quota::NONE).await
        });
        until("the first send in the store", || store.holding.load(Ordering::SeqCst)).await;
        let n = bodies.len();
        let mut sends: Sends = Vec::new();
        for (body, key, quota) in bodies {
            let w = writer.clone();
            sends.push(tokio::spawn(async move {
                enqueue_grouped(&w, &new_message("t", "b", "a", None, &body, key), quota).await
            }));
        }
        until("the sends queued", || writer.queued() == n).await;
        release.send(()).unwrap();
        let first = first.await.unwrap();
        let mut rest = Vec::new();
        for s in sends {
            rest.push(s.await.unwrap());
        }
        (first, rest)
    }

    fn setup() -> (tempfile::TempDir, Arc<Gated>, Arc<GroupCommit>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Gated::open(&dir.path().join("s")));
        let writer = Arc::new(GroupCommit::new(store.clone(), GroupCommitSettings::default()));
        (dir, store, writer)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_sends_commit_in_one_batch_and_each_is_stored_once_after_a_reopen() {
        let (dir, store, writer) = setup();
        let bodies = (0..100).map(|i| (format!("m{i}").into_bytes(), None, Quota::NONE)).collect();
        let (first, rest) = batch_behind_a_held_send(&store, &writer, bodies).await;
        assert!(first.unwrap());
        assert!(rest.iter().all(|r| matches!(r, Ok(true))), "{rest:?}");
        assert_eq!(store.applies.load(Ordering::SeqCst), 1, "the 100 queued sends: one transaction");
        assert_eq!(store.puts.load(Ordering::SeqCst), 1, "the lone first send: a write of its own");
        assert_eq!(writer.batches(), 1);
        drop((writer, store));
        // Durable: all there after a reopen, each once.
        let reopened = EmbeddedStore::open(&dir.path().join("s")).unwrap();
        let stored = reopened.record_list(RecordKind::Message, &mailbox_prefix("t", "b")).await.unwrap();
        let mut bodies: Vec<String> = stored
            .iter()
            .map(|(_, v)| {
                let m: crate::registry::MessageRecord = serde_json::from_slice(v).unwrap();
                String::from_utf8(crate::coordination::mailbox::decode_body(&m.body_hex).unwrap()).unwrap()
            })
            .collect();
        bodies.sort();
        let mut want: Vec<String> = (0..100).map(|i| format!("m{i}")).chain(["first".to_owned()]).collect();
        want.sort();
        assert_eq!(bodies, want);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_duplicate_or_a_refused_send_fails_alone_in_its_batch() {
        let (_dir, store, writer) = setup();
        // A message with the key "dup" waits already: a second one is a conflict.
        let dup = new_message("t", "b", "a", None, b"dup", Some("dup"));
        assert!(enqueue_grouped(&writer, &dup, Quota::NONE).await.unwrap());
        let quota = Quota { bytes: Some(4000), edges: None };
        let bodies = vec![
            (b"one".to_vec(), None, quota),
            (b"again".to_vec(), Some("dup"), quota),
            (vec![b'x'; 3000], None, quota),
            (b"two".to_vec(), None, quota),
        ];
        let (first, rest) = batch_behind_a_held_send(&store, &writer, bodies).await;
        assert!(first.unwrap());
        assert!(matches!(rest[0], Ok(true)), "{:?}", rest[0]);
        assert!(matches!(rest[1], Ok(false)), "the duplicate is dropped: {:?}", rest[1]);
        assert!(matches!(rest[2], Err(StoreError::QuotaExceeded(_))), "over the quota: {:?}", rest[2]);
        assert!(matches!(rest[3], Ok(true)), "{:?}", rest[3]);
        let stored = store.record_list(RecordKind::Message, &mailbox_prefix("t", "b")).await.unwrap();
        assert_eq!(stored.len(), 4, "dup, first, one, two");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_store_error_reaches_every_sender_of_the_batch() {
        let (_dir, store, writer) = setup();
        *store.apply_fails.lock().unwrap() = Some(true);
        let bodies = (0..5).map(|i| (vec![i], None, Quota::NONE)).collect();
        let (first, rest) = batch_behind_a_held_send(&store, &writer, bodies).await;
        assert!(first.unwrap(), "the lone send before is written");
        assert_eq!(rest.len(), 5);
        for r in &rest {
            assert!(matches!(r, Err(e) if e.is_transient()), "every sender gets the transient error: {r:?}");
        }
        let stored = store.record_list(RecordKind::Message, &mailbox_prefix("t", "b")).await.unwrap();
        assert_eq!(stored.len(), 1, "nothing of the failed batch");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_backend_without_multi_record_writes_gets_the_sends_one_at_a_time() {
        let (_dir, store, writer) = setup();
        *store.apply_fails.lock().unwrap() = Some(false);
        let bodies = (0..5).map(|i| (vec![i], None, Quota::NONE)).collect();
        let (first, rest) = batch_behind_a_held_send(&store, &writer, bodies).await;
        assert!(first.unwrap());
        assert!(rest.iter().all(|r| matches!(r, Ok(true))), "{rest:?}");
        assert_eq!(store.puts.load(Ordering::SeqCst), 6);
        let stored = store.record_list(RecordKind::Message, &mailbox_prefix("t", "b")).await.unwrap();
        assert_eq!(stored.len(), 6);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_send_is_written_at_once_without_a_timer() {
        let (_dir, store, writer) = setup();
        let t0 = tokio::time::Instant::now();
        let msg = new_message("t", "b", "a", None, b"alone", None);
        assert!(enqueue_grouped(&writer, &msg, Quota::NONE).await.unwrap());
        // The clock is paused and advances only to a timer someone waits on: none was.
        assert_eq!(tokio::time::Instant::now(), t0, "no timer on the way");
        // Written alone, as without group commit, although a batch could take 512.
        assert_eq!((store.puts.load(Ordering::SeqCst), store.applies.load(Ordering::SeqCst)), (1, 0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_queue_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Gated::open(&dir.path().join("s")));
        let settings = GroupCommitSettings { queue: 2, ..GroupCommitSettings::default() };
        let writer = Arc::new(GroupCommit::new(store.clone(), settings));
        let release = store.hold_next();
        let send = |i: u8| {
            let w = writer.clone();
            tokio::spawn(async move {
                enqueue_grouped(&w, &new_message("t", "b", "a", None, &[i], None), Quota::NONE).await
            })
        };
        // The first send alone (sent with others, it could go out in a batch, which is not
        // held), held in the store; then five more behind it.
        let mut sends: Sends = vec![send(0)];
        until("the first send in the store", || store.holding.load(Ordering::SeqCst)).await;
        sends.extend((1..6u8).map(send));
        until("a full queue", || writer.queued() == 2).await;
        // The others wait for room, outside the queue.
        assert_eq!(writer.queued(), 2);
        release.send(()).unwrap();
        for s in sends {
            assert!(s.await.unwrap().unwrap());
        }
    }
}
