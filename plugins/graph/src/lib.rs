//! `graph` (world `agent`): drives the graph import, command = input text:
//! `link:FROM>TO:KIND={attrs}`, `unlink:FROM>TO:KIND`, `out:AGENT[:KIND]`, `in:AGENT[:KIND]`,
//! `both:AGENT`, `traverse:AGENT:DEPTH`. Edges come back as a JSON array of
//! `"from>to:kind"` strings; a graph error as `error:<code>:<detail>`.
//!
//! `init` links the agent itself to `TO` with `KIND` when its config has
//! `link_on_init = "TO:KIND"`, then fails (code `told-to-fail`) if `fail_after_link = yes`.

use cortex_agent::graph::{self, Direction};
use cortex_agent::{Agent, AgentError};

struct Graph;

fn edge_list(edges: Vec<graph::Edge>) -> String {
    let v: Vec<String> = edges.iter().map(|e| format!("{}>{}:{}", e.from, e.to, e.kind)).collect();
    serde_json::Value::from(v).to_string()
}

fn run(cmd: &str) -> Result<String, graph::Error> {
    let (verb, rest) = cmd.split_once(':').unwrap_or((cmd, ""));
    let split_edge = |s: &str| -> (String, String, String) {
        let (from, rest) = s.split_once('>').unwrap_or((s, ""));
        let (to, kind) = rest.split_once(':').unwrap_or((rest, ""));
        (from.into(), to.into(), kind.into())
    };
    let dir_query = |rest: &str, d: Direction| -> Result<String, graph::Error> {
        let (agent, kind) = match rest.split_once(':') {
            Some((a, k)) => (a, Some(k)),
            None => (rest, None),
        };
        Ok(edge_list(graph::neighbours(agent, kind, d, 100)?))
    };
    match verb {
        "link" => {
            let (edge, attrs) = rest.split_once('=').unwrap_or((rest, "{}"));
            let (from, to, kind) = split_edge(edge);
            graph::link(&from, &to, &kind, attrs)?;
            Ok("linked".into())
        }
        "unlink" => {
            let (from, to, kind) = split_edge(rest);
            Ok(graph::unlink(&from, &to, &kind)?.to_string())
        }
        "out" => dir_query(rest, Direction::Outgoing),
        "in" => dir_query(rest, Direction::Incoming),
        "both" => dir_query(rest, Direction::Both),
        "traverse" => {
            let (agent, depth) = rest.split_once(':').unwrap_or((rest, "1"));
            let found = graph::traverse(agent, None, Direction::Outgoing, depth.parse().unwrap_or(1), 100)?;
            Ok(serde_json::Value::from(found).to_string())
        }
        other => Ok(format!("error:bad-input:unknown command {other:?}")),
    }
}

impl Agent for Graph {
    fn init(config: Vec<(String, String)>) -> Result<(), AgentError> {
        let get = |k: &str| config.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
        if let Some(target) = get("link_on_init") {
            let (to, kind) = target.split_once(':').unwrap_or((target, "knows"));
            graph::link(&cortex_agent::whoami().agent, to, kind, "{}")?;
            cortex_agent::log::info(&format!("init linked {to}:{kind}"));
        }
        if get("fail_after_link") == Some("yes") {
            return Err(AgentError::new("told-to-fail", "failing after the link"));
        }
        Ok(())
    }

    fn handle(input: Vec<u8>) -> Result<Option<Vec<u8>>, AgentError> {
        let cmd = String::from_utf8(input)?;
        let text = match run(&cmd) {
            Ok(t) => t,
            Err(e) => {
                let e = AgentError::from(e);
                format!("error:{}:{}", e.code, e.message)
            }
        };
        Ok(Some(text.into_bytes()))
    }
}

cortex_agent::export_agent!(Graph);
