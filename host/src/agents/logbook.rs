//! Agents' logs kept in the store, so that a restart keeps them.
//!
//! Each agent's log ring ([`crate::runtime::LogRing`]) is what the API reads; the logbook
//! writes the ring's new lines behind it, off the invocation's path: an invocation hands
//! its lines over ([`LogBook::append`]) and a writer task stores them a moment later, the
//! lines of many invocations of an agent in one record ([`RecordKind::AgentLog`], keyed
//! `tenant/agent/<first line's number>`). A chunk whose lines have all left the ring is
//! deleted, so an agent's stored log stays within the ring's bounds plus one chunk.
//!
//! [`LogBook::flush`] writes what is waiting (a clean shutdown does, after the last
//! invocation ended); a crash loses at most the lines of the last [`BATCH_DELAY`] or so.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::runtime::LogLine;
use crate::store::{RecordKind, Store, StoreError};

/// How long the writer waits after a first line, to store the lines of the invocations
/// that end meanwhile together.
pub const BATCH_DELAY: Duration = Duration::from_millis(50);

/// How long the writer waits before it tries again after the store failed.
const RETRY_DELAY: Duration = Duration::from_secs(1);

/// Lines of one agent waiting to be stored.
#[derive(Debug, Default)]
struct Waiting {
    lines: Vec<LogLine>,
    /// The oldest line number its ring still holds: chunks wholly before it go.
    keep_from: u64,
}

/// What is stored of one agent: its chunks, oldest first, each as (key, last line number).
type Chunks = VecDeque<(String, u64)>;

/// The log writer of this node.
pub struct LogBook {
    store: Arc<dyn Store>,
    waiting: Mutex<HashMap<String, Waiting>>,
    wake: tokio::sync::Notify,
    /// The chunks of each agent written or read by this node; held while writing, so that
    /// a flush and a purge never interleave.
    chunks: tokio::sync::Mutex<HashMap<String, Chunks>>,
    writer: Mutex<Option<tokio::task::JoinHandle<()>>>,
    stopping: AtomicBool,
}

impl std::fmt::Debug for LogBook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogBook").finish_non_exhaustive()
    }
}

/// `tenant/agent/`: the prefix of an agent's chunks.
fn prefix(tenant: &str, agent: &str) -> String {
    format!("{tenant}/{agent}/")
}

/// The agent (`tenant/agent`) a chunk key belongs to.
fn agent_of(key: &str) -> Option<&str> {
    key.rsplit_once('/').map(|(agent, _)| agent)
}

impl LogBook {
    /// A logbook writing to `store`; nothing is written until [`Self::spawn_writer`] or
    /// [`Self::flush`].
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            waiting: Mutex::new(HashMap::new()),
            wake: tokio::sync::Notify::new(),
            chunks: tokio::sync::Mutex::new(HashMap::new()),
            writer: Mutex::new(None),
            stopping: AtomicBool::new(false),
        }
    }

    /// Hand over new lines of agent `tenant/agent`, whose ring now starts at `keep_from`.
    /// Cheap: the lines are stored by the writer task.
    pub fn append(&self, tenant: &str, agent: &str, lines: Vec<LogLine>, keep_from: u64) {
        if lines.is_empty() {
            return;
        }
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        let w = waiting.entry(format!("{tenant}/{agent}")).or_default();
        w.keep_from = w.keep_from.max(keep_from);
        w.lines.retain(|l| l.seq >= keep_from);
        w.lines.extend(lines.into_iter().filter(|l| l.seq >= keep_from));
        drop(waiting);
        self.wake.notify_one();
    }

    /// The writer: stores what waits, a [`BATCH_DELAY`] after it was handed over, until
    /// [`Self::stop`].
    pub fn spawn_writer(self: &Arc<Self>) {
        let book = self.clone();
        let task = tokio::spawn(async move {
            loop {
                let woken = book.wake.notified();
                tokio::pin!(woken);
                // Registered before the checks: a line handed over meanwhile wakes it.
                woken.as_mut().enable();
                if book.stopping.load(Ordering::Acquire) {
                    return;
                }
                if book.waiting.lock().unwrap_or_else(PoisonError::into_inner).is_empty() {
                    woken.await;
                    continue;
                }
                tokio::time::sleep(BATCH_DELAY).await;
                if let Err(e) = book.flush().await {
                    tracing::warn!(error = %e, "storing agent logs failed; will try again");
                    tokio::time::sleep(RETRY_DELAY).await;
                }
            }
        });
        *self.writer.lock().unwrap_or_else(PoisonError::into_inner) = Some(task);
    }

    /// Stop the writer (after the flush it is in, if any), then store what still waits:
    /// for a clean shutdown, once no invocation runs.
    pub async fn stop(&self) -> Result<(), StoreError> {
        self.stopping.store(true, Ordering::Release);
        self.wake.notify_one();
        let writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(w) = writer {
            let _ = w.await;
        }
        self.flush().await
    }

    /// Store every line handed over so far, and delete the chunks that left the rings.
    /// On an error the lines not stored wait for the next flush.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let mut chunks = self.chunks.lock().await;
        let waiting = std::mem::take(&mut *self.waiting.lock().unwrap_or_else(PoisonError::into_inner));
        let mut result = Ok(());
        let mut left = HashMap::new();
        for (agent, w) in waiting {
            if result.is_err() {
                left.insert(agent, w);
                continue;
            }
            if let Err(e) = self.store_agent(&mut chunks, &agent, &w).await {
                result = Err(e);
                left.insert(agent, w);
            }
        }
        if !left.is_empty() {
            let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
            for (agent, mut w) in left {
                // Lines handed over meanwhile come after these.
                if let Some(newer) = waiting.remove(&agent) {
                    w.keep_from = w.keep_from.max(newer.keep_from);
                    w.lines.extend(newer.lines);
                    let keep_from = w.keep_from;
                    w.lines.retain(|l| l.seq >= keep_from);
                }
                waiting.insert(agent, w);
            }
        }
        result
    }

    async fn store_agent(
        &self,
        chunks: &mut HashMap<String, Chunks>,
        agent: &str,
        w: &Waiting,
    ) -> Result<(), StoreError> {
        if !chunks.contains_key(agent) {
            let known = self.read_chunks(&format!("{agent}/")).await?;
            chunks.insert(agent.to_owned(), known.into_values().next().map(|(c, _)| c).unwrap_or_default());
        }
        let Some(mine) = chunks.get_mut(agent) else { return Ok(()) };
        if let (Some(first), Some(last)) = (w.lines.first(), w.lines.last()) {
            let key = format!("{agent}/{:020}", first.seq);
            let value = serde_json::to_vec(&w.lines).map_err(|e| StoreError::Backend {
                message: format!("encoding log lines: {e}"),
                transient: false,
                source: None,
            })?;
            self.store.record_put(RecordKind::AgentLog, &key, value, None).await?;
            // A chunk written again under its key (a retry) is listed once.
            mine.retain(|(k, _)| *k != key);
            mine.push_back((key, last.seq));
        }
        let mut gone = Vec::new();
        while mine.len() > 1 && mine.front().is_some_and(|(_, last)| *last < w.keep_from) {
            if let Some((k, _)) = mine.pop_front() {
                gone.push(k);
            }
        }
        if let Err(e) = self.store.record_delete_many(RecordKind::AgentLog, &gone).await {
            // Deleted by the next flush of this agent.
            for k in gone.into_iter().rev() {
                mine.push_front((k, 0));
            }
            return Err(e);
        }
        Ok(())
    }

    /// The stored chunks under `prefix`, by agent (`tenant/agent`): their keys and last
    /// line numbers, and their lines.
    async fn read_chunks(&self, prefix: &str) -> Result<BTreeMap<String, (Chunks, Vec<LogLine>)>, StoreError> {
        let mut out: BTreeMap<String, (Chunks, Vec<LogLine>)> = BTreeMap::new();
        for (key, value) in self.store.record_list(RecordKind::AgentLog, prefix).await? {
            let Some(agent) = agent_of(&key) else { continue };
            let entry = out.entry(agent.to_owned()).or_default();
            match serde_json::from_slice::<Vec<LogLine>>(&value) {
                Ok(lines) => {
                    entry.0.push_back((key, lines.last().map_or(0, |l| l.seq)));
                    entry.1.extend(lines);
                }
                Err(e) => {
                    // Dropped by the agent's next write past it.
                    tracing::warn!(%key, error = %e, "an agent log chunk cannot be read; skipped");
                    entry.0.push_back((key, 0));
                }
            }
        }
        Ok(out)
    }

    /// Every stored agent log, by agent (`tenant/agent`), oldest line first: one scan, at
    /// restore. The chunks become known to the writer.
    pub async fn load_all(&self) -> Result<HashMap<String, Vec<LogLine>>, StoreError> {
        let mut chunks = self.chunks.lock().await;
        let mut out = HashMap::new();
        for (agent, (c, lines)) in self.read_chunks("").await? {
            chunks.insert(agent.clone(), c);
            out.insert(agent, lines);
        }
        Ok(out)
    }

    /// Delete the stored log of agent `tenant/agent` and the lines still waiting (the
    /// agent was deleted; a line handed over later is stored again).
    pub async fn purge(&self, tenant: &str, agent: &str) -> Result<u64, StoreError> {
        let mut chunks = self.chunks.lock().await;
        let key = format!("{tenant}/{agent}");
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner).remove(&key);
        chunks.remove(&key);
        let keys: Vec<String> = self
            .store
            .record_list(RecordKind::AgentLog, &prefix(tenant, agent))
            .await?
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        self.store.record_delete_many(RecordKind::AgentLog, &keys).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{Fields, LogStream};
    use crate::store::EmbeddedStore;

    fn line(seq: u64) -> LogLine {
        LogLine {
            seq,
            time_ms: seq,
            invocation: "inv".into(),
            stream: LogStream::Stdout,
            level: None,
            message: format!("line {seq}"),
            fields: Fields::new(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn stop_stores_every_line_handed_over_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let book = Arc::new(LogBook::new(store.clone()));
        book.spawn_writer();
        book.append("t", "a", vec![line(1), line(2)], 1);
        book.append("t", "a", vec![line(3)], 1);
        // The writer waits for its batch delay; a clean stop stores it all when it returns.
        book.stop().await.unwrap();
        let lines = LogBook::new(store).load_all().await.unwrap();
        assert_eq!(lines["t/a"], [line(1), line(2), line(3)]);
    }
}
