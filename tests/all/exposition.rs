//! A checker of the Prometheus text exposition format (version 0.0.4), for what `/metrics`
//! serves: the rules a scraper and `promtool check metrics` apply (names, labels and their
//! escapes, values, one `TYPE` per family before its samples, families not interleaved, no
//! duplicate series, counters named `_total`, histograms with cumulative buckets ending at
//! `+Inf` and a count that matches). When `promtool` is installed it checks the text too.

use std::collections::{BTreeMap, HashMap, HashSet};

/// One sample: metric name, labels (sorted), value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// The families of an exposition: name to type, and their samples in order.
#[derive(Debug, Default)]
pub struct Exposition {
    pub types: BTreeMap<String, String>,
    pub samples: Vec<Sample>,
}

impl Exposition {
    /// The value of the sample `name` whose labels include `labels`, if exactly one has them.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
            .collect();
        (found.len() == 1).then(|| found[0].value)
    }

    /// The values of label `label` among samples of `name`.
    pub fn label_values(&self, name: &str, label: &str) -> HashSet<String> {
        self.samples.iter().filter(|s| s.name == name).filter_map(|s| s.labels.get(label).cloned()).collect()
    }
}

fn valid_name(n: &str) -> bool {
    let mut chars = n.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label(n: &str) -> bool {
    let mut chars = n.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_value(v: &str) -> Result<f64, String> {
    match v {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        v => v.parse().map_err(|e| format!("value {v:?}: {e}")),
    }
}

/// `{a="x",b="y"} rest` -> labels and rest.
fn parse_labels(s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let mut rest = s.strip_prefix('{').ok_or("labels start with {")?;
    loop {
        rest = rest.trim_start();
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((labels, r));
        }
        let (name, r) = rest.split_once("=\"").ok_or_else(|| format!("label without =\" in {s:?}"))?;
        if !valid_label(name) {
            return Err(format!("bad label name {name:?}"));
        }
        let mut value = String::new();
        let mut chars = r.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("bad escape {other:?} in {s:?}")),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => return Err(format!("unterminated label value in {s:?}")),
            }
        };
        if labels.insert(name.to_owned(), value).is_some() {
            return Err(format!("label {name} twice in {s:?}"));
        }
        rest = &r[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

/// The family a sample belongs to, given the declared types.
fn family_of<'a>(name: &'a str, types: &BTreeMap<String, String>) -> &'a str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix)
            && types.get(base).is_some_and(|t| t == "histogram" || t == "summary")
        {
            return base;
        }
    }
    name
}

/// Check `text`; the parsed exposition, or what is wrong.
pub fn check(text: &str) -> Result<Exposition, String> {
    let mut out = Exposition::default();
    let mut helps = HashSet::new();
    let mut finished: HashSet<String> = HashSet::new();
    let mut current: Option<String> = None;
    let mut series = HashSet::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        let family = if let Some(c) = line.strip_prefix('#') {
            let mut parts = c.trim_start().splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("HELP"), Some(name), _) => {
                    if !helps.insert(name.to_owned()) {
                        return Err(format!("HELP {name} twice"));
                    }
                    name.to_owned()
                }
                (Some("TYPE"), Some(name), Some(kind)) => {
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                        return Err(format!("{name}: unknown type {kind}"));
                    }
                    if out.samples.iter().any(|s| family_of(&s.name, &out.types) == name || s.name == name) {
                        return Err(format!("TYPE {name} after its samples"));
                    }
                    if out.types.insert(name.to_owned(), kind.to_owned()).is_some() {
                        return Err(format!("TYPE {name} twice"));
                    }
                    if kind == "counter" && !name.ends_with("_total") {
                        return Err(format!("counter {name} is not named _total"));
                    }
                    name.to_owned()
                }
                _ => continue,
            }
        } else {
            let (name, rest) = match line.find(['{', ' ']) {
                Some(i) => line.split_at(i),
                None => return Err(format!("no value: {line:?}")),
            };
            if !valid_name(name) {
                return Err(format!("bad metric name {name:?}"));
            }
            let (labels, rest) = if rest.starts_with('{') { parse_labels(rest)? } else { (BTreeMap::new(), rest) };
            let mut fields = rest.split_whitespace();
            let value = parse_value(fields.next().ok_or_else(|| format!("no value: {line:?}"))?)?;
            if let Some(ts) = fields.next() {
                ts.parse::<i64>().map_err(|e| format!("timestamp {ts:?}: {e}"))?;
            }
            if fields.next().is_some() {
                return Err(format!("trailing fields: {line:?}"));
            }
            if !series.insert(format!("{name}{labels:?}")) {
                return Err(format!("duplicate series {line:?}"));
            }
            out.samples.push(Sample { name: name.to_owned(), labels, value });
            family_of(name, &out.types).to_owned()
        };
        if current.as_deref() != Some(family.as_str()) {
            if let Some(prev) = current.take() {
                finished.insert(prev);
            }
            if finished.contains(&family) {
                return Err(format!("family {family} is interleaved with another"));
            }
            current = Some(family);
        }
    }
    check_histograms(&out)?;
    promtool(text)?;
    Ok(out)
}

/// Buckets cumulative, ending at `+Inf`, whose count `_count` matches.
fn check_histograms(e: &Exposition) -> Result<(), String> {
    for (name, _) in e.types.iter().filter(|(_, t)| *t == "histogram") {
        let mut by_series: HashMap<BTreeMap<String, String>, Vec<(f64, f64)>> = HashMap::new();
        for s in e.samples.iter().filter(|s| s.name == format!("{name}_bucket")) {
            let mut labels = s.labels.clone();
            let le = labels.remove("le").ok_or_else(|| format!("{name}: bucket without le"))?;
            by_series.entry(labels).or_default().push((parse_value(&le)?, s.value));
        }
        for (labels, buckets) in by_series {
            if buckets.windows(2).any(|w| w[0].0 >= w[1].0 || w[0].1 > w[1].1) {
                return Err(format!("{name}{labels:?}: buckets not cumulative: {buckets:?}"));
            }
            let last = buckets.last().copied().unwrap_or_default();
            if last.0 != f64::INFINITY {
                return Err(format!("{name}{labels:?}: no +Inf bucket"));
            }
            let count = e.samples.iter().find(|s| s.name == format!("{name}_count") && s.labels == labels);
            if count.map(|c| c.value) != Some(last.1) {
                return Err(format!("{name}{labels:?}: _count {count:?} is not the +Inf bucket {}", last.1));
            }
        }
    }
    Ok(())
}

/// `promtool check metrics` on `text`, when promtool is installed.
fn promtool(text: &str) -> Result<(), String> {
    use std::io::Write;
    let Ok(mut child) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    else {
        return Ok(());
    };
    child.stdin.take().map(|mut i| i.write_all(text.as_bytes())).transpose().map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("promtool: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    }
}

#[test]
fn the_checker_refuses_what_a_scraper_refuses() {
    let ok = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"q\\\"\\n\"} 1\n# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 3\nh_count 2\n";
    let e = check(ok).unwrap();
    assert_eq!(e.value("a_total", &[("x", "q\"\n")]), Some(1.0));
    for bad in [
        "# TYPE a counter\na 1\n",
        "a_total 1\n# TYPE a_total counter\n",
        "a{x=\"1\"} 1\na{x=\"1\"} 2\n",
        "a{1x=\"1\"} 1\n",
        "a 1x\n",
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n",
        "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_count 1\n",
        "a 1\nb 1\na{x=\"2\"} 1\n",
    ] {
        assert!(check(bad).is_err(), "accepted {bad:?}");
    }
}
