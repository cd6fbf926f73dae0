//! Egress grants: the destinations a deploy spec lets an agent reach, and the tenant-wide
//! allow-list that grants may not exceed.
//!
//! A grant is a URL prefix (`https://api.example.com/v1/`): scheme, host and port must be
//! equal and the request's path must start with the grant's path, at a segment boundary
//! when the grant's path does not end with `/`. A request path with a `.` or `..` segment
//! (also percent-encoded) never matches: a server could resolve it outside the prefix.

use serde::{Deserialize, Serialize};

/// Most grants one agent may have.
pub const MAX_GRANTS: usize = 32;
/// Most entries of a tenant's allow-list.
pub const MAX_ALLOW: usize = 64;
/// Longest grant URL.
const MAX_URL: usize = 2048;

/// How the host meters the responses of a grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Meter {
    /// OpenAI-compatible `usage` (`prompt_tokens`, `completion_tokens`), in a JSON body or
    /// in the events of a `text/event-stream`.
    Openai,
}

/// What the host does with a redirect (301, 302, 303, 307, 308) answered to a grant's
/// request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Redirects {
    /// Hand it to the agent as it is (the default): the request the agent makes next is
    /// checked like any other.
    #[default]
    Return,
    /// Follow it in the host, up to `[egress] max_redirects` hops, only to targets the same
    /// grant allows (scheme, host, port, path prefix, method); a redirect anywhere else is
    /// denied (`HTTP-request-denied`). A 307 or 308 is followed only when the request body
    /// was at most 64 KiB (the host keeps that much to send again); a longer one is handed
    /// to the agent as it is.
    Follow,
}

/// One allowed destination of an agent, as its deploy spec lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EgressGrant {
    /// `http(s)://host[:port]/path-prefix`: no user info, query or fragment.
    pub url: String,
    /// Allowed methods (default `GET` and `HEAD`).
    #[serde(default = "default_methods")]
    pub methods: Vec<String>,
    /// The tenant secret the host puts in `header` (the agent never sees it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// The header that carries the secret (default `authorization`); the agent's own value
    /// of it is replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// The header's value, `{}` standing for the secret (default `Bearer {}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// Count model tokens of the responses against the tenant's daily budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meter: Option<Meter>,
    /// `return` (default): redirects go back to the agent; `follow`: the host follows them
    /// within this grant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirects: Option<Redirects>,
}

fn default_methods() -> Vec<String> {
    vec!["GET".into(), "HEAD".into()]
}

/// Why a grant or an allow-list entry is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct GrantError(pub String);

/// `http` or `https`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// Plain HTTP.
    Http,
    /// HTTP over TLS.
    Https,
}

impl Scheme {
    /// The scheme of `uri`, if it is `http` or `https`.
    pub fn of(uri: &http::Uri) -> Option<Scheme> {
        match uri.scheme_str() {
            Some("https") => Some(Scheme::Https),
            Some("http") => Some(Scheme::Http),
            _ => None,
        }
    }

    /// The scheme's default port.
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }

    /// `http` or `https`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// A URL prefix: scheme, host (lower case, IPv6 without brackets), port, path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prefix {
    /// The scheme.
    pub scheme: Scheme,
    /// The host.
    pub host: String,
    /// The port (the scheme's default when the URL names none).
    pub port: u16,
    /// The path prefix (at least `/`).
    pub path: String,
}

impl Prefix {
    /// Parse `url` as a prefix.
    pub fn parse(url: &str) -> Result<Self, GrantError> {
        let bad = |why: &str| GrantError(format!("{url:?}: {why}"));
        if url.len() > MAX_URL {
            return Err(GrantError(format!("a URL is at most {MAX_URL} bytes")));
        }
        let uri: http::Uri = url.parse().map_err(|_| bad("not a URL"))?;
        let scheme = Scheme::of(&uri).ok_or_else(|| bad("the scheme must be http or https"))?;
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("user info is not allowed"));
        }
        if uri.query().is_some() || url.contains('#') {
            return Err(bad("a query or fragment is not allowed"));
        }
        let host = normal_host(authority.host());
        if host.is_empty() || host.contains('*') {
            return Err(bad("the host must be a name or an address, without wildcards"));
        }
        let path = if uri.path().is_empty() { "/".to_owned() } else { uri.path().to_owned() };
        if has_dot_segment(&path) {
            return Err(bad("the path has a `.` or `..` segment"));
        }
        Ok(Self { scheme, port: authority.port_u16().unwrap_or(scheme.default_port()), host, path })
    }

    /// Whether a request to `scheme://host:port/path` is under this prefix.
    pub fn covers(&self, scheme: Scheme, host: &str, port: u16, path: &str) -> bool {
        self.scheme == scheme
            && self.port == port
            && self.host.eq_ignore_ascii_case(host)
            && path_under(&self.path, path)
            && !has_dot_segment(path)
    }

    /// Whether every URL under `other` is under this prefix.
    pub fn contains(&self, other: &Prefix) -> bool {
        self.covers(other.scheme, &other.host, other.port, &other.path)
    }
}

/// A host as compared: lower case, without IPv6 brackets.
pub fn normal_host(host: &str) -> String {
    host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase()
}

/// Whether `path` starts with `prefix` at a segment boundary.
fn path_under(prefix: &str, path: &str) -> bool {
    let path = if path.is_empty() { "/" } else { path };
    match path.strip_prefix(prefix) {
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// Whether a path has a `.` or `..` segment, literal or percent-encoded.
fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(|seg| {
        let s = seg.to_ascii_lowercase().replace("%2e", ".");
        s == "." || s == ".."
    })
}

/// A grant, checked and parsed.
#[derive(Clone, Debug)]
pub struct Grant {
    /// Where it reaches.
    pub prefix: Prefix,
    /// Allowed methods, upper case.
    pub methods: Vec<http::Method>,
    /// The secret to inject: its name, the header, the value's format.
    pub secret: Option<SecretHeader>,
    /// How responses are metered.
    pub meter: Option<Meter>,
    /// What the host does with redirects.
    pub redirects: Redirects,
    /// The URL as the spec wrote it (logs, errors).
    pub url: String,
}

/// Where a grant puts a secret.
#[derive(Clone, Debug)]
pub struct SecretHeader {
    /// The tenant secret's name.
    pub name: String,
    /// The header.
    pub header: http::HeaderName,
    /// The value, `{}` standing for the secret.
    pub format: String,
}

/// Headers a secret may not be put in: they frame or route the request.
const RESERVED_HEADERS: &[&str] =
    &["host", "content-length", "transfer-encoding", "connection", "upgrade", "te", "trailer", "keep-alive"];

/// Whether `name` is a secret's name (`[a-z0-9._-]{1,64}`, starting with a letter or digit).
pub fn valid_secret_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
}

impl EgressGrant {
    /// Check and parse this grant.
    pub fn parse(&self) -> Result<Grant, GrantError> {
        let prefix = Prefix::parse(&self.url)?;
        if self.methods.is_empty() || self.methods.len() > 16 {
            return Err(GrantError(format!("{}: methods must list 1 to 16 methods", self.url)));
        }
        let mut methods = Vec::with_capacity(self.methods.len());
        for m in &self.methods {
            let upper = m.to_ascii_uppercase();
            if upper == "CONNECT" || upper == "TRACE" {
                return Err(GrantError(format!("{}: method {m} is not allowed", self.url)));
            }
            let method = http::Method::from_bytes(upper.as_bytes())
                .map_err(|_| GrantError(format!("{}: {m:?} is not a method", self.url)))?;
            methods.push(method);
        }
        let secret = match &self.secret {
            None => {
                if self.header.is_some() || self.format.is_some() {
                    return Err(GrantError(format!("{}: header and format need a secret", self.url)));
                }
                None
            }
            Some(name) => {
                if !valid_secret_name(name) {
                    return Err(GrantError(format!(
                        "{}: {name:?} is not a secret name ([a-z0-9._-]{{1,64}})",
                        self.url
                    )));
                }
                let header = self.header.as_deref().unwrap_or("authorization").to_ascii_lowercase();
                if RESERVED_HEADERS.contains(&header.as_str()) {
                    return Err(GrantError(format!("{}: a secret cannot go in header {header}", self.url)));
                }
                let header = http::HeaderName::from_bytes(header.as_bytes())
                    .map_err(|_| GrantError(format!("{}: {header:?} is not a header name", self.url)))?;
                let format = self.format.clone().unwrap_or_else(|| "Bearer {}".into());
                if format.matches("{}").count() != 1 || format.len() > 256 {
                    return Err(GrantError(format!("{}: format must hold `{{}}` once", self.url)));
                }
                if http::HeaderValue::from_str(&format.replace("{}", "x")).is_err() {
                    return Err(GrantError(format!("{}: format is not a header value", self.url)));
                }
                Some(SecretHeader { name: name.clone(), header, format })
            }
        };
        Ok(Grant {
            prefix,
            methods,
            secret,
            meter: self.meter,
            redirects: self.redirects.unwrap_or_default(),
            url: self.url.clone(),
        })
    }
}

impl Grant {
    /// Whether this grant allows `method` to `scheme://host:port/path`.
    pub fn allows(&self, method: &http::Method, scheme: Scheme, host: &str, port: u16, path: &str) -> bool {
        self.methods.contains(method) && self.prefix.covers(scheme, host, port, path)
    }
}

/// Check a deploy's grants, within the tenant's allow-list (`None`: no allow-list set).
pub fn check_grants(grants: &[EgressGrant], allow: Option<&[String]>) -> Result<Vec<Grant>, GrantError> {
    if grants.len() > MAX_GRANTS {
        return Err(GrantError(format!("at most {MAX_GRANTS} egress grants per agent")));
    }
    let allow = allow.map(parse_allow_list).transpose()?;
    let mut out = Vec::with_capacity(grants.len());
    for (i, g) in grants.iter().enumerate() {
        let parsed = g.parse().map_err(|e| GrantError(format!("egress[{i}]: {e}")))?;
        if let Some(allow) = &allow
            && !allow.iter().any(|a| a.contains(&parsed.prefix))
        {
            return Err(GrantError(format!("egress[{i}]: {} is outside the tenant's egress allow-list", parsed.url)));
        }
        out.push(parsed);
    }
    Ok(out)
}

/// Parse a tenant's allow-list.
pub fn parse_allow_list(list: &[String]) -> Result<Vec<Prefix>, GrantError> {
    if list.len() > MAX_ALLOW {
        return Err(GrantError(format!("an allow-list has at most {MAX_ALLOW} entries")));
    }
    list.iter().map(|u| Prefix::parse(u)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(url: &str, methods: &[&str]) -> Grant {
        EgressGrant {
            url: url.into(),
            methods: methods.iter().map(|m| (*m).to_owned()).collect(),
            secret: None,
            header: None,
            format: None,
            meter: None,
            redirects: None,
        }
        .parse()
        .unwrap()
    }

    #[test]
    fn scheme_host_port_path_and_method_must_all_match() {
        let g = grant("https://api.example.com/v1/", &["POST"]);
        let post = http::Method::POST;
        assert!(g.allows(&post, Scheme::Https, "api.example.com", 443, "/v1/chat"));
        assert!(g.allows(&post, Scheme::Https, "API.example.com", 443, "/v1/"));
        assert!(!g.allows(&http::Method::GET, Scheme::Https, "api.example.com", 443, "/v1/chat"));
        assert!(!g.allows(&post, Scheme::Http, "api.example.com", 443, "/v1/chat"));
        assert!(!g.allows(&post, Scheme::Https, "api.example.com.evil", 443, "/v1/chat"));
        assert!(!g.allows(&post, Scheme::Https, "api.example.com", 8443, "/v1/chat"));
        assert!(!g.allows(&post, Scheme::Https, "api.example.com", 443, "/v2/chat"));
        assert!(!g.allows(&post, Scheme::Https, "api.example.com", 443, "/v1/../admin"));
        assert!(!g.allows(&post, Scheme::Https, "api.example.com", 443, "/v1/%2E%2e/admin"));
    }

    #[test]
    fn a_prefix_without_a_slash_ends_at_a_segment() {
        let g = grant("http://h:8080/api", &["GET"]);
        let get = http::Method::GET;
        assert!(g.allows(&get, Scheme::Http, "h", 8080, "/api"));
        assert!(g.allows(&get, Scheme::Http, "h", 8080, "/api/x"));
        assert!(!g.allows(&get, Scheme::Http, "h", 8080, "/apix"));
    }

    #[test]
    fn bad_grants_are_refused() {
        for url in
            ["ftp://h/", "https://user@h/", "https://h/?q=1", "https://*.h/", "https:///x", "/x", "https://h/a/../b"]
        {
            let g = EgressGrant {
                url: url.into(),
                methods: vec!["GET".into()],
                secret: None,
                header: None,
                format: None,
                meter: None,
                redirects: None,
            };
            assert!(g.parse().is_err(), "{url}");
        }
        let with = |secret: &str, header: &str, format: &str| EgressGrant {
            url: "https://h/".into(),
            methods: vec!["GET".into()],
            secret: Some(secret.into()),
            header: Some(header.into()),
            format: Some(format.into()),
            meter: None,
            redirects: None,
        };
        assert!(with("openai", "authorization", "Bearer {}").parse().is_ok());
        assert!(with("Open AI", "authorization", "Bearer {}").parse().is_err());
        assert!(with("openai", "host", "{}").parse().is_err());
        assert!(with("openai", "x-key", "no placeholder").parse().is_err());
    }

    #[test]
    fn grants_stay_within_the_allow_list() {
        let g = |url: &str| EgressGrant {
            url: url.into(),
            methods: vec!["GET".into()],
            secret: None,
            header: None,
            format: None,
            meter: None,
            redirects: None,
        };
        let allow = vec!["https://api.example.com/".to_owned()];
        assert!(check_grants(&[g("https://api.example.com/v1/")], Some(&allow)).is_ok());
        assert!(check_grants(&[g("https://other.example.com/")], Some(&allow)).is_err());
        assert!(check_grants(&[g("http://api.example.com/")], Some(&allow)).is_err());
        assert!(check_grants(&[g("https://other.example.com/")], None).is_ok());
        assert!(check_grants(&[g("https://api.example.com/")], Some(&[])).is_err());
    }
}
