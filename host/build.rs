//! Build-time inputs of the host:
//! - the agent project templates (`templates/<lang>/**`) that `cortex new` writes, embedded;
//! - the git commit the host is built from (for `cortex_build_info`), when it is built from
//!   a git checkout and `git` is installed; `CORTEX_GIT_COMMIT` set in the environment wins
//!   (builds from a source archive). Without either, the commit reads `unknown`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut entries: Vec<_> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        // Build products and installed packages are never part of a template.
        if matches!(name, "node_modules" | "target" | "__pycache__" | ".cortex") {
            continue;
        }
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn main() {
    record_git_commit();
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default()).join("templates");
    println!("cargo:rerun-if-changed={}", root.display());
    let mut files = Vec::new();
    walk(&root, &mut files);
    let mut code = String::from("/// (language, path inside the project, bytes) of every template file.\n");
    code.push_str("pub static TEMPLATE_FILES: &[(&str, &str, &[u8])] = &[\n");
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
        let Ok(rel) = f.strip_prefix(&root) else { continue };
        let mut parts = rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned());
        let Some(lang) = parts.next() else { continue };
        let inner: Vec<String> = parts.collect();
        if inner.is_empty() {
            continue;
        }
        let _ = writeln!(code, "    ({lang:?}, {:?}, include_bytes!({:?})),", inner.join("/"), f.display().to_string());
    }
    // Every template gets the repo's WIT package as its own copy (`wit/`), never a stale one.
    let wit = root.parent().map(|h| h.join("../wit")).unwrap_or_default();
    println!("cargo:rerun-if-changed={}", wit.display());
    let mut wit_files = Vec::new();
    walk(&wit, &mut wit_files);
    let mut langs: Vec<String> = std::fs::read_dir(&root)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    langs.sort();
    for lang in &langs {
        for f in &wit_files {
            let Ok(rel) = f.strip_prefix(&wit) else { continue };
            let rel: Vec<String> = rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
            let _ = writeln!(
                code,
                "    ({lang:?}, \"wit/{}\", include_bytes!({:?})),",
                rel.join("/"),
                f.display().to_string()
            );
        }
    }
    // The Rust template builds without a registry for the SDK: the guest SDK's sources go
    // in as `vendor/cortex-agent/`, their reference to the repo's `wit/` pointed at the
    // project's own copy, with a manifest that needs no workspace.
    if langs.iter().any(|l| l == "rust") {
        vendor_sdk(&root, &mut code);
    }
    code.push_str("];\n");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap_or_default()).join("templates.rs");
    if let Err(e) = std::fs::write(&out, code) {
        panic!("cannot write {}: {e}", out.display());
    }
}

/// A value of the guest SDK's `[package]`, or of the root workspace's when inherited.
fn package_value(sdk: &toml::Table, workspace: &toml::Table, key: &str) -> Option<toml::Value> {
    match sdk.get("package").and_then(|p| p.get(key)) {
        Some(toml::Value::Table(t)) if t.get("workspace").is_some() => {
            workspace.get("workspace").and_then(|w| w.get("package")).and_then(|p| p.get(key)).cloned()
        }
        other => other.cloned(),
    }
}

/// Adds the guest SDK (`../guest-sdk`) to the Rust template as `vendor/cortex-agent/`,
/// and the repo's `rust-toolchain.toml`.
fn vendor_sdk(templates: &Path, code: &mut String) {
    let repo = templates.join("../..");
    let sdk_dir = repo.join("guest-sdk");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap_or_default()).join("vendor-cortex-agent");
    println!("cargo:rerun-if-changed={}", sdk_dir.display());
    let read_toml = |p: &Path| -> toml::Table {
        println!("cargo:rerun-if-changed={}", p.display());
        let text = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()));
        text.parse().unwrap_or_else(|e| panic!("cannot parse {}: {e}", p.display()))
    };
    let sdk = read_toml(&sdk_dir.join("Cargo.toml"));
    let workspace = read_toml(&repo.join("Cargo.toml"));
    let mut package = toml::Table::new();
    for key in ["name", "version", "edition", "description", "license"] {
        if let Some(v) = package_value(&sdk, &workspace, key) {
            package.insert(key.into(), v);
        }
    }
    package.insert("publish".into(), toml::Value::Boolean(false));
    let mut manifest = toml::Table::new();
    manifest.insert("package".into(), toml::Value::Table(package));
    for section in ["lib", "features", "dependencies"] {
        let Some(toml::Value::Table(t)) = sdk.get(section) else { continue };
        let mut t = t.clone();
        if section == "dependencies" {
            // A dependency inherited from the workspace takes the workspace's entry.
            let ws_deps = workspace.get("workspace").and_then(|w| w.get("dependencies"));
            for (name, dep) in t.iter_mut() {
                if dep.get("workspace").is_some()
                    && let Some(d) = ws_deps.and_then(|w| w.get(name))
                {
                    *dep = d.clone();
                }
            }
        }
        manifest.insert(section.into(), toml::Value::Table(t));
    }
    // The repo's toolchain pin: rustup installs that toolchain and its wasm32-wasip2 target.
    let pin = repo.join("rust-toolchain.toml");
    println!("cargo:rerun-if-changed={}", pin.display());
    let _ = writeln!(code, "    (\"rust\", \"rust-toolchain.toml\", include_bytes!({:?})),", pin.display().to_string());
    let header = "# The Cortex guest SDK (guest-sdk/ of the Cortex repository), shipped by `cortex new`.\n";
    let mut files = vec![(PathBuf::from("Cargo.toml"), format!("{header}{manifest}").into_bytes())];
    let mut sources = Vec::new();
    walk(&sdk_dir, &mut sources);
    for f in sources {
        let Ok(rel) = f.strip_prefix(&sdk_dir) else { continue };
        if rel == Path::new("Cargo.toml") || rel == Path::new("Cargo.lock") {
            continue;
        }
        println!("cargo:rerun-if-changed={}", f.display());
        let mut bytes = std::fs::read(&f).unwrap_or_else(|e| panic!("cannot read {}: {e}", f.display()));
        if f.extension().is_some_and(|e| e == "rs") {
            // `path: "../wit"` names the repo's wit/ from guest-sdk/; from
            // vendor/cortex-agent/ the project's wit/ is two folders up.
            bytes = String::from_utf8_lossy(&bytes).replace("\"../wit\"", "\"../../wit\"").into_bytes();
        }
        files.push((rel.to_path_buf(), bytes));
    }
    for (rel, bytes) in files {
        let dest = out_dir.join(&rel);
        if let Some(parent) = dest.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        if let Err(e) = std::fs::write(&dest, bytes) {
            panic!("cannot write {}: {e}", dest.display());
        }
        let rel: Vec<String> = rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
        let _ = writeln!(
            code,
            "    (\"rust\", \"vendor/cortex-agent/{}\", include_bytes!({:?})),",
            rel.join("/"),
            dest.display().to_string()
        );
    }
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_owned())
}

/// `CORTEX_GIT_COMMIT` for `cortex_build_info`.
fn record_git_commit() {
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
