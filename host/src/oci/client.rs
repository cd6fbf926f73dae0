//! The OCI distribution protocol, client side, on `reqwest`: manifests and blobs, pushed
//! (HEAD to skip a blob the registry has, POST then a monolithic PUT) and pulled (every body
//! read under a limit and checked against its digest), with the registry's auth: a 401's
//! `WWW-Authenticate` challenge answered with a bearer token from its realm (anonymous or
//! with basic credentials), or basic auth directly.

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue, LOCATION, WWW_AUTHENTICATE};
use reqwest::{Method, RequestBuilder, Response, StatusCode, Url};

use super::artifact::{self, INDEX_MEDIA_TYPE, MANIFEST_MEDIA_TYPE};
use super::error::{OciError, OciResult};
use super::reference::Reference;

/// A registry user's credentials. Their `Debug` does not show the password.
#[derive(Clone)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password or token.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("username", &self.username).finish_non_exhaustive()
    }
}

/// What a client may do: whether plain http is used, where it may be redirected, its limits.
#[derive(Clone)]
pub struct Policy {
    /// Talk http to the registry (else https).
    pub plain_http: bool,
    /// Whether a redirect (or a token realm) to a URL is followed: to blob storage, say.
    pub may_follow: Arc<dyn Fn(&Url) -> bool + Send + Sync>,
    /// Largest manifest read.
    pub max_manifest_bytes: u64,
    /// Largest blob read.
    pub max_blob_bytes: u64,
    /// Connecting gives up after this.
    pub connect_timeout: Duration,
    /// Each request (with its body) gives up after this.
    pub request_timeout: Duration,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy").field("plain_http", &self.plain_http).finish_non_exhaustive()
    }
}

/// Largest token answer read.
const MAX_TOKEN_BYTES: u64 = 64 << 10;
/// Most redirects followed.
const MAX_REDIRECTS: usize = 5;

/// How requests are authenticated once a challenge was answered.
#[derive(Debug)]
enum Auth {
    /// The credentials, as basic auth.
    Basic,
    /// A bearer token from the registry's realm.
    Bearer(HeaderValue),
}

/// A pulled artifact.
#[derive(Debug)]
pub struct Pulled {
    /// The manifest's digest (`sha256:<hex>`).
    pub manifest_digest: String,
    /// The component.
    pub wasm: Vec<u8>,
}

/// A client of one repository of one registry.
#[derive(Debug)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    repository: String,
    credentials: Option<Credentials>,
    policy: Policy,
    /// The auth that worked, reused.
    auth: Option<Auth>,
    /// The token scope asked for: pull, or pull and push.
    push: bool,
}

fn unreachable(what: &str, e: reqwest::Error) -> OciError {
    // Not the URL's query (a pre-signed blob URL carries credentials in it).
    if e.is_redirect() {
        return OciError::NotAllowed(format!("{what}: a redirect to a host this server may not reach (or too many)"));
    }
    let e = e.without_url();
    OciError::Unreachable(format!("{what}: {e}"))
}

/// `s`'s `key="value"` parameters (a `WWW-Authenticate` challenge's).
fn challenge_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some((k, after)) = rest.split_once('=') {
        let key = k.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (value, tail) = if let Some(q) = after.strip_prefix('"') {
            match q.split_once('"') {
                Some((v, t)) => (v, t),
                None => (q, ""),
            }
        } else {
            after.split_once(',').map_or((after, ""), |(v, t)| (v.trim(), t))
        };
        out.push((key, value.to_owned()));
        rest = tail.trim_start_matches(|c: char| c == ',' || c.is_whitespace());
    }
    out
}

impl Client {
    /// A client of `reference`'s repository, with `credentials` if any, for pulling (and
    /// pushing when `push`).
    pub fn new(reference: &Reference, credentials: Option<Credentials>, policy: Policy, push: bool) -> OciResult<Self> {
        let follow = policy.may_follow.clone();
        let redirects = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= MAX_REDIRECTS {
                attempt.error("too many redirects")
            } else if follow(attempt.url()) {
                attempt.follow()
            } else {
                attempt.error("a redirect to a host this server may not reach")
            }
        });
        let http = reqwest::Client::builder()
            .redirect(redirects)
            .connect_timeout(policy.connect_timeout)
            .timeout(policy.request_timeout)
            .user_agent(concat!("cortex/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| OciError::Unreachable(format!("cannot build an HTTP client: {e}")))?;
        let scheme = if policy.plain_http { "http" } else { "https" };
        Ok(Self {
            http,
            base: format!("{scheme}://{}", reference.registry),
            repository: reference.repository.clone(),
            credentials,
            policy,
            auth: None,
            push,
        })
    }

    fn url(&self, rest: &str) -> String {
        format!("{}/v2/{}/{rest}", self.base, self.repository)
    }

    /// Send the request `build` makes, authenticated; on a 401, answer its challenge once
    /// and send it again.
    async fn send(&mut self, what: &str, build: impl Fn(&reqwest::Client) -> RequestBuilder) -> OciResult<Response> {
        let attempt = |auth: Option<&Auth>| {
            let req = build(&self.http);
            let req = match (auth, &self.credentials) {
                (Some(Auth::Bearer(v)), _) => req.header(AUTHORIZATION, v.clone()),
                (Some(Auth::Basic), Some(c)) => req.basic_auth(&c.username, Some(&c.password)),
                _ => req,
            };
            req.send()
        };
        let resp = attempt(self.auth.as_ref()).await.map_err(|e| unreachable(what, e))?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        let challenge = resp.headers().get(WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        self.auth = Some(self.authenticate(&challenge).await?);
        let resp = attempt(self.auth.as_ref()).await.map_err(|e| unreachable(what, e))?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            return Err(OciError::Unauthorized(format!("{what}: the registry refused the credentials")));
        }
        Ok(resp)
    }

    /// The auth answering `challenge`.
    async fn authenticate(&self, challenge: &str) -> OciResult<Auth> {
        let (scheme, params) = challenge.split_once(' ').unwrap_or((challenge, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return match &self.credentials {
                Some(_) => Ok(Auth::Basic),
                None => Err(OciError::Unauthorized("the registry wants credentials and none were given".into())),
            };
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(OciError::Unauthorized(format!("the registry asks for auth scheme {scheme:?}")));
        }
        let params = challenge_params(params);
        let get = |k: &str| params.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
        let realm =
            get("realm").ok_or_else(|| OciError::Unauthorized("the registry's challenge has no realm".into()))?;
        let mut realm = Url::parse(&realm)
            .map_err(|_| OciError::Unauthorized(format!("the registry's token realm {realm:?} is not a URL")))?;
        if !(self.policy.may_follow)(&realm) && !realm.as_str().starts_with(&self.base) {
            return Err(OciError::NotAllowed(format!(
                "the registry's token realm {} is a host this server may not reach",
                realm.host_str().unwrap_or("")
            )));
        }
        let actions = if self.push { "pull,push" } else { "pull" };
        let scope = get("scope").unwrap_or_else(|| format!("repository:{}:{actions}", self.repository));
        {
            let mut q = realm.query_pairs_mut();
            if let Some(s) = get("service") {
                q.append_pair("service", &s);
            }
            q.append_pair("scope", &scope);
        }
        let mut req = self.http.get(realm);
        if let Some(c) = &self.credentials {
            req = req.basic_auth(&c.username, Some(&c.password));
        }
        let resp = req.send().await.map_err(|e| unreachable("token request", e))?;
        if resp.status() == StatusCode::UNAUTHORIZED || resp.status() == StatusCode::FORBIDDEN {
            return Err(OciError::Unauthorized("the registry's token service refused the credentials".into()));
        }
        if !resp.status().is_success() {
            return Err(OciError::Unauthorized(format!("the registry's token service answered {}", resp.status())));
        }
        let body = read_limited(resp, MAX_TOKEN_BYTES, "token answer").await?;
        #[derive(serde::Deserialize)]
        struct Token {
            token: Option<String>,
            access_token: Option<String>,
        }
        let t: Token = serde_json::from_slice(&body)
            .map_err(|_| OciError::Unauthorized("the registry's token answer is not JSON".into()))?;
        let token =
            t.token.or(t.access_token).ok_or_else(|| OciError::Unauthorized("no token in the answer".into()))?;
        let mut v = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| OciError::Unauthorized("the registry's token cannot be sent in a header".into()))?;
        v.set_sensitive(true);
        Ok(Auth::Bearer(v))
    }

    /// Pull `reference` (of this client's repository): its manifest (checked against the
    /// pinned digest, if any), which must be a Wasm OCI artifact, and its component, checked
    /// against the layer's digest and size.
    pub async fn pull(&mut self, reference: &Reference) -> OciResult<Pulled> {
        let target = reference.target().to_owned();
        let accept = format!("{MANIFEST_MEDIA_TYPE}, {INDEX_MEDIA_TYPE}");
        let url = self.url(&format!("manifests/{target}"));
        let resp = self.send("manifest", |h| h.get(&url).header(ACCEPT, &accept)).await?;
        let resp = check_status(resp, &format!("{reference}"))?;
        let manifest = read_limited(resp, self.policy.max_manifest_bytes, "manifest").await?;
        let manifest_digest = super::digest_of(&manifest);
        if let Some(pinned) = &reference.digest
            && *pinned != manifest_digest
        {
            return Err(OciError::DigestMismatch(format!(
                "the manifest of {reference} has digest {manifest_digest}, not the pinned {pinned}"
            )));
        }
        let layer = artifact::wasm_layer(&manifest)?;
        if layer.size > self.policy.max_blob_bytes {
            return Err(OciError::TooLarge(format!(
                "the component of {reference} is {} bytes, over the limit of {}",
                layer.size, self.policy.max_blob_bytes
            )));
        }
        let url = self.url(&format!("blobs/{}", layer.digest));
        let resp = self.send("blob", |h| h.get(&url)).await?;
        let resp = check_status(resp, &format!("{reference}: its component"))?;
        let wasm = read_limited(resp, layer.size, "component").await?;
        if wasm.len() as u64 != layer.size || super::digest_of(&wasm) != layer.digest {
            return Err(OciError::DigestMismatch(format!(
                "the component of {reference} does not match its digest {}",
                layer.digest
            )));
        }
        Ok(Pulled { manifest_digest, wasm })
    }

    /// Push component `wasm` as `reference` (its tag, else its digest); returns the manifest
    /// digest.
    pub async fn push(&mut self, reference: &Reference, wasm: &[u8], created_ms: u64) -> OciResult<String> {
        let (config, manifest) = artifact::build(wasm, created_ms);
        let digest = super::digest_of(&manifest);
        if let Some(pinned) = reference.digest.as_ref().filter(|d| reference.tag.is_none() && **d != digest) {
            return Err(OciError::DigestMismatch(format!("the artifact's digest is {digest}, not {pinned}")));
        }
        self.push_blob(bytes::Bytes::from(config)).await?;
        self.push_blob(bytes::Bytes::copy_from_slice(wasm)).await?;
        let target = reference.tag.clone().unwrap_or_else(|| digest.clone());
        let url = self.url(&format!("manifests/{target}"));
        let body = bytes::Bytes::from(manifest);
        let resp = self
            .send("manifest upload", |h| h.put(&url).header(CONTENT_TYPE, MANIFEST_MEDIA_TYPE).body(body.clone()))
            .await?;
        check_status(resp, &format!("{reference}: the manifest upload"))?;
        Ok(digest)
    }

    /// Upload a blob unless the registry has it.
    async fn push_blob(&mut self, blob: bytes::Bytes) -> OciResult<()> {
        let digest = super::digest_of(&blob);
        let url = self.url(&format!("blobs/{digest}"));
        let head = self.send("blob check", |h| h.request(Method::HEAD, &url)).await?;
        if head.status().is_success() {
            return Ok(());
        }
        let url = self.url("blobs/uploads/");
        let resp = self.send("blob upload", |h| h.post(&url)).await?;
        let resp = check_status(resp, "the blob upload")?;
        let location = resp
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| OciError::Refused("the registry gave no upload location".into()))?;
        let base = Url::parse(&self.base).map_err(|_| OciError::InvalidReference(self.base.clone()))?;
        let mut put = base.join(location).map_err(|_| OciError::Refused("the upload location is not a URL".into()))?;
        put.query_pairs_mut().append_pair("digest", &digest);
        let resp = self
            .send("blob upload", |h| {
                h.put(put.clone()).header(CONTENT_TYPE, "application/octet-stream").body(blob.clone())
            })
            .await?;
        check_status(resp, "the blob upload")?;
        Ok(())
    }
}

/// `resp` if it succeeded, else the error its status means.
fn check_status(resp: Response, what: &str) -> OciResult<Response> {
    let s = resp.status();
    match s {
        s if s.is_success() => Ok(resp),
        StatusCode::NOT_FOUND => Err(OciError::NotFound(format!("{what}: not found in the registry"))),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            Err(OciError::Unauthorized(format!("{what}: the registry refused access ({s})")))
        }
        StatusCode::PAYLOAD_TOO_LARGE => Err(OciError::TooLarge(format!("{what}: the registry says it is too large"))),
        s if s.is_server_error() => Err(OciError::Unreachable(format!("{what}: the registry failed ({s})"))),
        s => Err(OciError::Refused(format!("{what}: the registry answered {s}"))),
    }
}

/// `resp`'s body, at most `limit` bytes: refused at once when its declared length is
/// larger, else as soon as more arrives.
async fn read_limited(mut resp: Response, limit: u64, what: &str) -> OciResult<Vec<u8>> {
    let too_large = || OciError::TooLarge(format!("the {what} is larger than {limit} bytes"));
    if resp.content_length().is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| unreachable(what, e))? {
        if (out.len() + chunk.len()) as u64 > limit {
            return Err(too_large());
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    use axum::extract::Query;
    use axum::http::{HeaderMap, StatusCode as S};
    use axum::response::{IntoResponse, Response as AxResponse};
    use axum::routing::get;

    const TOKEN: &str = "tok-123";

    /// A registry on 127.0.0.1 that wants a bearer token from its own realm, handed out for
    /// basic credentials `u:p` only, and serves one artifact whose blob redirects to `blob_at`.
    async fn token_registry(wasm: Vec<u8>, blob_at: Option<String>) -> (String, Reference) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_, manifest) = artifact::build(&wasm, 0);
        let layer = artifact::wasm_layer(&manifest).unwrap();
        let realm = format!("http://{addr}/token");
        let authed = |h: &HeaderMap| h.get("authorization").is_some_and(|v| v == format!("Bearer {TOKEN}").as_str());
        let challenge = move || -> AxResponse {
            let c = format!(r#"Bearer realm="{realm}",service="reg",scope="repository:team/a:pull""#);
            (S::UNAUTHORIZED, [("www-authenticate", c)]).into_response()
        };
        let ch = challenge.clone();
        let app = axum::Router::new()
            .route(
                "/token",
                get(|h: HeaderMap, Query(q): Query<std::collections::HashMap<String, String>>| async move {
                    // `u:p` in basic auth; the service and scope of the challenge.
                    let ok = h.get("authorization").is_some_and(|v| v == "Basic dTpw")
                        && q.get("service").map(String::as_str) == Some("reg")
                        && q.get("scope").map(String::as_str) == Some("repository:team/a:pull");
                    if ok {
                        axum::Json(serde_json::json!({"token": TOKEN})).into_response()
                    } else {
                        S::UNAUTHORIZED.into_response()
                    }
                }),
            )
            .route(
                "/v2/team/a/manifests/v1",
                get(move |h: HeaderMap| async move {
                    if authed(&h) { (S::OK, manifest).into_response() } else { challenge() }
                }),
            )
            .route(
                &format!("/v2/team/a/blobs/{}", layer.digest),
                get(move |h: HeaderMap| async move {
                    match (authed(&h), blob_at) {
                        (false, _) => ch(),
                        (true, Some(to)) => (S::TEMPORARY_REDIRECT, [("location", to)]).into_response(),
                        (true, None) => (S::OK, wasm).into_response(),
                    }
                }),
            );
        tokio::spawn(async move { axum::serve(listener, app).await });
        let host = format!("127.0.0.1:{}", addr.port());
        let r = Reference::parse(&format!("{host}/team/a:v1")).unwrap();
        (host, r)
    }

    fn policy(plain_http_hosts: Vec<String>) -> Policy {
        Policy {
            plain_http: true,
            may_follow: Arc::new(move |u: &Url| {
                let authority = format!("{}:{}", u.host_str().unwrap_or(""), u.port_or_known_default().unwrap_or(0));
                u.scheme() == "https" || plain_http_hosts.contains(&authority)
            }),
            max_manifest_bytes: 1 << 20,
            max_blob_bytes: 1 << 20,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(20),
        }
    }

    fn creds(user: &str, password: &str) -> Option<Credentials> {
        Some(Credentials { username: user.into(), password: password.into() })
    }

    #[tokio::test]
    async fn a_bearer_challenge_is_answered_with_a_token_from_the_realm_for_the_credentials() {
        let (host, r) = token_registry(b"\0asm wasm".to_vec(), None).await;
        let mut c = Client::new(&r, creds("u", "p"), policy(vec![host.clone()]), false).unwrap();
        let pulled = c.pull(&r).await.unwrap();
        assert_eq!(pulled.wasm, b"\0asm wasm");
        let mut wrong = Client::new(&r, creds("u", "nope"), policy(vec![host.clone()]), false).unwrap();
        assert_eq!(wrong.pull(&r).await.unwrap_err().code(), "oci_unauthorized");
        let mut anonymous = Client::new(&r, None, policy(vec![host]), false).unwrap();
        assert_eq!(anonymous.pull(&r).await.unwrap_err().code(), "oci_unauthorized");
    }

    #[tokio::test]
    async fn a_redirect_to_a_host_not_permitted_is_refused_unfetched() {
        // The blob redirects to a metadata address over http: refused, never fetched.
        let (host, r) = token_registry(b"\0asm".to_vec(), Some("http://169.254.169.254/latest/meta-data".into())).await;
        let mut c = Client::new(&r, creds("u", "p"), policy(vec![host]), false).unwrap();
        assert_eq!(c.pull(&r).await.unwrap_err().code(), "oci_not_allowed");
    }

    #[test]
    fn challenges_parse_quoted_and_bare_parameters() {
        let p =
            challenge_params(r#"realm="https://auth.io/token",service="registry.io",scope="repository:a/b:pull,push""#);
        assert_eq!(p[0], ("realm".into(), "https://auth.io/token".into()));
        assert_eq!(p[1], ("service".into(), "registry.io".into()));
        assert_eq!(p[2], ("scope".into(), "repository:a/b:pull,push".into()));
        let p = challenge_params("realm=x, service=y");
        assert_eq!(p, vec![("realm".into(), "x".into()), ("service".into(), "y".into())]);
    }
}
