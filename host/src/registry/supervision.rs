//! What an agent record says about its supervision: the policy of its health window and
//! circuit breaker (a deploy field), the probation of its last upgrade, and the automatic
//! rollback that ended one.

use serde::{Deserialize, Serialize};

/// How an agent's outcomes are judged and when its circuit breaker opens (the deploy
/// field `supervision`; every part has a default).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Supervision {
    /// Outcomes the sliding window keeps (the last ones), 1..=64.
    #[schema(minimum = 1, maximum = 64)]
    pub window: u32,
    /// Failures in a row that open the breaker (0: never on this count).
    pub consecutive_failures: u32,
    /// Share of failures in the window that opens the breaker (0 < ratio <= 1), once it
    /// holds at least `min_outcomes`.
    #[schema(exclusive_minimum = 0.0, maximum = 1.0)]
    pub failure_ratio: f64,
    /// Outcomes the window needs before the ratio applies.
    pub min_outcomes: u32,
    /// How long the breaker stays open the first time, in milliseconds (at least 100).
    #[schema(minimum = 100, maximum = 86_400_000)]
    pub open_ms: u64,
    /// The longest it stays open: each failed probe doubles the interval up to this.
    #[schema(minimum = 100, maximum = 86_400_000)]
    pub max_open_ms: u64,
    /// Whether the agent's own errors (`agent_error`) count as failures too.
    pub agent_errors_count: bool,
}

impl Default for Supervision {
    fn default() -> Self {
        Self {
            window: 20,
            consecutive_failures: 5,
            failure_ratio: 0.5,
            min_outcomes: 10,
            open_ms: 5_000,
            max_open_ms: 60_000,
            agent_errors_count: false,
        }
    }
}

/// Its ratio is never NaN (see [`Supervision::check`]).
impl Eq for Supervision {}

impl Supervision {
    /// Most outcomes a window keeps.
    pub const MAX_WINDOW: u32 = 64;

    /// What is wrong with it, if anything.
    pub fn check(&self) -> Result<(), String> {
        if !(1..=Self::MAX_WINDOW).contains(&self.window) {
            return Err(format!("supervision.window must be 1..={}", Self::MAX_WINDOW));
        }
        if !(self.failure_ratio > 0.0 && self.failure_ratio <= 1.0) {
            return Err("supervision.failure_ratio must be over 0 and at most 1".into());
        }
        if self.min_outcomes > self.window {
            return Err("supervision.min_outcomes must be at most supervision.window".into());
        }
        if self.open_ms < 100 || self.max_open_ms < self.open_ms {
            return Err("supervision.open_ms must be at least 100 and at most supervision.max_open_ms".into());
        }
        if self.max_open_ms > 86_400_000 {
            return Err("supervision.max_open_ms must be at most a day (86400000)".into());
        }
        Ok(())
    }
}

/// The probation of an upgrade (the `probation` of `POST /v1/agents/{name}/upgrade`): if,
/// within `window_ms` of the upgrade, at least `min_invocations` ended and more than
/// `failure_ratio` of them failed, the host rolls back to the previous module by itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Probation {
    /// How long the probation lasts, from the upgrade, in milliseconds.
    #[schema(minimum = 1, maximum = 604_800_000)]
    pub window_ms: u64,
    /// Share of failures over which the upgrade is rolled back (0 <= ratio < 1).
    #[schema(minimum = 0.0, exclusive_maximum = 1.0)]
    pub failure_ratio: f64,
    /// Invocations to judge by before the ratio applies.
    #[serde(default = "default_min_invocations")]
    #[schema(minimum = 1)]
    pub min_invocations: u32,
    /// When it ends (ms since the epoch); set by the host.
    #[serde(default)]
    pub until_ms: u64,
}

fn default_min_invocations() -> u32 {
    5
}

/// Its ratio is never NaN (see [`Probation::check`]).
impl Eq for Probation {}

impl Probation {
    /// What is wrong with it, if anything.
    pub fn check(&self) -> Result<(), String> {
        if self.window_ms == 0 || self.window_ms > 7 * 86_400_000 {
            return Err("probation.window_ms must be 1..=604800000 (a week)".into());
        }
        if !(self.failure_ratio >= 0.0 && self.failure_ratio < 1.0) {
            return Err("probation.failure_ratio must be at least 0 and under 1".into());
        }
        if self.min_invocations == 0 {
            return Err("probation.min_invocations must be at least 1".into());
        }
        Ok(())
    }
}

/// An automatic rollback: an upgrade that failed its probation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RolledBack {
    /// When (ms since the epoch).
    pub at_ms: u64,
    /// The module that failed its probation.
    pub from_module: String,
    /// The module the agent runs again.
    pub to_module: String,
    /// Why, for people.
    pub reason: String,
}
