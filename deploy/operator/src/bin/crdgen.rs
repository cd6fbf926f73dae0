//! `crdgen [DIR]`: write the CustomResourceDefinitions of the operator's resources and
//! their `kustomization.yaml` to DIR (`deploy/crds` is where they are kept), or print
//! them to stdout as one multi-document YAML stream when no DIR is given.

use std::process::ExitCode;

fn main() -> ExitCode {
    let crds = match cortex_operator::crd::crds() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("crdgen: {e}");
            return ExitCode::FAILURE;
        }
    };
    let Some(dir) = std::env::args_os().nth(1) else {
        for (_, yaml) in crds {
            print!("---\n{yaml}");
        }
        return ExitCode::SUCCESS;
    };
    let dir = std::path::PathBuf::from(dir);
    let mut files = crds;
    files.push(("kustomization.yaml", cortex_operator::crd::kustomization()));
    for (name, yaml) in files {
        let path = dir.join(name);
        if let Err(e) = std::fs::write(&path, yaml) {
            eprintln!("crdgen: {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
