//! Workflow definitions: the JSON document a tenant uploads, and its validation.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::path::{self, Root};

/// Most steps (and compensations) a workflow may have.
pub const MAX_STEPS: usize = 500;
/// Most items a `for_each` may fan out to at run time.
pub const MAX_ITEMS: usize = 10_000;

/// A workflow definition (one version of it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Definition {
    /// Free text for people.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// The steps; each runs once its `depends_on` have finished.
    #[schema(min_items = 1, max_items = 500)]
    pub steps: Vec<Step>,
    /// Named compensation steps that steps refer to (`compensation`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub compensations: Vec<Compensation>,
    /// The run's output, a template (see the path language); default: the output of the
    /// last step of `steps`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object)]
    pub output: Option<Value>,
}

/// What a failed step does to its run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// The run fails (the default).
    #[default]
    Fail,
    /// The step is `failed` but counts as finished: the steps after it run (its output is
    /// `null`).
    Continue,
    /// The run compensates: the compensations of its succeeded steps run, in reverse order
    /// of completion.
    Compensate,
}

/// How often a step is tried.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    /// Attempts in all (1: no retry).
    #[serde(default = "one")]
    pub attempts: u32,
    /// Wait before the second attempt, doubled for each one after.
    #[serde(default = "hundred")]
    pub backoff_ms: u64,
    /// The longest wait.
    #[serde(default = "ten_seconds")]
    pub max_backoff_ms: u64,
}

fn one() -> u32 {
    1
}
fn hundred() -> u64 {
    100
}
fn ten_seconds() -> u64 {
    10_000
}

impl Default for Retry {
    fn default() -> Self {
        Self { attempts: 1, backoff_ms: 100, max_backoff_ms: 10_000 }
    }
}

impl Retry {
    /// The wait after failed attempt `attempt` (1-based).
    pub fn backoff(&self, attempt: u32) -> u64 {
        let shift = attempt.saturating_sub(1).min(30);
        self.backoff_ms.saturating_mul(1u64 << shift).min(self.max_backoff_ms)
    }
}

/// One step of a workflow.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Unique within the workflow: `[A-Za-z0-9_-]+`.
    pub id: String,
    /// The agent of the tenant it invokes (`handle`).
    pub agent: String,
    /// Its input: a template (see the path language); sent to the agent as JSON.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub input: Value,
    /// Steps that must finish first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// Run only if this condition holds (else the step is `skipped`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    /// Attempts and backoff.
    #[serde(default)]
    pub retry: Retry,
    /// Longest run of one attempt (it is also cut to the agent's own timeout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Whether running it again after a crash is safe: a started but unfinished step runs
    /// again only if so; otherwise the run needs attention.
    #[serde(default)]
    pub idempotent: bool,
    /// What its failure does to the run.
    #[serde(default)]
    pub on_failure: OnFailure,
    /// The compensation (an id of `compensations`) that undoes it, run if the run
    /// compensates after it succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensation: Option<String>,
    /// A path to an array: the step runs once per element (`$.item`, `$.index`), its output
    /// is the array of their outputs, in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_each: Option<String>,
    /// Most elements of a `for_each` running at once (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
}

/// A compensation: what undoes a succeeded step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Compensation {
    /// Its id, named by steps' `compensation`.
    pub id: String,
    /// The agent it invokes.
    pub agent: String,
    /// Its input, a template: `$.input` and `$.steps.<id>.output` of any step.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub input: Value,
    /// Attempts and backoff.
    #[serde(default)]
    pub retry: Retry,
    /// Longest run of one attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// Why a definition was refused: a stable code and a detail naming the step.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Invalid {
    /// `invalid_workflow`, `duplicate_step`, `unknown_agent`, `unknown_dependency`, `cycle`,
    /// `missing_reference`, `bad_expression`, `bad_for_each`, `unknown_compensation`.
    pub code: &'static str,
    /// What is wrong, and where.
    pub message: String,
}

fn invalid(code: &'static str, message: String) -> Invalid {
    Invalid { code, message }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl Definition {
    /// Parse a definition from JSON (an `invalid_workflow` error if it is not one).
    pub fn parse(bytes: &[u8]) -> Result<Self, Invalid> {
        serde_json::from_slice(bytes)
            .map_err(|e| invalid("invalid_workflow", format!("not a workflow definition: {e}")))
    }

    /// The step `id`.
    pub fn step(&self, id: &str) -> Option<&Step> {
        self.steps.iter().find(|s| s.id == id)
    }

    /// The compensation `id`.
    pub fn compensation(&self, id: &str) -> Option<&Compensation> {
        self.compensations.iter().find(|c| c.id == id)
    }

    /// Every agent the workflow invokes.
    pub fn agents(&self) -> HashSet<&str> {
        self.steps.iter().map(|s| s.agent.as_str()).chain(self.compensations.iter().map(|c| c.agent.as_str())).collect()
    }

    /// Check everything but the agents' existence (`agent_exists` says whether one
    /// exists): ids, dependencies, cycles, paths, conditions, `for_each`, compensations.
    pub fn validate(&self, agent_exists: impl Fn(&str) -> bool) -> Result<(), Invalid> {
        if self.steps.is_empty() {
            return Err(invalid("invalid_workflow", "a workflow needs at least one step".into()));
        }
        if self.steps.len() + self.compensations.len() > MAX_STEPS {
            return Err(invalid("invalid_workflow", format!("at most {MAX_STEPS} steps and compensations")));
        }
        let mut ids = HashSet::new();
        for s in &self.steps {
            if !valid_id(&s.id) {
                return Err(invalid("invalid_workflow", format!("step id {:?} is not 1-64 of [A-Za-z0-9_-]", s.id)));
            }
            if !ids.insert(s.id.as_str()) {
                return Err(invalid("duplicate_step", format!("step id {:?} is used twice", s.id)));
            }
            if s.retry.attempts == 0 || s.retry.attempts > 100 {
                return Err(invalid("invalid_workflow", format!("step {:?}: retry.attempts must be 1 to 100", s.id)));
            }
        }
        let mut comp_ids = HashSet::new();
        for c in &self.compensations {
            if !valid_id(&c.id) {
                return Err(invalid(
                    "invalid_workflow",
                    format!("compensation id {:?} is not 1-64 of [A-Za-z0-9_-]", c.id),
                ));
            }
            if !comp_ids.insert(c.id.as_str()) {
                return Err(invalid("duplicate_step", format!("compensation id {:?} is used twice", c.id)));
            }
        }
        for agent in self.agents() {
            if !agent_exists(agent) {
                return Err(invalid("unknown_agent", format!("agent {agent:?} does not exist in this tenant")));
            }
        }
        for s in &self.steps {
            for d in &s.depends_on {
                if !ids.contains(d.as_str()) {
                    return Err(invalid(
                        "unknown_dependency",
                        format!("step {:?} depends on unknown step {d:?}", s.id),
                    ));
                }
            }
            if let Some(c) = &s.compensation
                && !comp_ids.contains(c.as_str())
            {
                return Err(invalid(
                    "unknown_compensation",
                    format!("step {:?} names unknown compensation {c:?}", s.id),
                ));
            }
        }
        let order = self.topo_order()?;
        // Which steps each step comes after, directly or not.
        let mut before: HashMap<&str, HashSet<&str>> = HashMap::new();
        for id in &order {
            let Some(s) = self.step(id) else { continue };
            let mut set = HashSet::new();
            for d in &s.depends_on {
                set.insert(d.as_str());
                if let Some(b) = before.get(d.as_str()) {
                    set.extend(b.iter().copied());
                }
            }
            before.insert(s.id.as_str(), set);
        }
        for s in &self.steps {
            let upstream = before.get(s.id.as_str()).cloned().unwrap_or_default();
            let check = |p: &path::Path, what: &str, in_item: bool| -> Result<(), Invalid> {
                match &p.root {
                    Root::Step(id) if !upstream.contains(id.as_str()) => Err(invalid(
                        "missing_reference",
                        format!(
                            "step {:?}: its {what} reads $.steps.{id}.output, but {id:?} is not a step it depends on",
                            s.id
                        ),
                    )),
                    Root::Item | Root::Index if !in_item => Err(invalid(
                        "bad_expression",
                        format!("step {:?}: its {what} uses $.item or $.index outside a for_each step", s.id),
                    )),
                    _ => Ok(()),
                }
            };
            let paths = path::template_paths(&s.input)
                .map_err(|e| invalid("bad_expression", format!("step {:?}: input: {e}", s.id)))?;
            for p in &paths {
                check(p, "input", s.for_each.is_some())?;
            }
            if let Some(c) = &s.condition {
                let e = path::parse_condition(c)
                    .map_err(|e| invalid("bad_expression", format!("step {:?}: condition {c:?}: {e}", s.id)))?;
                for p in e.paths() {
                    check(p, "condition", false)?;
                }
            }
            if let Some(f) = &s.for_each {
                let p = path::parse_path(f)
                    .map_err(|e| invalid("bad_for_each", format!("step {:?}: for_each {f:?}: {e}", s.id)))?;
                if matches!(p.root, Root::Item | Root::Index) {
                    return Err(invalid(
                        "bad_for_each",
                        format!("step {:?}: for_each must read $.input or $.steps", s.id),
                    ));
                }
                check(&p, "for_each", false).map_err(|e| invalid("bad_for_each", e.message))?;
                if s.concurrency == Some(0) {
                    return Err(invalid("bad_for_each", format!("step {:?}: concurrency must be at least 1", s.id)));
                }
            } else if s.concurrency.is_some() {
                return Err(invalid("bad_for_each", format!("step {:?}: concurrency without for_each", s.id)));
            }
        }
        for c in &self.compensations {
            let paths = path::template_paths(&c.input)
                .map_err(|e| invalid("bad_expression", format!("compensation {:?}: input: {e}", c.id)))?;
            for p in paths {
                match &p.root {
                    Root::Step(id) if !ids.contains(id.as_str()) => {
                        return Err(invalid(
                            "missing_reference",
                            format!("compensation {:?} reads unknown step {id:?}", c.id),
                        ));
                    }
                    Root::Item | Root::Index => {
                        return Err(invalid(
                            "bad_expression",
                            format!("compensation {:?} uses $.item or $.index", c.id),
                        ));
                    }
                    _ => {}
                }
            }
        }
        if let Some(out) = &self.output {
            for p in path::template_paths(out).map_err(|e| invalid("bad_expression", format!("output: {e}")))? {
                match &p.root {
                    Root::Step(id) if !ids.contains(id.as_str()) => {
                        return Err(invalid("missing_reference", format!("output reads unknown step {id:?}")));
                    }
                    Root::Item | Root::Index => {
                        return Err(invalid("bad_expression", "output uses $.item or $.index".into()));
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// The steps in an order where each comes after its dependencies (a `cycle` error names
    /// a step on one).
    pub fn topo_order(&self) -> Result<Vec<String>, Invalid> {
        let mut indegree: BTreeMap<&str, usize> =
            self.steps.iter().map(|s| (s.id.as_str(), s.depends_on.len())).collect();
        let mut dependents: HashMap<&str, Vec<&str>> = HashMap::new();
        for s in &self.steps {
            for d in &s.depends_on {
                dependents.entry(d.as_str()).or_default().push(s.id.as_str());
            }
        }
        let mut ready: Vec<&str> =
            self.steps.iter().filter(|s| s.depends_on.is_empty()).map(|s| s.id.as_str()).collect();
        let mut out = Vec::new();
        while let Some(id) = ready.pop() {
            out.push(id.to_owned());
            for dep in dependents.get(id).into_iter().flatten() {
                if let Some(n) = indegree.get_mut(dep) {
                    *n -= 1;
                    if *n == 0 {
                        ready.push(dep);
                    }
                }
            }
        }
        if out.len() < self.steps.len() {
            let on = indegree.iter().find(|(_, n)| **n > 0).map(|(id, _)| *id).unwrap_or("?");
            return Err(invalid("cycle", format!("the dependencies form a cycle through step {on:?}")));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn def(v: Value) -> Definition {
        serde_json::from_value(v).unwrap()
    }

    fn code(v: Value) -> &'static str {
        def(v).validate(|a| a != "ghost").unwrap_err().code
    }

    #[test]
    fn a_good_definition_validates() {
        let d = def(json!({
            "steps": [
                {"id": "a", "agent": "x", "input": {"o": "$.input.order"}},
                {"id": "b", "agent": "x", "depends_on": ["a"], "for_each": "$.steps.a.output.items",
                 "input": {"i": "$.item", "n": "$.index"}, "concurrency": 3, "compensation": "undo"},
                {"id": "c", "agent": "x", "depends_on": ["b"], "condition": "$.steps.a.output.ok == true",
                 "input": "$.steps.b.output"}
            ],
            "compensations": [{"id": "undo", "agent": "x", "input": "$.steps.b.output"}],
            "output": {"c": "$.steps.c.output"}
        }));
        d.validate(|_| true).unwrap();
        assert_eq!(d.topo_order().unwrap(), ["a", "b", "c"]);
    }

    #[test]
    fn each_mistake_has_its_code() {
        assert_eq!(code(json!({"steps": [{"id": "a", "agent": "ghost"}]})), "unknown_agent");
        assert_eq!(code(json!({"steps": [{"id": "a", "agent": "x"}, {"id": "a", "agent": "x"}]})), "duplicate_step");
        assert_eq!(
            code(json!({"steps": [{"id": "a", "agent": "x", "depends_on": ["b"]},
                                  {"id": "b", "agent": "x", "depends_on": ["a"]}]})),
            "cycle"
        );
        assert_eq!(code(json!({"steps": [{"id": "a", "agent": "x", "depends_on": ["a"]}]})), "cycle");
        assert_eq!(code(json!({"steps": [{"id": "a", "agent": "x", "depends_on": ["z"]}]})), "unknown_dependency");
        assert_eq!(
            code(json!({"steps": [{"id": "a", "agent": "x"}, {"id": "b", "agent": "x", "input": "$.steps.a.output"}]})),
            "missing_reference"
        );
        assert_eq!(
            code(json!({"steps": [{"id": "a", "agent": "x", "input": "$.steps.zz.output"}]})),
            "missing_reference"
        );
        assert_eq!(code(json!({"steps": [{"id": "a", "agent": "x", "input": {"k": "$.inptu"}}]})), "bad_expression");
        assert_eq!(code(json!({"steps": [{"id": "a", "agent": "x", "condition": "$.input =="}]})), "bad_expression");
        assert_eq!(code(json!({"steps": [{"id": "a", "agent": "x", "input": "$.item"}]})), "bad_expression");
        assert_eq!(code(json!({"steps": [{"id": "a", "agent": "x", "for_each": "input"}]})), "bad_for_each");
        assert_eq!(code(json!({"steps": [{"id": "a", "agent": "x", "for_each": "$.item"}]})), "bad_for_each");
        assert_eq!(
            code(json!({"steps": [{"id": "a", "agent": "x", "for_each": "$.input.a", "concurrency": 0}]})),
            "bad_for_each"
        );
        assert_eq!(code(json!({"steps": [{"id": "a", "agent": "x", "compensation": "nope"}]})), "unknown_compensation");
        assert_eq!(code(json!({"steps": []})), "invalid_workflow");
        assert_eq!(Definition::parse(b"{\"steps\": 1}").unwrap_err().code, "invalid_workflow");
        assert_eq!(Definition::parse(b"{\"steps\": [], \"extra\": 1}").unwrap_err().code, "invalid_workflow");
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let r = Retry { attempts: 5, backoff_ms: 100, max_backoff_ms: 350 };
        assert_eq!([r.backoff(1), r.backoff(2), r.backoff(3), r.backoff(9)], [100, 200, 350, 350]);
    }
}
