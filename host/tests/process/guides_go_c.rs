//! The Go and C guides (docs/languages/go.md, c.md) run as a reader runs them: the
//! guide's walkthrough block (`cortex new`, `cortex build` with the real toolchains,
//! upload, deploy with watches and subscriptions, invocations) is run by bash against a
//! real `cortex serve`, its output must show the guide's expected lines in order
//! (`handle`, `init` refusing a bad config, `on-change` seen, a graph relation, a message
//! sent and one published and both delivered), and every source the guide prints must be
//! the file `cortex new` wrote. So the guides, the templates and the host cannot drift
//! apart.
//!
//! A missing toolchain fails the test with the command that installs it
//! (scripts/install-language-toolchains.sh); it never skips.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{BIN, Serve, client, without_cortex_env};

/// The guide of `lang`.
fn guide(lang: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../docs/languages/{lang}.md"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The fenced code blocks of `doc` right after a line `<!-- MARK -->`, as (mark, body).
fn marked_blocks(doc: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        let Some(mark) = line.trim().strip_prefix("<!-- ").and_then(|l| l.strip_suffix(" -->")) else { continue };
        let fence = lines.next().unwrap_or_default();
        assert!(fence.starts_with("```"), "<!-- {mark} --> must be followed by a code block, not {fence:?}");
        let mut body = String::new();
        for l in lines.by_ref() {
            if l.starts_with("```") {
                break;
            }
            body.push_str(l);
            body.push('\n');
        }
        out.push((mark.to_owned(), body));
    }
    out
}

/// The one block marked `mark`.
fn block(doc: &str, mark: &str) -> String {
    let mut found = marked_blocks(doc).into_iter().filter(|(m, _)| m == mark).map(|(_, b)| b);
    let b = found.next().unwrap_or_else(|| panic!("no block marked <!-- {mark} -->"));
    assert!(found.next().is_none(), "two blocks marked <!-- {mark} -->");
    b
}

/// Run `script` with bash (-euo pipefail) in `dir` as a user of `s` with `token` would,
/// `cortex` on PATH; bounded (a guide's wait loop must end). Returns stdout.
fn run_walkthrough(s: &Serve, token: &str, dir: &Path, script: &str) -> String {
    let bin_dir = Path::new(BIN).parent().unwrap();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let (stdout, stderr) = (dir.join("walkthrough.stdout"), dir.join("walkthrough.stderr"));
    let mut command = without_cortex_env(Command::new("bash"));
    if let Ok(tools) = std::env::var("CORTEX_LANG_TOOLS") {
        command.env("CORTEX_LANG_TOOLS", tools);
    }
    let mut child = command
        .args(["-euo", "pipefail", "-c", script])
        .current_dir(dir)
        .env("PATH", path)
        .env("CORTEX_URL", &s.base)
        .env("CORTEX_TOKEN", token)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    // Bounds a hang, not a speed: a cold Go build on a loaded machine takes a minute or two.
    let deadline = Instant::now() + Duration::from_secs(900);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the walkthrough did not end: stderr so far:\n{}", std::fs::read_to_string(&stderr).unwrap());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let (out, err) = (std::fs::read_to_string(&stdout).unwrap(), std::fs::read_to_string(&stderr).unwrap());
    assert!(
        status.success(),
        "the walkthrough failed ({status}):\n--- stdout\n{out}\n--- stderr\n{err}\n\
         If a toolchain is missing, install them all with: scripts/install-language-toolchains.sh"
    );
    out
}

async fn check_guide(lang: &str, project: &str) {
    let doc = guide(lang);
    for stale in ["DESIGN.md", "GUESTS.md", "no HTTP API yet", "importing them is refused", "cortex:lang-agent"] {
        assert!(!doc.contains(stale), "{lang}.md still says {stale:?}");
    }
    let dir = tempfile::tempdir().unwrap();
    let s = Serve::start(&dir.path().join("data"));
    s.ready(&reqwest::Client::new()).await;
    let admin = s.token(None, "platform-admin");
    let made = client(&s, &admin, &["tenants", "create", "demo"]);
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let dev = s.token(Some("demo"), "developer");
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();

    let out = run_walkthrough(&s, &dev, &work, &block(&doc, "walkthrough"));

    // The output the guide shows, line by line and in order (tables aside).
    let mut lines = out.lines();
    for want in block(&doc, "walkthrough-output").lines() {
        assert!(lines.any(|l| l == want), "{lang}: the guide's line {want:?} is not in the output (in order):\n{out}");
    }

    // Every file the guide prints is the file `cortex new` wrote.
    let files: Vec<_> = marked_blocks(&doc).into_iter().filter(|(m, _)| m.starts_with("file: ")).collect();
    assert!(files.len() >= 2, "{lang}: the guide prints cortex.toml and the agent's source");
    for (mark, body) in files {
        let path = work.join(project).join(mark.trim_start_matches("file: "));
        let written = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(body, written, "{lang}: the guide's {mark} differs from what `cortex new` wrote");
    }

    // The component exports everything the host calls and imports every interface.
    let listed = client(&s, &dev, &["modules", "list", "--json"]);
    let modules: Value = serde_json::from_slice(&listed.stdout).unwrap();
    let [module] = modules.as_array().unwrap().as_slice() else { panic!("one module: {modules}") };
    for export in ["init", "handle", "on-change"] {
        assert!(module["exports"].as_array().unwrap().iter().any(|e| e == export), "{lang}: no {export}: {module}");
    }
    for interface in ["runtime", "documents", "graph", "messaging"] {
        let imported = module["imports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i.as_str().is_some_and(|i| i.starts_with(&format!("cortex:agent/{interface}@"))));
        assert!(imported, "{lang}: does not import {interface}: {module}");
    }
    assert!(module["warnings"].as_array().is_none_or(Vec::is_empty), "{lang}: warned: {module}");

    // What the agents wrote is in the tenant's change feed: visits counted, on-change's
    // record, both messages kept.
    let r = reqwest::Client::new().get(format!("{}/v1/events?limit=1000", s.base)).bearer_auth(&dev);
    let events: Value = r.send().await.unwrap().json().await.unwrap();
    let keys: Vec<String> = events
        .as_array()
        .unwrap_or_else(|| panic!("{events}"))
        .iter()
        .map(|e| format!("{}/{}", e["collection"].as_str().unwrap_or(""), e["key"].as_str().unwrap_or("")))
        .collect();
    for want in
        ["visits/world".to_owned(), format!("seen/{project}"), "inbox/friend".into(), format!("inbox/{project}")]
    {
        assert!(keys.contains(&want), "{lang}: no write of {want} in the feed: {keys:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_go_guide_runs_as_written() {
    check_guide("go", "hello-go").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_c_guide_runs_as_written() {
    check_guide("c", "hello-c").await;
}
