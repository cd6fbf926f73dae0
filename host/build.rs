//! Embeds the agent project templates (`templates/<lang>/**`) that `cortex new` writes.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

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
    code.push_str("];\n");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap_or_default()).join("templates.rs");
    if let Err(e) = std::fs::write(&out, code) {
        panic!("cannot write {}: {e}", out.display());
    }
}
