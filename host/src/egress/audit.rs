//! Audit events of denied outbound requests, bounded per agent: at most
//! `[egress] audit_denials_per_minute` events in a window of a minute that starts at an
//! agent's first denial. The denials past that are counted, not written; the count goes in
//! the agent's next denial event (`suppressed=N`), or, when the window ends first, in one
//! summary event (`egress_denied_suppressed`) written by the node's periodic flush (and at
//! shutdown). A guest looping on denied requests writes at most that many events a minute,
//! plus one summary; every denial is still counted in the metrics.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// One agent's window.
#[derive(Debug)]
struct Window {
    start: Instant,
    written: u32,
    suppressed: u64,
}

/// The denial windows of every agent that had a denial lately.
#[derive(Debug)]
pub(super) struct DenialLog {
    per_window: u32,
    window: Duration,
    agents: Mutex<HashMap<(String, String), Window>>,
}

impl DenialLog {
    /// At most `per_minute` events per agent per minute.
    pub(super) fn new(per_minute: u32) -> Self {
        Self { per_window: per_minute, window: Duration::from_secs(60), agents: Mutex::default() }
    }

    /// Whether a denial of `agent` of `tenant` at `now` is written: `Some(n)`, `n` the
    /// denials not written since the agent's last event; `None`: not written, counted.
    pub(super) fn admit(&self, tenant: &str, agent: &str, now: Instant) -> Option<u64> {
        let mut m = self.agents.lock().unwrap_or_else(PoisonError::into_inner);
        let w =
            m.entry((tenant.to_owned(), agent.to_owned())).or_insert(Window { start: now, written: 0, suppressed: 0 });
        if now.duration_since(w.start) >= self.window {
            w.start = now;
            w.written = 0;
        }
        if w.written < self.per_window {
            w.written += 1;
            Some(std::mem::take(&mut w.suppressed))
        } else {
            w.suppressed += 1;
            None
        }
    }

    /// The windows that ended by `now` (every window when `all`), forgotten; those with
    /// denials not written yet as `(tenant, agent, count)`.
    pub(super) fn drain(&self, now: Instant, all: bool) -> Vec<(String, String, u64)> {
        let mut out = Vec::new();
        let mut m = self.agents.lock().unwrap_or_else(PoisonError::into_inner);
        m.retain(|(t, a), w| {
            if all || now.duration_since(w.start) >= self.window {
                if w.suppressed > 0 {
                    out.push((t.clone(), a.clone(), w.suppressed));
                }
                false
            } else {
                true
            }
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loop_of_denials_writes_a_bounded_number_of_events_and_counts_the_rest() {
        let log = DenialLog::new(10);
        let t0 = Instant::now();
        let written: Vec<u64> = (0..1000).filter_map(|_| log.admit("t", "a", t0)).collect();
        assert_eq!(written, vec![0; 10]);
        // Another agent has its own window.
        assert_eq!(log.admit("t", "b", t0), Some(0));
        // The next window's first event carries the count.
        assert_eq!(log.admit("t", "a", t0 + Duration::from_secs(61)), Some(990));
        assert!(log.drain(t0 + Duration::from_secs(61), false).is_empty(), "b had nothing suppressed");
        for _ in 0..20 {
            log.admit("t", "a", t0 + Duration::from_secs(62));
        }
        assert_eq!(log.drain(t0 + Duration::from_secs(62), true), vec![("t".into(), "a".into(), 11)]);
    }
}
