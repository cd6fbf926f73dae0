//! `workflow-step` (world `agent`): a workflow step for the workflow tests. Its input is a
//! JSON object whose `op` picks what it does; it reads its run id, step id and attempt
//! from the config keys `cortex.workflow.run`, `cortex.workflow.step` and
//! `cortex.workflow.attempt` the host adds for a workflow step.
//!
//! | `op`         | what it does, what it returns                                              |
//! |--------------|----------------------------------------------------------------------------|
//! | `echo`       | returns `value`                                                            |
//! | `add`        | returns the sum of the numbers in `values` (arrays in it are summed too) plus `plus` |
//! | `effect`     | adds one to the document `effects/<run>.<step>` (compare-and-swap), returns `value`; with `spin_ms`, waits half of it before and half after |
//! | `fail_times` | fails (code `told-to-fail`) while the attempt is at most `n`, then returns `value` |
//! | `fail`       | always fails (code `told-to-fail`)                                         |
//! | `log`        | appends `entry` to the array document `log/<run>` (compare-and-swap), returns it |
//! | `spin`       | waits `ms` milliseconds (reading the clock), then returns `value`          |

use cortex_agent::{Agent, AgentError, config, documents, now_ms};
use serde_json::Value;

struct Step;

fn sum(v: &Value) -> f64 {
    match v {
        Value::Number(n) => n.as_f64().unwrap_or(0.0),
        Value::Array(a) => a.iter().map(sum).sum(),
        _ => 0.0,
    }
}

fn number(x: f64) -> Value {
    if x.fract() == 0.0 && x.abs() < 9.0e15 {
        Value::from(x as i64)
    } else {
        serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
    }
}

/// Busy for `ms` milliseconds, reading the clock only now and then (each read is a host
/// call, and host calls are limited per invocation).
fn spin(ms: u64) {
    let until = now_ms() + ms;
    let mut x = 0u64;
    while now_ms() < until {
        for i in 0..20_000u64 {
            x = core::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
    }
}

impl Agent for Step {
    fn handle(input: Vec<u8>) -> Result<Option<Vec<u8>>, AgentError> {
        let req: Value = serde_json::from_slice(&input)?;
        let run = config("cortex.workflow.run").unwrap_or_default();
        let step = config("cortex.workflow.step").unwrap_or_default();
        let attempt: u64 = config("cortex.workflow.attempt").and_then(|a| a.parse().ok()).unwrap_or(1);
        let value = req.get("value").cloned().unwrap_or(Value::Null);
        let out = match req.get("op").and_then(Value::as_str).unwrap_or("echo") {
            "echo" => value,
            "add" => {
                let plus = req.get("plus").map_or(0.0, sum);
                number(req.get("values").map_or(0.0, sum) + plus)
            }
            "effect" => {
                let half = req.get("spin_ms").and_then(Value::as_u64).unwrap_or(0) / 2;
                spin(half);
                documents::update("effects", &format!("{run}.{step}"), |old: Option<u64>| old.unwrap_or(0) + 1)?;
                spin(half);
                value
            }
            "fail_times" => {
                let n = req.get("n").and_then(Value::as_u64).unwrap_or(0);
                if attempt <= n {
                    return Err(AgentError::new("told-to-fail", format!("attempt {attempt} of at most {n} failures")));
                }
                value
            }
            "fail" => return Err(AgentError::new("told-to-fail", "this step always fails")),
            "log" => {
                let entry = req.get("entry").cloned().unwrap_or(Value::Null);
                documents::update("log", &run, |old: Option<Vec<Value>>| {
                    let mut v = old.unwrap_or_default();
                    v.push(entry.clone());
                    v
                })?;
                entry
            }
            "spin" => {
                spin(req.get("ms").and_then(Value::as_u64).unwrap_or(0));
                value
            }
            other => return Err(AgentError::new("bad-op", format!("unknown op {other:?}"))),
        };
        Ok(Some(serde_json::to_vec(&out)?))
    }
}

cortex_agent::export_agent!(Step);
