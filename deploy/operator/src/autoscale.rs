//! The autoscaling decision: a pure function of the policy, the nodes' load as Cortex
//! reports it (`GET /v1/cluster`), the current replicas and the time of the last change.
//!
//! - A node's load is `max(in_flight, wasm_seconds_per_second) + queued + mailbox_weight ×
//!   mailbox`: the invocations it runs (the wasm time rate is their average over the last
//!   heartbeat, the in-flight count a sample of it), those waiting for a slot, and a share
//!   of the messages waiting in its mailboxes.
//! - Only live nodes count: a node that is down has no current figures, and its work moves
//!   to the others (so it shows in their load).
//! - The wanted replicas are `ceil(total / target_load_per_node)`. The replicas grow when
//!   the load per live node is above `target × scale_up_ratio`, and shrink when it is below
//!   `target × scale_down_ratio`; between the two nothing changes (hysteresis). They never
//!   shrink while fewer nodes are live than the Deployment has replicas (a node is
//!   starting or being replaced: its share of the work is not measured yet).
//! - No change within `cooldown_seconds` of the previous one, except bringing the
//!   replicas back within `[min, max]`, which is always done at once.

use crate::crd::{AutoscalingPolicy, ReplicaBounds};

/// One node's load, as read from Cortex.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeLoad {
    /// Whether it is live.
    pub live: bool,
    /// Invocations running.
    pub in_flight: u64,
    /// Invocations waiting for a slot.
    pub queued: u64,
    /// Messages waiting in mailboxes.
    pub mailbox: u64,
    /// Seconds inside guest invocations per second.
    pub wasm_seconds_per_second: f64,
}

impl NodeLoad {
    /// The node's load figure under `policy` (see the module docs).
    pub fn figure(&self, policy: &AutoscalingPolicy) -> f64 {
        (self.in_flight as f64).max(self.wasm_seconds_per_second)
            + self.queued as f64
            + policy.mailbox_weight * self.mailbox as f64
    }
}

/// What to do with the replicas.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Leave them as they are.
    Keep {
        /// Why.
        reason: String,
    },
    /// Set them to `to`.
    Scale {
        /// The new replicas.
        to: i32,
        /// Why.
        reason: String,
    },
}

impl Decision {
    /// Why.
    pub fn reason(&self) -> &str {
        match self {
            Decision::Keep { reason } | Decision::Scale { reason, .. } => reason,
        }
    }
}

/// The decision for `current` replicas given the nodes' load `observed`, the bounds,
/// `policy` (none: keep within the bounds only), the last change at `last_change_ms` and
/// the time `now_ms` (both ms since the epoch).
pub fn decide(
    bounds: &ReplicaBounds,
    policy: Option<&AutoscalingPolicy>,
    observed: &[NodeLoad],
    current: i32,
    last_change_ms: Option<u64>,
    now_ms: u64,
) -> Decision {
    let (min, max) = (bounds.min.max(1), bounds.max.max(bounds.min.max(1)));
    if current < min {
        return Decision::Scale { to: min, reason: format!("{current} replicas is below the minimum {min}") };
    }
    if current > max {
        return Decision::Scale { to: max, reason: format!("{current} replicas is above the maximum {max}") };
    }
    let Some(policy) = policy else {
        return Decision::Keep { reason: "no autoscaling policy: within the bounds".into() };
    };
    let live: Vec<&NodeLoad> = observed.iter().filter(|n| n.live).collect();
    if live.is_empty() {
        return Decision::Keep { reason: "no live node reports its load".into() };
    }
    let total: f64 = live.iter().map(|n| n.figure(policy)).sum();
    let per_node = total / live.len() as f64;
    let target = if policy.target_load_per_node > 0.0 { policy.target_load_per_node } else { 1.0 };
    let wanted = ((total / target).ceil() as i64).clamp(i64::from(min), i64::from(max)) as i32;
    let cooling =
        last_change_ms.is_some_and(|t| now_ms.saturating_sub(t) < policy.cooldown_seconds.saturating_mul(1000));
    let load = format!("load {total:.2} on {} live node(s), {per_node:.2} per node, target {target}", live.len());
    if per_node > target * policy.scale_up_ratio && wanted > current {
        if cooling {
            return Decision::Keep { reason: format!("{load}: would scale up to {wanted}, cooling down") };
        }
        return Decision::Scale { to: wanted, reason: format!("{load}: scale up") };
    }
    if per_node < target * policy.scale_down_ratio && wanted < current {
        if (live.len() as i64) < i64::from(current) {
            return Decision::Keep {
                reason: format!("{load}: would scale down, but only {} of {current} nodes are live", live.len()),
            };
        }
        if cooling {
            return Decision::Keep { reason: format!("{load}: would scale down to {wanted}, cooling down") };
        }
        return Decision::Scale { to: wanted, reason: format!("{load}: scale down") };
    }
    Decision::Keep { reason: format!("{load}: within the band") }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> AutoscalingPolicy {
        AutoscalingPolicy {
            target_load_per_node: 10.0,
            scale_up_ratio: 1.2,
            scale_down_ratio: 0.5,
            mailbox_weight: 0.1,
            cooldown_seconds: 60,
            interval_seconds: 15,
        }
    }

    fn bounds(min: i32, max: i32) -> ReplicaBounds {
        ReplicaBounds { min, max }
    }

    fn node(in_flight: u64) -> NodeLoad {
        NodeLoad { live: true, in_flight, ..NodeLoad::default() }
    }

    const NOW: u64 = 1_000_000_000;

    fn scale_to(d: &Decision) -> Option<i32> {
        match d {
            Decision::Scale { to, .. } => Some(*to),
            Decision::Keep { .. } => None,
        }
    }

    #[test]
    fn rising_load_scales_up_to_what_the_load_needs() {
        let p = policy();
        // Two nodes at 25 each: 50 in all, 5 nodes of 10.
        let d = decide(&bounds(1, 10), Some(&p), &[node(25), node(25)], 2, None, NOW);
        assert_eq!(scale_to(&d), Some(5), "{d:?}");
        // Queued work and mailbox backlog count too.
        let busy = NodeLoad { live: true, in_flight: 8, queued: 10, mailbox: 100, wasm_seconds_per_second: 3.0 };
        assert_eq!(busy.figure(&p), 28.0);
        let d = decide(&bounds(1, 10), Some(&p), &[busy], 1, None, NOW);
        assert_eq!(scale_to(&d), Some(3), "{d:?}");
        // The wasm time rate stands for the running invocations when it is the higher.
        let hot = NodeLoad { live: true, in_flight: 1, wasm_seconds_per_second: 30.0, ..NodeLoad::default() };
        assert_eq!(scale_to(&decide(&bounds(1, 10), Some(&p), &[hot], 1, None, NOW)), Some(3));
    }

    #[test]
    fn falling_load_scales_down_to_what_the_load_needs() {
        let p = policy();
        let d = decide(&bounds(1, 10), Some(&p), &[node(2), node(2), node(3), node(1)], 4, None, NOW);
        assert_eq!(scale_to(&d), Some(1), "{d:?}");
        // Idle: down to the minimum, not below.
        let d = decide(&bounds(2, 10), Some(&p), &[node(0), node(0), node(0)], 3, None, NOW);
        assert_eq!(scale_to(&d), Some(2), "{d:?}");
    }

    #[test]
    fn load_between_the_thresholds_changes_nothing() {
        let p = policy();
        // Flapping around the target: 9, 11, 8, 12 per node on 3 nodes stay within
        // [5, 12] (target × 0.5, target × 1.2): no change.
        for per_node in [9, 11, 8, 12, 6, 12] {
            let d = decide(&bounds(1, 10), Some(&p), &[node(per_node), node(per_node), node(per_node)], 3, None, NOW);
            assert_eq!(scale_to(&d), None, "{per_node}: {d:?}");
        }
    }

    #[test]
    fn cooldown_holds_a_change_until_it_ends() {
        let p = policy();
        let hot = [node(30), node(30)];
        let just = Some(NOW - 10_000);
        let d = decide(&bounds(1, 10), Some(&p), &hot, 2, just, NOW);
        assert_eq!(scale_to(&d), None, "{d:?}");
        assert!(d.reason().contains("cooling down"), "{d:?}");
        let long_ago = Some(NOW - 61_000);
        assert_eq!(scale_to(&decide(&bounds(1, 10), Some(&p), &hot, 2, long_ago, NOW)), Some(6));
        // Down too: a scale-up followed by a drop waits out the cool-down.
        let cold = [node(0), node(0), node(0), node(0), node(0), node(0)];
        assert_eq!(scale_to(&decide(&bounds(1, 10), Some(&p), &cold, 6, just, NOW)), None);
        assert_eq!(scale_to(&decide(&bounds(1, 10), Some(&p), &cold, 6, long_ago, NOW)), Some(1));
    }

    #[test]
    fn flapping_load_with_cooldown_changes_at_most_once_per_cooldown() {
        let p = policy();
        // Load alternates between hot and cold every 15 s for ten minutes.
        let (mut replicas, mut last, mut changes) = (2, None, 0);
        for step in 0..40u64 {
            let now = NOW + step * 15_000;
            let per_node = if step % 2 == 0 { 40 } else { 0 };
            let nodes: Vec<NodeLoad> = (0..replicas).map(|_| node(per_node)).collect();
            if let Decision::Scale { to, .. } = decide(&bounds(1, 10), Some(&p), &nodes, replicas, last, now) {
                if let Some(l) = last {
                    assert!(now - l >= 60_000, "a change {}s after the previous one", (now - l) / 1000);
                }
                replicas = to;
                last = Some(now);
                changes += 1;
            }
        }
        assert!(changes <= 10, "{changes} changes in ten minutes");
    }

    #[test]
    fn a_node_down_is_not_counted_and_does_not_shrink_the_cluster() {
        let p = policy();
        let down = NodeLoad { live: false, in_flight: 50, ..NodeLoad::default() };
        // Three replicas, one down (being replaced), two lightly loaded: no scale-down.
        let d = decide(&bounds(1, 10), Some(&p), &[node(2), node(2), down.clone()], 3, None, NOW);
        assert_eq!(scale_to(&d), None, "{d:?}");
        assert!(d.reason().contains("2 of 3"), "{d:?}");
        // The dead node's stale figures do not count; its work moved to the live ones,
        // whose load then asks for more nodes.
        let d = decide(&bounds(1, 10), Some(&p), &[node(20), node(20), down], 3, None, NOW);
        assert_eq!(scale_to(&d), Some(4), "{d:?}");
        // No live node at all: nothing is known, nothing changes.
        let gone = NodeLoad { live: false, ..NodeLoad::default() };
        assert_eq!(scale_to(&decide(&bounds(1, 10), Some(&p), &[gone], 3, None, NOW)), None);
    }

    #[test]
    fn replicas_stay_within_min_and_max() {
        let p = policy();
        // Far more load than max allows: max.
        assert_eq!(scale_to(&decide(&bounds(1, 4), Some(&p), &[node(500)], 1, None, NOW)), Some(4));
        // At max already: keep.
        assert_eq!(scale_to(&decide(&bounds(1, 4), Some(&p), &vec![node(500); 4], 4, None, NOW)), None);
        // Outside the bounds: brought back at once, cool-down or not, policy or not.
        let just = Some(NOW - 1);
        assert_eq!(scale_to(&decide(&bounds(2, 4), Some(&p), &[node(0)], 1, just, NOW)), Some(2));
        assert_eq!(scale_to(&decide(&bounds(2, 4), None, &[], 7, just, NOW)), Some(4));
        assert_eq!(scale_to(&decide(&bounds(2, 4), None, &[], 3, None, NOW)), None);
    }
}
