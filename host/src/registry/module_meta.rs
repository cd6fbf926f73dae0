//! What a module record says besides its shape: its compile status (an upload compiles at
//! once, or in the background when it is large) and the `name:tag`s it can be referred to by.

use serde::{Deserialize, Serialize};

/// Where a module's compilation stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ModuleStatus {
    /// Compiled and admitted: agents may run it.
    #[default]
    Ready,
    /// Uploaded, compiling in the background; its shape is not known yet.
    Compiling,
    /// Its compilation or admission failed (see the record's `error`).
    Failed,
}

/// Why a module failed to compile or was refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ModuleFailure {
    /// The stable code (as a synchronous upload would answer it, e.g. `compile_timeout`).
    pub code: String,
    /// What went wrong.
    pub message: String,
}

/// A name and tag on a module: `name:tag` refers to it until the tag moves to a newer
/// upload. A module may carry several (the same bytes deployed under two names).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ModuleTag {
    /// The module name (the one name rule).
    pub name: String,
    /// The tag.
    pub tag: String,
    /// Who put it there (token subject, or `key:<id>`).
    pub by: String,
    /// When (ms since the epoch).
    pub at_ms: u64,
}

/// The rule tags follow, as shown in errors.
pub const TAG_RULE: &str = "[a-z0-9][a-z0-9._-]{0,63}";

/// Whether `tag` follows [`TAG_RULE`].
pub fn valid_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    (1..=64).contains(&b.len())
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_follow_the_rule() {
        for ok in ["latest", "v2", "1.0.3", "rc_1-b", &"a".repeat(64)] {
            assert!(valid_tag(ok), "{ok}");
        }
        for bad in ["", "V2", "-x", ".x", "a:b", "a/b", &"a".repeat(65), "é"] {
            assert!(!valid_tag(bad), "{bad}");
        }
    }
}
