//! An agent project on disk: its `cortex.toml` manifest, and `cortex build`.
//!
//! ```toml
//! [agent]
//! name = "hello"          # the agent's name (the one name rule)
//! lang = "rust"           # rust, python, ts, js, go or c
//!
//! [build]
//! command = "cargo build --target wasm32-wasip2 --release"   # run by `sh -c` in the project folder
//! output = "target/wasm32-wasip2/release/hello.wasm"          # the component it makes
//! watch = ["src", "Cargo.toml"]                               # what `cortex dev` watches (default: the folder)
//! ```
//!
//! `cortex build` finds the manifest in the current folder or the nearest parent, runs the
//! build command there (its output goes to stderr, so stdout carries only the result), checks
//! that the output exists and was written by this build, and prints the output's path.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// The manifest's file name.
pub const MANIFEST: &str = "cortex.toml";

/// What went wrong with a project.
#[derive(Debug, thiserror::Error)]
pub enum ProjectError {
    /// No manifest in the folder or any parent.
    #[error("no {MANIFEST} in {0} or any folder above it (make a project with `cortex new NAME --lang LANG`)")]
    NoManifest(PathBuf),
    /// The manifest cannot be read or parsed.
    #[error("{path}: {msg}")]
    BadManifest {
        /// The manifest.
        path: PathBuf,
        /// Why.
        msg: String,
    },
    /// The build command could not be started.
    #[error("cannot start the build command `{command}`: {source}")]
    Spawn {
        /// The command.
        command: String,
        /// Why.
        source: std::io::Error,
    },
    /// The build command failed.
    #[error("the build command `{command}` failed ({status})")]
    Failed {
        /// The command.
        command: String,
        /// Its exit status.
        status: std::process::ExitStatus,
    },
    /// The build command succeeded but did not (re)write its output.
    #[error("the build command succeeded but {0} was not written by it (check [build] output in {MANIFEST})")]
    NoOutput(PathBuf),
}

/// `cortex.toml`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// `[agent]`.
    pub agent: AgentSection,
    /// `[build]`.
    pub build: BuildSection,
    /// `[deploy]`: how `cortex deploy` and `cortex dev` deploy this project (all optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploy: Option<toml::Table>,
}

/// `[agent]`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSection {
    /// The agent's name.
    pub name: String,
    /// The language: rust, python, ts, js, go or c.
    pub lang: String,
}

/// `[build]`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildSection {
    /// Run by `sh -c` in the project folder.
    pub command: String,
    /// The component the command writes, relative to the project folder.
    pub output: PathBuf,
    /// Files and folders (relative) whose changes `cortex dev` rebuilds on; default: all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub watch: Vec<PathBuf>,
}

/// A project: its folder and manifest.
#[derive(Clone, Debug)]
pub struct Project {
    /// The folder holding `cortex.toml`.
    pub root: PathBuf,
    /// The manifest.
    pub manifest: Manifest,
}

impl Project {
    /// The project whose manifest is in `dir` or the nearest folder above it.
    pub fn find(dir: &Path) -> Result<Self, ProjectError> {
        let start = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
        let mut at = Some(start.as_path());
        while let Some(d) = at {
            let path = d.join(MANIFEST);
            if path.is_file() {
                return Self::load(&path);
            }
            at = d.parent();
        }
        Err(ProjectError::NoManifest(start))
    }

    /// The project of the manifest at `path`.
    pub fn load(path: &Path) -> Result<Self, ProjectError> {
        let bad = |msg: String| ProjectError::BadManifest { path: path.to_path_buf(), msg };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let manifest: Manifest = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
        if let Err(e) = crate::names::AgentName::parse(&manifest.agent.name) {
            return Err(bad(format!("[agent] name: {e}")));
        }
        if manifest.build.command.trim().is_empty() {
            return Err(bad("[build] command is empty".into()));
        }
        let root = path.parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        Ok(Self { root, manifest })
    }

    /// Where the build writes the component.
    pub fn output(&self) -> PathBuf {
        self.root.join(&self.manifest.build.output)
    }

    /// Run the build command (its stdout and stderr go to this process's stderr) and return
    /// the component it wrote.
    pub fn build(&self) -> Result<PathBuf, ProjectError> {
        self.build_with_env(&[])
    }

    /// [`Self::build`] with `env` added to the build command's environment (a `PATH` that
    /// finds the toolchain, a shared `CARGO_TARGET_DIR`, ...).
    pub fn build_with_env(&self, env: &[(&str, &std::ffi::OsStr)]) -> Result<PathBuf, ProjectError> {
        let command = self.manifest.build.command.clone();
        let started = SystemTime::now();
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(&command)
            .envs(env.iter().copied())
            .current_dir(&self.root)
            .stdin(Stdio::null())
            .stdout(std::io::stderr())
            .stderr(Stdio::inherit())
            .status()
            .map_err(|source| ProjectError::Spawn { command: command.clone(), source })?;
        if !status.success() {
            return Err(ProjectError::Failed { command, status });
        }
        let output = self.output();
        // Written by this build: modified no earlier than it started (with a second's slack for
        // file systems that round times), so a stale component never passes for a fresh one.
        let fresh = std::fs::metadata(&output).and_then(|m| m.modified()).is_ok_and(|t| {
            t.duration_since(started).is_ok() || started.duration_since(t).is_ok_and(|d| d.as_secs() < 1)
        });
        if !fresh {
            return Err(ProjectError::NoOutput(output));
        }
        Ok(output)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project(dir: &Path, build: &str) {
        std::fs::write(dir.join(MANIFEST), format!("[agent]\nname = \"demo\"\nlang = \"c\"\n\n[build]\n{build}\n"))
            .unwrap();
    }

    #[test]
    fn a_build_returns_the_component_its_command_wrote() {
        let dir = tempfile::tempdir().unwrap();
        project(dir.path(), "command = \"mkdir -p out && printf wasm > out/a.wasm\"\noutput = \"out/a.wasm\"");
        std::fs::create_dir(dir.path().join("src")).unwrap();
        // Found from a folder below the project.
        let p = Project::find(&dir.path().join("src")).unwrap();
        let out = p.build().unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"wasm");
        assert_eq!(out, p.root.join("out/a.wasm"));
    }

    #[test]
    fn a_failed_command_or_a_missing_output_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        project(dir.path(), "command = \"exit 3\"\noutput = \"a.wasm\"");
        assert!(matches!(Project::find(dir.path()).unwrap().build(), Err(ProjectError::Failed { .. })));
        project(dir.path(), "command = \"true\"\noutput = \"a.wasm\"");
        assert!(matches!(Project::find(dir.path()).unwrap().build(), Err(ProjectError::NoOutput(_))));
    }

    #[test]
    fn a_bad_manifest_names_the_file_and_the_field() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(MANIFEST),
            "[agent]\nname = \"Bad Name\"\nlang = \"c\"\n[build]\ncommand = \"true\"\noutput = \"a\"\n",
        )
        .unwrap();
        let e = Project::find(dir.path()).unwrap_err().to_string();
        assert!(e.contains("cortex.toml") && e.contains("[agent] name"), "{e}");
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(Project::find(empty.path()), Err(ProjectError::NoManifest(_))));
    }
}
