//! OCI references: `host[:port]/namespace/name[:tag][@sha256:<hex>]`, the registry always
//! named (no default registry: a reference means the same thing everywhere).

use super::error::{OciError, OciResult};

/// A parsed reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// `host` or `host:port`.
    pub registry: String,
    /// The repository path, e.g. `team/hello`.
    pub repository: String,
    /// The tag, if given.
    pub tag: Option<String>,
    /// The pinned manifest digest (`sha256:<hex>`), if given.
    pub digest: Option<String>,
}

/// Longest reference taken.
const MAX_LEN: usize = 512;

fn invalid(s: &str, why: &str) -> OciError {
    OciError::InvalidReference(format!("{s:?} is not an OCI reference (host[:port]/name[:tag][@sha256:<hex>]): {why}"))
}

fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    !b.is_empty()
        && b.iter().all(|&x| x.is_ascii_lowercase() || x.is_ascii_digit() || b"._-".contains(&x))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    (1..=128).contains(&b.len())
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter().all(|&x| x.is_ascii_alphanumeric() || b"._-".contains(&x))
}

/// Whether `d` is `sha256:` and 64 lower-case hex digits (the one algorithm taken).
pub(super) fn valid_digest(d: &str) -> bool {
    d.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|x| x.is_ascii_digit() || (b'a'..=b'f').contains(&x)))
}

fn valid_registry(r: &str) -> bool {
    let (host, port) = match r.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (r, None),
    };
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .split('.')
            .all(|l| !l.is_empty() && l.bytes().all(|x| x.is_ascii_alphanumeric() || x == b'-') && !l.starts_with('-'));
    host_ok && port.is_none_or(|p| p.parse::<u16>().is_ok_and(|n| n > 0))
}

impl Reference {
    /// Parse `s`, with or without the `oci://` scheme.
    pub fn parse(s: &str) -> OciResult<Self> {
        let raw = s.strip_prefix("oci://").unwrap_or(s);
        if raw.len() > MAX_LEN {
            return Err(invalid(&s[..64.min(s.len())], "too long"));
        }
        let (rest, digest) = match raw.split_once('@') {
            Some((r, d)) if valid_digest(d) => (r, Some(d.to_owned())),
            Some(_) => return Err(invalid(s, "the digest must be sha256: and 64 lower-case hex digits")),
            None => (raw, None),
        };
        let (registry, path) = rest.split_once('/').ok_or_else(|| invalid(s, "no registry host"))?;
        if !valid_registry(registry) {
            return Err(invalid(s, "bad registry host"));
        }
        // A tag follows the last `:` of the last path segment.
        let (repository, tag) = match path.rsplit_once(':') {
            Some((p, t)) if !t.contains('/') => (p, Some(t.to_owned())),
            _ => (path, None),
        };
        if !repository.split('/').all(valid_component) {
            return Err(invalid(s, "bad repository name (lower-case letters, digits, . _ -)"));
        }
        if let Some(t) = &tag
            && !valid_tag(t)
        {
            return Err(invalid(s, "bad tag"));
        }
        if tag.is_none() && digest.is_none() {
            return Err(invalid(s, "give a tag or a digest"));
        }
        Ok(Self { registry: registry.to_owned(), repository: repository.to_owned(), tag, digest })
    }

    /// What to ask the registry for: the digest when pinned, else the tag.
    pub fn target(&self) -> &str {
        self.digest.as_deref().or(self.tag.as_deref()).unwrap_or("latest")
    }

    /// The host, without the port.
    pub fn host(&self) -> &str {
        self.registry.rsplit_once(':').map_or(self.registry.as_str(), |(h, _)| h)
    }

    /// Whether the registry is this machine (127.0.0.1, localhost): plain http is taken for it.
    pub fn is_loopback(&self) -> bool {
        matches!(self.host(), "127.0.0.1" | "localhost")
    }

    /// The same repository pinned to `digest`.
    pub fn pinned(&self, digest: &str) -> Reference {
        Reference { tag: None, digest: Some(digest.to_owned()), ..self.clone() }
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn references_parse_with_port_tag_and_digest_and_print_back() {
        let r = Reference::parse("oci://127.0.0.1:5000/team/hello:v1").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("127.0.0.1:5000", "team/hello", Some("v1"))
        );
        assert_eq!(r.target(), "v1");
        assert!(r.is_loopback());
        let pinned = Reference::parse(&format!("ghcr.io/a/b:v2@{D}")).unwrap();
        assert_eq!(pinned.target(), D);
        assert_eq!(pinned.host(), "ghcr.io");
        assert_eq!(pinned.to_string(), format!("ghcr.io/a/b:v2@{D}"));
        assert_eq!(Reference::parse(&format!("r.io/x@{D}")).unwrap().tag, None);
    }

    #[test]
    fn malformed_references_are_refused_with_the_reason() {
        for bad in [
            "hello:v1",
            "r.io/Hello:v1",
            "r.io/hello",
            "r.io/hello:",
            "r.io/hello@sha256:abc",
            "r.io/hello@md5:0123",
            "r.io:99999/hello:v1",
            "r.io/-x:v1",
            "r.io//x:v1",
            "r.io/x:v1:v2",
            "us er@r.io/x:v1",
        ] {
            let e = Reference::parse(bad).unwrap_err();
            assert_eq!(e.code(), "oci_invalid_reference", "{bad}");
        }
    }
}
