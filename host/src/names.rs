//! Names of agents, tenants, resource profiles and modules: one rule, `[a-z][a-z0-9-]{0,62}`,
//! checked once where a name enters (a request body or path, a guest's import call).
//!
//! An agent name is an [`AgentName`], made only by [`AgentName::parse`] (or `TryFrom`, or
//! deserializing, which checks it): whatever holds one holds a checked name. Tenant and
//! profile names follow the same rule through [`check`].

use std::fmt;
use std::ops::Deref;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The rule, as shown in errors.
pub const NAME_RULE: &str = "[a-z][a-z0-9-]{0,62}";

/// Longest name, in bytes.
pub const MAX_NAME: usize = 63;

/// Longest part of a refused name an error repeats, in bytes (a guest may pass megabytes).
const ECHO: usize = 64;

/// What a name names, for its error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameKind {
    /// An agent.
    Agent,
    /// A tenant.
    Tenant,
    /// A resource profile.
    Profile,
    /// A module (its name, tagged `name:tag`).
    Module,
}

impl fmt::Display for NameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Agent => "agent",
            Self::Tenant => "tenant",
            Self::Profile => "profile",
            Self::Module => "module",
        })
    }
}

/// A name that breaks the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} name {name:?} must match {NAME_RULE}")]
pub struct NameError {
    kind: NameKind,
    /// The refused name, cut to its first [`ECHO`] bytes.
    name: String,
}

impl NameError {
    /// What the refused name named.
    pub fn kind(&self) -> NameKind {
        self.kind
    }
}

/// Whether `name` matches `[a-z][a-z0-9-]{0,62}`.
pub fn is_valid(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() <= MAX_NAME
        && b.first().is_some_and(u8::is_ascii_lowercase)
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// `name`, a `kind` name, if it matches the rule.
pub fn check(kind: NameKind, name: &str) -> Result<(), NameError> {
    if is_valid(name) {
        return Ok(());
    }
    let mut end = name.len().min(ECHO);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    Err(NameError { kind, name: name[..end].to_owned() })
}

/// A checked agent name: it matches [`NAME_RULE`]. Serialized, shown and debugged as the
/// plain string.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AgentName(String);

/// In the OpenAPI document: a string matching [`NAME_RULE`].
impl utoipa::PartialSchema for AgentName {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some(format!("^{NAME_RULE}$")))
            .description(Some("A name (of an agent, a tenant or a profile)"))
            .into()
    }
}

impl utoipa::ToSchema for AgentName {}

impl AgentName {
    /// `name`, if it is an agent name.
    pub fn parse(name: &str) -> Result<Self, NameError> {
        check(NameKind::Agent, name)?;
        Ok(Self(name.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name, as a `String`.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl TryFrom<String> for AgentName {
    type Error = NameError;

    fn try_from(name: String) -> Result<Self, NameError> {
        check(NameKind::Agent, &name)?;
        Ok(Self(name))
    }
}

impl From<AgentName> for String {
    fn from(name: AgentName) -> String {
        name.0
    }
}

impl Deref for AgentName {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for AgentName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AgentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for AgentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl Serialize for AgentName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for AgentName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::try_from(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule_at_its_edges() {
        let longest = format!("a{}", "b".repeat(62));
        for good in ["a", "pricing", "a-1", "a-", "z9-9", longest.as_str()] {
            assert!(is_valid(good), "{good:?}");
            assert_eq!(AgentName::parse(good).map(String::from).as_deref(), Ok(good));
        }
        let too_long = format!("{longest}c");
        assert_eq!(too_long.len(), 64);
        for bad in [
            "",
            "A",
            "Pricing",
            "pRicing",
            "1a",
            "-a",
            "_a",
            "a_b",
            "a.b",
            "a/b",
            "../x",
            "a b",
            "é",
            "aé",
            too_long.as_str(),
        ] {
            assert!(!is_valid(bad), "{bad:?}");
            let e = AgentName::parse(bad).unwrap_err();
            assert_eq!(e.kind(), NameKind::Agent);
            assert!(e.to_string().contains(NAME_RULE), "{e}");
        }
    }

    #[test]
    fn an_error_names_the_kind_and_echoes_a_bounded_prefix() {
        let e = check(NameKind::Tenant, "Acme").unwrap_err();
        assert_eq!(e.to_string(), r#"tenant name "Acme" must match [a-z][a-z0-9-]{0,62}"#);
        let e = check(NameKind::Profile, &"é".repeat(1000)).unwrap_err();
        assert!(e.to_string().starts_with("profile name "), "{e}");
        assert!(e.to_string().len() < 200, "{e}");
    }

    #[test]
    fn deserializing_checks_and_serializing_is_the_plain_string() {
        let n: AgentName = serde_json::from_str(r#""svc-1""#).unwrap();
        assert_eq!(&*n, "svc-1");
        assert_eq!(format!("{n} {n:?}"), r#"svc-1 "svc-1""#);
        assert_eq!(serde_json::to_string(&n).unwrap(), r#""svc-1""#);
        let e = serde_json::from_str::<AgentName>(r#""Svc""#).unwrap_err();
        assert!(e.to_string().contains(r#"agent name "Svc" must match"#), "{e}");
        assert!(AgentName::try_from("9lives".to_owned()).is_err());
    }
}
