//! Our HTTP client for arangors: reqwest (already in the tree) with connect and request
//! timeouts. arangors' own clients have no timeouts and its default one drags OpenSSL.
//!
//! arangors builds its client through `ClientExt::new(headers)`, which takes no settings,
//! so the timeouts reach `new` through a task-local set around the calls that construct a
//! client (`GenericConnection::establish_*`). A client built outside that scope gets the
//! defaults below, never "no timeout".

use std::time::Duration;

use arangors::ClientError;
use arangors::client::ClientExt;
use http::{HeaderMap, HeaderValue};

/// Connect and request timeouts for clients built in this task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP (and TLS) connect.
    pub connect: Duration,
    /// A whole request, from send to the last byte of the body.
    pub request: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self { connect: Duration::from_secs(2), request: Duration::from_secs(10) }
    }
}

tokio::task_local! {
    /// The timeouts `ClientExt::new` uses; set by [`with_timeouts`].
    static TIMEOUTS: Timeouts;
}

/// Run `f` with `t` as the timeouts of every client it constructs.
pub async fn with_timeouts<F: std::future::Future>(t: Timeouts, f: F) -> F::Output {
    TIMEOUTS.scope(t, f).await
}

/// A failure of reqwest (a transport failure: connect, timeout, reset, a body cut short; or
/// a client that cannot be built) as arangors carries it: `ClientError::HttpClient`, which
/// this client raises for nothing else, with the whole chain of the reqwest error
/// (arangors' error holds text only).
fn transport(e: &reqwest::Error) -> ClientError {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    ClientError::HttpClient(text)
}

/// Whether a retry of the call that failed with `e` is safe and may succeed: a failure of
/// reqwest (the only `HttpClient` error this client raises) or the server saying it is overloaded, timed out or lost a write race. Decided
/// by the error's variant and code, never by its text.
pub(crate) fn retry_safe(e: &ClientError) -> bool {
    match e {
        ClientError::HttpClient(_) => true,
        ClientError::Arango(a) => matches!(a.code(), 503 | 429 | 408) || a.error_num() == super::ERR_CONFLICT,
        _ => false,
    }
}

/// reqwest behind arangors' `ClientExt`.
#[derive(Clone, Debug)]
pub struct HttpClient {
    client: reqwest::Client,
    headers: HeaderMap,
}

#[async_trait::async_trait]
impl ClientExt for HttpClient {
    fn new<U: Into<Option<HeaderMap>>>(headers: U) -> Result<Self, ClientError> {
        let t = TIMEOUTS.try_with(|t| *t).unwrap_or_default();
        let client = reqwest::Client::builder()
            .connect_timeout(t.connect)
            .timeout(t.request)
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| transport(&e))?;
        Ok(Self { client, headers: headers.into().unwrap_or_default() })
    }

    fn headers(&mut self) -> &mut HeaderMap<HeaderValue> {
        &mut self.headers
    }

    async fn request(&self, request: http::Request<String>) -> Result<http::Response<String>, ClientError> {
        let (parts, body) = request.into_parts();
        let mut req = self.client.request(parts.method, parts.uri.to_string()).body(body);
        for (name, value) in &self.headers {
            if !parts.headers.contains_key(name) {
                req = req.header(name, value);
            }
        }
        req = req.headers(parts.headers);
        let resp = req.send().await.map_err(|e| transport(&e))?;
        let mut out = http::Response::builder().status(resp.status()).version(resp.version());
        for (name, value) in resp.headers() {
            out = out.header(name, value);
        }
        let text = resp.text().await.map_err(|e| transport(&e))?;
        // Headers copied from a response hyper parsed: always valid. Should the copy fail,
        // arangors reads it as a server that is not ArangoDB (not retried).
        out.body(text).map_err(|e| ClientError::InvalidServer(format!("response: {e}")))
    }
}
