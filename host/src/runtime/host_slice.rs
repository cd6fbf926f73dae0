//! Yield points for guests that spend their time in host calls.
//!
//! A guest yields to the executor at every fuel slice ([`super::FUEL_SLICE`]) and epoch
//! tick, and the node's scheduler can hand its slot over only at such a yield. Host calls
//! burn little fuel: a guest reading hundreds of documents, each read inline on the async
//! worker, could hold its worker and its slot for the whole invocation. So its Cortex host
//! calls are counted in slices too ([`HOST_CALL_SLICE`] calls each), and when a host call
//! ends a slice the runtime moves the store's epoch deadline to now: the guest's next
//! epoch check (a function entry or a loop header) runs the epoch callback, which yields
//! like at a tick. Nothing is charged for it: the fuel a guest burns does not change.

use wasmtime::{CallHook, Store};

use super::Sandbox;

/// Cortex host calls a guest makes between two yields (a point read of the embedded store
/// takes a few microseconds, so a slice is well under a fuel slice's millisecond).
pub const HOST_CALL_SLICE: u64 = 16;

/// Counts an invocation's host calls into slices.
#[derive(Debug, Clone, Copy)]
pub struct HostCallSlices {
    every: u64,
    next: u64,
}

impl HostCallSlices {
    /// Slices of `every` host calls (at least 1).
    pub fn new(every: u64) -> Self {
        let every = every.max(1);
        Self { every, next: every }
    }

    /// A host call returned, with `count` calls made so far: whether it ended a slice
    /// (the guest should yield now).
    pub fn ended(&mut self, count: u64) -> bool {
        if count < self.next {
            return false;
        }
        self.next = count.saturating_add(self.every);
        true
    }
}

/// Make the guest of `store` yield after each slice of its host calls (the store must
/// have epoch interruption on, with a callback that yields).
pub(super) fn install(store: &mut Store<Sandbox>) {
    store.call_hook(|mut cx, hook| {
        if matches!(hook, CallHook::ReturningFromHost) {
            let s = cx.data_mut();
            if s.slices.ended(s.host.calls.count) {
                cx.set_epoch_deadline(0);
            }
        }
        Ok(())
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_slice_of_host_calls_ends_with_one_yield() {
        let mut s = HostCallSlices::new(16);
        // Returns from WASI calls and libcalls (the count does not move) never yield.
        let yields: Vec<u64> = (0..=100u64).flat_map(|n| [n, n]).filter(|&n| s.ended(n)).collect();
        assert_eq!(yields, [16, 32, 48, 64, 80, 96]);
        // A count that jumps (calls made while nested) yields once, then a whole slice later.
        let mut s = HostCallSlices::new(16);
        assert!(s.ended(40) && !s.ended(55) && s.ended(56));
        let mut one = HostCallSlices::new(0);
        assert!(one.ended(1) && one.ended(2), "a slice is at least one call");
    }
}
