//! Records the git commit the host is built from (for `cortex_build_info`), when it is built
//! from a git checkout and `git` is installed; `CORTEX_GIT_COMMIT` set in the environment
//! wins (builds from a source archive). Without either, the commit reads `unknown`.

use std::path::PathBuf;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_owned())
}

fn main() {
    println!("cargo:rerun-if-env-changed=CORTEX_GIT_COMMIT");
    if let Ok(commit) = std::env::var("CORTEX_GIT_COMMIT") {
        println!("cargo:rustc-env=CORTEX_GIT_COMMIT={commit}");
        return;
    }
    let Some(commit) = git(&["rev-parse", "--short=12", "HEAD"]) else { return };
    // Built again when the checkout moves to another commit.
    for dir in
        [git(&["rev-parse", "--absolute-git-dir"]), git(&["rev-parse", "--path-format=absolute", "--git-common-dir"])]
            .into_iter()
            .flatten()
    {
        let dir = PathBuf::from(dir);
        for f in ["HEAD", "packed-refs", "refs/heads"] {
            if dir.join(f).exists() {
                println!("cargo:rerun-if-changed={}", dir.join(f).display());
            }
        }
    }
    println!("cargo:rustc-env=CORTEX_GIT_COMMIT={commit}");
}
