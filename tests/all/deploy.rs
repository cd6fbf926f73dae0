//! The Kubernetes deployment (`deploy/`), checked offline with the real tools:
//!
//! - every overlay under `deploy/overlays/` renders with `kubectl kustomize` and validates
//!   with `kubernetes-validate --strict` against Kubernetes [`KUBERNETES`]; the custom
//!   resources it has no schema for (ServiceMonitor, PrometheusRule, the operator's kinds)
//!   get a structural check here instead ([`check_custom`]): the fields they have must be
//!   ones their operators read, with the right types, and what they point at must exist;
//! - the PrometheusRule's rules pass `promtool check rules`, and `promtool test rules` runs
//!   their unit tests (`deploy/base/prometheusrule-tests.yaml`); every metric an alert uses
//!   is one the host exports (README "Metrics" or host/src/telemetry);
//! - the Dockerfile (it cannot be built here: no Docker engine) agrees with the binary's
//!   defaults and the manifests: port, user, data directory, volumes, config path, binaries;
//! - each overlay's host config (the ConfigMap's TOML plus the container's `CORTEX_CFG__`
//!   variables) loads with the real loader ([`ServerConfig::load`]: a misspelled key fails),
//!   and the pods agree with it: ports, probes, volumes, secrets, shutdown timing, and the
//!   full securityContext of every container.
//!
//! kubectl and promtool (Debian packages) and kubernetes-validate (PyPI, pinned in
//! `tests/kubernetes-validate-requirements.txt`) are installed by
//! scripts/install-language-toolchains.sh. A test whose tool is missing skips with a message,
//! unless `CORTEX_REQUIRE_DEPLOY_TOOLS` is set (scripts/test.sh sets it): then it fails.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use cortex_host::config::{ServerConfig, StoreConfig};
use serde_json::Value;

/// The Kubernetes version the manifests are validated against (the operator's k8s-openapi
/// feature is the same minor).
const KUBERNETES: &str = "1.33.0";

/// The overlays shipped; each must exist and render.
const OVERLAYS: &[&str] = &["single-node", "cluster", "cluster-hpa"];

/// Kinds without a schema in kubernetes-validate, checked by [`check_custom`].
const CUSTOM_KINDS: &[&str] = &["ServiceMonitor", "PrometheusRule", "CortexCluster", "Tenant", "Agent"];

/// Values for the container variables Kubernetes fills in (`fieldRef`), to load the config.
const FIELD_SAMPLES: &[(&str, &str)] = &[("metadata.name", "cortex-0"), ("status.podIP", "10.1.2.3")];

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

// ---------------------------------------------------------------------------------------
// Tools

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join(name)).find(|p| p.is_file())
}

fn lang_tools() -> PathBuf {
    std::env::var_os("CORTEX_LANG_TOOLS").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/cortex/lang-tools")
    })
}

fn find_tool(name: &str) -> Option<PathBuf> {
    match name {
        "kubernetes-validate" => {
            let venv = lang_tools().join("kubernetes-validate-venv/bin/kubernetes-validate");
            if venv.is_file() { Some(venv) } else { on_path(name) }
        }
        _ => on_path(name),
    }
}

/// The tools `names`, or `None` (the test skips) when one is missing and
/// `CORTEX_REQUIRE_DEPLOY_TOOLS` is unset; with it set, a missing tool fails the test.
fn tools(test: &str, names: &[&str]) -> Option<BTreeMap<String, PathBuf>> {
    let mut found = BTreeMap::new();
    let mut missing = Vec::new();
    for n in names {
        match find_tool(n) {
            Some(p) => {
                found.insert((*n).to_owned(), p);
            }
            None => missing.push(*n),
        }
    }
    if missing.is_empty() {
        return Some(found);
    }
    let msg = format!(
        "{test}: {} not installed (kubectl and promtool from apt, kubernetes-validate from PyPI): \
         run scripts/install-language-toolchains.sh",
        missing.join(", ")
    );
    assert!(std::env::var_os("CORTEX_REQUIRE_DEPLOY_TOOLS").is_none(), "{msg} (CORTEX_REQUIRE_DEPLOY_TOOLS is set)");
    eprintln!("SKIPPED {msg}; set CORTEX_REQUIRE_DEPLOY_TOOLS=1 to fail instead of skipping");
    None
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn run_ok(cmd: &mut Command) -> String {
    let (ok, text) = run(cmd);
    assert!(ok, "{cmd:?} failed:\n{text}");
    text
}

// ---------------------------------------------------------------------------------------
// Rendered manifests

/// One overlay as `kubectl kustomize` renders it.
struct Rendered {
    overlay: String,
    yaml: String,
    docs: Vec<Value>,
}

impl Rendered {
    fn of(kind: &str, docs: &[Value]) -> Vec<Value> {
        docs.iter().filter(|d| d["kind"] == kind).cloned().collect()
    }

    fn kind(&self, kind: &str) -> Vec<Value> {
        Self::of(kind, &self.docs)
    }

    fn named(&self, kind: &str, name: &str) -> Value {
        self.kind(kind)
            .into_iter()
            .find(|d| d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("{}: no {kind} {name}", self.overlay))
    }

    /// ConfigMaps are renamed with a content hash: find one by the generator's name.
    fn config_map(&self, name: &str) -> Value {
        self.kind("ConfigMap")
            .into_iter()
            .find(|d| d["metadata"]["name"].as_str().is_some_and(|n| n == name || n.starts_with(&format!("{name}-"))))
            .unwrap_or_else(|| panic!("{}: no ConfigMap {name}", self.overlay))
    }

    /// Deployments and StatefulSets (their pod templates).
    fn workloads(&self) -> Vec<Value> {
        self.docs.iter().filter(|d| d["kind"] == "Deployment" || d["kind"] == "StatefulSet").cloned().collect()
    }

    fn hosts(&self) -> Vec<Value> {
        self.workloads()
            .into_iter()
            .filter(|w| w["metadata"]["labels"]["app.kubernetes.io/component"] == "host")
            .collect()
    }
}

fn parse_yaml_docs(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| {
            let v: Value = serde::Deserialize::deserialize(d).expect("rendered YAML parses");
            v
        })
        .filter(|v| !v.is_null())
        .collect()
}

fn render(kubectl: &Path, overlay: &str) -> Rendered {
    let dir = deploy_dir().join("overlays").join(overlay);
    assert!(dir.join("kustomization.yaml").is_file(), "overlay {overlay} is missing");
    let out = Command::new(kubectl).arg("kustomize").arg(&dir).output().expect("kubectl runs");
    assert!(out.status.success(), "kubectl kustomize {overlay}:\n{}", String::from_utf8_lossy(&out.stderr));
    let yaml = String::from_utf8(out.stdout).expect("utf-8 output");
    let docs = parse_yaml_docs(&yaml);
    assert!(!docs.is_empty(), "{overlay} renders nothing");
    Rendered { overlay: overlay.to_owned(), yaml, docs }
}

fn render_all(kubectl: &Path) -> Vec<Rendered> {
    let mut on_disk: Vec<String> = std::fs::read_dir(deploy_dir().join("overlays"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    let mut want: Vec<String> = OVERLAYS.iter().map(|s| (*s).to_owned()).collect();
    want.sort();
    assert_eq!(on_disk, want, "every overlay is listed in OVERLAYS (and so checked)");
    OVERLAYS.iter().map(|o| render(kubectl, o)).collect()
}

fn s<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str().unwrap_or_else(|| panic!("{what} is not a string: {v}"))
}

fn obj_keys(v: &Value) -> BTreeSet<String> {
    v.as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default()
}

fn labels_match(selector: &Value, labels: &Value) -> bool {
    let Some(sel) = selector.as_object() else { return false };
    !sel.is_empty() && sel.iter().all(|(k, v)| &labels[k] == v)
}

// ---------------------------------------------------------------------------------------
// (a) + (b): render and validate

#[test]
fn every_overlay_renders_and_validates_strictly_against_the_pinned_kubernetes() {
    let Some(t) = tools("deploy validate", &["kubectl", "kubernetes-validate"]) else { return };
    let dir = tempfile::tempdir().unwrap();
    for r in render_all(&t["kubectl"]) {
        let file = dir.path().join(format!("{}.yaml", r.overlay));
        std::fs::write(&file, &r.yaml).unwrap();
        let (ok, out) = run(Command::new(&t["kubernetes-validate"]).args(["--strict", "-k", KUBERNETES]).arg(&file));
        assert!(ok, "{}: kubernetes-validate --strict -k {KUBERNETES} failed:\n{out}", r.overlay);
        // Every built-in resource passed its schema; every one without a schema is a custom
        // kind we check structurally ourselves.
        let mut builtin = 0;
        for d in &r.docs {
            let kind = s(&d["kind"], "kind");
            if CUSTOM_KINDS.contains(&kind) {
                assert!(
                    out.contains(&format!("Couldn't find schema for kind {kind}")),
                    "{}: kubernetes-validate has a schema for {kind} now: validate it there\n{out}",
                    r.overlay
                );
                check_custom(&r, d);
            } else {
                builtin += 1;
                let id = format!("{}/{}", kind.to_ascii_lowercase(), s(&d["metadata"]["name"], "name"));
                assert!(
                    out.contains(&format!("passed for resource {id} ")),
                    "{}: {id} not validated:\n{out}",
                    r.overlay
                );
            }
        }
        let warned: Vec<&str> = out.lines().filter(|l| l.starts_with("WARN")).collect();
        for w in &warned {
            assert!(
                CUSTOM_KINDS.iter().any(|k| w.contains(&format!("kind {k} "))),
                "{}: unexpected warning {w}",
                r.overlay
            );
        }
        assert!(builtin > 5, "{}: only {builtin} built-in resources", r.overlay);
    }
}

#[test]
fn strict_validation_refuses_a_field_kubernetes_does_not_know() {
    // The control: the same invocation fails on a misspelled field, so the passes above mean
    // something.
    let Some(t) = tools("deploy validate control", &["kubernetes-validate"]) else { return };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: x\nspec:\n  ports:\n    - port: 80\n      targetPrt: 8080\n",
    )
    .unwrap();
    let (ok, out) = run(Command::new(&t["kubernetes-validate"]).args(["--strict", "-k", KUBERNETES]).arg(&file));
    assert!(!ok && out.contains("targetPrt"), "a misspelled field passed:\n{out}");
}

/// The structural check of a custom resource kubernetes-validate has no schema for: the
/// fields used are ones its controller reads, with the types it reads, and what it selects
/// exists in the same rendering.
fn check_custom(r: &Rendered, d: &Value) {
    let kind = s(&d["kind"], "kind");
    let name = s(&d["metadata"]["name"], "metadata.name");
    let at = format!("{}: {kind} {name}", r.overlay);
    assert!(d["metadata"]["namespace"].is_string(), "{at}: no namespace");
    let allowed = |v: &Value, keys: &[&str], what: &str| {
        let extra: Vec<String> = obj_keys(v).into_iter().filter(|k| !keys.contains(&k.as_str())).collect();
        assert!(v.is_object(), "{at}: {what} is not a mapping");
        assert!(extra.is_empty(), "{at}: {what} has fields its operator does not read: {extra:?}");
    };
    allowed(d, &["apiVersion", "kind", "metadata", "spec"], "the resource");
    match kind {
        "ServiceMonitor" => {
            assert_eq!(d["apiVersion"], "monitoring.coreos.com/v1", "{at}");
            allowed(&d["spec"], &["selector", "endpoints", "namespaceSelector", "jobLabel"], "spec");
            let selector = &d["spec"]["selector"]["matchLabels"];
            let services: Vec<Value> = r
                .kind("Service")
                .into_iter()
                .filter(|svc| labels_match(selector, &svc["metadata"]["labels"]))
                .collect();
            assert!(!services.is_empty(), "{at}: selects no Service");
            let endpoints = d["spec"]["endpoints"].as_array().unwrap_or_else(|| panic!("{at}: no endpoints"));
            assert!(!endpoints.is_empty(), "{at}: no endpoints");
            for e in endpoints {
                allowed(
                    e,
                    &["port", "path", "interval", "scrapeTimeout", "scheme", "bearerTokenSecret"],
                    "an endpoint",
                );
                let port = s(&e["port"], "endpoint port");
                assert!(
                    services.iter().all(|svc| svc["spec"]["ports"]
                        .as_array()
                        .is_some_and(|ps| ps.iter().any(|p| p["name"] == port))),
                    "{at}: port {port} is not a named port of every selected Service"
                );
                assert_eq!(e["path"], "/metrics", "{at}");
                for k in ["interval", "scrapeTimeout"] {
                    if let Some(v) = e[k].as_str() {
                        assert!(v.ends_with('s') && v[..v.len() - 1].parse::<u32>().is_ok(), "{at}: {k} {v}");
                    }
                }
            }
        }
        "PrometheusRule" => {
            assert_eq!(d["apiVersion"], "monitoring.coreos.com/v1", "{at}");
            allowed(&d["spec"], &["groups"], "spec");
            let groups = d["spec"]["groups"].as_array().unwrap_or_else(|| panic!("{at}: no groups"));
            assert!(!groups.is_empty(), "{at}: no groups");
            for g in groups {
                allowed(g, &["name", "interval", "rules"], "a group");
                s(&g["name"], "group name");
                for rule in g["rules"].as_array().unwrap_or_else(|| panic!("{at}: group without rules")) {
                    allowed(rule, &["alert", "record", "expr", "for", "labels", "annotations"], "a rule");
                    s(&rule["expr"], "expr");
                    if rule["alert"].is_string() {
                        assert!(rule["labels"]["severity"].is_string(), "{at}: {} has no severity", rule["alert"]);
                        assert!(rule["annotations"]["summary"].is_string(), "{at}: {} has no summary", rule["alert"]);
                    }
                }
            }
        }
        // The operator's kinds: their CRD is rendered with them, and it serves the version.
        _ => {
            let (group, version) = s(&d["apiVersion"], "apiVersion").split_once('/').expect("group/version");
            assert_eq!(group, "cortex.dev", "{at}");
            assert!(d["spec"].is_object(), "{at}: spec is not a mapping");
            let crd = r
                .kind("CustomResourceDefinition")
                .into_iter()
                .find(|c| c["spec"]["group"] == group && c["spec"]["names"]["kind"] == kind)
                .unwrap_or_else(|| panic!("{at}: its CRD is not rendered with it"));
            assert!(
                crd["spec"]["versions"]
                    .as_array()
                    .is_some_and(|vs| vs.iter().any(|v| v["name"] == version && v["served"] == true)),
                "{at}: the CRD does not serve {version}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// (c): alert rules

fn prometheus_rule() -> Value {
    let text = std::fs::read_to_string(deploy_dir().join("base/prometheusrule.yaml")).unwrap();
    let docs = parse_yaml_docs(&text);
    assert_eq!(docs.len(), 1);
    docs.into_iter().next().unwrap()
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let Some(t) = tools("deploy alert rules", &["promtool"]) else { return };
    let dir = tempfile::tempdir().unwrap();
    // A Prometheus rules file is the PrometheusRule's spec; JSON is YAML.
    let rules = serde_json::json!({ "groups": prometheus_rule()["spec"]["groups"] });
    std::fs::write(dir.path().join("rules.yaml"), serde_json::to_string_pretty(&rules).unwrap()).unwrap();
    std::fs::copy(deploy_dir().join("base/prometheusrule-tests.yaml"), dir.path().join("tests.yaml")).unwrap();
    let out = run_ok(Command::new(&t["promtool"]).args(["check", "rules", "rules.yaml"]).current_dir(dir.path()));
    assert!(out.contains("SUCCESS"), "{out}");
    let out = run_ok(Command::new(&t["promtool"]).args(["test", "rules", "tests.yaml"]).current_dir(dir.path()));
    assert!(out.contains("SUCCESS"), "{out}");
    // The unit tests cover at least these alerts (each named in an alert_rule_test).
    let tests = std::fs::read_to_string(dir.path().join("tests.yaml")).unwrap();
    for alert in ["CortexNodeDown", "CortexDeadLettersGrowing", "CortexCircuitOpen", "CortexStoreUnavailable"] {
        assert!(tests.contains(&format!("alertname: {alert}")), "no unit test for {alert}");
    }
}

/// Metric names in a PromQL expression: identifiers that are not functions, keywords,
/// label names (in `{...}` or `by (...)`) or durations.
fn metric_names(expr: &str) -> BTreeSet<String> {
    const KEYWORDS: &[&str] =
        &["by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset"];
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let mut label_list = false;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' => {
                i += 1;
                while i < chars.len() && chars[i] != c {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
                i += 1;
            }
            '{' => {
                while i < chars.len() && chars[i] != '}' {
                    if chars[i] == '"' {
                        i += 1;
                        while i < chars.len() && chars[i] != '"' {
                            i += 1;
                        }
                    }
                    i += 1;
                }
                i += 1;
            }
            '[' => {
                while i < chars.len() && chars[i] != ']' {
                    i += 1;
                }
                i += 1;
            }
            ')' => {
                label_list = false;
                i += 1;
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':') {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let mut j = i;
                while j < chars.len() && chars[j].is_whitespace() {
                    j += 1;
                }
                let next: String = chars[j..].iter().take_while(|c| c.is_ascii_alphanumeric() || **c == '_').collect();
                // A function call, or an aggregation with its grouping first (`sum by (a) (...)`).
                let call = chars.get(j) == Some(&'(') || next == "by" || next == "without";
                if KEYWORDS.contains(&word.as_str()) {
                    if call
                        && matches!(word.as_str(), "by" | "without" | "on" | "ignoring" | "group_left" | "group_right")
                    {
                        label_list = true;
                    }
                } else if !call && !label_list {
                    names.insert(word);
                }
            }
            c if c.is_ascii_digit() => {
                // A number or a duration (5m, 1.5e3).
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
    names
}

#[test]
fn metric_names_are_read_from_promql() {
    let got = metric_names(
        r#"sum by (namespace, le) (rate(x_seconds_bucket{job="a", b=~"c}"}[5m])) > 1 and on (pod) up offset 5m"#,
    );
    assert_eq!(got, BTreeSet::from(["up".to_owned(), "x_seconds_bucket".to_owned()]));
    assert_eq!(metric_names("absent(up{job=\"cortex\"} == 1)"), BTreeSet::from(["up".to_owned()]));
}

/// The families the README's "Metrics" table lists.
fn documented_families() -> BTreeMap<String, String> {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let section = readme.split("\n## Metrics\n").nth(1).expect("README has ## Metrics");
    let section = section.split("\n## ").next().unwrap();
    section
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let name = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
            Some((name.to_owned(), (*cells.get(2)?).to_owned()))
        })
        .collect()
}

#[test]
fn alerts_use_only_metrics_the_host_exports() {
    let families = documented_families();
    assert!(families.len() > 20, "the README's metrics table was not found: {families:?}");
    let telemetry: String = std::fs::read_dir(repo_root().join("host/src/telemetry"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    let exported = |name: &str| {
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                let b = name.strip_suffix(suffix)?;
                (families.get(b).map(String::as_str) == Some("histogram")).then_some(b)
            })
            .unwrap_or(name);
        families.contains_key(base) || telemetry.contains(&format!("\"{base}\""))
    };
    let mut used = BTreeSet::new();
    for g in prometheus_rule()["spec"]["groups"].as_array().unwrap() {
        for rule in g["rules"].as_array().unwrap() {
            let expr = s(&rule["expr"], "expr");
            for name in metric_names(expr) {
                // `up` is Prometheus's own series for each scrape target.
                assert!(name == "up" || exported(&name), "{}: {name} is not a metric the host exports", rule["alert"]);
                used.insert(name);
            }
        }
    }
    for family in ["up", "cortex_dead_letters", "cortex_agent_circuit_state", "cortex_rate_limited_total"] {
        assert!(used.contains(family), "no alert on {family}");
    }
}

// ---------------------------------------------------------------------------------------
// (d): the Dockerfile against the binary and the manifests

/// What the run stage of deploy/Dockerfile states.
#[derive(Debug, Default)]
struct Image {
    build_from: String,
    build_cmd: String,
    user: String,
    env: BTreeMap<String, String>,
    volumes: Vec<String>,
    expose: Vec<u16>,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    copied: Vec<String>,
}

fn json_list(v: &str) -> Vec<String> {
    serde_json::from_str(v.trim()).unwrap_or_else(|e| panic!("not a JSON list: {v}: {e}"))
}

fn dockerfile() -> Image {
    let text = std::fs::read_to_string(deploy_dir().join("Dockerfile")).unwrap();
    // Join continuation lines; drop comments.
    let mut lines = Vec::new();
    let mut cur = String::new();
    for l in text.lines() {
        let t = l.trim();
        if t.starts_with('#') || t.is_empty() {
            continue;
        }
        match t.strip_suffix('\\') {
            Some(part) => cur.push_str(part),
            None => {
                cur.push_str(t);
                lines.push(std::mem::take(&mut cur));
            }
        }
    }
    let stages: Vec<&[String]> = {
        let starts: Vec<usize> =
            lines.iter().enumerate().filter(|(_, l)| l.starts_with("FROM ")).map(|(i, _)| i).collect();
        assert_eq!(starts.len(), 2, "a build stage and a run stage");
        vec![&lines[starts[0]..starts[1]], &lines[starts[1]..]]
    };
    let mut img = Image::default();
    for l in stages[0] {
        if let Some(rest) = l.strip_prefix("FROM ") {
            img.build_from = rest.to_owned();
        }
        if l.starts_with("RUN ") && l.contains("cargo build") {
            img.build_cmd = l.clone();
        }
    }
    for l in stages[1] {
        let (word, rest) = l.split_once(' ').unwrap_or((l, ""));
        match word {
            "USER" => img.user = rest.trim().to_owned(),
            "ENV" => {
                for pair in rest.split_whitespace() {
                    let (k, v) = pair.split_once('=').unwrap_or_else(|| panic!("ENV {pair} is not KEY=VALUE"));
                    img.env.insert(k.to_owned(), v.to_owned());
                }
            }
            "VOLUME" => img.volumes = json_list(rest),
            "EXPOSE" => {
                img.expose = rest.split_whitespace().map(|p| p.trim_end_matches("/tcp").parse().unwrap()).collect()
            }
            "ENTRYPOINT" => img.entrypoint = json_list(rest),
            "CMD" => img.cmd = json_list(rest),
            "COPY" => img.copied.push(rest.split_whitespace().last().unwrap().to_owned()),
            _ => {}
        }
    }
    img
}

impl Image {
    fn uid(&self) -> u32 {
        let uid = self.user.split(':').next().unwrap();
        uid.parse().unwrap_or_else(|_| panic!("USER {} is not numeric (runAsNonRoot cannot check a name)", self.user))
    }

    /// The config file the image's CMD passes.
    fn config_path(&self) -> String {
        let i = self.cmd.iter().position(|a| a == "--config").expect("CMD passes --config");
        self.cmd[i + 1].clone()
    }

    /// The config as the image alone gives it (its ENV over the binary's defaults).
    fn config(&self) -> ServerConfig {
        ServerConfig::load(None, self.env.clone()).expect("the image's ENV is a valid config")
    }
}

#[test]
fn the_dockerfile_agrees_with_the_binary_defaults() {
    let img = dockerfile();
    let defaults = ServerConfig::default();
    // Built with the pinned toolchain, both binaries, from the lock file.
    let toolchain = std::fs::read_to_string(repo_root().join("rust-toolchain.toml")).unwrap();
    let channel = toolchain.lines().find_map(|l| l.strip_prefix("channel = ")).unwrap().trim_matches('"').to_owned();
    assert!(
        img.build_from.contains(&format!("rust:{channel}-")),
        "build stage {} is not toolchain {channel}",
        img.build_from
    );
    for needle in ["--locked", "--bin cortex ", "--bin cortex-operator"] {
        assert!(img.build_cmd.contains(needle), "the build does not say {needle}: {}", img.build_cmd);
    }
    assert!(img.copied.contains(&"/usr/local/bin/cortex".to_owned()), "{:?}", img.copied);
    assert!(img.copied.contains(&"/usr/local/bin/cortex-operator".to_owned()), "{:?}", img.copied);
    // A numeric, non-root user.
    assert_ne!(img.uid(), 0, "runs as root");
    // `cortex serve` with the mounted config.
    assert_eq!(img.entrypoint, ["/usr/local/bin/cortex", "serve"]);
    assert!(img.config_path().starts_with("/etc/cortex/"), "{}", img.config_path());
    // The port: the binary's default port, on all interfaces, exposed.
    let cfg = img.config();
    assert_eq!(cfg.listen.port(), defaults.listen.port(), "the image moves the binary's default port");
    assert!(cfg.listen.ip().is_unspecified(), "the image listens on {} only", cfg.listen);
    assert_eq!(img.expose, [cfg.listen.port()]);
    // The data directory (the store, modules and the compiled-artifact cache under it) and
    // /tmp are volumes: nothing else is written, so the root filesystem can be read-only.
    assert!(cfg.data_dir.is_absolute(), "{}", cfg.data_dir.display());
    let volumes: Vec<PathBuf> = img.volumes.iter().map(PathBuf::from).collect();
    assert!(volumes.contains(&cfg.data_dir), "data dir {} is not a VOLUME: {volumes:?}", cfg.data_dir.display());
    assert!(cfg.data_dir.join("cache").starts_with(&cfg.data_dir));
    assert!(volumes.contains(&PathBuf::from("/tmp")), "/tmp is not a VOLUME");
    // The relative default (.cortex) would be under the read-only root: the image moves it.
    assert!(defaults.data_dir.is_relative());
}

// ---------------------------------------------------------------------------------------
// (d): each overlay's host pods against their config and the image

/// The container's environment as Kubernetes gives it: the image's ENV, then the
/// container's `env` (literal values, and `$(VAR)` references to earlier ones; a
/// `fieldRef` gets a sample value, a `secretKeyRef` is left out: no config is read from it).
fn container_env(img: &Image, container: &Value) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = img.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    for e in container["env"].as_array().into_iter().flatten() {
        let name = s(&e["name"], "env name").to_owned();
        let value = if let Some(v) = e["value"].as_str() {
            let mut v = v.to_owned();
            for (k, val) in env.clone() {
                v = v.replace(&format!("$({k})"), &val);
            }
            v
        } else if let Some(path) = e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            FIELD_SAMPLES
                .iter()
                .find(|(p, _)| *p == path)
                .unwrap_or_else(|| panic!("no sample for {path}"))
                .1
                .to_owned()
        } else {
            continue;
        };
        env.retain(|(k, _)| *k != name);
        env.push((name, value));
    }
    env
}

/// The host config of a workload: its ConfigMap's TOML plus the environment, through the
/// real loader.
fn host_config(r: &Rendered, img: &Image, pod: &Value, dir: &Path) -> ServerConfig {
    let container = &pod["containers"][0];
    let file = dir.join(format!("{}.toml", r.overlay));
    let text = s(&r.config_map("cortex-config")["data"]["config.toml"], "config.toml").to_owned();
    std::fs::write(&file, &text).unwrap();
    let cfg = ServerConfig::load(Some(&file), container_env(img, container))
        .unwrap_or_else(|e| panic!("{}: the host config does not load: {e}", r.overlay));
    // The file alone loads too, and says the port and data dir the image does.
    let alone =
        ServerConfig::load(Some(&file), Vec::new()).unwrap_or_else(|e| panic!("{}: config.toml: {e}", r.overlay));
    assert_eq!(alone.listen, img.config().listen, "{}: config.toml's listen", r.overlay);
    assert_eq!(alone.data_dir, img.config().data_dir, "{}: config.toml's data_dir", r.overlay);
    cfg
}

/// The volume mounted at (or above) `path` in `container`, and the mount.
fn mount_of<'a>(pod: &'a Value, container: &'a Value, path: &Path) -> Option<(&'a Value, &'a Value)> {
    let mount = container["volumeMounts"]
        .as_array()?
        .iter()
        .filter(|m| path.starts_with(s(&m["mountPath"], "mountPath")))
        .max_by_key(|m| s(&m["mountPath"], "mountPath").len())?;
    let volume = pod["volumes"].as_array().into_iter().flatten().find(|v| v["name"] == mount["name"]);
    Some((volume.unwrap_or(&Value::Null), mount))
}

/// The Secret a file under a projected or secret volume comes from.
fn secret_behind(pod: &Value, container: &Value, path: &Path) -> Option<String> {
    let (volume, mount) = mount_of(pod, container, path)?;
    let rel = path.strip_prefix(s(&mount["mountPath"], "mountPath")).ok()?;
    if let Some(name) = volume["secret"]["secretName"].as_str() {
        return Some(name.to_owned());
    }
    volume["projected"]["sources"].as_array()?.iter().find_map(|src| {
        let secret = &src["secret"];
        secret["items"]
            .as_array()?
            .iter()
            .any(|i| Path::new(s(&i["path"], "item path")) == rel)
            .then(|| s(&secret["name"], "secret name").to_owned())
    })
}

fn port_number(container: &Value, port: &Value) -> u64 {
    match port {
        Value::Number(n) => n.as_u64().unwrap(),
        Value::String(name) => container["ports"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == *name))
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap_or_else(|| panic!("no container port named {name}")),
        other => panic!("port {other}"),
    }
}

#[test]
fn every_overlay_runs_the_host_as_its_config_and_the_image_expect() {
    let Some(t) = tools("deploy host pods", &["kubectl"]) else { return };
    let img = dockerfile();
    let dir = tempfile::tempdir().unwrap();
    for r in render_all(&t["kubectl"]) {
        let at = r.overlay.as_str();
        let hosts = r.hosts();
        assert_eq!(hosts.len(), 1, "{at}: one host workload");
        let w = &hosts[0];
        let pod = &w["spec"]["template"]["spec"];
        let pod_labels = &w["spec"]["template"]["metadata"]["labels"];
        let containers = pod["containers"].as_array().unwrap();
        assert_eq!(containers.len(), 1, "{at}");
        let c = &containers[0];
        let cfg = host_config(&r, &img, pod, dir.path());
        let port = u64::from(cfg.listen.port());

        // The shape of each overlay.
        match at {
            "single-node" => {
                assert_eq!(w["kind"], "StatefulSet", "{at}");
                assert_eq!(w["spec"]["replicas"], 1, "{at}");
                assert!(matches!(cfg.store, StoreConfig::Embedded {}), "{at}: {:?}", cfg.store);
                let claims = w["spec"]["volumeClaimTemplates"].as_array().expect("a PVC template");
                assert!(claims.iter().any(|p| p["metadata"]["name"] == "data"), "{at}");
            }
            _ => {
                assert_eq!(w["kind"], "Deployment", "{at}");
                assert!(w["spec"]["replicas"].as_u64().unwrap() >= 2, "{at}: one replica");
                let StoreConfig::Arangodb(a) = &cfg.store else { panic!("{at}: store {:?}", cfg.store) };
                let pw = a.password_file.as_ref().expect("the ArangoDB password is a file");
                assert!(secret_behind(pod, c, pw).is_some(), "{at}: {} is not from a Secret", pw.display());
                // The NetworkPolicy lets the pods reach the store's port.
                let store_port = a.url.rsplit(':').next().unwrap().trim_end_matches('/').parse::<u64>().unwrap();
                let np = r.named("NetworkPolicy", "cortex");
                let egress: Vec<u64> = np["spec"]["egress"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .flat_map(|e| e["ports"].as_array().cloned().unwrap_or_default())
                    .map(|p| p["port"].as_u64().unwrap())
                    .collect();
                assert!(egress.contains(&store_port), "{at}: no egress to the store's port {store_port}");
            }
        }
        if at == "cluster-hpa" {
            let hpa = r.named("HorizontalPodAutoscaler", "cortex");
            assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], w["metadata"]["name"], "{at}");
        } else {
            assert!(r.kind("HorizontalPodAutoscaler").is_empty(), "{at}: an HPA besides the operator");
        }

        // Ports: the config's listen port is the container port, the Service's target and
        // the probes'.
        let http: Vec<&Value> = c["ports"].as_array().unwrap().iter().collect();
        assert_eq!(http.len(), 1, "{at}");
        assert_eq!(http[0]["containerPort"].as_u64(), Some(port), "{at}: containerPort");
        for svc in r.kind("Service") {
            if !labels_match(&svc["spec"]["selector"], pod_labels) {
                continue;
            }
            for p in svc["spec"]["ports"].as_array().unwrap() {
                assert_eq!(
                    port_number(c, &p["targetPort"]),
                    port,
                    "{at}: Service {} targetPort",
                    svc["metadata"]["name"]
                );
            }
        }
        assert!(
            labels_match(&r.named("Service", "cortex")["spec"]["selector"], pod_labels),
            "{at}: Service selects no host"
        );
        for (probe, path) in
            [("livenessProbe", "/healthz"), ("startupProbe", "/healthz"), ("readinessProbe", "/readyz")]
        {
            let get = &c[probe]["httpGet"];
            assert_eq!(get["path"], path, "{at}: {probe}");
            assert_eq!(port_number(c, &get["port"]), port, "{at}: {probe} port");
        }

        // The data directory and /tmp are writable volumes (the data directory holds the
        // store, modules and the compiled-artifact cache); the config is mounted where the
        // image's CMD and the container's args read it.
        for path in [cfg.data_dir.clone(), cfg.data_dir.join("cache"), PathBuf::from("/tmp")] {
            let (volume, mount) =
                mount_of(pod, c, &path).unwrap_or_else(|| panic!("{at}: {} is not on a volume", path.display()));
            assert_ne!(mount["readOnly"], true, "{at}: {} is read-only", path.display());
            let claim = w["spec"]["volumeClaimTemplates"]
                .as_array()
                .is_some_and(|ps| ps.iter().any(|p| p["metadata"]["name"] == mount["name"]));
            assert!(
                claim || volume["emptyDir"].is_object() || volume["persistentVolumeClaim"].is_object(),
                "{at}: {} on {volume}",
                path.display()
            );
        }
        let args: Vec<String> =
            c["args"].as_array().map(|a| a.iter().map(|v| s(v, "arg").to_owned()).collect()).unwrap_or_default();
        assert!(args.is_empty() || args == img.cmd, "{at}: args {args:?} differ from the image's CMD {:?}", img.cmd);
        assert!(c["command"].is_null(), "{at}: the host overrides the image's entrypoint");
        let config_path = PathBuf::from(img.config_path());
        let (config_volume, _) = mount_of(pod, c, &config_path).unwrap_or_else(|| panic!("{at}: no config mount"));
        let sources = config_volume["projected"]["sources"].as_array().expect("a projected config volume");
        assert!(
            sources.iter().any(|src| src["configMap"]["name"] == r.config_map("cortex-config")["metadata"]["name"]
                && src["configMap"]["items"][0]["path"] == config_path.file_name().unwrap().to_str().unwrap()),
            "{at}: {} is not the ConfigMap's config.toml",
            config_path.display()
        );
        // The JWT key comes from a Secret (never a value in the config).
        if cfg.auth.algorithm == "HS256" {
            let f = cfg.auth.secret_file.as_ref().expect("a shared HS256 secret file (every node must have the same)");
            assert!(secret_behind(pod, c, f).is_some(), "{at}: {} is not from a Secret", f.display());
        }

        // Shutdown: preStop sleeps (no shell in the image), then SIGTERM drains for
        // shutdown_grace_ms and hands the leases back; the kubelet waits longer than both.
        let sleep = c["lifecycle"]["preStop"]["sleep"]["seconds"].as_u64().expect("a preStop sleep");
        let grace = w["spec"]["template"]["spec"]["terminationGracePeriodSeconds"].as_u64().expect("a grace period");
        assert!(
            grace * 1000 > cfg.http.shutdown_grace_ms + sleep * 1000 + 5_000,
            "{at}: terminationGracePeriodSeconds {grace} leaves no time to hand the leases back after {sleep}s + {}ms",
            cfg.http.shutdown_grace_ms
        );

        // The host never talks to the Kubernetes API.
        assert_eq!(pod["automountServiceAccountToken"], false, "{at}");
        let sa = r.named("ServiceAccount", s(&pod["serviceAccountName"], "serviceAccountName"));
        assert_eq!(sa["automountServiceAccountToken"], false, "{at}");
        for binding in r.kind("RoleBinding").into_iter().chain(r.kind("ClusterRoleBinding")) {
            for subj in binding["subjects"].as_array().into_iter().flatten() {
                assert_ne!(subj["name"], sa["metadata"]["name"], "{at}: a role is bound to the host's account");
            }
        }

        // Network: ingress to the API port only.
        let np = r.named("NetworkPolicy", "cortex");
        assert!(labels_match(&np["spec"]["podSelector"]["matchLabels"], pod_labels), "{at}");
        for rule in np["spec"]["ingress"].as_array().unwrap() {
            let ports: Vec<u64> = rule["ports"]
                .as_array()
                .expect("ingress names its ports")
                .iter()
                .map(|p| port_number(c, &p["port"]))
                .collect();
            assert_eq!(ports, [port], "{at}: ingress to {ports:?}");
        }
        let pdb = r.named("PodDisruptionBudget", "cortex");
        assert!(labels_match(&pdb["spec"]["selector"]["matchLabels"], pod_labels), "{at}: the PDB selects no host");

        // Every container of every pod: the image's user, the full securityContext,
        // requests and limits.
        for wl in r.workloads() {
            let pod = &wl["spec"]["template"]["spec"];
            let psc = &pod["securityContext"];
            for c in pod["containers"]
                .as_array()
                .unwrap()
                .iter()
                .chain(pod["initContainers"].as_array().into_iter().flatten())
            {
                let who = format!("{at}: {} {} container {}", wl["kind"], wl["metadata"]["name"], c["name"]);
                let sc = &c["securityContext"];
                let either = |k: &str| if sc[k].is_null() { &psc[k] } else { &sc[k] };
                assert_eq!(either("runAsNonRoot"), &Value::Bool(true), "{who}: runAsNonRoot");
                if let Some(uid) = either("runAsUser").as_u64() {
                    assert_eq!(uid, u64::from(img.uid()), "{who}: runAsUser is not the image's user");
                }
                assert_eq!(sc["readOnlyRootFilesystem"], true, "{who}: readOnlyRootFilesystem");
                assert_eq!(sc["allowPrivilegeEscalation"], false, "{who}: allowPrivilegeEscalation");
                assert_ne!(sc["privileged"], true, "{who}: privileged");
                assert_eq!(either("seccompProfile")["type"], "RuntimeDefault", "{who}: seccompProfile");
                let drop: Vec<&str> =
                    sc["capabilities"]["drop"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
                assert!(drop.contains(&"ALL"), "{who}: capabilities drop {drop:?}");
                assert!(sc["capabilities"]["add"].is_null(), "{who}: adds capabilities");
                for k in ["requests", "limits"] {
                    for res in ["cpu", "memory"] {
                        assert!(c["resources"][k][res].is_string(), "{who}: no {k}.{res}");
                    }
                }
                assert_eq!(c["image"], containers[0]["image"], "{who}: not the host's image");
            }
        }

        // The operator: the image's binary, its token from a Secret, least privilege.
        let op = r.named("Deployment", "cortex-operator");
        let oc = &op["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(oc["command"], serde_json::json!(["/usr/local/bin/cortex-operator"]), "{at}");
        assert!(img.copied.contains(&"/usr/local/bin/cortex-operator".to_owned()));
        assert!(
            oc["env"].as_array().unwrap().iter().any(|e| e["valueFrom"]["secretKeyRef"]["name"].is_string()),
            "{at}: the operator's token is not from a Secret"
        );
        // Its Role is namespaced, so it must watch its own namespace: unset, the operator lists
        // across all namespaces and is refused.
        let env_from_field = |name: &str| {
            oc["env"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["name"] == name)
                .map(|e| e["valueFrom"]["fieldRef"]["fieldPath"].clone())
        };
        assert_eq!(env_from_field("WATCH_NAMESPACE"), Some(Value::from("metadata.namespace")), "{at}");
        assert!(r.kind("ClusterRole").is_empty(), "{at}: a ClusterRole");
        let role = r.named("Role", "cortex-operator");
        for rule in role["rules"].as_array().unwrap() {
            for k in ["apiGroups", "resources", "verbs"] {
                assert!(!rule[k].as_array().unwrap().contains(&Value::from("*")), "{at}: a wildcard in {rule}");
            }
            let resources: Vec<&str> = rule["resources"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
            let verbs: Vec<&str> = rule["verbs"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
            if resources.contains(&"secrets") {
                assert_eq!(verbs, ["get"], "{at}: the operator may do more than read a Secret");
            }
            if resources.contains(&"deployments") {
                assert!(
                    verbs.iter().all(|v| ["get", "list", "watch"].contains(v)),
                    "{at}: it may change Deployments: {verbs:?}"
                );
            }
            assert!(!verbs.contains(&"delete"), "{at}: the operator deletes {resources:?}");
        }
        // ...and what it needs is granted.
        let grants = |group: &str, resource: &str, verb: &str| {
            role["rules"].as_array().unwrap().iter().any(|rule| {
                let has = |k: &str, v: &str| rule[k].as_array().unwrap().contains(&Value::from(v));
                has("apiGroups", group) && has("resources", resource) && has("verbs", verb)
            })
        };
        let mut needed: Vec<(&str, String, &str)> =
            vec![("apps", "deployments".into(), "watch"), ("apps", "deployments/scale".into(), "patch")];
        for kind in ["cortexclusters", "tenants", "agents"] {
            for sub in ["", "/status", "/finalizers"] {
                needed.push(("cortex.dev", format!("{kind}{sub}"), "patch"));
            }
            needed.push(("cortex.dev", kind.into(), "watch"));
        }
        for (resource, verb) in [("secrets", "get"), ("configmaps", "get"), ("events", "create")] {
            needed.push(("", resource.into(), verb));
        }
        // kube-runtime's event recorder writes events.k8s.io/v1 Events.
        needed.push(("events.k8s.io", "events".into(), "create"));
        needed.push(("events.k8s.io", "events".into(), "patch"));
        for (group, resource, verb) in needed {
            assert!(grants(group, &resource, verb), "{at}: the operator may not {verb} {group}/{resource}");
        }
    }
}

#[test]
fn a_misspelled_config_key_fails_the_loader() {
    // The control for the config checks above: the loader refuses what the host would refuse.
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(deploy_dir().join("base/config.toml")).unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, &text).unwrap();
    ServerConfig::load(Some(&good), Vec::new()).expect("base/config.toml loads");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, text.replace("shutdown_grace_ms", "shutdown_grace")).unwrap();
    assert!(ServerConfig::load(Some(&bad), Vec::new()).is_err(), "a misspelled key loads");
    let env = [("CORTEX_CFG__HTTP__SHUTDOWN_GRACE".to_owned(), "1".to_owned())];
    assert!(ServerConfig::load(Some(&good), env).is_err(), "a misspelled variable loads");
    // The cluster overlay's store variables: a misspelled one fails too.
    let arango = |key: &str| {
        let env = [
            ("CORTEX_CFG__STORE__TYPE", "arangodb"),
            ("CORTEX_CFG__STORE__URL", "http://arangodb:8529"),
            (key, "/etc/cortex/secrets/arangodb/password"),
        ];
        ServerConfig::load(Some(&good), env.map(|(k, v)| (k.to_owned(), v.to_owned())))
    };
    arango("CORTEX_CFG__STORE__PASSWORD_FILE").expect("the cluster overlay's store variables load");
    assert!(arango("CORTEX_CFG__STORE__PASWORD_FILE").is_err(), "a misspelled store variable loads");
}

// ---------------------------------------------------------------------------------------
// The backup CronJob of the cluster overlays

/// The value after `flag` in `args`.
fn arg_after<'a>(args: &'a [Value], flag: &str) -> Option<&'a str> {
    args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).and_then(Value::as_str)
}

#[test]
fn the_cluster_overlays_back_up_nightly_to_a_pvc_with_a_token_from_a_secret() {
    let Some(t) = tools("deploy backup cronjob", &["kubectl"]) else { return };
    let img = dockerfile();
    let deploy_readme = std::fs::read_to_string(deploy_dir().join("README.md")).unwrap();
    for r in render_all(&t["kubectl"]) {
        let at = r.overlay.as_str();
        let jobs = r.kind("CronJob");
        if at == "single-node" {
            // One node: back it up with `cortex backup` from outside (README "Backups").
            assert!(jobs.is_empty(), "{at}");
            continue;
        }
        assert_eq!(jobs.len(), 1, "{at}: one backup CronJob");
        let job = &jobs[0];
        let spec = &job["spec"];
        // Five fields of a cron schedule, and never two backups at once.
        assert_eq!(s(&spec["schedule"], "schedule").split_whitespace().count(), 5, "{at}");
        assert_eq!(spec["concurrencyPolicy"], "Forbid", "{at}");
        let pod = &spec["jobTemplate"]["spec"]["template"]["spec"];
        assert_eq!(pod["restartPolicy"], "Never", "{at}");
        assert_eq!(pod["automountServiceAccountToken"], false, "{at}");

        // The same security as the host pods: the pod's and the container's contexts.
        let host = &r.hosts()[0]["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"], host["securityContext"], "{at}: pod securityContext");
        let containers = pod["containers"].as_array().unwrap();
        assert_eq!(containers.len(), 1, "{at}");
        let c = &containers[0];
        assert_eq!(c["securityContext"], host["containers"][0]["securityContext"], "{at}: container securityContext");
        assert_eq!(c["image"], host["containers"][0]["image"], "{at}: the host's image");
        assert!(c["resources"]["limits"]["memory"].is_string(), "{at}: a memory limit");

        // The image's cortex binary (its entrypoint runs `serve`: the job names the binary).
        let command: Vec<&str> = c["command"].as_array().unwrap().iter().map(|v| s(v, "command")).collect();
        assert_eq!(command, [img.entrypoint[0].as_str()], "{at}");
        assert!(img.copied.contains(&img.entrypoint[0]), "{at}: the image has {}", img.entrypoint[0]);
        let args = c["args"].as_array().unwrap();
        assert_eq!(args[0], "backup", "{at}");
        assert!(arg_after(args, "--keep").is_some_and(|n| n.parse::<u32>().is_ok_and(|n| n >= 1)), "{at}: --keep");

        // --url is the host Service's port.
        let url = arg_after(args, "--url").expect("--url");
        let svc = r.named("Service", "cortex");
        let port = svc["spec"]["ports"][0]["port"].as_u64().unwrap();
        assert_eq!(url, format!("http://cortex:{port}"), "{at}");

        // --to-dir is the mount of a volume on the PVC the render has.
        let mount = |path: &str| {
            c["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| path.starts_with(s(&m["mountPath"], "mountPath")))
                .map(|m| {
                    let name = s(&m["name"], "mount name");
                    pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == name).cloned().unwrap()
                })
                .unwrap_or_else(|| panic!("{at}: nothing mounted at {path}"))
        };
        let to = mount(arg_after(args, "--to-dir").expect("--to-dir"));
        let claim = s(&to["persistentVolumeClaim"]["claimName"], "claimName");
        let pvc = r.named("PersistentVolumeClaim", claim);
        assert!(pvc["spec"]["resources"]["requests"]["storage"].is_string(), "{at}: {claim} has a size");

        // --token-file is a file of a Secret volume, a Secret deploy/README.md creates.
        let token_file = arg_after(args, "--token-file").expect("--token-file");
        let token = mount(token_file);
        let secret = s(&token["secret"]["secretName"], "secretName");
        let item =
            token["secret"]["items"].as_array().unwrap().iter().find(|i| token_file.ends_with(s(&i["path"], "path")));
        let key = s(&item.expect("the token file is an item of the Secret")["key"], "key");
        assert!(
            deploy_readme.contains(&format!("create secret generic {secret} --from-file={key}=")),
            "{at}: deploy/README.md does not create the Secret {secret} with key {key}"
        );
    }
}
