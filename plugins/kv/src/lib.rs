//! `kv` (world `agent`): a benign agent that drives the documents and runtime imports
//! from text commands, so tests can exercise them through a guest.
//!
//! | input                               | output                                  |
//! |-------------------------------------|-----------------------------------------|
//! | `get:COLL/KEY`                      | the value's JSON, or `none`             |
//! | `put:COLL/KEY=JSON`                 | the new revision                        |
//! | `cas:COLL/KEY@REV=JSON`             | the new revision, or `conflict:<current>` |
//! | `del:COLL/KEY` or `del:COLL/KEY@REV`| `true` / `false` (whether it existed)   |
//! | `list:COLL/PREFIX?limit=N&cursor=C` | `{"keys":[...],"next":...}` (limit defaults to 100) |
//! | `tx:[{"op":"put","c":..,"k":..,"v":<json>,"rev":N?},{"op":"del","c":..,"k":..,"rev":N?}]` | JSON array of revisions |
//! | `getn:N:COLL/KEY`                   | `ok` after N gets (benchmarks)          |
//! | `whoami`                            | `{"tenant":..,"agent":..,"invocation":..}` |
//! | `config:KEY`                        | the value, or `none`                    |
//! | `log:MSG`                           | `logged`, after logging MSG at info with a field |
//! | `fail:N`                            | `Err(big-error)` with a message of N bytes |
//! | `say:TEXT`                          | `said`, after printing TEXT as a line to stdout |
//!
//! `init` puts the documents of the config key `init_puts` (`COLL/KEY=JSON;COLL/KEY=JSON`),
//! reads each back (failing with `not-visible` if it cannot see its own write), then fails
//! with `bad-config` if the config has `reject`.
//!
//! Any documents error is returned as `Ok("error:<variant>:<detail>")` so tests see the
//! typed error the guest received. A malformed command is `Err(bad-input)`.

use cortex_agent::documents::{self, DeleteOp, Op, PutOp, StoreError};
use cortex_agent::{Agent, AgentError, log};
use serde::Deserialize;
use serde_json::json;

struct Kv;

/// Splits `COLL/KEY` at the first `/` (keys may contain `/`, collections may not).
fn coll_key(s: &str) -> Result<(&str, &str), AgentError> {
    s.split_once('/').ok_or_else(|| AgentError::bad_input(format!("expected COLL/KEY, got {s:?}")))
}

/// Splits `COLL/KEY@REV` into the address and the revision.
fn with_rev(s: &str) -> Result<(&str, u64), AgentError> {
    let (addr, rev) =
        s.rsplit_once('@').ok_or_else(|| AgentError::bad_input(format!("expected ...@REV, got {s:?}")))?;
    let rev = rev.parse().map_err(|e| AgentError::bad_input(format!("bad revision {rev:?}: {e}")))?;
    Ok((addr, rev))
}

fn error_text(err: &StoreError) -> String {
    format!("error:{}:{}", err.code(), err.detail())
}

/// One op of a `tx:` command.
#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
enum TxOp {
    Put { c: String, k: String, v: serde_json::Value, rev: Option<u64> },
    Del { c: String, k: String, rev: Option<u64> },
}

fn run(command: &str) -> Result<Result<String, StoreError>, AgentError> {
    let (verb, rest) = command.split_once(':').unwrap_or((command, ""));
    Ok(match verb {
        "get" => {
            let (c, k) = coll_key(rest)?;
            documents::get(c, k).map(|doc| doc.map_or_else(|| "none".to_owned(), |d| d.value))
        }
        "put" => {
            let (addr, value) =
                rest.split_once('=').ok_or_else(|| AgentError::bad_input("expected put:COLL/KEY=JSON"))?;
            let (c, k) = coll_key(addr)?;
            documents::put(c, k, value, None).map(|rev| rev.to_string())
        }
        "cas" => {
            let (addr, value) =
                rest.split_once('=').ok_or_else(|| AgentError::bad_input("expected cas:COLL/KEY@REV=JSON"))?;
            let (addr, rev) = with_rev(addr)?;
            let (c, k) = coll_key(addr)?;
            match documents::put(c, k, value, Some(rev)) {
                Ok(rev) => Ok(rev.to_string()),
                Err(StoreError::Conflict(current)) => Ok(format!("conflict:{current}")),
                Err(err) => Err(err),
            }
        }
        "del" => {
            let (addr, expected) = match with_rev(rest) {
                Ok((addr, rev)) if rest.contains('@') => (addr, Some(rev)),
                _ => (rest, None),
            };
            let (c, k) = coll_key(addr)?;
            documents::delete(c, k, expected).map(|existed| existed.to_string())
        }
        "list" => {
            let (addr, query) = rest.split_once('?').unwrap_or((rest, ""));
            let (c, prefix) = coll_key(addr)?;
            let mut limit = 100;
            let mut cursor = None;
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                match pair.split_once('=') {
                    Some(("limit", n)) => {
                        limit = n.parse().map_err(|e| AgentError::bad_input(format!("bad limit: {e}")))?;
                    }
                    Some(("cursor", c)) => cursor = Some(c),
                    _ => return Err(AgentError::bad_input(format!("bad query {pair:?}"))),
                }
            }
            documents::list(c, prefix, limit, cursor).map(|page| {
                let keys: Vec<&str> = page.documents.iter().map(|d| d.key.as_str()).collect();
                json!({ "keys": keys, "next": page.next }).to_string()
            })
        }
        "tx" => {
            let ops: Vec<TxOp> = serde_json::from_str(rest)?;
            let ops: Vec<Op> = ops
                .into_iter()
                .map(|op| match op {
                    TxOp::Put { c, k, v, rev } => {
                        Op::Put(PutOp { collection: c, key: k, value: v.to_string(), expected: rev })
                    }
                    TxOp::Del { c, k, rev } => Op::Delete(DeleteOp { collection: c, key: k, expected: rev }),
                })
                .collect();
            documents::transact(&ops).map(|revs| json!(revs).to_string())
        }
        "getn" => {
            let (n, addr) = rest.split_once(':').ok_or_else(|| AgentError::bad_input("expected getn:N:COLL/KEY"))?;
            let n: u64 = n.parse().map_err(|e| AgentError::bad_input(format!("bad N: {e}")))?;
            let (c, k) = coll_key(addr)?;
            let mut result = Ok("ok".to_owned());
            for _ in 0..n {
                if let Err(err) = documents::get(c, k) {
                    result = Err(err);
                    break;
                }
            }
            result
        }
        "whoami" => {
            let id = cortex_agent::whoami();
            Ok(json!({ "tenant": id.tenant, "agent": id.agent, "invocation": id.invocation }).to_string())
        }
        "config" => Ok(cortex_agent::config(rest).unwrap_or_else(|| "none".to_owned())),
        "log" => {
            log::log_with(log::Level::Info, rest, &[("source", "kv")]);
            Ok("logged".to_owned())
        }
        "say" => {
            println!("{rest}");
            Ok("said".to_owned())
        }
        "fail" => {
            let n: usize = rest.parse().map_err(|e| AgentError::bad_input(format!("bad N: {e}")))?;
            return Err(AgentError::new("big-error", "m".repeat(n)));
        }
        _ => return Err(AgentError::bad_input(format!("unknown command {verb:?}"))),
    })
}

impl Agent for Kv {
    /// Refuses a configuration with `reject` set, so hot reload failures can be tested.
    fn init(config: Vec<(String, String)>) -> Result<(), AgentError> {
        if let Some((_, puts)) = config.iter().find(|(k, _)| k == "init_puts") {
            for put in puts.split(';').filter(|p| !p.is_empty()) {
                let (addr, value) =
                    put.split_once('=').ok_or_else(|| AgentError::bad_input("expected COLL/KEY=JSON"))?;
                let (c, k) = coll_key(addr)?;
                documents::put(c, k, value, None).map_err(|e| AgentError::new("put-failed", error_text(&e)))?;
                let seen = documents::get(c, k).map_err(|e| AgentError::new("get-failed", error_text(&e)))?;
                if seen.map(|d| d.value).as_deref() != Some(value) {
                    return Err(AgentError::new("not-visible", format!("init cannot read its own write of {addr}")));
                }
            }
        }
        match config.iter().find(|(k, _)| k == "reject") {
            Some((_, why)) => Err(AgentError::new("bad-config", format!("rejected: {why}"))),
            None => Ok(()),
        }
    }

    fn handle(input: Vec<u8>) -> Result<Option<Vec<u8>>, AgentError> {
        let command = String::from_utf8(input)?;
        let text = match run(&command)? {
            Ok(text) => text,
            Err(err) => error_text(&err),
        };
        Ok(Some(text.into_bytes()))
    }
}

cortex_agent::export_agent!(Kv);
