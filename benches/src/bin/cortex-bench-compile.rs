//! The compile child of the benches' runtimes (`[engine.compile] program`): what
//! `cortex __compile` is in the real binary. Bench harnesses cannot serve as their
//! own compile child, so the benches point their engine configuration here.

fn main() -> std::process::ExitCode {
    cortex_host::runtime::child_main()
}
