//! `hello` (world `tool`): greets its input. Imports nothing from `cortex:agent`.

use cortex_agent::{AgentError, Tool};

struct Hello;

impl Tool for Hello {
    fn handle(input: Vec<u8>) -> Result<Option<Vec<u8>>, AgentError> {
        let name = if input.is_empty() { "world".into() } else { String::from_utf8_lossy(&input) };
        Ok(Some(format!("Hello, {name}!").into_bytes()))
    }
}

cortex_agent::export_tool!(Hello);
