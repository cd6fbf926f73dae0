//! `cortex new NAME --lang LANG`: a working agent project from the templates shipped in
//! the binary (`host/templates/<lang>/`, embedded at build time).
//!
//! Every text file of a template has `{{name}}` replaced by the agent's name and
//! `{{name_snake}}` by the name with `-` turned into `_` (for identifiers: a Rust crate, a
//! Go package). Files are written into a new folder; an existing non-empty one is refused.

use std::path::{Path, PathBuf};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/templates.rs"));
}

/// What `cortex new` can refuse.
#[derive(Debug, thiserror::Error)]
pub enum NewError {
    /// The name breaks the name rule.
    #[error("{0}")]
    Name(#[from] crate::names::NameError),
    /// No template for that language.
    #[error("no template for language {lang:?} (available: {available})")]
    UnknownLang {
        /// As given.
        lang: String,
        /// The languages there are templates for.
        available: String,
    },
    /// The folder exists and is not empty.
    #[error("{0} exists and is not empty: choose another name or --dir")]
    Exists(PathBuf),
    /// Writing failed.
    #[error("cannot write {path}: {source}")]
    Io {
        /// What.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The template language a user's word names (`py` is `python`, `typescript` is `ts`, ...).
pub fn canonical_lang(lang: &str) -> &str {
    match lang {
        "py" => "python",
        "typescript" => "ts",
        "javascript" => "js",
        "golang" => "go",
        other => other,
    }
}

/// The languages there are templates for, sorted.
pub fn languages() -> Vec<&'static str> {
    let mut langs: Vec<&str> = embedded::TEMPLATE_FILES.iter().map(|(l, _, _)| *l).collect();
    langs.sort_unstable();
    langs.dedup();
    langs
}

/// The files of `lang`'s template, as written for an agent `name`.
pub fn render(lang: &str, name: &str) -> Result<Vec<(PathBuf, Vec<u8>)>, NewError> {
    let name = crate::names::AgentName::parse(name)?;
    let lang = canonical_lang(lang);
    let files: Vec<_> = embedded::TEMPLATE_FILES.iter().filter(|(l, _, _)| *l == lang).collect();
    if files.is_empty() {
        return Err(NewError::UnknownLang { lang: lang.to_owned(), available: languages().join(", ") });
    }
    let snake = name.as_str().replace('-', "_");
    Ok(files
        .into_iter()
        .map(|(_, path, bytes)| {
            let bytes = match std::str::from_utf8(bytes) {
                Ok(text) => text.replace("{{name}}", name.as_str()).replace("{{name_snake}}", &snake).into_bytes(),
                Err(_) => bytes.to_vec(),
            };
            (PathBuf::from(path), bytes)
        })
        .collect())
}

/// Write `lang`'s template for `name` into `dir` (made; refused when it exists and is not
/// empty). Returns the files written, relative to `dir`.
pub fn create(dir: &Path, lang: &str, name: &str) -> Result<Vec<PathBuf>, NewError> {
    let files = render(lang, name)?;
    if std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some()) {
        return Err(NewError::Exists(dir.to_path_buf()));
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| NewError::Io { path, source }
    };
    for (rel, bytes) in &files {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        std::fs::write(&path, bytes).map_err(io(&path))?;
        #[cfg(unix)]
        if rel.extension().is_some_and(|e| e == "sh") {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).map_err(io(&path))?;
        }
    }
    Ok(files.into_iter().map(|(p, _)| p).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_language_or_a_bad_name_is_refused_with_the_choices() {
        let e = render("cobol", "ok").unwrap_err().to_string();
        assert!(e.contains("cobol") && e.contains("available"), "{e}");
        assert!(matches!(render("rust", "Not A Name"), Err(NewError::Name(_))));
    }

    #[test]
    fn a_template_never_lands_in_a_folder_with_files() {
        let Some(lang) = languages().first().copied() else { return };
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("keep.txt"), "mine").unwrap();
        assert!(matches!(create(dir.path(), lang, "agent-one"), Err(NewError::Exists(_))));
        assert_eq!(std::fs::read_to_string(dir.path().join("keep.txt")).unwrap(), "mine");
        let fresh = dir.path().join("agent-one");
        let files = create(&fresh, lang, "agent-one").unwrap();
        assert!(!files.is_empty());
        for f in files {
            let text = std::fs::read(fresh.join(&f)).unwrap();
            assert!(!String::from_utf8_lossy(&text).contains("{{name"), "{} keeps a placeholder", f.display());
        }
    }

    #[test]
    fn go_and_c_templates_carry_their_bindings_build_script_test_input_and_the_full_world() {
        for (lang, files) in [
            ("go", &["export_wit_world/agent.go", "wit_exports.go", "go.mod", "WIT.sha256"][..]),
            ("c", &["src/main.c", "gen/agent.h", "gen/agent.c", "gen/WIT.sha256"][..]),
        ] {
            let rendered = render(lang, "agent-one").unwrap();
            let get = |want: &str| {
                rendered
                    .iter()
                    .find(|(p, _)| p == Path::new(want))
                    .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
            };
            for f in files.iter().chain(&["build.sh", "input.txt", "README.md", "wit/worlds.wit"]) {
                assert!(get(f).is_some(), "{lang}: no {f}");
            }
            let manifest = get("cortex.toml").unwrap();
            assert!(manifest.contains("name = \"agent-one\"") && manifest.contains(&format!("lang = \"{lang}\"")));
            assert!(manifest.contains("output = \"build/agent-one.wasm\""), "{manifest}");
            assert!(get("build.sh").unwrap().contains("build/agent-one.wasm"));
            // Bound to the full world: all three exports the host calls.
            let (bindings, wants) = match lang {
                "go" => {
                    (get("wit_exports.go").unwrap(), ["wasmexport init", "wasmexport handle", "wasmexport on-change"])
                }
                _ => (
                    get("gen/agent.h").unwrap(),
                    ["exports_agent_init", "exports_agent_handle", "exports_agent_on_change"],
                ),
            };
            for want in wants {
                assert!(bindings.contains(want), "{lang}: the bindings lack {want}");
            }
        }
    }

    #[test]
    fn every_language_with_a_guide_has_a_template() {
        let have = languages();
        for lang in ["c", "go", "js", "python", "rust", "ts"] {
            assert!(have.contains(&lang), "no template for {lang}: {have:?}");
        }
    }

    #[test]
    fn the_rust_template_carries_the_sdk_its_wit_and_the_toolchain_pin() {
        let files = render("rust", "my-agent").unwrap();
        let file = |p: &str| files.iter().find(|(f, _)| f == Path::new(p)).map(|(_, b)| String::from_utf8_lossy(b));
        for p in [
            "rust-toolchain.toml",
            "wit/worlds.wit",
            "vendor/cortex-agent/Cargo.toml",
            "vendor/cortex-agent/src/lib.rs",
        ] {
            assert!(file(p).is_some(), "the rust template has no {p}");
        }
        // The project's own crate depends on the vendored SDK; the SDK builds outside the
        // repo's workspace, against the project's wit/.
        assert!(file("Cargo.toml").unwrap().contains("path = \"vendor/cortex-agent\""));
        assert!(file("Cargo.toml").unwrap().contains("name = \"my_agent\""));
        let sdk = file("vendor/cortex-agent/Cargo.toml").unwrap();
        assert!(!sdk.contains("workspace"), "{sdk}");
        assert!(!file("vendor/cortex-agent/src/lib.rs").unwrap().contains("\"../wit\""));
    }
}
