//! `watcher` (world `agent`): records the change events it is given, for the change-feed
//! tests.
//!
//! `on-change` appends one entry per event, `"SEQ:COLLECTION/KEY@REVISION"` (with `:del`
//! after a delete), to the JSON array in `seen/<agent>`, all of a batch in one
//! compare-and-swap write. While the config value `fail` is `yes` it writes nothing and
//! fails the batch (error code `told-to-fail`), so tests can make dead letters.
//! `handle` returns the array (`[]` before the first batch).

use cortex_agent::{Agent, AgentError, ChangeEvent, ChangeOp, documents};

struct Watcher;

fn entry(e: &ChangeEvent) -> String {
    let del = if matches!(e.op, ChangeOp::Delete) { ":del" } else { "" };
    format!("{}:{}/{}@{}{del}", e.seq, e.collection, e.key, e.revision)
}

impl Agent for Watcher {
    fn handle(_input: Vec<u8>) -> Result<Option<Vec<u8>>, AgentError> {
        let me = cortex_agent::whoami().agent;
        let seen = documents::get("seen", &me)?.map_or_else(|| "[]".to_owned(), |d| d.value);
        Ok(Some(seen.into_bytes()))
    }

    fn on_change(events: Vec<ChangeEvent>) -> Result<(), AgentError> {
        if cortex_agent::config("fail").as_deref() == Some("yes") {
            return Err(AgentError::new("told-to-fail", format!("refusing {} events", events.len())));
        }
        let me = cortex_agent::whoami().agent;
        let new: Vec<String> = events.iter().map(entry).collect();
        documents::update("seen", &me, |old: Option<Vec<String>>| {
            let mut all = old.unwrap_or_default();
            all.extend(new.iter().cloned());
            all
        })?;
        Ok(())
    }
}

cortex_agent::export_agent!(Watcher);
