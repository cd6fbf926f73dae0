//! Module references: the one way a request names a module (get, delete, tag, deploy,
//! upgrade). A reference is
//!
//! - a full digest (64 lowercase hex characters);
//! - a unique prefix of one, at least [`MIN_PREFIX`] hex characters (several modules with
//!   that prefix: 409 `ambiguous_module_ref`, listing them);
//! - `name:tag`, the module that tag is on now;
//! - `name`, short for `name:latest`. A name that is also a hex string of 8 or more
//!   characters reads as a digest prefix: write `name:latest` then.
//!
//! An agent records the digest its reference resolved to: a tag that moves later does not
//! change a running agent.

use super::Agents;
use super::error::{AgentsError, AgentsResult};
use crate::names::{NameKind, check};
use crate::registry::module_meta::{TAG_RULE, valid_tag};
use crate::registry::{ModuleRecord, ModuleStatus, scoped};
use crate::store::RecordKind;

/// Shortest digest prefix a reference may use.
pub const MIN_PREFIX: usize = 8;

/// Length of a full digest (hex SHA-256).
pub const DIGEST_LEN: usize = 64;

/// Most candidates an `ambiguous_module_ref` error lists.
const MAX_LISTED: usize = 10;

/// The tag a bare `name` means.
pub const DEFAULT_TAG: &str = "latest";

/// A parsed module reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModuleRef<'a> {
    /// A full digest.
    Digest(&'a str),
    /// A digest prefix (at least [`MIN_PREFIX`], less than [`DIGEST_LEN`] characters).
    Prefix(&'a str),
    /// The module tagged `tag` among those named `name`.
    Tagged {
        /// The module name.
        name: &'a str,
        /// The tag.
        tag: &'a str,
    },
}

fn is_hex(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl<'a> ModuleRef<'a> {
    /// Read `reference`, or say what a reference may be.
    pub fn parse(reference: &'a str) -> AgentsResult<Self> {
        if is_hex(reference) && reference.len() == DIGEST_LEN {
            return Ok(Self::Digest(reference));
        }
        if is_hex(reference) && (MIN_PREFIX..DIGEST_LEN).contains(&reference.len()) {
            return Ok(Self::Prefix(reference));
        }
        let (name, tag) = reference.split_once(':').unwrap_or((reference, DEFAULT_TAG));
        if check(NameKind::Module, name).is_ok() && valid_tag(tag) {
            return Ok(Self::Tagged { name, tag });
        }
        let shown: String = reference.chars().take(80).collect();
        Err(AgentsError::Invalid(format!(
            "module reference {shown:?} is none of: a digest (64 hex characters), a digest prefix of at least \
             {MIN_PREFIX} hex characters, name:tag (tag {TAG_RULE}) or name (name:{DEFAULT_TAG})"
        )))
    }
}

impl std::fmt::Display for ModuleRef<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Digest(d) | Self::Prefix(d) => f.write_str(d),
            Self::Tagged { name, tag } => write!(f, "{name}:{tag}"),
        }
    }
}

impl Agents {
    /// The record of `tenant`'s module named by `reference` (see the module docs): the one
    /// resolution every route and the lifecycle use. 404 `not_found` when nothing matches,
    /// 409 `ambiguous_module_ref` for a prefix of several digests, 400 for a malformed one.
    pub async fn resolve_module(&self, tenant: &str, reference: &str) -> AgentsResult<ModuleRecord> {
        let r = ModuleRef::parse(reference)?;
        let not_found = || AgentsError::NotFound(format!("module {r} not found"));
        match r {
            ModuleRef::Digest(d) => self
                .registry
                .get::<ModuleRecord>(RecordKind::Module, &scoped(tenant, d))
                .await?
                .map(|(m, _)| m)
                .ok_or_else(not_found),
            ModuleRef::Prefix(p) => {
                let mut found = self.registry.list::<ModuleRecord>(RecordKind::Module, &scoped(tenant, p)).await?;
                match found.len() {
                    0 => Err(not_found()),
                    1 => Ok(found.remove(0)),
                    n => {
                        let listed: Vec<&str> = found.iter().take(MAX_LISTED).map(|m| m.digest.as_str()).collect();
                        Err(AgentsError::Conflict {
                            code: "ambiguous_module_ref",
                            message: format!(
                                "{n} modules have digests starting with {p}: {}; give more characters",
                                listed.join(", ")
                            ),
                        })
                    }
                }
            }
            ModuleRef::Tagged { name, tag } => {
                let all = self.registry.list::<ModuleRecord>(RecordKind::Module, &scoped(tenant, "")).await?;
                all.into_iter().find(|m| m.tags.iter().any(|t| t.name == name && t.tag == tag)).ok_or_else(not_found)
            }
        }
    }

    /// [`Self::resolve_module`], for an agent to run: 409 `module_not_ready` while it
    /// compiles (poll `GET /v1/modules/{digest}` until `ready`), 409 `module_failed` if its
    /// compilation failed.
    pub async fn ready_module(&self, tenant: &str, reference: &str) -> AgentsResult<ModuleRecord> {
        let m = self.resolve_module(tenant, reference).await?;
        match m.status {
            ModuleStatus::Ready => Ok(m),
            ModuleStatus::Compiling => Err(AgentsError::Conflict {
                code: "module_not_ready",
                message: format!(
                    "module {} is still compiling; poll GET /v1/modules/{} until its status is ready",
                    m.digest, m.digest
                ),
            }),
            ModuleStatus::Failed => Err(AgentsError::Conflict {
                code: "module_failed",
                message: format!(
                    "module {} failed to compile: {}",
                    m.digest,
                    m.error.as_ref().map_or_else(String::new, |e| format!("{}: {}", e.code, e.message))
                ),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_by_their_shape() {
        let full = "a".repeat(64);
        assert_eq!(ModuleRef::parse(&full).unwrap(), ModuleRef::Digest(&full));
        assert_eq!(ModuleRef::parse("0123abcd").unwrap(), ModuleRef::Prefix("0123abcd"));
        assert_eq!(ModuleRef::parse("hello:v2").unwrap(), ModuleRef::Tagged { name: "hello", tag: "v2" });
        assert_eq!(ModuleRef::parse("hello").unwrap(), ModuleRef::Tagged { name: "hello", tag: "latest" });
        // A short hex string that is a name is a name; one too short and not a name is refused.
        assert_eq!(ModuleRef::parse("abc").unwrap(), ModuleRef::Tagged { name: "abc", tag: "latest" });
        for bad in ["0123", "", "Hello", "hello:", "hello:V2", ":v2", &"a".repeat(65), "a/b"] {
            assert!(matches!(ModuleRef::parse(bad), Err(AgentsError::Invalid(_))), "{bad:?}");
        }
    }
}
