//! `not-an-agent`: a plain WASI command (exports `wasi:cli/run`, no `handle`). The host
//! must refuse it as an agent.

fn main() {
    println!("Hello from a command, not an agent");
}
