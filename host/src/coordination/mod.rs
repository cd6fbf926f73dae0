//! Coordination between agents: the change-feed dispatcher and durable mailboxes
//! ([`mailbox`]).
//!
//! An agent deployed with watches (a collection and a key prefix each) gets its tenant's
//! document writes through `on-change`, in batches, in feed order. One task per watching
//! agent ([`spawn`]) reads the feed after the agent's cursor, keeps the events the agent
//! watches, calls the agent, and moves the cursor (a [`CursorRecord`]) only once the batch
//! succeeded: delivery is at-least-once, never skips an event, and survives a crash (a
//! batch in flight when the host dies is delivered again). A batch that keeps failing is
//! retried with exponential backoff, then parked as a [`DeadLetter`] that the API lists
//! and can replay, and the cursor moves past it.
//!
//! The cursor starts at the feed head when the agent is deployed: an agent sees the writes
//! made after its deploy. A stopped agent keeps its cursor and catches up when started.

mod dispatcher;
pub mod group_commit;
pub mod mailbox;
pub mod supervisor;

use std::sync::Arc;
use std::time::Duration;

pub use self::dispatcher::{Watcher, spawn};
pub use self::mailbox::{Mailbox, MailboxSettings, spawn_mailbox};
pub use self::supervisor::supervise;
use crate::registry::{CursorRecord, DeadLetter, Registry, Watch, now_ms, scoped};
use crate::store::{self, ChangeEvent, RecordKind, Store};

/// How a dispatcher batches, retries and waits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DispatchSettings {
    /// Most feed events read (and so delivered) at once.
    pub batch_size: usize,
    /// Deliveries of one batch before it becomes a dead letter (at least 1).
    pub attempts: u32,
    /// Wait before the first retry; doubled for each further retry.
    pub backoff: Duration,
    /// Longest wait between retries (and after a store error).
    pub max_backoff: Duration,
    /// How long one wait for new events lasts before the feed head is read again.
    pub idle_wait: Duration,
}

impl Default for DispatchSettings {
    fn default() -> Self {
        Self {
            batch_size: 64,
            attempts: 3,
            backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
            idle_wait: Duration::from_secs(10),
        }
    }
}

/// The result of one `on-change` call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// The agent took the batch.
    Delivered,
    /// The agent (or the host on its behalf) failed: outcome code and detail.
    Failed {
        /// Stable outcome code (`agent_error`, `trap`, `deadline_exceeded`, ...).
        code: String,
        /// Detail for the dead letter.
        message: String,
        /// The agent's own error code and message, when it failed with one (`agent_error`).
        agent: Option<(String, String)>,
    },
    /// The agent is deleted or stopped: its dispatcher ends.
    Gone,
    /// The tenant is over its invocation rate: try again after the wait, without counting
    /// an attempt.
    Throttled(Duration),
}

/// What a dispatcher needs from the host: the store, and a way to run the agent's
/// `on-change` with its current module, config and limits.
#[async_trait::async_trait]
pub trait Host: Send + Sync + 'static {
    /// The store holding the feed, cursors and dead letters.
    fn store(&self) -> Arc<dyn Store>;

    /// Run `on-change(events)` of `tenant/agent` once.
    async fn deliver(&self, tenant: &str, agent: &str, events: &[ChangeEvent]) -> Delivery;

    /// Count what happened to a batch: `delivered`, `retried` or `dead_lettered`.
    fn count(&self, _tenant: &str, _what: &'static str) {}

    /// Run `handle(body)` of `tenant/agent` once, for a message from its mailbox.
    async fn deliver_message(&self, _tenant: &str, _agent: &str, _body: &[u8]) -> Delivery {
        Delivery::Gone
    }

    /// Count what happened to a message: `delivered`, `retried`, `dead_lettered` or
    /// `deduplicated`.
    fn count_message(&self, _tenant: &str, _agent: &str, _what: &'static str) {}

    /// Count a background task of `kind` (`watcher`, `mailbox`, `mailbox_sweep`) that
    /// panicked and is started again.
    fn task_restarted(&self, _kind: &'static str) {}
}

/// Whether any of `watches` covers `event`.
pub fn watched(watches: &[Watch], event: &ChangeEvent) -> bool {
    watches.iter().any(|w| w.matches(&event.collection, &event.key))
}

/// Key of an agent's dead letters, `tenant/agent/` (the prefix to list them).
pub fn dead_letter_prefix(tenant: &str, agent: &str) -> String {
    format!("{}/", scoped(tenant, agent))
}

/// Whether `id` has the shape of a dead-letter id (lowercase letters, digits and dashes),
/// so that it cannot reach outside its agent's key space.
pub fn valid_dead_letter_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Set a new watcher's cursor to the tenant's feed head (at deploy) and drop dead letters
/// a former agent of the same name left. Returns the head.
pub async fn start_cursor(registry: &Registry, tenant: &str, agent: &str) -> store::Result<u64> {
    let head = registry.store().feed_head(tenant).await?;
    forget_dead_letters(registry, tenant, agent).await?;
    let rec = CursorRecord { seq: head, updated_ms: now_ms() };
    registry.put(RecordKind::Cursor, &scoped(tenant, agent), &rec, None).await?;
    Ok(head)
}

/// Delete an agent's cursor, mailbox and dead letters (when the agent is deleted).
pub async fn forget(registry: &Registry, tenant: &str, agent: &str) -> store::Result<()> {
    registry.delete(RecordKind::Cursor, &scoped(tenant, agent)).await?;
    mailbox::forget_mailbox(registry.store().as_ref(), tenant, agent).await?;
    forget_dead_letters(registry, tenant, agent).await
}

async fn forget_dead_letters(registry: &Registry, tenant: &str, agent: &str) -> store::Result<()> {
    let store = registry.store();
    let letters = store.record_list(RecordKind::DeadLetter, &dead_letter_prefix(tenant, agent)).await?;
    let keys: Vec<String> = letters.into_iter().map(|(k, _)| k).collect();
    store.record_delete_many(RecordKind::DeadLetter, &keys).await?;
    Ok(())
}

/// An agent's dead letters, oldest first.
pub async fn dead_letters(registry: &Registry, tenant: &str, agent: &str) -> store::Result<Vec<DeadLetter>> {
    registry.list(RecordKind::DeadLetter, &dead_letter_prefix(tenant, agent)).await
}

/// Key of one dead letter.
pub fn dead_letter_key(tenant: &str, agent: &str, id: &str) -> String {
    format!("{}{id}", dead_letter_prefix(tenant, agent))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(collection: &str, key: &str) -> ChangeEvent {
        ChangeEvent {
            seq: 1,
            collection: collection.into(),
            key: key.into(),
            op: store::ChangeOp::Put,
            revision: 1,
            agent: "a".into(),
            trace: None,
        }
    }

    #[test]
    fn watches_match_collection_and_key_prefix() {
        let w = vec![
            Watch { collection: "orders".into(), prefix: String::new() },
            Watch { collection: "users".into(), prefix: "eu/".into() },
        ];
        assert!(watched(&w, &event("orders", "o1")));
        assert!(watched(&w, &event("users", "eu/1")));
        assert!(!watched(&w, &event("users", "us/1")));
        assert!(!watched(&w, &event("orders2", "o1")));
        assert!(!watched(&[], &event("orders", "o1")));
    }

    #[test]
    fn dead_letter_ids_stay_inside_their_agent() {
        assert!(valid_dead_letter_id("00000000000000000012-00000000000000000015"));
        assert!(valid_dead_letter_id("m-k0123abc"));
        for bad in ["", "../x", "A", "1/2", "a b", &"1".repeat(65)] {
            assert!(!valid_dead_letter_id(bad), "{bad:?}");
        }
    }
}
