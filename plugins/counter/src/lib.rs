//! `counter` (world `agent`): adds one to the JSON number in `counters/<input>` (key
//! `default` for empty input) with compare-and-swap, and returns the new value.

use cortex_agent::{Agent, AgentError, documents};

struct Counter;

impl Agent for Counter {
    fn handle(input: Vec<u8>) -> Result<Option<Vec<u8>>, AgentError> {
        let key = String::from_utf8(input)?;
        let key = if key.is_empty() { "default" } else { key.as_str() };
        let (value, _revision) = documents::update("counters", key, |old: Option<u64>| old.unwrap_or(0) + 1)?;
        Ok(Some(value.to_string().into_bytes()))
    }
}

cortex_agent::export_agent!(Counter);
