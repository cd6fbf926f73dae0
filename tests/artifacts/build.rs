//! Builds the guest components of `plugins/` and writes their paths to
//! `$OUT_DIR/artifacts.rs` (after wasmtime's `crates/test-programs/artifacts/build.rs`).
//!
//! - Every member directory of `plugins/` (a directory with a `Cargo.toml`) is built by
//!   one `cargo build --release --target wasm32-wasip2` of the plugins workspace, in a
//!   target directory of its own beside the outer one (`<target>/wasm-plugins`), so
//!   repeated builds are incremental.
//! - A member is a component if its `Cargo.toml` has a `cdylib` crate-type or a `[[bin]]`
//!   (or it has cargo's default binary, `src/main.rs`). Any other member is a library the
//!   components share (`order-common`): built as their dependency, it has no `.wasm` and
//!   no constant, but its sources are watched like a component's.
//! - Every `plugins/wat/*.wat` is compiled with the `wat` crate into `$OUT_DIR`.
//! - Each component gets a constant named after it (`huge-memory` -> `HUGE_MEMORY`), and
//!   `ALL` lists them all as `(name, path)`.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";

/// Environment the outer cargo sets that must not leak into the inner build: flags,
/// target and profile settings meant for the host crates, and wrappers such as
/// clippy-driver (`cargo clippy` runs build scripts with it as the workspace wrapper).
const CLEARED_ENV: &[&str] = &[
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_ENCODED_RUSTDOCFLAGS",
    "RUSTFLAGS",
    "RUSTDOCFLAGS",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET",
    "CARGO_BUILD_TARGET_DIR",
    "CARGO_BUILD_RUSTFLAGS",
    "CARGO_BUILD_RUSTC_WRAPPER",
    "CARGO_BUILD_RUSTC_WORKSPACE_WRAPPER",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "CLIPPY_ARGS",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
];

fn main() {
    let out_dir = env_path("OUT_DIR");
    let manifest_dir = env_path("CARGO_MANIFEST_DIR");
    let repo = manifest_dir
        .ancestors()
        .nth(2)
        .unwrap_or_else(|| panic!("{} has no grandparent", manifest_dir.display()))
        .to_path_buf();
    let plugins = repo.join("plugins");

    let members = plugin_members(&plugins);
    rerun_if_changed(&repo, &plugins, &members);

    ensure_target_installed();
    let wasm_dir = build_plugins(&plugins, &out_dir);

    let mut artifacts: Vec<(String, PathBuf)> = Vec::new();
    for member in members.iter().filter(|member| is_component(&plugins.join(member))) {
        // A `cdylib` is named after its crate (`-` becomes `_`), a `[[bin]]` after itself.
        let candidates =
            [wasm_dir.join(format!("{}.wasm", member.replace('-', "_"))), wasm_dir.join(format!("{member}.wasm"))];
        let path = candidates
            .iter()
            .find(|p| p.is_file())
            .unwrap_or_else(|| {
                panic!("plugin `{member}` (a cdylib or binary) built, but none of {candidates:?} exists")
            })
            .clone();
        artifacts.push((member.clone(), path));
    }
    artifacts.extend(compile_wat(&plugins.join("wat"), &out_dir));
    artifacts.sort();

    write_artifacts_rs(&out_dir.join("artifacts.rs"), &artifacts);
}

fn env_path(name: &str) -> PathBuf {
    env::var_os(name).map(PathBuf::from).unwrap_or_else(|| panic!("cargo did not set {name}"))
}

/// Directories of `plugins/` with a `Cargo.toml`, sorted: the workspace's members, both
/// components and libraries.
fn plugin_members(plugins: &Path) -> Vec<String> {
    let entries = fs::read_dir(plugins).unwrap_or_else(|e| panic!("reading {}: {e}", plugins.display()));
    let mut members: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|entry| entry.path().join("Cargo.toml").is_file())
        .filter_map(|entry| entry.file_name().into_string().ok())
        .collect();
    members.sort();
    members
}

/// Whether the member in `dir` builds a component: see [`builds_component`], plus cargo's
/// default binary `src/main.rs`.
fn is_component(dir: &Path) -> bool {
    let manifest = dir.join("Cargo.toml");
    let text = fs::read_to_string(&manifest).unwrap_or_else(|e| panic!("reading {}: {e}", manifest.display()));
    builds_component(&text) || dir.join("src/main.rs").is_file()
}

/// Whether a member's `Cargo.toml` asks for a component: a `[[bin]]` table, or a
/// `crate-type` of `[lib]` that names `cdylib` (the array may span lines). A line scan
/// without a TOML parser, enough for the plain manifests of `plugins/`: `#` comments are
/// dropped, table headers may hold spaces.
fn builds_component(manifest: &str) -> bool {
    let mut table = String::new();
    let mut in_crate_type = false;
    for line in manifest.lines() {
        let line = line.split('#').next().unwrap_or_default().trim();
        let value = if in_crate_type {
            line
        } else if line.starts_with('[') {
            let header: String = line.chars().filter(|c| !c.is_whitespace()).collect();
            if header == "[[bin]]" {
                return true;
            }
            table = header;
            continue;
        } else if table == "[lib]" {
            let Some(value) = ["crate-type", "crate_type"]
                .iter()
                .find_map(|key| line.strip_prefix(key))
                .and_then(|rest| rest.trim_start().strip_prefix('='))
            else {
                continue;
            };
            value
        } else {
            continue;
        };
        if value.contains("\"cdylib\"") || value.contains("'cdylib'") {
            return true;
        }
        in_crate_type = !value.contains(']');
    }
    false
}

/// Every member's `Cargo.toml` and `src/`, libraries too (a component is rebuilt when a
/// library it uses changes), and what all of them build from.
fn rerun_if_changed(repo: &Path, plugins: &Path, members: &[String]) {
    // Not `plugins/` itself: a directory is scanned recursively, and its `target/` (from
    // a manual build) would retrigger us. A new member is listed in `plugins/Cargo.toml`.
    let mut paths = vec![
        plugins.join("Cargo.toml"),
        plugins.join("Cargo.lock"),
        plugins.join("wat"),
        repo.join("guest-sdk/Cargo.toml"),
        repo.join("guest-sdk/src"),
        repo.join("guest-sdk/wit"),
        repo.join("wit"),
        repo.join("rust-toolchain.toml"),
    ];
    for member in members {
        paths.push(plugins.join(member).join("Cargo.toml"));
        paths.push(plugins.join(member).join("src"));
    }
    for path in paths {
        // Relative to this package (tests/artifacts): cargo then resolves them in whatever
        // checkout shares the target dir, instead of remembering another clone's files.
        let rel = path.strip_prefix(repo).map_or_else(|_| path.clone(), |p| Path::new("../..").join(p));
        println!("cargo:rerun-if-changed={}", rel.display());
    }
    println!("cargo:rerun-if-env-changed=RUSTUP_TOOLCHAIN");
}

/// A fresh rustup install has the pinned toolchain but not always its targets. Without
/// rustup (a distribution's Rust), assume the target is there and let cargo say if not.
fn ensure_target_installed() {
    let toolchain = env::var("RUSTUP_TOOLCHAIN").ok();
    let rustup = |args: &[&str]| {
        let mut cmd = Command::new("rustup");
        cmd.args(args);
        if let Some(toolchain) = &toolchain {
            cmd.args(["--toolchain", toolchain.as_str()]);
        }
        cmd.output()
    };
    let Ok(installed) = rustup(&["target", "list", "--installed"]) else {
        return; // no rustup
    };
    if !installed.status.success() {
        return;
    }
    if String::from_utf8_lossy(&installed.stdout).lines().any(|line| line.trim() == TARGET) {
        return;
    }
    match rustup(&["target", "add", TARGET]) {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "`rustup target add {TARGET}` failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => panic!("running `rustup target add {TARGET}`: {e}"),
    }
}

/// Builds the plugins workspace; returns the directory holding the `.wasm` files.
fn build_plugins(plugins: &Path, out_dir: &Path) -> PathBuf {
    // OUT_DIR is `<target>[/<triple>]/<profile>/build/<pkg>-<hash>/out`.
    let target_dir = out_dir
        .ancestors()
        .nth(4)
        .unwrap_or_else(|| panic!("unexpected OUT_DIR {}", out_dir.display()))
        .join("wasm-plugins");

    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(plugins)
        .arg("build")
        .arg("--release")
        .args(["--target", TARGET])
        .arg("--manifest-path")
        .arg(plugins.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir);
    for name in CLEARED_ENV {
        cmd.env_remove(name);
    }
    for (name, _) in env::vars_os() {
        if let Some(name) = name.to_str()
            && name.starts_with("CARGO_PROFILE_")
        {
            cmd.env_remove(name);
        }
    }

    let output = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    if !output.status.success() {
        panic!(
            "building the plugins failed: {cmd:?}\n--- stdout\n{}\n--- stderr\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    target_dir.join(TARGET).join("release")
}

/// Compiles each `*.wat` of `wat_dir` to `$OUT_DIR/<stem>.wasm`.
fn compile_wat(wat_dir: &Path, out_dir: &Path) -> Vec<(String, PathBuf)> {
    let Ok(entries) = fs::read_dir(wat_dir) else {
        return Vec::new();
    };
    let mut compiled = Vec::new();
    for path in entries.filter_map(Result::ok).map(|e| e.path()) {
        if path.extension().is_none_or(|ext| ext != "wat") {
            continue;
        }
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        let bytes = wat::parse_file(&path).unwrap_or_else(|e| panic!("{e}"));
        let wasm = out_dir.join(format!("{stem}.wasm"));
        fs::write(&wasm, bytes).unwrap_or_else(|e| panic!("writing {}: {e}", wasm.display()));
        compiled.push((stem.to_owned(), wasm));
    }
    compiled
}

/// Where a component comes from, relative to `plugins/`.
fn sources(name: &str) -> String {
    if Path::new(&env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default()).join("../../plugins").join(name).is_dir() {
        format!("{name}/")
    } else {
        format!("wat/{name}.wat")
    }
}

fn write_artifacts_rs(dest: &Path, artifacts: &[(String, PathBuf)]) {
    let mut src = String::new();
    for (name, path) in artifacts {
        let konst = name.to_uppercase().replace('-', "_");
        let path = path.to_str().unwrap_or_else(|| panic!("non-UTF-8 path {path:?}"));
        let _ = writeln!(src, "/// The `{name}` component (`plugins/{source}`).", source = sources(name));
        let _ = writeln!(src, "pub const {konst}: &str = {path:?};");
    }
    let _ = writeln!(src, "\n/// Every component as `(name, path)`, sorted by name.");
    let _ = writeln!(src, "pub const ALL: &[(&str, &str)] = &[");
    for (name, _) in artifacts {
        let konst = name.to_uppercase().replace('-', "_");
        let _ = writeln!(src, "    ({name:?}, {konst}),");
    }
    let _ = writeln!(src, "];");
    fs::write(dest, src).unwrap_or_else(|e| panic!("writing {}: {e}", dest.display()));
}
