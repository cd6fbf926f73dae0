//! The health of one agent and its circuit breaker, as a pure state machine: outcomes go
//! into a sliding window of the last ones (two bit sets), the breaker opens after too many
//! failures in a row or too high a share of failures in the window, refuses while open,
//! half-opens after its interval to let one probe through, and closes on the probe's
//! success or reopens for twice as long (capped) on its failure.
//!
//! Time is an argument (`now`), read by the caller on the invoke path only: no task and no
//! timer per agent, and the tests drive it with instants of their own. The whole state is
//! a few words under one mutex (see [`Health`]).

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::registry::{Probation, Supervision};
use crate::runtime::Outcome;

/// How an outcome counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// It succeeded.
    Success,
    /// The agent answered with its own error (a failure only if the policy says so).
    AgentError,
    /// A trap, a deadline, a limit, a host error.
    Failure,
}

impl Verdict {
    /// The verdict on an outcome.
    pub fn of(outcome: &Outcome) -> Self {
        match outcome {
            Outcome::Ok { .. } => Verdict::Success,
            Outcome::AgentError { .. } => Verdict::AgentError,
            _ => Verdict::Failure,
        }
    }

    fn fails(self, policy: &Supervision) -> bool {
        match self {
            Verdict::Success => false,
            Verdict::AgentError => policy.agent_errors_count,
            Verdict::Failure => true,
        }
    }
}

/// The state of a circuit breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Circuit {
    /// Invocations run.
    Closed,
    /// Invocations are refused until the interval ends.
    Open,
    /// One probe may run; its outcome closes or reopens the breaker.
    HalfOpen,
}

impl Circuit {
    /// Its stable name (`closed`, `open`, `half_open`).
    pub fn name(self) -> &'static str {
        match self {
            Circuit::Closed => "closed",
            Circuit::Open => "open",
            Circuit::HalfOpen => "half_open",
        }
    }

    /// Its value in the `cortex_agent_circuit_state` gauge.
    pub fn gauge(self) -> i64 {
        self as i64
    }
}

/// The health of an agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HealthState {
    /// No failure in its window.
    Healthy,
    /// Some failures in its window; the breaker is closed.
    Degraded,
    /// Its breaker is open or half-open.
    Failing,
    /// It is stopped.
    Stopped,
}

impl HealthState {
    /// Its value in the `cortex_agent_health` gauge.
    pub fn gauge(self) -> i64 {
        self as i64
    }
}

/// A change the caller publishes (metrics, audit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    /// The breaker's state before.
    pub from: Circuit,
    /// And after.
    pub to: Circuit,
    /// How long it is open for, when `to` is [`Circuit::Open`].
    pub open_for: Duration,
}

/// What an outcome changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settled {
    /// The breaker moved.
    pub transition: Option<Transition>,
    /// The health (stopped aside) changed to this.
    pub health: Option<HealthState>,
    /// The upgrade's probation failed with this many failures of this many outcomes; the
    /// caller rolls back (reported once).
    pub probation_failed: Option<(u32, u32)>,
}

/// A refusal: the breaker is open (or half-open with its probe running).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refused {
    /// When a retry may be let through.
    pub retry_after: Duration,
}

#[derive(Clone, Copy, Debug)]
enum State {
    Closed,
    Open { until: Instant },
    HalfOpen { probing: bool },
}

/// The window, the breaker and the probation counters of one agent.
#[derive(Debug)]
struct Inner {
    /// Bit `i`: the outcome `i` places back failed (by the policy's rule).
    failed: u64,
    /// Bit `i`: the outcome `i` places back was an agent error.
    agent_errors: u64,
    /// Outcomes in the window.
    len: u8,
    /// Failures in a row.
    consecutive: u32,
    state: State,
    /// The interval of the last opening (doubled on each failed probe).
    interval: Duration,
    /// When it last opened (ms since the epoch), for people.
    opened_ms: u64,
    /// The health last reported.
    health: HealthState,
    /// Outcomes and failures since the last upgrade (for its probation); `u32::MAX`
    /// outcomes once the probation failed.
    probation: (u32, u32),
}

/// What the agent view shows of the breaker and the window (flattened into it).
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct HealthView {
    /// The breaker.
    pub circuit: Circuit,
    /// While open: milliseconds until it lets a probe through.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub circuit_retry_after_ms: Option<u64>,
    /// When it last opened (ms since the epoch), if it ever did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub circuit_opened_ms: Option<u64>,
    /// The sliding window.
    pub window: WindowView,
    /// Invocations judged by the probation of the last upgrade, while one runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probation_progress: Option<ProbationProgress>,
}

/// The sliding window of an agent's outcomes.
#[derive(Clone, Copy, Debug, Serialize, utoipa::ToSchema)]
pub struct WindowView {
    /// Outcomes in the window.
    pub outcomes: u32,
    /// Failures among them (by the policy's rule).
    pub failures: u32,
    /// Agent errors among them.
    pub agent_errors: u32,
    /// Failures in a row.
    pub consecutive_failures: u32,
}

/// Invocations judged by a probation so far.
#[derive(Clone, Copy, Debug, Serialize, utoipa::ToSchema)]
pub struct ProbationProgress {
    /// Invocations that ended.
    pub invocations: u32,
    /// Failures among them.
    pub failures: u32,
}

/// The health and circuit breaker of one agent; it lives in its [`Shared`](super::Shared)
/// and so survives config changes and upgrades.
#[derive(Debug)]
pub struct Health(Mutex<Inner>);

impl Default for Health {
    fn default() -> Self {
        Self(Mutex::new(Inner::default_inner()))
    }
}

/// A pass through the breaker: settle it with the outcome. A probe dropped unsettled (its
/// invocation refused further on, or cancelled) lets another probe through.
#[derive(Debug)]
pub struct Ticket<'a> {
    health: &'a Health,
    probe: bool,
}

impl Ticket<'_> {
    /// Whether this pass is the half-open breaker's probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// Count `verdict` under `policy` at `now` (and for `probation`, if one runs).
    pub fn settle(
        mut self,
        policy: &Supervision,
        probation: Option<&Probation>,
        verdict: Verdict,
        now: Instant,
        now_ms: u64,
    ) -> Settled {
        let probe = std::mem::replace(&mut self.probe, false);
        self.health.record(policy, probation, verdict, probe, now, now_ms)
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if self.probe {
            let mut h = self.health.lock();
            if let State::HalfOpen { probing } = &mut h.state {
                *probing = false;
            }
        }
    }
}

fn ones(bits: u64, len: u8) -> u32 {
    let mask = if len >= 64 { u64::MAX } else { (1u64 << len) - 1 };
    (bits & mask).count_ones()
}

impl Health {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Let an invocation through at `now`, or refuse it. An open breaker whose interval has
    /// passed half-opens and lets this one through as its probe (the transition is
    /// returned).
    pub fn admit(&self, now: Instant) -> (Result<Ticket<'_>, Refused>, Option<Transition>) {
        let mut h = self.lock();
        match h.state {
            State::Closed => (Ok(Ticket { health: self, probe: false }), None),
            State::Open { until } if now < until => (Err(Refused { retry_after: until - now }), None),
            State::Open { .. } => {
                h.state = State::HalfOpen { probing: true };
                let t = Transition { from: Circuit::Open, to: Circuit::HalfOpen, open_for: Duration::ZERO };
                (Ok(Ticket { health: self, probe: true }), Some(t))
            }
            State::HalfOpen { probing: true } => {
                // The probe decides soon: ask to come back after a tenth of the interval.
                (Err(Refused { retry_after: (h.interval / 10).max(Duration::from_millis(10)) }), None)
            }
            State::HalfOpen { probing: false } => {
                h.state = State::HalfOpen { probing: true };
                (Ok(Ticket { health: self, probe: true }), None)
            }
        }
    }

    fn record(
        &self,
        policy: &Supervision,
        probation: Option<&Probation>,
        verdict: Verdict,
        probe: bool,
        now: Instant,
        now_ms: u64,
    ) -> Settled {
        let mut h = self.lock();
        let fails = verdict.fails(policy);
        let window = policy.window.clamp(1, Supervision::MAX_WINDOW) as u8;
        h.failed = (h.failed << 1) | u64::from(fails);
        h.agent_errors = (h.agent_errors << 1) | u64::from(verdict == Verdict::AgentError);
        h.len = (h.len + 1).min(window);
        h.consecutive = if fails { h.consecutive.saturating_add(1) } else { 0 };
        let mut out = Settled::default();
        if let Some(p) = probation.filter(|p| now_ms < p.until_ms)
            && h.probation.0 != u32::MAX
        {
            h.probation = (h.probation.0 + 1, h.probation.1 + u32::from(fails));
            let (n, f) = h.probation;
            if n >= p.min_invocations && f64::from(f) > p.failure_ratio * f64::from(n) {
                out.probation_failed = Some((f, n));
                h.probation.0 = u32::MAX;
            }
        }
        let open = |h: &mut Inner, from: Circuit, interval: Duration| {
            h.interval = interval;
            h.state = State::Open { until: now + interval };
            h.opened_ms = now_ms;
            Some(Transition { from, to: Circuit::Open, open_for: interval })
        };
        let first = Duration::from_millis(policy.open_ms.max(1));
        out.transition = match h.state {
            State::HalfOpen { .. } if probe && fails => {
                let longer = (h.interval * 2).clamp(first, Duration::from_millis(policy.max_open_ms.max(1)));
                open(&mut h, Circuit::HalfOpen, longer)
            }
            State::HalfOpen { .. } if probe => {
                // A fresh start: the window that opened it is behind.
                h.failed = 0;
                h.agent_errors = 0;
                h.len = 0;
                h.interval = Duration::ZERO;
                h.state = State::Closed;
                Some(Transition { from: Circuit::HalfOpen, to: Circuit::Closed, open_for: Duration::ZERO })
            }
            State::Closed if fails => {
                let failures = ones(h.failed, h.len);
                let by_count = policy.consecutive_failures > 0 && h.consecutive >= policy.consecutive_failures;
                let by_ratio = u32::from(h.len) >= policy.min_outcomes.max(1)
                    && f64::from(failures) >= policy.failure_ratio * f64::from(h.len);
                if by_count || by_ratio { open(&mut h, Circuit::Closed, first) } else { None }
            }
            // Invocations let through before it opened end while it is open: counted in
            // the window, they move nothing.
            _ => None,
        };
        let health = match h.state {
            State::Closed if ones(h.failed, h.len) == 0 => HealthState::Healthy,
            State::Closed => HealthState::Degraded,
            _ => HealthState::Failing,
        };
        if health != h.health {
            h.health = health;
            out.health = Some(health);
        }
        out
    }

    /// Start afresh (a new module runs): an empty window, the breaker closed, the probation
    /// counters at zero; the breaker's state and the health before.
    pub fn reset(&self) -> (Circuit, HealthState) {
        let mut h = self.lock();
        let circuit = match h.state {
            State::Closed => Circuit::Closed,
            State::Open { .. } => Circuit::Open,
            State::HalfOpen { .. } => Circuit::HalfOpen,
        };
        let before = (circuit, h.health);
        *h = Inner::default_inner();
        before
    }

    /// The health last settled (stopped aside: the view knows the agent's status).
    pub fn state(&self) -> HealthState {
        self.lock().health
    }

    /// What the view shows at `now`; the probation's progress if `probation` runs.
    pub fn view(&self, now: Instant, probation: bool) -> HealthView {
        let h = self.lock();
        let (circuit, retry) = match h.state {
            State::Closed => (Circuit::Closed, None),
            // Past its interval, the next invocation is its probe: 0.
            State::Open { until } => (Circuit::Open, Some(until.saturating_duration_since(now))),
            State::HalfOpen { .. } => (Circuit::HalfOpen, None),
        };
        HealthView {
            circuit,
            // Rounded up: 0 only once the interval has passed (a probe sent then runs).
            circuit_retry_after_ms: retry.map(|d| u64::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)),
            circuit_opened_ms: (h.opened_ms > 0).then_some(h.opened_ms),
            window: WindowView {
                outcomes: u32::from(h.len),
                failures: ones(h.failed, h.len),
                agent_errors: ones(h.agent_errors, h.len),
                consecutive_failures: h.consecutive,
            },
            probation_progress: (probation && h.probation.0 != u32::MAX)
                .then_some(ProbationProgress { invocations: h.probation.0, failures: h.probation.1 }),
        }
    }
}

impl Inner {
    fn default_inner() -> Self {
        Inner {
            failed: 0,
            agent_errors: 0,
            len: 0,
            consecutive: 0,
            state: State::Closed,
            interval: Duration::ZERO,
            opened_ms: 0,
            health: HealthState::Healthy,
            probation: (0, 0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Supervision {
        Supervision {
            window: 10,
            consecutive_failures: 3,
            failure_ratio: 0.5,
            min_outcomes: 6,
            open_ms: 200,
            max_open_ms: 500,
            agent_errors_count: false,
        }
    }

    /// One invocation through `h` at `now` with `verdict`: what it changed, or the refusal.
    fn run(h: &Health, p: &Supervision, now: Instant, verdict: Verdict) -> Result<Settled, Refused> {
        let (ticket, _) = h.admit(now);
        Ok(ticket?.settle(p, None, verdict, now, 0))
    }

    #[tokio::test(start_paused = true)]
    async fn breaker_opens_half_opens_closes_and_reopens_longer() {
        let (h, p) = (Health::default(), policy());
        let t0 = tokio::time::Instant::now().into_std();
        assert_eq!(run(&h, &p, t0, Verdict::Failure).unwrap().health, Some(HealthState::Degraded));
        run(&h, &p, t0, Verdict::Failure).unwrap();
        let third = run(&h, &p, t0, Verdict::Failure).unwrap();
        assert_eq!(
            third.transition,
            Some(Transition { from: Circuit::Closed, to: Circuit::Open, open_for: Duration::from_millis(200) })
        );
        assert_eq!(third.health, Some(HealthState::Failing));
        // Open: refused at once, with the time left.
        tokio::time::advance(Duration::from_millis(150)).await;
        let now = tokio::time::Instant::now().into_std();
        assert_eq!(run(&h, &p, now, Verdict::Success).unwrap_err().retry_after, Duration::from_millis(50));
        assert_eq!(h.view(now, false).circuit_retry_after_ms, Some(50));

        // After the interval: one probe, and only one.
        tokio::time::advance(Duration::from_millis(50)).await;
        let now = tokio::time::Instant::now().into_std();
        let (probe, t) = h.admit(now);
        let probe = probe.unwrap();
        assert!(probe.is_probe());
        assert_eq!(t.map(|t| t.to), Some(Circuit::HalfOpen));
        assert_eq!(h.view(now, false).circuit, Circuit::HalfOpen);
        assert!(h.admit(now).0.is_err(), "a second invocation while the probe runs is refused");
        // The probe fails: open again, for twice as long.
        let s = probe.settle(&p, None, Verdict::Failure, now, 0);
        assert_eq!(
            s.transition,
            Some(Transition { from: Circuit::HalfOpen, to: Circuit::Open, open_for: Duration::from_millis(400) })
        );
        tokio::time::advance(Duration::from_millis(399)).await;
        assert!(h.admit(tokio::time::Instant::now().into_std()).0.is_err());
        tokio::time::advance(Duration::from_millis(1)).await;
        // Fails again: capped at max_open_ms.
        let s = run(&h, &p, tokio::time::Instant::now().into_std(), Verdict::Failure).unwrap();
        assert_eq!(s.transition.map(|t| t.open_for), Some(Duration::from_millis(500)));

        // The next probe succeeds: closed, a fresh window, healthy.
        tokio::time::advance(Duration::from_millis(500)).await;
        let now = tokio::time::Instant::now().into_std();
        let s = run(&h, &p, now, Verdict::Success).unwrap();
        assert_eq!(s.transition.map(|t| (t.from, t.to)), Some((Circuit::HalfOpen, Circuit::Closed)));
        assert_eq!(s.health, Some(HealthState::Healthy));
        let v = h.view(now, false);
        assert_eq!((v.circuit, v.window.outcomes, v.window.failures), (Circuit::Closed, 0, 0));
        // And it opens again from the first interval.
        for _ in 0..2 {
            assert_eq!(run(&h, &p, now, Verdict::Failure).unwrap().transition, None);
        }
        let s = run(&h, &p, now, Verdict::Failure).unwrap();
        assert_eq!(s.transition.map(|t| t.open_for), Some(Duration::from_millis(200)));
    }

    #[test]
    fn the_ratio_over_the_window_opens_it_once_the_window_holds_enough() {
        let (h, p) = (Health::default(), policy());
        let now = Instant::now();
        // Alternating: never three in a row; 3 of 5 is over half but under min_outcomes.
        for v in [Verdict::Failure, Verdict::Success, Verdict::Failure, Verdict::Success, Verdict::Failure] {
            assert_eq!(run(&h, &p, now, v).unwrap().transition, None);
        }
        let s = run(&h, &p, now, Verdict::Success).unwrap();
        assert_eq!(s.transition, None, "3 of 6 is not over the ratio on a success");
        let s = run(&h, &p, now, Verdict::Failure).unwrap();
        assert_eq!(s.transition.map(|t| t.to), Some(Circuit::Open), "4 of 7");
    }

    #[test]
    fn agent_errors_count_only_when_the_policy_says_so() {
        let now = Instant::now();
        let (h, p) = (Health::default(), policy());
        for _ in 0..10 {
            assert_eq!(run(&h, &p, now, Verdict::AgentError).unwrap().transition, None);
        }
        let v = h.view(now, false);
        assert_eq!((v.window.outcomes, v.window.failures, v.window.agent_errors), (10, 0, 10));
        assert_eq!(v.circuit, Circuit::Closed);
        assert_eq!(h.state(), HealthState::Healthy);

        let (h, p) = (Health::default(), Supervision { agent_errors_count: true, ..p });
        let opened: Vec<_> = (0..3).map(|_| run(&h, &p, now, Verdict::AgentError).unwrap().transition).collect();
        assert_eq!(opened[2].map(|t| t.to), Some(Circuit::Open));
    }

    #[test]
    fn the_window_forgets_outcomes_past_its_length() {
        let now = Instant::now();
        let (h, p) = (Health::default(), Supervision { consecutive_failures: 0, ..policy() });
        run(&h, &p, now, Verdict::Failure).unwrap();
        for _ in 0..9 {
            run(&h, &p, now, Verdict::Success).unwrap();
        }
        assert_eq!(h.view(now, false).window.failures, 1);
        let s = run(&h, &p, now, Verdict::Success).unwrap();
        assert_eq!(s.health, Some(HealthState::Healthy), "the failure left the window of 10");
        assert_eq!((h.view(now, false).window.outcomes, h.view(now, false).window.failures), (10, 0));
    }

    #[test]
    fn a_probe_dropped_unsettled_lets_another_through() {
        let now = Instant::now();
        let (h, p) = (Health::default(), Supervision { open_ms: 1, max_open_ms: 1, ..policy() });
        for _ in 0..3 {
            run(&h, &p, now, Verdict::Failure).unwrap();
        }
        let later = now + Duration::from_millis(1);
        let (first, _) = h.admit(later);
        assert!(first.unwrap().is_probe());
        let (second, _) = h.admit(later);
        assert!(second.unwrap().is_probe(), "the dropped probe gave its place");
    }

    #[test]
    fn a_failed_probation_is_reported_once() {
        let now = Instant::now();
        let (h, p) = (Health::default(), Supervision { consecutive_failures: 0, ..policy() });
        let prob = Probation { window_ms: 1000, failure_ratio: 0.5, min_invocations: 4, until_ms: 1000 };
        let mut failed = Vec::new();
        for v in [Verdict::Failure, Verdict::Success, Verdict::Failure, Verdict::Failure, Verdict::Failure] {
            let (t, _) = h.admit(now);
            failed.push(t.unwrap().settle(&p, Some(&prob), v, now, 10).probation_failed);
        }
        assert_eq!(failed, [None, None, None, Some((3, 4)), None]);
        // Past its end, nothing is judged.
        let h = Health::default();
        for _ in 0..5 {
            let (t, _) = h.admit(now);
            assert_eq!(t.unwrap().settle(&p, Some(&prob), Verdict::Failure, now, 1000).probation_failed, None);
        }
    }

    #[test]
    fn a_reset_closes_the_breaker_with_an_empty_window() {
        let now = Instant::now();
        let (h, p) = (Health::default(), policy());
        for _ in 0..3 {
            run(&h, &p, now, Verdict::Failure).unwrap();
        }
        assert_eq!(h.reset(), (Circuit::Open, HealthState::Failing));
        let v = h.view(now, false);
        assert_eq!((v.circuit, v.window.outcomes, h.state()), (Circuit::Closed, 0, HealthState::Healthy));
        assert!(h.admit(now).0.is_ok());
    }

    #[test]
    fn it_stays_small() {
        assert!(std::mem::size_of::<Health>() <= 96, "{} bytes", std::mem::size_of::<Health>());
    }
}
