//! The supervisor of background tasks (change-feed dispatchers, mailboxes, the mailbox
//! sweep): a task that panics is started again after an exponential backoff with jitter,
//! and counted; a task that ends (its agent is gone or stopped, or it was asked to stop)
//! is not.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Weak;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use tokio::task::JoinHandle;

use super::Host;

/// First wait before a restart; doubled for each restart in a row, up to [`MAX_BACKOFF`].
const BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait before a restart.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A run that lasted this long was healthy: the next restart waits [`BACKOFF`] again.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// The wait before restart number `restarts` (1-based): `BACKOFF * 2^(restarts-1)`, capped,
/// then a random part of it taken off (full jitter over the upper half), so that tasks that
/// failed together do not start again together.
pub fn backoff(restarts: u32) -> Duration {
    let base = BACKOFF.saturating_mul(1u32 << restarts.saturating_sub(1).min(16)).min(MAX_BACKOFF);
    let r = crate::secrets::random_bytes::<4>().map_or(0, u32::from_le_bytes);
    let half = base / 2;
    half + half.mul_f64(f64::from(r) / f64::from(u32::MAX))
}

/// Run `make()` in a task, and again each time it panics (after [`backoff`]), telling
/// `host` (`task_restarted(kind)`) each time. It ends when a run ends normally, or when the
/// host is gone. The run is polled inside the returned task (a panic is caught there), so
/// aborting the task drops the run at once, and awaiting it after the abort waits until
/// the run is gone.
pub fn supervise<F, Fut>(host: Weak<dyn Host>, kind: &'static str, make: F) -> JoinHandle<()>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        let mut restarts = 0u32;
        loop {
            let started = Instant::now();
            let Err(panic) = AssertUnwindSafe(make()).catch_unwind().await else { return };
            let Some(h) = host.upgrade() else { return };
            h.task_restarted(kind);
            drop(h);
            restarts = if started.elapsed() >= HEALTHY_RUN { 1 } else { restarts.saturating_add(1) };
            let wait = backoff(restarts);
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(kind, panic = %what, restarts, wait_ms = wait.as_millis() as u64,
                "background task panicked; restarting it");
            tokio::time::sleep(wait).await;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_up_to_its_cap_with_jitter() {
        for (n, base) in [(1, BACKOFF), (2, BACKOFF * 2), (3, BACKOFF * 4), (40, MAX_BACKOFF)] {
            for _ in 0..20 {
                let d = backoff(n);
                assert!(d >= base / 2 && d <= base, "restart {n}: {d:?} outside {:?}..={base:?}", base / 2);
            }
        }
        let spread: std::collections::HashSet<Duration> = (0..20).map(|_| backoff(5)).collect();
        assert!(spread.len() > 1, "no jitter: {spread:?}");
    }
}
