//! How a host function fails: a typed WIT error the guest handles, or a trap.
//!
//! Each interface names its own `Fault<wit::Error>` as the bindings' trappable error type,
//! with one `From<StoreError>` beside it that decides, in one place, which store failures
//! the guest sees as its interface's `error` and which end the invocation. Host functions
//! then return their refusals, store errors and spent budgets alike through `?`.

/// A refusal the guest handles, or a trap.
#[derive(Debug)]
pub enum Fault<E> {
    /// The guest sees its interface's `error`.
    Refused(E),
    /// The invocation ends (a spent host-call budget, a store broken for good).
    Trap(wasmtime::Error),
}

impl<E> Fault<E> {
    /// What the bindings hand the guest: its typed error, or the trap.
    pub fn into_wit(self) -> wasmtime::Result<E> {
        match self {
            Fault::Refused(e) => Ok(e),
            Fault::Trap(t) => Err(t),
        }
    }
}

impl<E> From<wasmtime::Error> for Fault<E> {
    fn from(t: wasmtime::Error) -> Self {
        Fault::Trap(t)
    }
}

/// What the guest is told when the store fails for a moment.
pub(crate) const UNAVAILABLE: &str = "storage is temporarily unavailable; retry later";
