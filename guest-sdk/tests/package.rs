//! The crate is ready to publish: its version follows the WIT package it is built from, it
//! carries that WIT (the same as the repository's `wit/`), and `cargo package` would put in
//! it everything its build reads.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `.wit` files of `dir`, by name.
fn wit_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wit"))
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
        .collect()
}

/// `X.Y.Z` of `package cortex:agent@X.Y.Z;` in `worlds.wit` of `dir`.
fn wit_version(dir: &Path) -> String {
    let text = std::fs::read_to_string(dir.join("worlds.wit")).unwrap();
    let line = text.lines().find_map(|l| l.trim().strip_prefix("package cortex:agent@")).expect("a package line");
    line.trim_end_matches(';').trim().to_owned()
}

#[test]
fn the_crate_carries_the_repositorys_wit_unchanged() {
    let ours = wit_files(&crate_dir().join("wit"));
    let repo = wit_files(&crate_dir().join("../wit"));
    assert!(!repo.is_empty());
    assert_eq!(
        ours.keys().collect::<Vec<_>>(),
        repo.keys().collect::<Vec<_>>(),
        "guest-sdk/wit must hold the same files as wit/"
    );
    for (name, bytes) in &repo {
        assert!(
            ours[name] == *bytes,
            "guest-sdk/wit/{name} differs from wit/{name}: copy wit/*.wit into guest-sdk/wit/"
        );
    }
}

#[test]
fn the_crate_version_follows_the_wit_package_version() {
    let wit = wit_version(&crate_dir().join("wit"));
    let mut parts = wit.split('.');
    let (major, minor) = (parts.next().unwrap(), parts.next().unwrap());
    assert_eq!(
        (env!("CARGO_PKG_VERSION_MAJOR"), env!("CARGO_PKG_VERSION_MINOR")),
        (major, minor),
        "cortex-agent {} must be {major}.{minor}.x: it builds agents for cortex:agent@{wit}",
        env!("CARGO_PKG_VERSION")
    );
}

#[test]
fn the_packaged_crate_holds_its_sources_wit_and_readme_and_is_publishable() {
    let out = std::process::Command::new(env!("CARGO"))
        .args(["package", "--list", "--allow-dirty", "--offline", "-p", "cortex-agent"])
        .current_dir(crate_dir())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "cargo package --list: {stderr}");
    let listed: Vec<String> = String::from_utf8(out.stdout).unwrap().lines().map(str::to_owned).collect();
    for name in wit_files(&crate_dir().join("wit")).keys() {
        assert!(listed.contains(&format!("wit/{name}")), "wit/{name} is not packaged: {listed:?}");
    }
    for f in ["README.md", "Cargo.toml", "src/lib.rs"] {
        assert!(listed.contains(&f.to_owned()), "{f} is not packaged: {listed:?}");
    }
    for f in std::fs::read_dir(crate_dir().join("src")).unwrap() {
        let name = f.unwrap().file_name().to_string_lossy().into_owned();
        assert!(listed.contains(&format!("src/{name}")), "src/{name} is not packaged");
    }
    // The build reads nothing outside the crate (a path outside would not be packaged).
    let lib = std::fs::read_to_string(crate_dir().join("src/lib.rs")).unwrap();
    assert!(!lib.contains("path: \"../"), "src/lib.rs generates bindings from a path outside the crate");
    // What crates.io requires of a manifest, and what the docs link to.
    let manifest = std::fs::read_to_string(crate_dir().join("Cargo.toml")).unwrap();
    for key in ["description", "license", "repository", "documentation", "readme", "keywords", "categories"] {
        assert!(manifest.lines().any(|l| l.starts_with(key)), "Cargo.toml has no {key}");
    }
    assert!(!manifest.contains("publish = false"));
}
