//! Documents: JSON values in collections of the agent's tenant, each with a revision.
//!
//! The raw imports ([`get`], [`put`], [`delete`], [`list`], [`transact`]) take and return
//! JSON text. The helpers [`get_json`], [`put_json`] and [`update`] convert with `serde`.
//!
//! Every successful write bumps a document's revision by one. A write may name the
//! revision it expects (compare-and-swap): `Some(0)` means "the document must not exist",
//! `None` writes unconditionally.
//!
//! Only agents (world `agent`) may use this module: a tool that calls it imports
//! `cortex:agent/documents`, which the host refuses for tools.

use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::bindings::agent::cortex::agent::documents as raw;

pub use raw::{DeleteOp, Document, Op, Page, PutOp, Revision, delete, get, list, put, transact};

/// The error the host returns from a documents call (WIT `documents.error`).
///
/// None of these is a trap: the agent decides what to do. [`StoreError::code`] and
/// [`StoreError::detail`] split it into the WIT case name and its payload.
pub use raw::Error as StoreError;

/// How many times [`update`] reads and writes again after a conflict before it gives up.
pub const MAX_UPDATE_ATTEMPTS: usize = 64;

impl StoreError {
    /// The WIT case name: `conflict`, `invalid-key`, `too-large`, `invalid-value`,
    /// `quota-exceeded` or `unavailable`.
    ///
    /// ```
    /// use cortex_agent::documents::StoreError;
    /// assert_eq!(StoreError::InvalidKey("empty".into()).code(), "invalid-key");
    /// ```
    pub fn code(&self) -> &'static str {
        match self {
            Self::Conflict(_) => "conflict",
            Self::InvalidKey(_) => "invalid-key",
            Self::TooLarge(_) => "too-large",
            Self::InvalidValue(_) => "invalid-value",
            Self::QuotaExceeded(_) => "quota-exceeded",
            Self::Unavailable(_) => "unavailable",
        }
    }

    /// The case's payload as text; for a conflict, `current revision is N`.
    ///
    /// ```
    /// use cortex_agent::documents::StoreError;
    /// assert_eq!(StoreError::Conflict(0).detail(), "current revision is 0");
    /// assert_eq!(StoreError::TooLarge("value".into()).detail(), "value");
    /// ```
    pub fn detail(&self) -> String {
        match self {
            Self::Conflict(current) => format!("current revision is {current}"),
            Self::InvalidKey(d)
            | Self::TooLarge(d)
            | Self::InvalidValue(d)
            | Self::QuotaExceeded(d)
            | Self::Unavailable(d) => d.clone(),
        }
    }

    /// Whether retrying the same call later may succeed: `unavailable` only. (A
    /// `conflict` needs a fresh read first, which [`update`] does.)
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

/// The error of the JSON helpers: the store refused, or the JSON did not convert.
#[derive(Debug)]
pub enum Error {
    /// The host returned an error.
    Store(StoreError),
    /// A stored value did not decode into the requested type, or a value did not encode.
    Json(serde_json::Error),
}

impl Error {
    /// The store error, if this is one.
    pub fn as_store(&self) -> Option<&StoreError> {
        match self {
            Self::Store(err) => Some(err),
            Self::Json(_) => None,
        }
    }
}

impl fmt::Display for Error {
    /// ```
    /// use cortex_agent::documents::{Error, StoreError};
    /// let err = Error::Store(StoreError::Conflict(3));
    /// assert_eq!(err.to_string(), "documents: conflict: current revision is 3");
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Store(err) => write!(f, "documents: {}: {}", err.code(), err.detail()),
            Self::Json(err) => write!(f, "documents: JSON: {err}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Store(err) => Some(err),
            Self::Json(err) => Some(err),
        }
    }
}

impl From<StoreError> for Error {
    fn from(err: StoreError) -> Self {
        Self::Store(err)
    }
}

impl From<serde_json::Error> for Error {
    fn from(err: serde_json::Error) -> Self {
        Self::Json(err)
    }
}

/// Reads a document and decodes its JSON value: `Some((value, revision))`, or `None` if
/// it does not exist.
pub fn get_json<T: DeserializeOwned>(collection: &str, key: &str) -> Result<Option<(T, Revision)>, Error> {
    match get(collection, key)? {
        Some(doc) => Ok(Some((serde_json::from_str(&doc.value)?, doc.revision))),
        None => Ok(None),
    }
}

/// Encodes `value` as JSON and writes it; returns the new revision.
///
/// `expected`: `None` writes unconditionally, `Some(0)` only if the document does not
/// exist, `Some(n)` only if it is at revision `n` (otherwise
/// `Error::Store(StoreError::Conflict(current))`).
pub fn put_json<T: Serialize + ?Sized>(
    collection: &str,
    key: &str,
    value: &T,
    expected: Option<Revision>,
) -> Result<Revision, Error> {
    let text = serde_json::to_string(value)?;
    Ok(put(collection, key, &text, expected)?)
}

/// Read-modify-write with compare-and-swap: reads the document, computes the new value
/// with `f` (given `None` if it does not exist), and writes it expecting the revision it
/// read. On a conflict it reads again and calls `f` again, up to
/// [`MAX_UPDATE_ATTEMPTS`] times, then returns the last conflict. Between attempts it
/// waits a random time up to an exponentially growing bound (at most 32 ms), so that many
/// writers of one hot document do not keep colliding.
///
/// Returns the value written and its revision. `f` may run more than once, so it should
/// have no side effects. Concurrent updates of one document are never lost.
pub fn update<T, F>(collection: &str, key: &str, mut f: F) -> Result<(T, Revision), Error>
where
    T: Serialize + DeserializeOwned,
    F: FnMut(Option<T>) -> T,
{
    let mut last = StoreError::Conflict(0);
    for attempt in 0..MAX_UPDATE_ATTEMPTS {
        if attempt > 0 {
            backoff(attempt);
        }
        let (old, revision) = match get_json::<T>(collection, key)? {
            Some((value, revision)) => (Some(value), revision),
            None => (None, 0),
        };
        let new = f(old);
        match put_json(collection, key, &new, Some(revision)) {
            Ok(revision) => return Ok((new, revision)),
            Err(Error::Store(err @ StoreError::Conflict(_))) => last = err,
            Err(err) => return Err(err),
        }
    }
    Err(Error::Store(last))
}

/// Sleep a random time in `[0, min(2^attempt, 32)]` milliseconds ("full jitter").
fn backoff(attempt: usize) {
    use std::hash::{BuildHasher, Hasher};
    let bound_us = 1000u64 << attempt.min(5);
    // RandomState is seeded from the host's random source (wasi:random on wasm32-wasip2).
    let r = std::collections::hash_map::RandomState::new().build_hasher().finish();
    std::thread::sleep(std::time::Duration::from_micros(r % (bound_us + 1)));
}
