//! An agent's pool: at most `max_concurrency` of its invocations run at once, and up to
//! `queue` more wait for a slot, in arrival order, for at most `queue_timeout_ms` (and never
//! past their own deadline). A full queue refuses at once (`pool_full`), a wait that runs
//! out refuses then (`queue_timeout`).
//!
//! Small enough for every deployed agent: a few integers, and a queue that allocates only
//! while invocations wait. Uncontended, taking a slot is a load and one atomic update.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::grant::Grant;

/// Why an invocation did not get a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The queue is full.
    Full,
    /// It waited `queue_timeout_ms`, or until its deadline.
    Timeout,
}

/// One agent's running invocations and its queue.
#[derive(Debug)]
pub struct Pool {
    limit: u32,
    queue: u32,
    queue_timeout: Duration,
    running: AtomicU32,
    /// Invocations queued (changed under the queue's lock).
    waiting: AtomicU32,
    waiters: Mutex<VecDeque<Arc<Grant>>>,
}

impl Pool {
    /// `limit` at once (at least 1), `queue` waiting for at most `queue_timeout`.
    pub fn new(limit: u32, queue: u32, queue_timeout: Duration) -> Self {
        Self {
            limit: limit.max(1),
            queue,
            queue_timeout,
            running: AtomicU32::new(0),
            waiting: AtomicU32::new(0),
            waiters: Mutex::new(VecDeque::new()),
        }
    }

    /// Invocations running now.
    pub fn running(&self) -> u32 {
        self.running.load(Ordering::Relaxed)
    }

    /// Invocations waiting now.
    pub fn waiting(&self) -> u32 {
        self.waiting.load(Ordering::Relaxed)
    }

    /// A slot, at once or after waiting in the queue (until `queue_timeout_ms` or
    /// `deadline`, whichever comes first).
    pub async fn enter(&self, deadline: Option<Instant>) -> Result<PoolSlot<'_>, Refused> {
        if self.waiting.load(Ordering::SeqCst) == 0 && self.take() {
            return Ok(PoolSlot(self));
        }
        let until =
            deadline.map_or(Instant::now() + self.queue_timeout, |d| d.min(Instant::now() + self.queue_timeout));
        let mut cell: Option<Arc<Grant>> = None;
        let wait = std::future::poll_fn(|cx| {
            let g = match &cell {
                Some(g) => g,
                None => {
                    let mut w = self.lock();
                    if w.len() >= self.queue as usize {
                        return std::task::Poll::Ready(Err(Refused::Full));
                    }
                    let g = Grant::new(cx);
                    w.push_back(g.clone());
                    self.waiting.fetch_add(1, Ordering::SeqCst);
                    self.fill(&mut w);
                    cell.insert(g)
                }
            };
            if g.poll_given(cx) { std::task::Poll::Ready(Ok(())) } else { std::task::Poll::Pending }
        });
        let outcome = tokio::time::timeout_at(until.into(), wait).await;
        match outcome {
            Ok(Ok(())) => Ok(PoolSlot(self)),
            Ok(Err(refused)) => Err(refused),
            Err(_elapsed) => {
                let Some(g) = cell else { return Err(Refused::Timeout) };
                let mut w = self.lock();
                let before = w.len();
                w.retain(|x| !Arc::ptr_eq(x, &g));
                if w.len() < before {
                    self.waiting.fetch_sub(1, Ordering::SeqCst);
                    return Err(Refused::Timeout);
                }
                // Given the slot just as the wait ran out: it runs.
                Ok(PoolSlot(self))
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Arc<Grant>>> {
        self.waiters.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn take(&self) -> bool {
        self.running.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |r| (r < self.limit).then_some(r + 1)).is_ok()
    }

    /// Give free slots to the oldest waiters.
    fn fill(&self, w: &mut VecDeque<Arc<Grant>>) {
        while !w.is_empty() && self.take() {
            if let Some(g) = w.pop_front() {
                self.waiting.fetch_sub(1, Ordering::SeqCst);
                g.give();
            }
        }
    }

    fn release(&self) {
        self.running.fetch_sub(1, Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) != 0 {
            self.fill(&mut self.lock());
        }
    }
}

/// A running invocation's slot in its agent's pool; given back when dropped.
#[derive(Debug)]
pub struct PoolSlot<'a>(&'a Pool);

impl Drop for PoolSlot<'_> {
    fn drop(&mut self) {
        self.0.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn waits_in_order_then_refuses_when_full_or_too_long() {
        let p = Arc::new(Pool::new(1, 2, Duration::from_secs(10)));
        let held = p.enter(None).await.unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for i in 0..2 {
            let (p, tx) = (p.clone(), tx.clone());
            tokio::spawn(async move {
                let slot = p.enter(None).await;
                let _ = tx.send((i, slot.is_ok()));
                // Hold the slot a moment: the next one waits for it.
                tokio::task::yield_now().await;
            });
        }
        while p.waiting() < 2 {
            tokio::task::yield_now().await;
        }
        assert_eq!(p.enter(None).await.err(), Some(Refused::Full), "a third waiter does not fit");
        drop(held);
        assert_eq!(rx.recv().await, Some((0, true)), "the oldest waiter goes first");
        assert_eq!(rx.recv().await, Some((1, true)));
        // A wait bounded by the queue timeout, or by an earlier deadline.
        let held = p.enter(None).await.unwrap();
        let start = tokio::time::Instant::now();
        assert_eq!(p.enter(None).await.err(), Some(Refused::Timeout));
        assert!(start.elapsed() >= Duration::from_secs(10));
        let deadline = Instant::now() + Duration::from_secs(1);
        assert_eq!(p.enter(Some(deadline)).await.err(), Some(Refused::Timeout));
        assert_eq!((p.waiting(), p.running()), (0, 1));
        drop(held);
        assert_eq!(p.running(), 0);
        // No queue: refused at once.
        let p = Pool::new(1, 0, Duration::from_secs(10));
        let _held = p.enter(None).await.unwrap();
        assert_eq!(p.enter(None).await.err(), Some(Refused::Full));
    }
}
