//! `wasi-http-import`: exports `handle` like an agent but imports
//! `wasi:http/outgoing-handler` (with a made-up signature). The host serves no wasi:http
//! and must refuse it at load, naming the interface.
//!
//! Why version `0.3.0-rc-2025-09-16` and not `0.2.x`: the Rust standard library for
//! wasm32-wasip2 embeds the whole wasi 0.2 world in its component-type metadata,
//! `wasi:http@0.2.4` included, and wit-component merges any semver-compatible
//! `wasi:http@0.2.x` declared here into it, which fails unless it matches the real package
//! type for type. A real 0.2 `outgoing-handler` would also drag in `wasi:http/types`,
//! imported first; this one imports `outgoing-handler` alone.

wit_bindgen::generate!({
    path: "../../wit",
    // Interfaces of other packages (here cortex:agent/types) need this or `with`.
    generate_all,
    inline: r#"
        package wasi:http@0.3.0-rc-2025-09-16;

        interface outgoing-handler {
            handle: func(url: string) -> string;
        }

        world fetcher {
            import outgoing-handler;
            use cortex:agent/types@0.1.0.{agent-error};
            export handle: func(input: list<u8>) -> result<option<list<u8>>, agent-error>;
        }
    "#,
    world: "wasi:http/fetcher@0.3.0-rc-2025-09-16",
});

use wasi::http::outgoing_handler;

struct Fetcher;

impl Guest for Fetcher {
    fn handle(input: Vec<u8>) -> Result<Option<Vec<u8>>, AgentError> {
        Ok(Some(outgoing_handler::handle(&String::from_utf8_lossy(&input)).into_bytes()))
    }
}

export!(Fetcher);
