//! The language guides (docs/languages/*.md), run for real, so that they cannot drift:
//!
//! - for Rust, Python, TypeScript and JavaScript, the guide's walk-through: `cortex new
//!   notes --lang L` (the templates shipped in the binary), `cortex build` with the real
//!   toolchain (scripts/install-language-toolchains.sh), then against a real server: the
//!   upload has no warning (the component exports `init`, `handle` and `on-change`), a
//!   deploy runs `init` with the configuration (and one it refuses fails), the template's
//!   `input.json` writes a note with compare-and-swap, `on-change` sees the write, a graph
//!   relation is made and read back, and a message sent and one published reach another
//!   agent;
//! - the guides show the templates' sources byte for byte (`<!-- file: PATH -->` before a
//!   code block);
//! - every relative link of the repo's markdown resolves, and no doc names the files that
//!   are not in the repo or repeats a statement that is no longer true.
//!
//! A missing toolchain fails the test with the command that installs it; it never skips.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use cortex_host::cli::new;
use cortex_host::cli::project::Project;

use crate::server::Server;

/// The languages whose templates and guides this module checks (Go and C: their own tests).
const LANGS: [&str; 4] = ["rust", "python", "ts", "js"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// `cortex new notes --lang LANG` then `cortex build` in the new folder.
fn new_and_build(lang: &str, dir: &Path) -> PathBuf {
    let project = dir.join("notes");
    let files = match new::create(&project, lang, "notes") {
        Ok(f) => f,
        Err(e) => panic!("cortex new notes --lang {lang}: {e}"),
    };
    for f in ["cortex.toml", "input.json", "README.md", "wit/worlds.wit"] {
        assert!(files.iter().any(|p| p == Path::new(f)), "{lang}: the template has no {f}: {files:?}");
    }
    build_project(&project)
}

/// `cortex build` in `project`, with the toolchains installed by
/// scripts/install-language-toolchains.sh on PATH and, for Rust, one shared target
/// folder (offline: the SDK is in the project). Returns the component.
fn build_project(project: &Path) -> PathBuf {
    let tools = std::env::var_os("CORTEX_LANG_TOOLS").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/cortex/lang-tools"),
        PathBuf::from,
    );
    let mut path = OsString::from(tools.join("venv/bin"));
    path.push(":");
    path.push(repo().join("plugins/js/node_modules/.bin"));
    path.push(":");
    path.push(std::env::var_os("PATH").unwrap_or_default());
    // <target>/tmp -> <target>/cortex-templates: every Rust template build shares it.
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().unwrap().join("cortex-templates");
    let started = Instant::now();
    let built = Project::find(project).and_then(|p| {
        p.build_with_env(&[
            ("PATH", path.as_os_str()),
            ("CARGO_TARGET_DIR", target.as_os_str()),
            ("CARGO_NET_OFFLINE", "true".as_ref()),
        ])
    });
    let wasm = match built {
        Ok(w) => w,
        Err(e) => panic!(
            "cortex build in {} failed: {e}\n\
             If a toolchain is missing, install them all with: scripts/install-language-toolchains.sh",
            project.display()
        ),
    };
    eprintln!("cortex build {:?} -> {}", started.elapsed(), wasm.display());
    wasm
}

/// A real server whose limits leave room for 12-18 MB language components (compile on
/// a loaded 2-core machine, CPython's start-up), and a client that waits for the compile.
async fn server() -> Server {
    let mut s = Server::start_with(|cfg| {
        cfg.engine.compile_timeout = Duration::from_secs(600);
        cfg.http.request_timeout_ms = 600_000;
        cfg.limits.memory_bytes = 256 << 20;
        cfg.limits.timeout = Duration::from_secs(30);
        cfg.limits.fuel = 10_000_000_000;
    })
    .await;
    s.client = reqwest::Client::builder().timeout(Duration::from_secs(600)).build().unwrap();
    s
}

/// Invoke `agent` with a JSON command; the reply as JSON (`null` for no output).
async fn command(s: &Server, dev: &str, agent: &str, cmd: &Value) -> Value {
    let out = s.invoke_ok(dev, agent, &cmd.to_string()).await;
    if out.is_empty() { Value::Null } else { serde_json::from_str(&out).unwrap() }
}

/// Poll `agent`'s `get collection/key` until `check` holds (a generous deadline: change
/// batches and messages are delivered in the background).
async fn get_until(s: &Server, dev: &str, agent: &str, collection: &str, key: &str, check: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let got = command(s, dev, agent, &json!({ "op": "get", "collection": collection, "key": key })).await;
        if check(&got) {
            return;
        }
        assert!(Instant::now() < deadline, "{agent}: {collection}/{key} is still {got}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn walk_through(lang: &str) {
    let dir = tempfile::tempdir().unwrap();
    let wasm = tokio::task::spawn_blocking({
        let dir = dir.path().to_path_buf();
        let lang = lang.to_owned();
        move || new_and_build(&lang, &dir)
    })
    .await
    .unwrap();
    let s = server().await;
    let dev = s.developer_in("guide").await;

    // Upload: no warning, i.e. the component exports every function the host calls.
    let r = s.req(Method::POST, "/v1/modules", &dev).body(std::fs::read(&wasm).unwrap()).send().await.unwrap();
    let status = r.status();
    let module: Value = r.json().await.unwrap();
    // A component this large compiles in the background: 202, then poll until it is ready.
    assert!(matches!(status, StatusCode::CREATED | StatusCode::ACCEPTED), "{lang}: upload: {status} {module}");
    let module = s.module_settled(&dev, module["digest"].as_str().unwrap(), Duration::from_secs(600)).await;
    assert_eq!(module["status"], "ready", "{lang}: {module}");
    let warnings = module["warnings"].as_array().map_or(0, Vec::len);
    assert_eq!(warnings, 0, "{lang}: a template agent must export init, handle and on-change: {module}");
    let digest = module["digest"].as_str().unwrap().to_owned();

    // Deploy: `init` reads the configuration and records it; a configuration it refuses
    // fails the deploy with the agent's own error.
    s.deploy_with(
        &dev,
        "notes",
        &digest,
        json!({ "config": { "greeting": "Hi" }, "watches": [{ "collection": "notes" }] }),
    )
    .await;
    s.deploy_with(&dev, "peer", &digest, json!({ "subscriptions": ["news"] })).await;
    let r = s
        .req(Method::POST, "/v1/agents", &dev)
        .json(&json!({ "name": "refused", "module": digest, "config": { "greeting": "" } }))
        .send()
        .await
        .unwrap();
    let (status, body) = (r.status(), r.text().await.unwrap());
    assert!(
        status.is_client_error() && body.contains("greeting must not be empty"),
        "{lang}: an empty greeting: {status} {body}"
    );
    let settings = json!({ "op": "get", "collection": "settings", "key": "notes" });
    assert_eq!(command(&s, &dev, "notes", &settings).await, json!({ "value": { "greeting": "Hi" }, "revision": 1 }));
    let settings = json!({ "op": "get", "collection": "settings", "key": "peer" });
    assert_eq!(command(&s, &dev, "notes", &settings).await["value"], json!({ "greeting": "Hello" }));
    let hello = json!({ "op": "hello", "name": "guide" });
    assert_eq!(command(&s, &dev, "notes", &hello).await, json!({ "message": "Hi, guide!" }), "{lang}");

    // The template's test input: a note written with compare-and-swap.
    let input = std::fs::read_to_string(wasm.with_file_name("input.json")).unwrap();
    let input: Value = serde_json::from_str(&input).unwrap();
    assert_eq!(command(&s, &dev, "notes", &input).await, json!({ "key": "first", "revision": 1 }), "{lang}");
    let get = json!({ "op": "get", "key": "first" });
    assert_eq!(command(&s, &dev, "notes", &get).await["value"]["text"], input["text"], "{lang}");
    // on-change: the watch delivers the write, and the agent records it.
    get_until(&s, &dev, "notes", "changes", "first", |v| v["value"]["op"] == "put" && v["value"]["revision"] == 1)
        .await;
    let again = json!({ "op": "put", "key": "first", "text": "second version" });
    assert_eq!(command(&s, &dev, "notes", &again).await["revision"], 2, "{lang}");
    get_until(&s, &dev, "notes", "changes", "first", |v| v["value"]["revision"] == 2).await;

    // Graph: a relation to the peer, read back.
    let link = json!({ "op": "link", "to": "peer" });
    assert_eq!(command(&s, &dev, "notes", &link).await, json!({ "neighbours": ["peer"] }), "{lang}");
    // Messaging: a message sent to the peer is delivered to its handle.
    let send = json!({ "op": "send", "to": "peer", "text": "hello, peer" });
    assert_eq!(command(&s, &dev, "notes", &send).await, json!({ "sent": "peer" }), "{lang}");
    get_until(&s, &dev, "peer", "inbox", "notes", |v| v["value"]["text"] == "hello, peer").await;
    // ... and one published to a topic reaches the agents subscribed to it.
    let publish = json!({ "op": "publish", "topic": "news", "text": "extra, extra" });
    assert_eq!(command(&s, &dev, "notes", &publish).await, json!({ "published": "news" }), "{lang}");
    get_until(&s, &dev, "peer", "inbox", "notes", |v| v["value"]["text"] == "extra, extra").await;

    // A command it does not know is the agent's own error, with a stable code.
    let r = s.req(Method::POST, "/v1/agents/notes/invoke", &dev).body(r#"{"op":"dance"}"#).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "{lang}");
    let problem: Value = r.json().await.unwrap();
    assert_eq!(problem["agent_code"], "bad-input", "{lang}: {problem}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_rust_guide_builds_and_runs_every_part_of_the_world() {
    walk_through("rust").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_python_guide_builds_and_runs_every_part_of_the_world() {
    walk_through("python").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_typescript_guide_builds_and_runs_every_part_of_the_world() {
    walk_through("ts").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_javascript_guide_builds_and_runs_every_part_of_the_world() {
    walk_through("js").await;
}

/// Every markdown file of the repo (not in build or package folders).
fn markdown_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for e in entries.filter_map(Result::ok) {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || matches!(name.as_str(), "target" | "node_modules" | "dist") {
                continue;
            }
            if p.is_dir() {
                walk(&p, out);
            } else if name.ends_with(".md") {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&repo(), &mut out);
    out.sort();
    out
}

/// The targets of the inline links `[text](target)` of a markdown text, outside code
/// blocks and code spans.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        // Every other piece between backticks is a code span.
        for prose in line.split('`').step_by(2) {
            let mut rest = prose;
            while let Some(i) = rest.find("](") {
                rest = &rest[i + 2..];
                if let Some(end) = rest.find(')') {
                    out.push(rest[..end].trim().to_owned());
                }
            }
        }
    }
    out
}

#[test]
fn every_relative_link_in_the_docs_resolves_and_no_doc_points_at_files_that_are_not_there() {
    let files = markdown_files();
    assert!(files.len() > 5, "found {} markdown files", files.len());
    let mut broken = Vec::new();
    for md in &files {
        let text = std::fs::read_to_string(md).unwrap();
        let rel = md.strip_prefix(repo()).unwrap().display().to_string();
        for name in ["DESIGN.md", "GUESTS.md", "../shared/"] {
            if text.contains(name) {
                broken.push(format!("{rel}: names {name}"));
            }
        }
        for link in links(&text) {
            let target = link.split('#').next().unwrap_or_default();
            if target.is_empty() || target.contains("://") || target.starts_with("mailto:") || target.contains(' ') {
                continue;
            }
            if !md.parent().unwrap().join(target).exists() {
                broken.push(format!("{rel}: ({link}) does not exist"));
            }
        }
    }
    assert!(broken.is_empty(), "broken links in the docs:\n{}", broken.join("\n"));
}

#[test]
fn the_language_guides_say_nothing_that_is_no_longer_true() {
    let mut docs: Vec<PathBuf> = ["README.md", "docs/languages/README.md"].iter().map(|p| repo().join(p)).collect();
    docs.extend(LANGS.iter().map(|l| guide(l)));
    for doc in docs {
        let text = std::fs::read_to_string(&doc).unwrap_or_else(|e| panic!("{}: {e}", doc.display()));
        for stale in ["no HTTP API yet", "until it serves them", "importing them is refused", "cortex:lang-agent"] {
            assert!(!text.contains(stale), "{} still says {stale:?}", doc.display());
        }
    }
}

/// The guide of a template language.
fn guide(lang: &str) -> PathBuf {
    let name = match lang {
        "ts" | "js" => "typescript",
        other => other,
    };
    repo().join(format!("docs/languages/{name}.md"))
}

/// The code blocks of a markdown text that follow a `<!-- file: PATH -->` line, as
/// (PATH, the block's content).
fn shown_files(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let Some(path) = line.trim().strip_prefix("<!-- file: ").and_then(|l| l.strip_suffix(" -->")) else {
            continue;
        };
        let fence = lines.next().unwrap_or_default();
        assert!(fence.starts_with("```"), "<!-- file: {path} --> is not followed by a code block");
        let mut body = String::new();
        for l in lines.by_ref() {
            if l.starts_with("```") {
                break;
            }
            body.push_str(l);
            body.push('\n');
        }
        out.push((path.to_owned(), body));
    }
    out
}

#[test]
fn each_guide_shows_its_templates_sources_byte_for_byte() {
    for lang in LANGS {
        let doc = guide(lang);
        let text = std::fs::read_to_string(&doc).unwrap_or_else(|e| panic!("{}: {e}", doc.display()));
        let shown = shown_files(&text);
        // The main source of the template is in its guide.
        let main = match lang {
            "rust" => "src/lib.rs",
            "python" => "app.py",
            "ts" => "src/app.ts",
            _ => "app.js",
        };
        let want = format!("host/templates/{lang}/{main}");
        assert!(shown.iter().any(|(p, _)| *p == want), "{} does not show {want}", doc.display());
        for (path, body) in shown {
            let file = std::fs::read_to_string(repo().join(&path)).unwrap_or_else(|e| panic!("{path}: {e}"));
            let file = file.replace("{{name}}", "notes").replace("{{name_snake}}", "notes");
            assert!(body == file, "{}: the block after <!-- file: {path} --> differs from the file", doc.display());
        }
    }
}

/// The fenced blocks of `lang` in the README's section `heading`, in order.
fn readme_blocks(heading: &str, lang: &str) -> Vec<String> {
    let text = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let start = text.find(heading).unwrap_or_else(|| panic!("README.md has no {heading:?}"));
    let section = &text[start + heading.len()..];
    let section = &section[..section.find("\n## ").unwrap_or(section.len())];
    let mut out = Vec::new();
    let mut rest = section;
    let open = format!("```{lang}\n");
    while let Some(i) = rest.find(&open) {
        rest = &rest[i + open.len()..];
        let end = rest.find("```").unwrap();
        out.push(rest[..end].to_owned());
        rest = &rest[end..];
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_rust_agent_builds_as_pasted_into_a_new_project_and_counts() {
    let (toml, rust) = (readme_blocks("## Writing an agent\n", "toml"), readme_blocks("## Writing an agent\n", "rust"));
    assert_eq!((toml.len(), rust.len()), (1, 1), "one Cargo.toml and one src/lib.rs in the README's section");
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("counter");
    new::create(&project, "rust", "counter").unwrap();
    // The README's files, pasted as they are over the template's.
    std::fs::write(project.join("Cargo.toml"), &toml[0]).unwrap();
    std::fs::write(project.join("src/lib.rs"), &rust[0]).unwrap();
    let wasm = tokio::task::spawn_blocking(move || build_project(&project)).await.unwrap();
    let sb = crate::common::Sandbox::new();
    let m = sb.load(wasm.to_str().unwrap()).await;
    let limits = crate::common::limits();
    assert_eq!(crate::common::text(&sb.invoke(&m, "hits", &limits).await), "1");
    assert_eq!(crate::common::text(&sb.invoke(&m, "hits", &limits).await), "2");
}
