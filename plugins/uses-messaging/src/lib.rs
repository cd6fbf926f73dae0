//! `uses-messaging` (world `agent`): calls `messaging.send`, so the component imports
//! `cortex:agent/messaging`, which the host does not serve yet and must refuse at load.

use cortex_agent::{Agent, AgentError, messaging};

struct UsesMessaging;

impl Agent for UsesMessaging {
    fn handle(input: Vec<u8>) -> Result<Option<Vec<u8>>, AgentError> {
        let to = String::from_utf8(input)?;
        messaging::send(&to, b"hello", None)?;
        Ok(Some(b"sent".to_vec()))
    }
}

cortex_agent::export_agent!(UsesMessaging);
