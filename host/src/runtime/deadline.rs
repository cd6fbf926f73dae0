//! A deadline armed only when it can matter.
//!
//! Most invocations (and most request bodies) finish on their first poll: a guest that does
//! not yield runs to its end inside one poll of its fiber, and a small body arrives with the
//! request head. Arming a timer for those costs a timer-wheel insert and removal (and often
//! a wake-up of the thread parked on the timer driver) for nothing. [`within`] polls once
//! without a timer and arms `deadline` only if the future is still pending; the deadline is
//! absolute, so the bound is the same either way.

use std::future::Future;
use std::pin::pin;
use std::task::Poll;

use tokio::time::Instant;

/// `fut`'s output, or `None` if `deadline` passed first.
pub async fn within<F: Future>(deadline: Instant, fut: F) -> Option<F::Output> {
    let mut fut = pin!(fut);
    let first = std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await;
    match first {
        Poll::Ready(out) => Some(out),
        Poll::Pending => tokio::time::timeout_at(deadline, fut).await.ok(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_ready_future_needs_no_timer_and_a_pending_one_is_cut_at_the_deadline() {
        // Ready at once, even with a deadline already passed: nothing was left to bound.
        assert_eq!(within(Instant::now(), async { 7 }).await, Some(7));
        // Pending past the deadline: cut.
        let start = Instant::now();
        let slow = tokio::time::sleep(Duration::from_secs(30));
        assert_eq!(within(start + Duration::from_millis(20), slow).await, None);
        assert!(start.elapsed() < Duration::from_secs(5));
        // Pending, then ready before the deadline: its output.
        let soon = async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            "done"
        };
        assert_eq!(within(Instant::now() + Duration::from_secs(30), soon).await, Some("done"));
    }
}
