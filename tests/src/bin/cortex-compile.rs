//! The compile child of the tests' runtimes (`[engine.compile] program`): what
//! `cortex __compile` is in the real binary. Test and bench harnesses cannot serve as their
//! own compile child, so the tests point their engine configuration here.

fn main() -> std::process::ExitCode {
    cortex_host::runtime::child_main()
}
