//! Durable mailboxes: a task per running agent **with messages waiting** delivers the
//! messages sent or published to it, through `handle`, at least once. The task ends once
//! its mailbox is empty (an idle agent has none); the next send starts it again
//! ([`Mailbox::wake`] says when it must be).
//!
//! A message is a [`MessageRecord`] written before `send` returns, and removed only after
//! `handle` took it: a crash in between delivers it again. A failing delivery is retried
//! with exponential backoff (the wait is kept in the record, so it survives a restart),
//! then parked as a dead letter. A message sent with an idempotency key is stored under a
//! key derived from it, so a second send finds the first one; once delivered, a
//! [`DeliveredRecord`] remembers the key for the idempotency window, and a later message
//! with that key is dropped instead of delivered.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;
use tracing::Instrument;

use futures_util::{FutureExt, StreamExt};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use super::group_commit::GroupCommit;
use super::{Delivery, Host};
use crate::registry::{DeadLetter, DeliveredRecord, Letter, MessageRecord, now_ms, scoped};
use crate::store::{self, Fence, Quota, RecordKind, RecordOp, Store, StoreError};

/// How mailboxes deliver, retry and wait.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MailboxSettings {
    /// Deliveries of one message before it becomes a dead letter (at least 1).
    pub attempts: u32,
    /// Wait before the first retry; doubled for each further retry.
    pub backoff: Duration,
    /// Longest wait between retries.
    pub max_backoff: Duration,
    /// How often an idle mailbox looks for messages written by another node.
    pub idle_poll: Duration,
    /// How long a delivered idempotency key is remembered.
    pub idempotency_window: Duration,
    /// Messages one mailbox may hold; a send to a full mailbox is refused.
    pub max_pending: usize,
}

impl Default for MailboxSettings {
    fn default() -> Self {
        Self {
            attempts: 5,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            idle_poll: Duration::from_secs(5),
            idempotency_window: Duration::from_secs(24 * 3600),
            max_pending: 10_000,
        }
    }
}

/// Key prefix of an agent's mailbox (and of its delivered idempotency keys).
pub fn mailbox_prefix(tenant: &str, agent: &str) -> String {
    format!("{}/", scoped(tenant, agent))
}

fn message_key(tenant: &str, agent: &str, id: &str) -> String {
    format!("{}{id}", mailbox_prefix(tenant, agent))
}

/// Hex of `bytes` (message bodies in records).
pub fn encode_body(bytes: &[u8]) -> String {
    crate::secrets::hex(bytes)
}

/// The bytes of a hex body; `None` if it is not hex.
pub fn decode_body(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len()).step_by(2).map(|i| hex.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok())).collect()
}

static SEQ: AtomicU64 = AtomicU64::new(0);

/// A new message for `to`, from `from`; with an idempotency key its id is derived from
/// the key (`k` and 40 hex digits of its SHA-256), otherwise from the time and randomness.
pub fn new_message(
    tenant: &str,
    to: &str,
    from: &str,
    topic: Option<&str>,
    body: &[u8],
    idempotency_key: Option<&str>,
) -> MessageRecord {
    let now = now_ms();
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let idempotency = idempotency_key.map(|k| crate::secrets::sha256_hex(k.as_bytes()));
    let id = match &idempotency {
        Some(h) => format!("k{}", &h[..40]),
        None => {
            let salt = crate::secrets::random_bytes::<8>().map_or_else(
                |_| format!("{:016x}", std::process::id() as u64 ^ now.rotate_left(17)),
                |b| crate::secrets::hex(&b),
            );
            // The node's sequence keeps ids unique even if randomness failed.
            format!("{now:013}-{seq:08x}{salt}")
        }
    };
    MessageRecord {
        seq,
        id,
        tenant: tenant.to_owned(),
        agent: to.to_owned(),
        from: from.to_owned(),
        topic: topic.map(str::to_owned),
        idempotency,
        body_hex: encode_body(body),
        attempts: 0,
        not_before_ms: 0,
        error_code: None,
        error: None,
        created_ms: now,
        trace: crate::telemetry::otel::TraceContext::current(),
    }
}

/// Write `msg` into its mailbox. `Ok(false)`: a message with the same idempotency key is
/// already waiting, and this one is dropped. The stored record counts in its tenant's
/// stored bytes until it is delivered (or its dead letter discarded): a write past
/// `quota` is refused with [`StoreError::QuotaExceeded`].
pub async fn enqueue(store: &dyn Store, msg: &MessageRecord, quota: Quota) -> store::Result<bool> {
    let bytes = serde_json::to_vec(msg).map_err(|e| StoreError::Corrupted(e.to_string()))?;
    let key = message_key(&msg.tenant, &msg.agent, &msg.id);
    match store.record_put_within(RecordKind::Message, &key, bytes, Some(0), quota).await {
        Ok(_) => Ok(true),
        Err(StoreError::Conflict { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// [`enqueue`] through `writer`: committed together with the messages other senders write
/// at the same moment (one transaction for all, see [`GroupCommit`]), with the same
/// answers. A lone send is written at once, as by [`enqueue`].
pub async fn enqueue_grouped(writer: &GroupCommit, msg: &MessageRecord, quota: Quota) -> store::Result<bool> {
    let bytes = serde_json::to_vec(msg).map_err(|e| StoreError::Corrupted(e.to_string()))?;
    let key = message_key(&msg.tenant, &msg.agent, &msg.id);
    match writer.put(RecordKind::Message, key, bytes, Some(0), quota).await {
        Ok(_) => Ok(true),
        Err(StoreError::Conflict { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The key under which a message's delivery is remembered, if it was sent with an
/// idempotency key (the message's own key: the id is derived from the idempotency key).
pub fn delivered_key(msg: &MessageRecord) -> Option<String> {
    msg.idempotency.as_ref().map(|_| message_key(&msg.tenant, &msg.agent, &msg.id))
}

/// Whether a message with this delivered key was delivered already.
pub async fn was_delivered(store: &dyn Store, delivered_key: &str) -> store::Result<bool> {
    Ok(store.record_get(RecordKind::Delivered, delivered_key).await?.is_some())
}

/// Remember that the message with this delivered key was delivered (for the window).
pub async fn remember_delivered(store: &dyn Store, delivered_key: &str) -> store::Result<()> {
    let rec = DeliveredRecord { delivered_ms: now_ms() };
    let bytes = serde_json::to_vec(&rec).map_err(|e| StoreError::Corrupted(e.to_string()))?;
    store.record_put(RecordKind::Delivered, delivered_key, bytes, None).await.map(|_| ())
}

/// Delete an agent's mailbox and delivered idempotency keys.
pub async fn forget_mailbox(store: &dyn Store, tenant: &str, agent: &str) -> store::Result<()> {
    let prefix = mailbox_prefix(tenant, agent);
    for kind in [RecordKind::Message, RecordKind::Delivered] {
        let keys: Vec<String> = store.record_list(kind, &prefix).await?.into_iter().map(|(k, _)| k).collect();
        store.record_delete_many(kind, &keys).await?;
    }
    Ok(())
}

/// The messages waiting in an agent's mailbox, oldest first.
pub async fn pending(store: &dyn Store, tenant: &str, agent: &str) -> store::Result<Vec<MessageRecord>> {
    let mut all: Vec<MessageRecord> = Vec::new();
    for (key, bytes) in store.record_list(RecordKind::Message, &mailbox_prefix(tenant, agent)).await? {
        match serde_json::from_slice(&bytes) {
            Ok(m) => all.push(m),
            Err(e) => tracing::error!(%key, error = %e, "mailbox: unreadable message record skipped"),
        }
    }
    all.sort_by(|a, b| (a.created_ms, a.seq, &a.id).cmp(&(b.created_ms, b.seq, &b.id)));
    Ok(all)
}

/// What a mailbox task and its wakers share, under one lock: whether the task ended
/// because its mailbox was empty (decided together with a last look for a wake-up, so that
/// a message written meanwhile is never left without a task).
#[derive(Debug, Default)]
struct Idle {
    ended: bool,
    /// When the delivered idempotency keys were last cleaned (ms), across runs.
    last_gc_ms: u64,
}

/// A running mailbox. Dropping it asks the task to stop.
#[derive(Debug)]
pub struct Mailbox {
    wake: Arc<Notify>,
    idle: Arc<Mutex<Idle>>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl Mailbox {
    /// A message was written: look now. `false` if the task has ended (its mailbox was
    /// empty, or its agent gone): the caller starts a new one.
    pub fn wake(&self) -> bool {
        let idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.ended || self.task.as_ref().is_none_or(JoinHandle::is_finished) {
            return false;
        }
        self.wake.notify_one();
        true
    }

    /// Stop at once, abandoning deliveries in flight (they are delivered again later), and
    /// wait until the task is gone.
    pub async fn halt(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for Mailbox {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Start the mailbox of `tenant/agent`, delivering up to `concurrency` messages at once.
/// It sets `pending` to the number of waiting messages each time it looks (senders add to
/// it between looks). It ends when the mailbox is empty, the host is dropped, the agent is
/// gone or stopped, or the [`Mailbox`] is dropped; a panic restarts it (supervisor).
pub fn spawn_mailbox(
    host: Weak<dyn Host>,
    tenant: String,
    agent: String,
    concurrency: usize,
    settings: MailboxSettings,
    pending: Arc<AtomicUsize>,
    fence: Option<Fence>,
) -> Mailbox {
    let (stop, stopped) = watch::channel(false);
    let wake = Arc::new(Notify::new());
    let idle = Arc::new(Mutex::new(Idle::default()));
    let (w, i) = (wake.clone(), idle.clone());
    let task = super::supervisor::supervise(host.clone(), "mailbox", move || {
        let run = Runner {
            host: host.clone(),
            tenant: tenant.clone(),
            agent: agent.clone(),
            concurrency: concurrency.max(1),
            settings: settings.clone(),
            stopped: stopped.clone(),
            wake: w.clone(),
            idle: i.clone(),
            pending: pending.clone(),
            fence: fence.clone(),
        };
        run.run()
    });
    Mailbox { wake, idle, stop, task: Some(task) }
}

struct Runner {
    host: Weak<dyn Host>,
    tenant: String,
    agent: String,
    concurrency: usize,
    settings: MailboxSettings,
    stopped: watch::Receiver<bool>,
    wake: Arc<Notify>,
    idle: Arc<Mutex<Idle>>,
    pending: Arc<AtomicUsize>,
    /// The lease every write of the consumer is fenced by.
    fence: Option<Fence>,
}

/// Messages delivered at once before the delivered ones are removed together (the most a
/// crash can deliver twice).
const CHUNK: usize = 128;

/// What one delivery attempt came to.
enum Step {
    Done,
    /// Taken by the agent: remove it (with its idempotency key, if any) from the mailbox.
    Delivered {
        key: String,
        dedup: bool,
    },
    /// The agent is gone or stopped.
    Gone,
    /// The tenant is over its invocation rate: wait, then deliver (no attempt counted).
    Throttled(Duration),
    /// A store call failed: try again after a pause.
    StoreFailed,
}

impl Runner {
    fn host(&self) -> Option<Arc<dyn Host>> {
        if *self.stopped.borrow() { None } else { self.host.upgrade() }
    }

    fn backoff(&self, attempts: u32) -> Duration {
        let factor = 1u32 << attempts.saturating_sub(1).min(16);
        self.settings.backoff.saturating_mul(factor).min(self.settings.max_backoff)
    }

    /// Wait for a wake-up, `d`, or a stop (`false`).
    async fn wait(&mut self, d: Duration) -> bool {
        let wake = self.wake.clone();
        tokio::select! {
            () = wake.notified() => true,
            () = tokio::time::sleep(d) => true,
            _ = self.stopped.wait_for(|s| *s) => false,
        }
    }

    /// Sleep `d` (new messages do not cut it short), or stop (`false`).
    async fn wait_quietly(&mut self, d: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(d) => true,
            _ = self.stopped.wait_for(|s| *s) => false,
        }
    }

    /// End the run if no wake-up came since the mailbox was read empty (`true`); decided
    /// under the lock [`Mailbox::wake`] takes.
    fn end_if_quiet(&self) -> bool {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if self.wake.notified().now_or_never().is_some() {
            return false;
        }
        idle.ended = true;
        true
    }

    /// Whether the delivered idempotency keys are due for cleaning (once a minute).
    fn gc_due(&self, now: u64) -> bool {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let due = now.saturating_sub(idle.last_gc_ms) > 60_000;
        if due {
            idle.last_gc_ms = now;
        }
        due
    }

    async fn run(mut self) {
        loop {
            let Some(host) = self.host() else { break };
            let store = match &self.fence {
                Some(f) => Arc::new(crate::store::Fenced::new(host.store(), f.clone())) as Arc<dyn Store>,
                None => host.store(),
            };
            drop(host);
            let all = match pending(store.as_ref(), &self.tenant, &self.agent).await {
                Ok(all) => all,
                Err(e) => {
                    tracing::warn!(tenant = %self.tenant, agent = %self.agent, error = %e, "mailbox: reading failed");
                    if !self.wait(self.settings.backoff).await {
                        break;
                    }
                    continue;
                }
            };
            self.pending.store(all.len(), Ordering::Relaxed);
            let now = now_ms();
            let next = all.iter().filter(|m| m.not_before_ms > now).map(|m| m.not_before_ms).min();
            let ready: Vec<MessageRecord> = all.into_iter().filter(|m| m.not_before_ms <= now).collect();
            if ready.is_empty() {
                if self.gc_due(now) {
                    self.forget_old_keys(store.as_ref()).await;
                }
                drop(store);
                if next.is_none() && self.end_if_quiet() {
                    // Empty: no task until the next message.
                    break;
                }
                let idle = self.settings.idle_poll;
                let d = next.map_or(idle, |t| Duration::from_millis(t.saturating_sub(now)).min(idle));
                if !self.wait(d).await {
                    break;
                }
                continue;
            }
            let mut gone = false;
            let mut failed = false;
            let mut throttled: Option<Duration> = None;
            let mut ready = ready.into_iter().peekable();
            while ready.peek().is_some() && !gone {
                let chunk: Vec<MessageRecord> = ready.by_ref().take(CHUNK).collect();
                let steps: Vec<Step> = futures_util::stream::iter(chunk)
                    .map(|m| self.deliver(store.clone(), m))
                    .buffer_unordered(self.concurrency)
                    .collect()
                    .await;
                gone = steps.iter().any(|s| matches!(s, Step::Gone));
                failed |= steps.iter().any(|s| matches!(s, Step::StoreFailed));
                failed |= !self.remove_delivered(store.as_ref(), &steps).await;
                throttled = throttled
                    .max(steps.iter().filter_map(|s| if let Step::Throttled(d) = s { Some(*d) } else { None }).max());
                if throttled.is_some() {
                    break;
                }
            }
            if gone {
                break;
            }
            if let Some(wait) = throttled
                && !self.wait_quietly(wait).await
            {
                break;
            }
            if failed && !self.wait(self.settings.backoff).await {
                break;
            }
        }
        tracing::debug!(tenant = %self.tenant, agent = %self.agent, "mailbox ended");
    }

    async fn deliver(&self, store: Arc<dyn Store>, mut msg: MessageRecord) -> Step {
        let key = message_key(&self.tenant, &self.agent, &msg.id);
        let dedup_key = delivered_key(&msg);
        if let Some(k) = &dedup_key {
            match was_delivered(store.as_ref(), k).await {
                Ok(true) => {
                    // Delivered before, under the same key: drop this copy.
                    return match store.record_delete(RecordKind::Message, &key).await {
                        Ok(_) => {
                            self.count("deduplicated");
                            Step::Done
                        }
                        Err(_) => Step::StoreFailed,
                    };
                }
                Ok(false) => {}
                Err(_) => return Step::StoreFailed,
            }
        }
        let Some(body) = decode_body(&msg.body_hex) else {
            tracing::error!(%key, "mailbox: a message body is not hex; parked as a dead letter");
            return self.park(store.as_ref(), &key, msg, "corrupted", "the stored body is unreadable").await;
        };
        let Some(host) = self.host() else { return Step::Gone };
        // A trace of its own, linked to the span that sent the message.
        let span = crate::telemetry::otel::delivery_span("message", &self.tenant, &self.agent, msg.trace.as_ref());
        let delivery = host.deliver_message(&self.tenant, &self.agent, &body).instrument(span).await;
        drop(host);
        match delivery {
            Delivery::Gone => Step::Gone,
            Delivery::Throttled(wait) => Step::Throttled(wait),
            Delivery::Delivered => Step::Delivered { key, dedup: dedup_key.is_some() },
            Delivery::Failed { code, message, .. } => {
                msg.attempts += 1;
                tracing::info!(tenant = %self.tenant, agent = %self.agent, id = %msg.id, attempt = msg.attempts,
                    %code, %message, "mailbox: delivery failed");
                if msg.attempts >= self.settings.attempts.max(1) {
                    return self.park(store.as_ref(), &key, msg, &code, &message).await;
                }
                msg.not_before_ms = now_ms().saturating_add(self.backoff(msg.attempts).as_millis() as u64);
                msg.error_code = Some(code);
                msg.error = Some(message);
                self.count("retried");
                match update(store.as_ref(), &key, &msg).await {
                    Ok(()) => Step::Done,
                    Err(_) => Step::StoreFailed,
                }
            }
        }
    }

    /// Remove the messages `steps` delivered, with the idempotency keys among them
    /// remembered, in one transaction. `false` if the store failed (they are delivered
    /// again).
    async fn remove_delivered(&self, store: &dyn Store, steps: &[Step]) -> bool {
        let mut keys = Vec::new();
        let mut dedup = Vec::new();
        for step in steps {
            let Step::Delivered { key, dedup: d } = step else { continue };
            if *d {
                dedup.push(key.clone());
            }
            keys.push(key.clone());
        }
        if keys.is_empty() {
            return true;
        }
        let removed = match remove_all(store, &dedup, &keys).await {
            Ok(()) => true,
            Err(StoreError::Backend { transient: false, .. }) => {
                // A backend without multi-record writes: the keys first, one at a time.
                remove_one_by_one(store, &dedup, &keys).await.is_ok()
            }
            Err(_) => false,
        };
        if removed {
            for _ in &keys {
                self.count("delivered");
            }
        }
        removed
    }

    /// Move a message to the agent's dead letters.
    async fn park(&self, store: &dyn Store, key: &str, mut msg: MessageRecord, code: &str, error: &str) -> Step {
        let now = now_ms();
        msg.error_code = Some(code.to_owned());
        msg.error = Some(error.to_owned());
        let id = format!("m-{}", msg.id);
        let mut letter = DeadLetter {
            id: id.clone(),
            tenant: self.tenant.clone(),
            agent: self.agent.clone(),
            attempts: msg.attempts,
            error_code: code.to_owned(),
            error: error.to_owned(),
            created_ms: now,
            updated_ms: now,
            content: Letter::Message { message: Box::new(msg) },
        };
        let Ok(bytes) = serde_json::to_vec(&letter) else { return Step::StoreFailed };
        // Create-only: an earlier letter under the same id (the same idempotency key failed
        // before) is kept, and this one gets an id of its own.
        let mut letter_key = super::dead_letter_key(&self.tenant, &self.agent, &id);
        let mut bytes = bytes;
        match store.record_put(RecordKind::DeadLetter, &letter_key, bytes.clone(), Some(0)).await {
            Ok(_) => {}
            Err(StoreError::Conflict { .. }) => {
                let id = format!("{id}-{:x}", now_ms());
                letter.id.clone_from(&id);
                let Ok(b) = serde_json::to_vec(&letter) else { return Step::StoreFailed };
                bytes = b;
                letter_key = super::dead_letter_key(&self.tenant, &self.agent, &id);
                if store.record_put(RecordKind::DeadLetter, &letter_key, bytes, None).await.is_err() {
                    return Step::StoreFailed;
                }
            }
            Err(_) => return Step::StoreFailed,
        }
        if store.record_delete(RecordKind::Message, key).await.is_err() {
            return Step::StoreFailed;
        }
        tracing::warn!(tenant = %self.tenant, agent = %self.agent, %id, "mailbox: message parked as a dead letter");
        self.count("dead_lettered");
        Step::Done
    }

    fn count(&self, what: &'static str) {
        if let Some(h) = self.host.upgrade() {
            h.count_message(&self.tenant, &self.agent, what);
        }
    }

    /// Drop delivered idempotency keys older than the window.
    async fn forget_old_keys(&self, store: &dyn Store) {
        let window = u64::try_from(self.settings.idempotency_window.as_millis()).unwrap_or(u64::MAX);
        let cutoff = now_ms().saturating_sub(window);
        let Ok(keys) = store.record_list(RecordKind::Delivered, &mailbox_prefix(&self.tenant, &self.agent)).await
        else {
            return;
        };
        let old: Vec<String> = keys
            .into_iter()
            .filter(|(_, v)| serde_json::from_slice::<DeliveredRecord>(v).map_or(true, |r| r.delivered_ms < cutoff))
            .map(|(k, _)| k)
            .collect();
        let _ = store.record_delete_many(RecordKind::Delivered, &old).await;
    }
}

/// Remember the delivered idempotency keys `dedup` and delete the messages `keys`, in
/// one transaction.
async fn remove_all(store: &dyn Store, dedup: &[String], keys: &[String]) -> store::Result<()> {
    let rec = DeliveredRecord { delivered_ms: now_ms() };
    let bytes = serde_json::to_vec(&rec).map_err(|e| StoreError::Corrupted(e.to_string()))?;
    let puts = dedup.iter().map(|k| RecordOp::Put {
        kind: RecordKind::Delivered,
        key: k.clone(),
        value: bytes.clone(),
        expected: None,
    });
    let deletes = keys.iter().map(|k| RecordOp::Delete { kind: RecordKind::Message, key: k.clone(), expected: None });
    let ops: Vec<RecordOp> = puts.chain(deletes).collect();
    store.record_apply(None, &ops, Quota::NONE).await.map(|_| ())
}

/// [`remove_all`] without a multi-record write: each key remembered before the messages go
/// (a crash in between must not forget a key), then the messages in one call.
async fn remove_one_by_one(store: &dyn Store, dedup: &[String], keys: &[String]) -> store::Result<()> {
    for k in dedup {
        remember_delivered(store, k).await?;
    }
    store.record_delete_many(RecordKind::Message, keys).await.map(|_| ())
}

/// Rewrite a waiting message (its attempts and backoff) unless it is gone meanwhile.
async fn update(store: &dyn Store, key: &str, msg: &MessageRecord) -> store::Result<()> {
    let Some((_, rev)) = store.record_get(RecordKind::Message, key).await? else { return Ok(()) };
    let bytes = serde_json::to_vec(msg).map_err(|e| StoreError::Corrupted(e.to_string()))?;
    match store.record_put(RecordKind::Message, key, bytes, Some(rev)).await {
        Ok(_) | Err(StoreError::Conflict { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registry;
    use crate::store::EmbeddedStore;

    #[test]
    fn bodies_round_trip_through_hex() {
        let body = [0u8, 1, 0x7f, 0x80, 0xff];
        assert_eq!(decode_body(&encode_body(&body)).as_deref(), Some(&body[..]));
        assert_eq!(decode_body(""), Some(Vec::new()));
        assert_eq!(decode_body("abc"), None);
        assert_eq!(decode_body("zz"), None);
    }

    #[test]
    fn idempotent_messages_share_an_id_and_others_do_not() {
        let a = new_message("t", "b", "a", None, b"x", Some("order-1"));
        let b = new_message("t", "b", "a", None, b"y", Some("order-1"));
        let c = new_message("t", "b", "a", None, b"x", Some("order-2"));
        assert_eq!(a.id, b.id);
        assert_ne!(a.id, c.id);
        let d = new_message("t", "b", "a", None, b"x", None);
        let e = new_message("t", "b", "a", None, b"x", None);
        assert_ne!(d.id, e.id);
        for m in [&a, &d] {
            assert!(super::super::valid_dead_letter_id(&format!("m-{}", m.id)), "{}", m.id);
        }
    }

    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Mode {
        Take,
        Fail,
        /// Panic (once: the mode becomes `Take`).
        PanicOnce,
    }

    struct Fake {
        store: Arc<dyn Store>,
        mode: Mutex<Mode>,
        got: Mutex<Vec<Vec<u8>>>,
        counts: Mutex<Vec<&'static str>>,
        restarts: Mutex<Vec<&'static str>>,
    }

    #[async_trait::async_trait]
    impl Host for Fake {
        fn store(&self) -> Arc<dyn Store> {
            self.store.clone()
        }

        async fn deliver(&self, _: &str, _: &str, _: &[crate::store::ChangeEvent]) -> Delivery {
            Delivery::Gone
        }

        async fn deliver_message(&self, _: &str, _: &str, body: &[u8]) -> Delivery {
            let mode = *self.mode.lock().unwrap();
            if mode == Mode::PanicOnce {
                *self.mode.lock().unwrap() = Mode::Take;
                panic!("a delivery panics (test)");
            }
            self.got.lock().unwrap().push(body.to_vec());
            match mode {
                Mode::Fail => Delivery::Failed { code: "agent_error".into(), message: "no".into(), agent: None },
                _ => Delivery::Delivered,
            }
        }

        fn task_restarted(&self, kind: &'static str) {
            self.restarts.lock().unwrap().push(kind);
        }

        fn count_message(&self, _: &str, _: &str, what: &'static str) {
            self.counts.lock().unwrap().push(what);
        }
    }

    fn setup() -> (tempfile::TempDir, Arc<Fake>, Registry) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&dir.path().join("s")).unwrap());
        let fake = Arc::new(Fake {
            store: store.clone(),
            mode: Mutex::new(Mode::Take),
            got: Mutex::default(),
            counts: Mutex::default(),
            restarts: Mutex::default(),
        });
        (dir, fake, Registry::new(store))
    }

    fn settings() -> MailboxSettings {
        MailboxSettings {
            attempts: 3,
            backoff: Duration::from_millis(1),
            idle_poll: Duration::from_millis(50),
            ..MailboxSettings::default()
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn messages_are_delivered_once_per_idempotency_key_and_removed() {
        let (_dir, fake, reg) = setup();
        let store = reg.store().clone();
        for (body, key) in [(&b"one"[..], Some("k1")), (b"dup", Some("k1")), (b"two", None)] {
            enqueue(store.as_ref(), &new_message("t", "b", "a", None, body, key), Quota::NONE).await.unwrap();
        }
        let host: Weak<dyn Host> = Arc::downgrade(&fake) as Weak<dyn Host>;
        let mut mb = spawn_mailbox(host.clone(), "t".into(), "b".into(), 1, settings(), Arc::default(), None);
        until("two deliveries", || fake.got.lock().unwrap().len() == 2).await;
        until("an empty mailbox", || fake.counts.lock().unwrap().len() == 2).await;
        assert_eq!(*fake.got.lock().unwrap(), vec![b"one".to_vec(), b"two".to_vec()], "oldest first, dup dropped");
        assert!(pending(store.as_ref(), "t", "b").await.unwrap().is_empty());
        // The key is remembered after delivery: the same key again is dropped, not delivered.
        enqueue(store.as_ref(), &new_message("t", "b", "a", None, b"again", Some("k1")), Quota::NONE).await.unwrap();
        if !mb.wake() {
            // The empty mailbox's task ended: a send starts a new one.
            mb = spawn_mailbox(host, "t".into(), "b".into(), 1, settings(), Arc::default(), None);
        }
        until("the duplicate to be dropped", || fake.counts.lock().unwrap().contains(&"deduplicated")).await;
        assert_eq!(fake.got.lock().unwrap().len(), 2);
        mb.halt().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_message_is_retried_then_parked() {
        let (_dir, fake, reg) = setup();
        let store = reg.store().clone();
        *fake.mode.lock().unwrap() = Mode::Fail;
        enqueue(store.as_ref(), &new_message("t", "b", "a", Some("news"), b"bad", None), Quota::NONE).await.unwrap();
        let host: Weak<dyn Host> = Arc::downgrade(&fake) as Weak<dyn Host>;
        let mb = spawn_mailbox(host, "t".into(), "b".into(), 4, settings(), Arc::default(), None);
        until("a dead letter", || fake.counts.lock().unwrap().contains(&"dead_lettered")).await;
        assert_eq!(fake.got.lock().unwrap().len(), 3, "three attempts");
        assert_eq!(*fake.counts.lock().unwrap(), vec!["retried", "retried", "dead_lettered"]);
        let letters = super::super::dead_letters(&reg, "t", "b").await.unwrap();
        assert_eq!(letters.len(), 1);
        let Letter::Message { message: m } = &letters[0].content else { panic!("{:?}", letters[0]) };
        assert_eq!(
            (m.topic.as_deref(), m.attempts, decode_body(&m.body_hex).unwrap()),
            (Some("news"), 3, b"bad".to_vec())
        );
        assert!(pending(store.as_ref(), "t", "b").await.unwrap().is_empty());
        mb.halt().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_mailbox_that_panics_is_restarted_and_delivers() {
        let (_dir, fake, reg) = setup();
        let store = reg.store().clone();
        *fake.mode.lock().unwrap() = Mode::PanicOnce;
        for body in [&b"one"[..], b"two"] {
            enqueue(store.as_ref(), &new_message("t", "b", "a", None, body, None), Quota::NONE).await.unwrap();
        }
        let host: Weak<dyn Host> = Arc::downgrade(&fake) as Weak<dyn Host>;
        let mb = spawn_mailbox(host, "t".into(), "b".into(), 1, settings(), Arc::default(), None);
        until("both delivered", || fake.counts.lock().unwrap().iter().filter(|c| **c == "delivered").count() == 2)
            .await;
        assert_eq!(*fake.restarts.lock().unwrap(), vec!["mailbox"], "one restart, counted");
        assert_eq!(*fake.got.lock().unwrap(), vec![b"one".to_vec(), b"two".to_vec()], "each once, in order");
        for _ in 0..2000 {
            if pending(store.as_ref(), "t", "b").await.unwrap().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(pending(store.as_ref(), "t", "b").await.unwrap().is_empty(), "delivered ones are removed");
        mb.halt().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_empty_mailbox_has_no_task_until_woken() {
        let (_dir, fake, reg) = setup();
        let store = reg.store().clone();
        let host: Weak<dyn Host> = Arc::downgrade(&fake) as Weak<dyn Host>;
        let mb = spawn_mailbox(host.clone(), "t".into(), "b".into(), 1, settings(), Arc::default(), None);
        // Nothing waits: the task ends at once, and says so to the next waker.
        for _ in 0..2000 {
            if mb.task.as_ref().unwrap().is_finished() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(!mb.wake(), "an ended mailbox task asks for a new one");
        enqueue(store.as_ref(), &new_message("t", "b", "a", None, b"late", None), Quota::NONE).await.unwrap();
        let mb = spawn_mailbox(host, "t".into(), "b".into(), 1, settings(), Arc::default(), None);
        until("the late message", || fake.got.lock().unwrap().len() == 1).await;
        mb.halt().await;
    }
}
