//! Checks on collection names and keys, done before any I/O.

use serde::{Deserialize, Serialize};

/// Size limits on what a guest may store. Checked before the store is touched.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeyLimits {
    /// Longest key, in bytes.
    pub max_key_bytes: usize,
    /// Longest collection name, in bytes.
    pub max_collection_bytes: usize,
    /// Largest document value (JSON text), in bytes.
    pub max_value_bytes: usize,
    /// Most documents one `list` call returns.
    pub max_list: u32,
    /// Most ops in one `transact`.
    pub max_transact_ops: usize,
    /// Most bytes of keys and values in one `list` page or `neighbours` answer; each
    /// invocation's budget is the smaller of this and an eighth of its memory limit.
    pub max_page_bytes: usize,
}

impl Default for KeyLimits {
    fn default() -> Self {
        Self {
            max_key_bytes: 512,
            max_collection_bytes: 64,
            max_value_bytes: 1 << 20,
            max_list: 1000,
            max_transact_ops: 128,
            max_page_bytes: 4 << 20,
        }
    }
}

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Empty name.
    #[error("{what} is empty")]
    Empty {
        /// "key" or "collection".
        what: &'static str,
    },
    /// Over the size limit.
    #[error("{what} is {len} bytes, over the limit of {max}")]
    TooLong {
        /// "key" or "collection".
        what: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A character outside the allowed set.
    #[error("{what} has a character outside {allowed}: {found:?}")]
    BadChar {
        /// "key" or "collection".
        what: &'static str,
        /// The allowed set, for the message.
        allowed: &'static str,
        /// The first offending character.
        found: char,
    },
}

impl NameError {
    /// Whether the refusal is about size (as opposed to content).
    pub fn is_size(&self) -> bool {
        matches!(self, NameError::TooLong { .. })
    }
}

fn check(what: &'static str, s: &str, max: usize, allowed: &'static str, ok: fn(u8) -> bool) -> Result<(), NameError> {
    if s.is_empty() {
        return Err(NameError::Empty { what });
    }
    if s.len() > max {
        return Err(NameError::TooLong { what, len: s.len(), max });
    }
    match s.chars().find(|c| !c.is_ascii() || !ok(*c as u8)) {
        Some(found) => Err(NameError::BadChar { what, allowed, found }),
        None => Ok(()),
    }
}

/// A collection name: 1 to `max` bytes of `[A-Za-z0-9_-]`.
pub fn check_collection(name: &str, limits: &KeyLimits) -> Result<(), NameError> {
    check("collection", name, limits.max_collection_bytes, "[A-Za-z0-9_-]", |b| {
        b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
    })
}

/// A document key: 1 to `max` bytes of `[A-Za-z0-9._:/-]`.
pub fn check_key(key: &str, limits: &KeyLimits) -> Result<(), NameError> {
    check("key", key, limits.max_key_bytes, "[A-Za-z0-9._:/-]", |b| {
        b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'/')
    })
}

/// A key prefix for listing: like a key, but may be empty.
pub fn check_prefix(prefix: &str, limits: &KeyLimits) -> Result<(), NameError> {
    if prefix.is_empty() { Ok(()) } else { check_key(prefix, limits) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_with_path_like_characters_are_accepted() {
        let l = KeyLimits::default();
        assert_eq!(check_key("orders/2024:01.a_b-c", &l), Ok(()));
        assert_eq!(check_collection("orders_v2-x", &l), Ok(()));
    }

    #[test]
    fn rejects_empty_long_and_foreign_characters() {
        let l = KeyLimits::default();
        assert_eq!(check_key("", &l), Err(NameError::Empty { what: "key" }));
        let long = "a".repeat(l.max_key_bytes + 1);
        assert!(check_key(&long, &l).is_err_and(|e| e.is_size()));
        assert!(matches!(check_key("a b", &l), Err(NameError::BadChar { found: ' ', .. })));
        assert!(matches!(check_key("é", &l), Err(NameError::BadChar { .. })));
        assert!(matches!(check_collection("a/b", &l), Err(NameError::BadChar { found: '/', .. })));
        assert!(matches!(check_key("a\0b", &l), Err(NameError::BadChar { .. })));
    }
}
