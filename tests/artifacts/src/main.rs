//! `cargo run -p cortex-artifacts -- NAME` prints the path of a built guest component
//! (`hello`, `counter`, ...); with no argument, lists them all. Used by scripts/demo.sh.

use std::process::ExitCode;

fn main() -> ExitCode {
    let want = std::env::args().nth(1);
    match want {
        None => {
            for (name, path) in cortex_artifacts::ALL {
                println!("{name}\t{path}");
            }
            ExitCode::SUCCESS
        }
        Some(w) => match cortex_artifacts::ALL.iter().find(|(n, _)| *n == w) {
            Some((_, path)) => {
                println!("{path}");
                ExitCode::SUCCESS
            }
            None => {
                eprintln!("no component named {w:?}; run without arguments for the list");
                ExitCode::from(2)
            }
        },
    }
}
