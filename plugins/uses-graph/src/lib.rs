//! `uses-graph` (world `agent`): calls `graph.link`, so the component imports
//! `cortex:agent/graph`, which the host does not serve yet and must refuse at load.

use cortex_agent::{Agent, AgentError, graph};

struct UsesGraph;

impl Agent for UsesGraph {
    fn handle(input: Vec<u8>) -> Result<Option<Vec<u8>>, AgentError> {
        let to = String::from_utf8(input)?;
        graph::link("self", &to, "knows", "{}")?;
        Ok(Some(b"linked".to_vec()))
    }
}

cortex_agent::export_agent!(UsesGraph);
