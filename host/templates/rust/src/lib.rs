//! A notes agent: every part of the Cortex agent world in one small program.
//!
//! - `init` reads the configuration (`greeting`) and records it in `settings/<agent>`.
//! - `handle` takes a JSON command: `hello`, `put` (compare-and-swap), `get`, `link`
//!   (a graph relation), `send` (a message to another agent), `publish` (a message to
//!   the agents subscribed to a topic) and `receive` (what a message delivers).
//! - `on-change` sees the writes to the watched collection `notes` and records each
//!   one in `changes/<key>`.

use cortex_agent::graph::{self, Direction};
use cortex_agent::{Agent, AgentError, ChangeEvent, ChangeOp, documents, log, messaging};
use serde_json::{Value, json};

struct Notes;

/// A string field of the command, or a `bad-input` error naming it.
fn field<'a>(cmd: &'a Value, name: &str) -> Result<&'a str, AgentError> {
    cmd[name].as_str().ok_or_else(|| AgentError::bad_input(format!("missing string field {name:?}")))
}

/// Write `value` to `collection/key` (any revision).
fn store(collection: &str, key: &str, value: &Value) -> Result<u64, AgentError> {
    Ok(documents::put(collection, key, &value.to_string(), None)?)
}

impl Agent for Notes {
    fn init(config: Vec<(String, String)>) -> Result<(), AgentError> {
        let greeting = match config.iter().find(|(k, _)| k == "greeting") {
            Some((_, g)) if g.is_empty() => return Err(AgentError::new("bad-config", "greeting must not be empty")),
            Some((_, g)) => g.clone(),
            None => "Hello".to_owned(),
        };
        store("settings", &cortex_agent::whoami().agent, &json!({ "greeting": greeting }))?;
        log::info(&format!("configured: greeting {greeting:?}"));
        Ok(())
    }

    fn handle(input: Vec<u8>) -> Result<Option<Vec<u8>>, AgentError> {
        let cmd: Value = serde_json::from_slice(&input)?;
        let me = cortex_agent::whoami().agent;
        let reply = match cmd["op"].as_str().unwrap_or_default() {
            "hello" => {
                let greeting = cortex_agent::config("greeting").unwrap_or_else(|| "Hello".to_owned());
                json!({ "message": format!("{greeting}, {}!", field(&cmd, "name")?) })
            }
            "put" => {
                let key = field(&cmd, "key")?;
                // Compare-and-swap: the write succeeds only if nobody wrote since our read.
                let current = documents::get("notes", key)?.map_or(0, |d| d.revision);
                let value = json!({ "text": field(&cmd, "text")? }).to_string();
                let revision = documents::put("notes", key, &value, Some(current))?;
                json!({ "key": key, "revision": revision })
            }
            "get" => {
                let collection = cmd["collection"].as_str().unwrap_or("notes");
                match documents::get(collection, field(&cmd, "key")?)? {
                    Some(doc) => json!({ "value": serde_json::from_str::<Value>(&doc.value)?, "revision": doc.revision }),
                    None => json!({ "value": null, "revision": 0 }),
                }
            }
            "link" => {
                graph::link(&me, field(&cmd, "to")?, "knows", "{}")?;
                let edges = graph::neighbours(&me, Some("knows"), Direction::Outgoing, 100)?;
                json!({ "neighbours": edges.into_iter().map(|e| e.to).collect::<Vec<_>>() })
            }
            "send" => {
                let to = field(&cmd, "to")?;
                let message = json!({ "op": "receive", "from": me, "text": field(&cmd, "text")? });
                messaging::send(to, message.to_string().as_bytes(), None)?;
                json!({ "sent": to })
            }
            "publish" => {
                let topic = field(&cmd, "topic")?;
                let message = json!({ "op": "receive", "from": me, "text": field(&cmd, "text")? });
                messaging::publish(topic, message.to_string().as_bytes())?;
                json!({ "published": topic })
            }
            "receive" => {
                // A message from another agent: delivered at least once, so the write is idempotent.
                store("inbox", field(&cmd, "from")?, &json!({ "text": field(&cmd, "text")? }))?;
                return Ok(None);
            }
            other => return Err(AgentError::bad_input(format!("unknown op {other:?}"))),
        };
        Ok(Some(reply.to_string().into_bytes()))
    }

    fn on_change(events: Vec<ChangeEvent>) -> Result<(), AgentError> {
        for event in events.iter().filter(|e| e.collection == "notes") {
            let op = match event.op {
                ChangeOp::Put => "put",
                ChangeOp::Delete => "delete",
            };
            store("changes", &event.key, &json!({ "op": op, "revision": event.revision, "seq": event.seq }))?;
        }
        Ok(())
    }
}

cortex_agent::export_agent!(Notes);
