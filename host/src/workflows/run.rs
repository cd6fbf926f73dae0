//! A run's state, as persisted: the run, its steps and their calls, and the pure state
//! machine that decides what happens next ([`Run::plan`], [`Run::finish_call`]).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::def::{Definition, MAX_ITEMS, OnFailure};
use super::path;

/// The state of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Created, no step started yet.
    Pending,
    /// Steps run.
    Running,
    /// Every step finished; the run has its output.
    Succeeded,
    /// A step failed (`on_failure: fail`), or a compensation did.
    Failed,
    /// A step failed with `on_failure: compensate`: compensations run.
    Compensating,
    /// Every compensation ran.
    Compensated,
    /// Cancelled through the API.
    Cancelled,
    /// A non-idempotent step was started but not recorded as finished (a crash): an admin
    /// resolves it (retry or skip).
    NeedsAttention,
}

impl RunState {
    /// Whether the run has ended.
    pub fn is_terminal(self) -> bool {
        matches!(self, RunState::Succeeded | RunState::Failed | RunState::Compensated | RunState::Cancelled)
    }
    /// Whether the engine drives it (it is in the active index).
    pub fn is_active(self) -> bool {
        matches!(self, RunState::Pending | RunState::Running | RunState::Compensating)
    }
    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Pending => "pending",
            RunState::Running => "running",
            RunState::Succeeded => "succeeded",
            RunState::Failed => "failed",
            RunState::Compensating => "compensating",
            RunState::Compensated => "compensated",
            RunState::Cancelled => "cancelled",
            RunState::NeedsAttention => "needs_attention",
        }
    }
}

/// The state of a step or of one of its calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    /// Not started (or waiting for its retry).
    Pending,
    /// Started (the attempt is recorded), not finished.
    Running,
    /// Finished with an output.
    Succeeded,
    /// Failed after its last attempt.
    Failed,
    /// Its condition did not hold, or an admin skipped it.
    Skipped,
    /// The run was cancelled before it finished.
    Cancelled,
    /// Started before a crash, not idempotent: waits for an admin.
    NeedsAttention,
}

impl StepState {
    fn is_done(self) -> bool {
        matches!(self, StepState::Succeeded | StepState::Failed | StepState::Skipped | StepState::Cancelled)
    }
}

/// One invocation slot of a step: the step itself, or one element of its `for_each`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Call {
    /// Its state.
    pub state: StepState,
    /// Attempts started.
    pub attempts: u32,
    /// The input sent (rendered when the step became ready).
    #[schema(value_type = Object)]
    pub input: Value,
    /// Its output once succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object)]
    pub output: Option<Value>,
    /// The last attempt's outcome code (`ok`, `agent_error`, `timeout`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// The last failure's message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Not before this time (a retry's backoff), ms since the epoch.
    #[serde(default)]
    pub not_before_ms: u64,
}

impl Call {
    fn new(input: Value) -> Self {
        Call {
            state: StepState::Pending,
            attempts: 0,
            input,
            output: None,
            outcome: None,
            message: None,
            not_before_ms: 0,
        }
    }
}

/// One step of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StepRun {
    /// The step's id.
    pub id: String,
    /// Its state.
    pub state: StepState,
    /// When it started and finished (ms since the epoch; 0: not yet).
    pub started_ms: u64,
    /// When it finished.
    pub finished_ms: u64,
    /// Its calls: one, or one per `for_each` element (empty until it is ready).
    pub calls: Vec<Call>,
    /// Its output (for a `for_each`, the array of its calls' outputs, in order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object)]
    pub output: Option<Value>,
    /// Why it failed (an outcome code), if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
}

/// One compensation run for one succeeded step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CompensationRun {
    /// The step it undoes.
    pub step: String,
    /// The compensation's id.
    pub id: String,
    /// Its call.
    pub call: Call,
}

/// A run, as persisted in the store (record `WorkflowRun`, `tenant/run/<id>`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Run {
    /// Its id.
    pub id: String,
    /// The tenant.
    pub tenant: String,
    /// The workflow's name.
    pub workflow: String,
    /// The definition version it runs.
    pub version: u64,
    /// Its state.
    pub state: RunState,
    /// The input it was started with.
    #[schema(value_type = Object)]
    pub input: Value,
    /// Its output once succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object)]
    pub output: Option<Value>,
    /// Why it failed, needs attention or was cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The idempotency key it was started with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// When it was created, and last changed (ms since the epoch).
    pub created_ms: u64,
    /// When it last changed.
    pub updated_ms: u64,
    /// When it ended (0: not yet).
    pub finished_ms: u64,
    /// Its steps, in the definition's order.
    pub steps: Vec<StepRun>,
    /// Succeeded steps in the order they finished (compensation runs the reverse).
    #[serde(default)]
    pub completed: Vec<String>,
    /// Compensations, once the run compensates, in the order they run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub compensations: Vec<CompensationRun>,
    /// Set by a cancel request; the engine ends the run.
    #[serde(default)]
    pub cancel_requested: bool,
    /// The definition it runs (copied, so later versions do not change it).
    pub definition: Definition,
    /// The W3C trace context of the request that started it, while tracing was on: the
    /// span of each step's call is linked to it. Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<crate::telemetry::otel::TraceContext>,
}

/// Which call to start: a step's call, or a compensation's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Slot {
    /// Call `.1` of step `.0` (indexes into `steps` and `calls`).
    Step(usize, usize),
    /// Compensation `.0` (index into `compensations`).
    Compensation(usize),
}

struct RunScope<'a> {
    run: &'a Run,
    item: Option<(&'a Value, usize)>,
}

impl path::Scope for RunScope<'_> {
    fn input(&self) -> &Value {
        &self.run.input
    }
    fn step_output(&self, id: &str) -> Option<&Value> {
        self.run.steps.iter().find(|s| s.id == id).and_then(|s| s.output.as_ref())
    }
    fn item(&self) -> Option<&Value> {
        self.item.map(|i| i.0)
    }
    fn index(&self) -> Option<usize> {
        self.item.map(|i| i.1)
    }
}

impl Run {
    /// A new run of `definition`.
    pub fn new(id: String, tenant: &str, workflow: &str, version: u64, definition: Definition, input: Value) -> Self {
        let now = crate::registry::now_ms();
        let steps = definition
            .steps
            .iter()
            .map(|s| StepRun {
                id: s.id.clone(),
                state: StepState::Pending,
                started_ms: 0,
                finished_ms: 0,
                calls: Vec::new(),
                output: None,
                outcome: None,
            })
            .collect();
        Run {
            id,
            tenant: tenant.to_owned(),
            workflow: workflow.to_owned(),
            version,
            state: RunState::Pending,
            input,
            output: None,
            error: None,
            idempotency_key: None,
            created_ms: now,
            updated_ms: now,
            finished_ms: 0,
            steps,
            completed: Vec::new(),
            compensations: Vec::new(),
            cancel_requested: false,
            definition,
            trace: None,
        }
    }

    fn end(&mut self, state: RunState, now: u64) {
        self.state = state;
        self.finished_ms = now;
        for s in &mut self.steps {
            if !s.state.is_done() {
                s.state = StepState::Cancelled;
                for c in &mut s.calls {
                    if !c.state.is_done() {
                        c.state = StepState::Cancelled;
                    }
                }
            }
        }
    }

    /// After a restart on a node (a crash or a lost lease): calls that were started but not
    /// recorded as finished run again if their step is idempotent (compensations always
    /// are retried: undoing twice is the compensation's business); otherwise the run
    /// needs attention. Returns whether anything changed.
    pub fn recover(&mut self) -> bool {
        let mut changed = false;
        let mut stuck = Vec::new();
        for (i, s) in self.steps.iter_mut().enumerate() {
            let idempotent = self.definition.steps.get(i).is_some_and(|d| d.idempotent);
            for c in &mut s.calls {
                if c.state == StepState::Running {
                    changed = true;
                    if idempotent {
                        c.state = StepState::Pending;
                    } else {
                        c.state = StepState::NeedsAttention;
                        stuck.push(s.id.clone());
                    }
                }
            }
            if s.calls.iter().any(|c| c.state == StepState::NeedsAttention) {
                s.state = StepState::NeedsAttention;
            }
        }
        for c in &mut self.compensations {
            if c.call.state == StepState::Running {
                c.call.state = StepState::Pending;
                changed = true;
            }
        }
        if !stuck.is_empty() {
            stuck.dedup();
            self.state = RunState::NeedsAttention;
            self.error = Some(format!(
                "step(s) {} started before a crash and are not idempotent: resolve with retry or skip",
                stuck.join(", ")
            ));
        }
        changed
    }

    /// Decide what can happen now (`now` in ms): settle steps whose conditions or
    /// dependencies decide them, end the run when nothing is left, and return the calls to
    /// start (already marked running with their attempt counted; persist before starting
    /// them) and the earliest time a backoff ends (to wake up then). `running` is how many
    /// calls are in flight.
    pub fn plan(&mut self, now: u64, running: usize) -> (Vec<Slot>, Option<u64>) {
        let mut start = Vec::new();
        let mut wake: Option<u64> = None;
        if self.state.is_terminal() || self.state == RunState::NeedsAttention {
            return (start, None);
        }
        if self.cancel_requested {
            if running == 0 {
                self.error.get_or_insert_with(|| "cancelled".into());
                self.end(RunState::Cancelled, now);
            }
            return (start, None);
        }
        if self.state == RunState::Pending {
            self.state = RunState::Running;
        }
        if self.state == RunState::Compensating {
            return self.plan_compensation(now, running);
        }
        let failed = self.steps.iter().enumerate().any(|(i, s)| {
            s.state == StepState::Failed
                && self.definition.steps.get(i).is_some_and(|d| d.on_failure != OnFailure::Continue)
        });
        if failed {
            if running > 0 {
                return (start, None);
            }
            let compensate = self.steps.iter().enumerate().any(|(i, s)| {
                s.state == StepState::Failed
                    && self.definition.steps.get(i).is_some_and(|d| d.on_failure == OnFailure::Compensate)
            });
            let failed_step =
                self.steps.iter().find(|s| s.state == StepState::Failed).map(|s| s.id.clone()).unwrap_or_default();
            self.error = Some(format!("step {failed_step:?} failed"));
            if compensate {
                self.state = RunState::Compensating;
                for id in self.completed.iter().rev() {
                    let Some(d) = self.definition.step(id) else { continue };
                    let Some(cid) = &d.compensation else { continue };
                    let Some(cdef) = self.definition.compensation(cid) else { continue };
                    let input = path::render(&cdef.input, &RunScope { run: self, item: None });
                    self.compensations.push(CompensationRun {
                        step: id.clone(),
                        id: cid.clone(),
                        call: Call::new(input),
                    });
                }
                return self.plan_compensation(now, running);
            }
            self.end(RunState::Failed, now);
            return (start, None);
        }
        // Steps whose dependencies finished: settle their condition, render their calls.
        for i in 0..self.steps.len() {
            let Some(d) = self.definition.steps.get(i) else { continue };
            if self.steps[i].state != StepState::Pending || !self.steps[i].calls.is_empty() {
                continue;
            }
            let deps_done = d
                .depends_on
                .iter()
                .all(|dep| self.steps.iter().find(|s| &s.id == dep).is_some_and(|s| s.state.is_done()));
            if !deps_done {
                continue;
            }
            let scope = RunScope { run: self, item: None };
            if let Some(c) = &d.condition
                && !path::parse_condition(c).is_ok_and(|e| e.eval(&scope))
            {
                let s = &mut self.steps[i];
                s.state = StepState::Skipped;
                s.started_ms = now;
                s.finished_ms = now;
                continue;
            }
            let calls: Result<Vec<Call>, String> = match &d.for_each {
                None => Ok(vec![Call::new(path::render(&d.input, &scope))]),
                Some(f) => match path::parse_path(f).map(|p| p.eval(&scope)) {
                    Ok(Value::Array(items)) if items.len() <= MAX_ITEMS => Ok(items
                        .iter()
                        .enumerate()
                        .map(|(n, item)| {
                            Call::new(path::render(&d.input, &RunScope { run: self, item: Some((item, n)) }))
                        })
                        .collect()),
                    Ok(Value::Array(items)) => Err(format!("for_each has {} items, over {MAX_ITEMS}", items.len())),
                    Ok(other) => Err(format!("for_each {f:?} is not an array but {other}")),
                    Err(e) => Err(e),
                },
            };
            let s = &mut self.steps[i];
            s.started_ms = now;
            match calls {
                Ok(calls) if calls.is_empty() => {
                    s.state = StepState::Succeeded;
                    s.output = Some(Value::Array(Vec::new()));
                    s.finished_ms = now;
                    self.completed.push(s.id.clone());
                }
                Ok(calls) => {
                    s.calls = calls;
                    s.state = StepState::Running;
                }
                Err(e) => {
                    s.state = StepState::Failed;
                    s.outcome = Some("bad_for_each".into());
                    s.finished_ms = now;
                    self.error = Some(e);
                }
            }
        }
        if self.steps.iter().any(|s| s.state == StepState::Failed) && self.error.is_some() {
            // A step failed while being rendered: decide on the next round.
            let failed_fatal = self.steps.iter().enumerate().any(|(i, s)| {
                s.state == StepState::Failed
                    && self.definition.steps.get(i).is_some_and(|d| d.on_failure != OnFailure::Continue)
            });
            if failed_fatal {
                return self.plan(now, running);
            }
        }
        // Calls to start.
        for (i, s) in self.steps.iter_mut().enumerate() {
            if s.state != StepState::Running {
                continue;
            }
            let cap = self.definition.steps.get(i).and_then(|d| d.concurrency).unwrap_or(10).max(1) as usize;
            let mut in_flight = s.calls.iter().filter(|c| c.state == StepState::Running).count();
            for (n, c) in s.calls.iter_mut().enumerate() {
                if in_flight >= cap {
                    break;
                }
                if c.state != StepState::Pending {
                    continue;
                }
                if c.not_before_ms > now {
                    wake = Some(wake.map_or(c.not_before_ms, |w| w.min(c.not_before_ms)));
                    continue;
                }
                c.state = StepState::Running;
                c.attempts += 1;
                in_flight += 1;
                start.push(Slot::Step(i, n));
            }
        }
        if start.is_empty() && running == 0 && wake.is_none() && self.steps.iter().all(|s| s.state.is_done()) {
            let out = match &self.definition.output {
                Some(t) => path::render(t, &RunScope { run: self, item: None }),
                None => self.steps.last().and_then(|s| s.output.clone()).unwrap_or(Value::Null),
            };
            self.output = Some(out);
            self.error = None;
            self.end(RunState::Succeeded, now);
        }
        (start, wake)
    }

    fn plan_compensation(&mut self, now: u64, running: usize) -> (Vec<Slot>, Option<u64>) {
        if running > 0 {
            return (Vec::new(), None);
        }
        // One at a time, in order (reverse order of completion).
        for (i, c) in self.compensations.iter_mut().enumerate() {
            match c.call.state {
                StepState::Succeeded | StepState::Skipped => continue,
                StepState::Failed => {
                    self.error = Some(format!("compensation {:?} of step {:?} failed", c.id, c.step));
                    self.end(RunState::Failed, now);
                    return (Vec::new(), None);
                }
                StepState::Pending if c.call.not_before_ms > now => return (Vec::new(), Some(c.call.not_before_ms)),
                StepState::Pending => {
                    c.call.state = StepState::Running;
                    c.call.attempts += 1;
                    return (vec![Slot::Compensation(i)], None);
                }
                _ => return (Vec::new(), None),
            }
        }
        self.end(RunState::Compensated, now);
        (Vec::new(), None)
    }

    /// The call of `slot`, and the agent, timeout and retry policy it runs with.
    pub fn call_of(&self, slot: Slot) -> Option<CallSpec> {
        match slot {
            Slot::Step(i, n) => {
                let d = self.definition.steps.get(i)?;
                let c = self.steps.get(i)?.calls.get(n)?;
                Some(CallSpec {
                    step: if d.for_each.is_some() { format!("{}.{n}", d.id) } else { d.id.clone() },
                    agent: d.agent.clone(),
                    input: c.input.clone(),
                    attempt: c.attempts,
                    timeout_ms: d.timeout_ms,
                })
            }
            Slot::Compensation(i) => {
                let c = self.compensations.get(i)?;
                let d = self.definition.compensation(&c.id)?;
                Some(CallSpec {
                    step: format!("{}:{}", c.id, c.step),
                    agent: d.agent.clone(),
                    input: c.call.input.clone(),
                    attempt: c.call.attempts,
                    timeout_ms: d.timeout_ms,
                })
            }
        }
    }

    /// Record the end of the call of `slot`: its output, or its failure (`code`, `message`)
    /// which schedules a retry while attempts remain.
    pub fn finish_call(&mut self, slot: Slot, result: Result<Value, (String, String)>, now: u64) {
        let retry = match slot {
            Slot::Step(i, _) => self.definition.steps.get(i).map(|d| d.retry.clone()),
            Slot::Compensation(i) => {
                self.compensations.get(i).and_then(|c| self.definition.compensation(&c.id)).map(|d| d.retry.clone())
            }
        }
        .unwrap_or_default();
        let call = match slot {
            Slot::Step(i, n) => self.steps.get_mut(i).and_then(|s| s.calls.get_mut(n)),
            Slot::Compensation(i) => self.compensations.get_mut(i).map(|c| &mut c.call),
        };
        let Some(call) = call else { return };
        if call.state != StepState::Running {
            return;
        }
        match result {
            Ok(v) => {
                call.state = StepState::Succeeded;
                call.output = Some(v);
                call.outcome = Some("ok".into());
                call.message = None;
            }
            Err((code, message)) => {
                call.outcome = Some(code);
                call.message = Some(message);
                if call.attempts < retry.attempts && !self.cancel_requested {
                    call.state = StepState::Pending;
                    call.not_before_ms = now + retry.backoff(call.attempts);
                } else {
                    call.state = StepState::Failed;
                }
            }
        }
        if let Slot::Step(i, _) = slot
            && let Some(s) = self.steps.get_mut(i)
        {
            let for_each = self.definition.steps.get(i).is_some_and(|d| d.for_each.is_some());
            if let Some(failed) = s.calls.iter().find(|c| c.state == StepState::Failed) {
                s.state = StepState::Failed;
                s.outcome = failed.outcome.clone();
                s.finished_ms = now;
            } else if s.calls.iter().all(|c| c.state == StepState::Succeeded) {
                s.state = StepState::Succeeded;
                s.finished_ms = now;
                s.output = if for_each {
                    Some(Value::Array(s.calls.iter().map(|c| c.output.clone().unwrap_or(Value::Null)).collect()))
                } else {
                    s.calls.first().and_then(|c| c.output.clone())
                };
                self.completed.push(s.id.clone());
            }
        }
        self.updated_ms = now;
    }

    /// An admin's resolution of a run that needs attention: run the stuck calls of `step`
    /// again (`retry`) or take them as succeeded with `output` (`skip`).
    pub fn resolve(&mut self, step: &str, retry: bool, output: Option<Value>, now: u64) -> Result<(), String> {
        if self.state != RunState::NeedsAttention {
            return Err(format!("the run is {}, not needs_attention", self.state.as_str()));
        }
        let Some(s) = self.steps.iter_mut().find(|s| s.id == step) else {
            return Err(format!("no step {step:?}"));
        };
        if s.state != StepState::NeedsAttention {
            return Err(format!("step {step:?} does not need attention"));
        }
        for c in &mut s.calls {
            if c.state == StepState::NeedsAttention {
                if retry {
                    c.state = StepState::Pending;
                } else {
                    c.state = StepState::Succeeded;
                    c.output = Some(output.clone().unwrap_or(Value::Null));
                    c.outcome = Some("skipped".into());
                }
            }
        }
        s.state = StepState::Running;
        if !retry && s.calls.iter().all(|c| c.state == StepState::Succeeded) {
            s.state = StepState::Skipped;
            s.finished_ms = now;
            s.output = if s.calls.len() == 1 { s.calls.first().and_then(|c| c.output.clone()) } else { output };
        }
        if !self.steps.iter().any(|s| s.state == StepState::NeedsAttention) {
            self.state = RunState::Running;
            self.error = None;
        }
        self.updated_ms = now;
        Ok(())
    }
}

/// What a call runs: for the engine.
#[derive(Clone, Debug)]
pub struct CallSpec {
    /// The step id as the agent sees it (`id`, `id.n` in a `for_each`, `comp:step` for a
    /// compensation).
    pub step: String,
    /// The agent.
    pub agent: String,
    /// Its input.
    pub input: Value,
    /// Its attempt number (1-based).
    pub attempt: u32,
    /// Its timeout.
    pub timeout_ms: Option<u64>,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn run(def: Value, input: Value) -> Run {
        let d: Definition = serde_json::from_value(def).unwrap();
        d.validate(|_| true).unwrap();
        Run::new("r1".into(), "t", "w", 1, d, input)
    }

    /// Drive a run with `agent` answering every call, in rounds; returns the calls made.
    fn drive(r: &mut Run, agent: impl Fn(&CallSpec) -> Result<Value, (String, String)>) -> Vec<String> {
        let mut log = Vec::new();
        let mut now = 1;
        for _ in 0..1000 {
            let (start, wake) = r.plan(now, 0);
            if start.is_empty() && wake.is_none() {
                break;
            }
            for slot in start {
                let spec = r.call_of(slot).unwrap();
                log.push(spec.step.clone());
                let res = agent(&spec);
                r.finish_call(slot, res, now);
            }
            now = wake.unwrap_or(now + 1).max(now + 1);
        }
        log
    }

    #[test]
    fn a_dag_with_fan_out_and_fan_in_aggregates_in_order() {
        let mut r = run(
            json!({"steps": [
                {"id": "a", "agent": "x", "input": "$.input"},
                {"id": "fan", "agent": "x", "depends_on": ["a"], "for_each": "$.steps.a.output", "concurrency": 2,
                 "input": {"add": "$.item", "i": "$.index"}},
                {"id": "sum", "agent": "x", "depends_on": ["fan"], "input": "$.steps.fan.output"}
            ]}),
            json!([1, 2, 3, 4]),
        );
        drive(&mut r, |c| match c.step.as_str() {
            "a" | "sum" => Ok(c.input.clone()),
            _ => Ok(json!(c.input["add"].as_i64().unwrap() * 10 + c.input["i"].as_i64().unwrap())),
        });
        assert_eq!(r.state, RunState::Succeeded);
        assert_eq!(r.output, Some(json!([10, 21, 32, 43])));
    }

    #[test]
    fn retries_then_fails_or_compensates_in_reverse_order() {
        let def = json!({"steps": [
            {"id": "a", "agent": "x", "compensation": "undo"},
            {"id": "b", "agent": "x", "depends_on": ["a"], "compensation": "undo"},
            {"id": "c", "agent": "x", "depends_on": ["b"], "on_failure": "compensate", "retry": {"attempts": 3}}
        ], "compensations": [{"id": "undo", "agent": "y"}]});
        let mut r = run(def, json!(null));
        let log =
            drive(&mut r, |c| if c.step == "c" { Err(("agent_error".into(), "no".into())) } else { Ok(json!(1)) });
        assert_eq!(log, ["a", "b", "c", "c", "c", "undo:b", "undo:a"]);
        assert_eq!(r.state, RunState::Compensated);
        assert_eq!(r.steps[2].calls[0].attempts, 3);
    }

    #[test]
    fn a_crash_mid_step_reruns_idempotent_steps_and_parks_the_others() {
        let def = json!({"steps": [
            {"id": "a", "agent": "x", "idempotent": true},
            {"id": "b", "agent": "x"}
        ]});
        let mut r = run(def, json!(null));
        let (start, _) = r.plan(1, 0);
        assert_eq!(start.len(), 2);
        r.recover();
        assert_eq!(r.state, RunState::NeedsAttention);
        assert_eq!(r.steps[0].calls[0].state, StepState::Pending);
        assert_eq!(r.steps[1].state, StepState::NeedsAttention);
        r.resolve("b", false, Some(json!("done")), 2).unwrap();
        assert_eq!(r.state, RunState::Running);
        drive(&mut r, |_| Ok(json!(5)));
        assert_eq!(r.state, RunState::Succeeded);
        assert_eq!(r.steps[0].calls[0].attempts, 2);
        assert_eq!(r.steps[1].output, Some(json!("done")));
    }

    #[test]
    fn conditions_skip_and_cancel_ends_the_run() {
        let def = json!({"steps": [
            {"id": "a", "agent": "x"},
            {"id": "b", "agent": "x", "depends_on": ["a"], "condition": "$.steps.a.output > 3"}
        ], "output": {"a": "$.steps.a.output", "b": "$.steps.b.output"}});
        let mut r = run(def.clone(), json!(null));
        drive(&mut r, |_| Ok(json!(1)));
        assert_eq!(r.steps[1].state, StepState::Skipped);
        assert_eq!(r.output, Some(json!({"a": 1, "b": null})));
        let mut r = run(def, json!(null));
        r.cancel_requested = true;
        drive(&mut r, |_| Ok(json!(1)));
        assert_eq!(r.state, RunState::Cancelled);
        assert!(r.steps.iter().all(|s| s.state == StepState::Cancelled));
    }
}
