//! A slot handed to a waiting task: the one hand-off [`super::pool`] and
//! [`super::scheduler`] share. The giver sets it under its queue's lock and wakes the
//! waiter; the waiter reads it when polled.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Waker};

/// One waiter's cell: whether it was given a slot, and how to wake it.
#[derive(Debug)]
pub(super) struct Grant {
    given: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Grant {
    /// A cell for the task polled with `cx`.
    pub(super) fn new(cx: &Context<'_>) -> Arc<Self> {
        Arc::new(Self { given: AtomicBool::new(false), waker: Mutex::new(Some(cx.waker().clone())) })
    }

    /// Whether the slot was given; if not, `cx` is woken when it is.
    pub(super) fn poll_given(&self, cx: &Context<'_>) -> bool {
        if self.is_given() {
            return true;
        }
        let mut w = self.waker.lock().unwrap_or_else(PoisonError::into_inner);
        match w.as_mut() {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => *w = Some(cx.waker().clone()),
        }
        drop(w);
        // Given while the waker was swapped: seen now.
        self.is_given()
    }

    /// Whether the slot was given.
    pub(super) fn is_given(&self) -> bool {
        self.given.load(Ordering::Acquire)
    }

    /// Give the slot and wake the waiter (called under the giver's queue lock).
    pub(super) fn give(&self) {
        self.given.store(true, Ordering::Release);
        if let Some(w) = self.waker.lock().unwrap_or_else(PoisonError::into_inner).take() {
            w.wake();
        }
    }
}
