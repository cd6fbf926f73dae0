//! One outbound request: grant, quotas, secret, resolve and check, connect, send, and the
//! response body streamed through its limits and meter.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::OwnedSemaphorePermit;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody};

use super::budget::Refusal;
use super::grant::{Grant, Prefix, Redirects, Scheme, normal_host};
use super::meter::UsageScanner;
use super::{Egress, EgressLink};

/// What `send_request` answers: the response and the connection's I/O future.
pub(crate) type Sent = (http::Response<WasiBody>, Box<dyn std::future::Future<Output = Result<(), Error>> + Send>);

/// One hop's request: where, how, and by when.
struct Hop<'a> {
    target: &'a Target,
    method: &'a http::Method,
    headers: &'a mut http::HeaderMap,
    connect_by: Option<Instant>,
    headers_by: Option<Instant>,
    deadline: Instant,
}

/// Who sends, until when.
pub(crate) struct Caller {
    pub tenant: Arc<str>,
    pub agent: Arc<str>,
    pub deadline: Instant,
}

/// One request's audit record, written once when it ends (or is refused).
struct Record {
    service: Arc<Egress>,
    tenant: Arc<str>,
    agent: Arc<str>,
    method: String,
    host: String,
    /// The metric label: the host for requests a grant allows, `-` otherwise (a guest
    /// cannot grow the label set).
    host_label: String,
    path: String,
    /// `scheme://host:port/path` (the audit's target).
    target: String,
    started: Instant,
    sent: u64,
    received: u64,
    status: String,
    metered: bool,
    scanner: Option<UsageScanner>,
    _permit: Option<OwnedSemaphorePermit>,
}

impl Record {
    fn finish(mut self, status: impl Into<String>) {
        self.status = status.into();
        self.write();
    }

    fn write(&mut self) {
        let m = &self.service.metrics;
        let (t, a) = (&*self.tenant, &*self.agent);
        m.requests.with_label_values(&[t, a, &self.host_label, &self.status]).inc();
        m.bytes.with_label_values(&[t, a, "sent"]).inc_by(self.sent);
        m.bytes.with_label_values(&[t, a, "received"]).inc_by(self.received);
        self.service.budget.add_bytes(t, self.sent + self.received);
        let usage = self.scanner.take().map(UsageScanner::finish);
        if let Some(u) = usage {
            self.service.budget.add_tokens(t, a, u);
            m.tokens.with_label_values(&[t, a, "prompt"]).inc_by(u.prompt);
            m.tokens.with_label_values(&[t, a, "completion"]).inc_by(u.completion);
        }
        tracing::info!(
            target: "cortex::egress",
            tenant = t,
            agent = a,
            method = %self.method,
            host = %self.host,
            path = %self.path,
            status = %self.status,
            bytes_sent = self.sent,
            bytes_received = self.received,
            prompt_tokens = usage.map(|u| u.prompt),
            completion_tokens = usage.map(|u| u.completion),
            metered = self.metered,
            duration_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "egress request"
        );
    }
}

/// The type-erased stream: TCP or TLS over TCP.
trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

/// A 429 answered by the host, not the destination: a quota of the tenant is spent.
fn too_many(r: Refusal) -> http::Response<WasiBody> {
    let body = format!(
        r#"{{"error":{{"code":"{}","message":"refused by Cortex before it was sent: the tenant's egress quota is spent"}}}}"#,
        r.code()
    );
    let mut resp =
        http::Response::new(http_body_util::Full::new(Bytes::from(body)).map_err(|e| match e {}).boxed_unsync());
    *resp.status_mut() = http::StatusCode::TOO_MANY_REQUESTS;
    let h = resp.headers_mut();
    h.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    h.insert("cortex-egress-refused", http::HeaderValue::from_static(r.code()));
    let retry = match r {
        Refusal::Rate { retry_after_ms } => retry_after_ms.div_ceil(1000).max(1),
        _ => (86_400 - (crate::registry::now_ms() / 1000) % 86_400).max(1),
    };
    if let Ok(v) = http::HeaderValue::from_str(&retry.to_string()) {
        h.insert(http::header::RETRY_AFTER, v);
    }
    resp
}

/// A short name of an error for the `status` label and the log.
pub(super) fn status_of(e: &Error) -> &'static str {
    match e {
        Error::HttpRequestDenied => "denied",
        Error::DestinationIpProhibited => "address_denied",
        Error::ConnectionTimeout | Error::HttpResponseTimeout | Error::ConnectionReadTimeout => "timeout",
        Error::DnsError { .. } | Error::DestinationNotFound => "dns_error",
        Error::ConnectionRefused | Error::Connect(_) => "connection_refused",
        Error::TlsProtocolError | Error::Tls(_) | Error::TlsCertificateError => "tls_error",
        Error::HttpRequestBodySize(_) => "request_too_large",
        Error::HttpResponseBodySize(_) => "response_too_large",
        Error::HttpRequestHeaderSectionSize(_) | Error::HttpResponseHeaderSectionSize(_) => "headers_too_large",
        Error::ConnectionLimitReached => "concurrency_limited",
        Error::ConfigurationError => "configuration_error",
        Error::LoopDetected => "redirect_loop",
        Error::HttpRequestUriInvalid => "invalid_uri",
        _ => "error",
    }
}

/// Most request body bytes the host keeps to send again when it follows a 307 or 308 of a
/// grant with `"redirects": "follow"`: a longer body streams, and such a redirect is handed
/// to the agent as it is.
pub(crate) const REPLAY_BYTES: usize = 64 << 10;

/// Where one request (or one hop of a followed redirect) goes.
#[derive(Clone, Debug)]
struct Target {
    uri: http::Uri,
    scheme: Option<Scheme>,
    host: String,
    port: u16,
    path: String,
}

impl Target {
    fn of(uri: http::Uri) -> Self {
        let scheme = Scheme::of(&uri);
        let host = normal_host(uri.host().unwrap_or(""));
        let port = uri.port_u16().or(scheme.map(Scheme::default_port)).unwrap_or(0);
        let path = if uri.path().is_empty() { "/".to_owned() } else { uri.path().to_owned() };
        Self { uri, scheme, host, port, path }
    }

    /// Whether `grant` allows `method` here, within the tenant's allow-list `allow` (None:
    /// none set).
    fn allowed_by(&self, grant: &Grant, method: &http::Method, allow: Option<&[Prefix]>) -> bool {
        self.scheme.is_some_and(|s| {
            grant.allows(method, s, &self.host, self.port, &self.path)
                && allow.is_none_or(|list| list.iter().any(|a| a.covers(s, &self.host, self.port, &self.path)))
        })
    }

    /// `scheme://host:port/path`, without the query (audit).
    fn display(&self) -> String {
        let scheme = self.uri.scheme_str().unwrap_or("?");
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        format!("{scheme}://{host}:{}{}", self.port, self.path)
    }
}

/// The target of a redirect's `Location`, resolved against the request's `base`; `None`
/// when it is not an http(s) URL.
fn resolve(base: &Target, location: &str) -> Option<http::Uri> {
    let loc = location.trim();
    let loc = loc.split('#').next().unwrap_or("");
    let scheme = base.uri.scheme_str()?;
    let authority = base.uri.authority()?.as_str();
    let lower = loc.to_ascii_lowercase();
    let abs = if lower.starts_with("http://") || lower.starts_with("https://") {
        loc.to_owned()
    } else if let Some(rest) = loc.strip_prefix("//") {
        format!("{scheme}://{rest}")
    } else if loc.starts_with('/') {
        format!("{scheme}://{authority}{loc}")
    } else if loc.starts_with('?') {
        format!("{scheme}://{authority}{}{loc}", base.path)
    } else if loc.split(['/', '?']).next().is_some_and(|first| first.contains(':')) || loc.is_empty() {
        // Another scheme (`ftp:`, `data:`), or nothing.
        return None;
    } else {
        let dir = &base.path[..base.path.rfind('/').map_or(0, |i| i + 1)];
        format!("{scheme}://{authority}{dir}{loc}")
    };
    let uri: http::Uri = abs.parse().ok()?;
    if uri.authority()?.as_str().contains('@') {
        return None;
    }
    Some(uri)
}

/// Whether `status` is a redirect the host may follow.
fn is_redirect(status: http::StatusCode) -> bool {
    matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308)
}

/// The guest's body read up to `limit` bytes: the body to send, and the bytes to send again
/// on a redirect (`None` when it was longer, or had trailers).
async fn keep(mut body: WasiBody, limit: usize) -> Result<(WasiBody, Option<Bytes>), Error> {
    let mut buf = bytes::BytesMut::new();
    loop {
        match body.frame().await {
            None => {
                let b = buf.freeze();
                return Ok((full(b.clone()), Some(b)));
            }
            Some(Err(e)) => return Err(e),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(d) => {
                    buf.extend_from_slice(&d);
                    if buf.len() > limit {
                        let head = vec![Frame::data(buf.freeze())];
                        return Ok((Prefixed { head: head.into(), rest: body }.boxed_unsync(), None));
                    }
                }
                Err(trailers) => {
                    let head = vec![Frame::data(buf.freeze()), trailers];
                    return Ok((Prefixed { head: head.into(), rest: body }.boxed_unsync(), None));
                }
            },
        }
    }
}

/// A body of `bytes`.
fn full(bytes: Bytes) -> WasiBody {
    http_body_util::Full::new(bytes).map_err(|e| match e {}).boxed_unsync()
}

/// The frames read already, then the rest of the guest's body.
struct Prefixed {
    head: std::collections::VecDeque<Frame<Bytes>>,
    rest: WasiBody,
}

impl Body for Prefixed {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        if let Some(f) = self.head.pop_front() {
            return Poll::Ready(Some(Ok(f)));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.head.is_empty() && self.rest.is_end_stream()
    }
}

/// Reason codes of the denials that are audited, by the status they are counted under.
fn denial_reason(status: &str) -> Option<&'static str> {
    Some(match status {
        "denied" => "not_granted",
        "address_denied" => "address_denied",
        "redirect_denied" => "redirect_out_of_grant",
        "redirect_loop" => "too_many_redirects",
        "configuration_error" => "secret_missing",
        "egress_rate_limited" => "egress_rate_limited",
        "egress_bytes_exhausted" => "egress_bytes_exhausted",
        "token_budget_exhausted" => "token_budget_exhausted",
        _ => return None,
    })
}

impl Egress {
    /// A record of one request (or hop) of `caller` to `target`.
    fn record(
        self: &Arc<Self>,
        caller: &Caller,
        method: &http::Method,
        target: &Target,
        granted: bool,
        started: Instant,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Record {
        Record {
            service: self.clone(),
            tenant: caller.tenant.clone(),
            agent: caller.agent.clone(),
            method: method.to_string(),
            host_label: if granted { target.host.clone() } else { "-".into() },
            host: target.host.clone(),
            path: target.path.clone(),
            target: target.display(),
            started,
            sent: 0,
            received: 0,
            status: String::new(),
            metered: false,
            scanner: None,
            _permit: permit,
        }
    }

    /// End `rec` as failed with `e`, counted under `status` (or the error's own), audited
    /// when it is a denial; the error for the guest.
    fn fail(&self, rec: Record, status: Option<&str>, e: Error) -> Error {
        let status = status.unwrap_or_else(|| status_of(&e));
        self.finish_denied(rec, status);
        e
    }

    /// End `rec` with `status`, and audit it when that is a denial.
    fn finish_denied(&self, rec: Record, status: &str) {
        if let Some(reason) = denial_reason(status) {
            self.audit_denial(&rec.tenant, &rec.agent, &rec.method, &rec.target, reason);
        }
        rec.finish(status.to_owned());
    }

    /// Send one request of `caller` through `link`'s grants.
    pub(crate) async fn send(
        self: Arc<Self>,
        link: EgressLink,
        caller: Caller,
        permit: OwnedSemaphorePermit,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
    ) -> Result<Sent, Error> {
        let started = Instant::now();
        let (mut parts, body) = request.into_parts();
        let mut target = Target::of(parts.uri.clone());
        let grant: Option<Grant> =
            link.grants.iter().find(|g| target.allowed_by(g, &parts.method, link.allow.as_deref())).cloned();
        let mut rec = self.record(&caller, &parts.method, &target, grant.is_some(), started, Some(permit));
        let Some(grant) = grant else {
            return Err(self.fail(rec, Some("denied"), Error::HttpRequestDenied));
        };
        rec.metered = grant.meter.is_some();
        if let Err(r) = self.budget.admit(&caller.tenant, &link.quotas, rec.metered) {
            self.finish_denied(rec, r.code());
            return Ok((too_many(r), Box::new(async { Ok(()) })));
        }
        let redactor = match self.prepare(&grant, &caller, &mut parts.headers).await {
            Ok(r) => r,
            Err(e) => return Err(self.fail(rec, None, e)),
        };
        let cfg = &self.config;
        let deadline = caller.deadline.min(started + Duration::from_millis(cfg.request_timeout_ms));
        let (connect_timeout, first_byte_timeout) =
            options.map_or((None, None), |o| (o.connect_timeout, o.first_byte_timeout));
        let follow = grant.redirects == Redirects::Follow;
        // A grant whose redirects the host follows keeps a short body to send again.
        let (mut body, mut replay) = if follow {
            match tokio::time::timeout_at(deadline.into(), keep(body, REPLAY_BYTES)).await {
                Ok(Ok(x)) => x,
                Ok(Err(e)) => return Err(self.fail(rec, None, e)),
                Err(_) => return Err(self.fail(rec, Some("timeout"), Error::HttpResponseTimeout)),
            }
        } else {
            (body, None)
        };
        let mut hops = 0u32;
        let (mut parts, incoming) = loop {
            let hop = Hop {
                target: &target,
                method: &parts.method,
                headers: &mut parts.headers,
                connect_by: connect_timeout.map(|t| Instant::now() + t),
                headers_by: first_byte_timeout.map(|t| Instant::now() + t),
                deadline,
            };
            let (resp, incoming) = match self.exchange(&mut rec, hop, body).await {
                Ok(x) => x,
                Err(e) => return Err(self.fail(rec, None, e)),
            };
            let location = resp.headers.get(http::header::LOCATION).and_then(|v| v.to_str().ok()).map(str::to_owned);
            let (true, true, Some(location)) = (follow, is_redirect(resp.status), location) else {
                break (resp, incoming);
            };
            // 303, and a POST's 301 or 302, go on as a GET without a body (as browsers do);
            // 307 and 308 (and 301 or 302 of other methods) keep the method and the body.
            let code = resp.status.as_u16();
            let method = match (code, &parts.method) {
                (303, m) if *m != http::Method::HEAD => http::Method::GET,
                (301 | 302, &http::Method::POST) => http::Method::GET,
                (_, m) => m.clone(),
            };
            let keeps_body = method == parts.method;
            if keeps_body && replay.is_none() {
                // The body streamed past what is kept: the agent gets the redirect.
                break (resp, incoming);
            }
            rec.status = code.to_string();
            rec.write();
            drop(incoming);
            let permit = rec._permit.take();
            let next = resolve(&target, &location).map(Target::of);
            hops += 1;
            let Some(next) = next else {
                // Not an http(s) URL: denied as a redirect out of the grant.
                let mut denied = self.record(&caller, &method, &target, false, Instant::now(), permit);
                denied.path = String::from("-");
                denied.target = String::from("(not an http(s) URL)");
                return Err(self.fail(denied, Some("redirect_denied"), Error::HttpRequestDenied));
            };
            let in_grant = next.allowed_by(&grant, &method, link.allow.as_deref());
            rec = self.record(&caller, &method, &next, in_grant, Instant::now(), permit);
            rec.metered = grant.meter.is_some();
            if hops > cfg.max_redirects {
                return Err(self.fail(rec, Some("redirect_loop"), Error::LoopDetected));
            }
            if !in_grant {
                return Err(self.fail(rec, Some("redirect_denied"), Error::HttpRequestDenied));
            }
            if let Err(r) = self.budget.admit(&caller.tenant, &link.quotas, rec.metered) {
                self.finish_denied(rec, r.code());
                return Ok((too_many(r), Box::new(async { Ok(()) })));
            }
            if keeps_body {
                body = full(replay.clone().unwrap_or_default());
            } else {
                // The body is gone for this hop and any after it.
                replay = Some(Bytes::new());
                body = full(Bytes::new());
                for h in [http::header::CONTENT_LENGTH, http::header::CONTENT_TYPE, http::header::TRANSFER_ENCODING] {
                    parts.headers.remove(h);
                }
            }
            parts.method = method;
            target = next;
        };
        if let Some(r) = &redactor {
            // A server that echoes the secret in a header does not hand it to the guest.
            for v in parts.headers.values_mut() {
                if r.found_in(v.as_bytes()) {
                    *v = http::HeaderValue::from_static("[redacted]");
                }
            }
        }
        let header_bytes: usize = parts.headers.iter().map(|(k, v)| k.as_str().len() + v.len()).sum();
        if parts.headers.len() > cfg.max_headers || header_bytes > cfg.max_header_bytes {
            rec.finish("headers_too_large");
            return Err(Error::HttpResponseHeaderSectionSize(u32::try_from(header_bytes).ok()));
        }
        let declared = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > cfg.max_response_bytes) {
            rec.finish("response_too_large");
            return Err(Error::HttpResponseBodySize(declared));
        }
        rec.status = parts.status.as_u16().to_string();
        if rec.metered {
            rec.scanner = Some(UsageScanner::new());
        }
        let body = Limited {
            redactor,
            flushed: false,
            inner: incoming,
            limit: cfg.max_response_bytes,
            deadline: Box::pin(tokio::time::sleep_until(deadline.into())),
            record: Some(rec),
        };
        Ok((http::Response::from_parts(parts, body.boxed_unsync()), Box::new(async { Ok(()) })))
    }

    /// Connect to `hop`'s target and send it the request with `body`: the response's head
    /// and body. Counts what was sent in `rec`.
    async fn exchange(
        &self,
        rec: &mut Record,
        hop: Hop<'_>,
        body: WasiBody,
    ) -> Result<(http::response::Parts, hyper::body::Incoming), Error> {
        let cfg = &self.config;
        let started = Instant::now();
        let target = hop.target;
        let scheme = target.scheme.ok_or(Error::HttpRequestUriInvalid)?;
        // The Host header is the granted authority, once, whatever the guest set.
        if let Some(a) = target.uri.authority().and_then(|a| http::HeaderValue::from_str(a.as_str()).ok()) {
            hop.headers.insert(http::header::HOST, a);
        }
        let mut connect_by = started + Duration::from_millis(cfg.connect_timeout_ms);
        if let Some(t) = hop.connect_by {
            connect_by = connect_by.min(t);
        }
        let connect_by = connect_by.min(hop.deadline);
        let headers_by = hop.headers_by.map_or(hop.deadline, |t| t.min(hop.deadline));
        let stream =
            match tokio::time::timeout_at(connect_by.into(), self.connect(scheme, &target.host, target.port)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(Error::ConnectionTimeout),
            };
        let mut builder = hyper::client::conn::http1::Builder::new();
        builder.max_headers(cfg.max_headers.max(1));
        let (mut sender, conn) = builder.handshake::<_, Counted>(TokioIo::new(stream)).await.map_err(Error::Hyper)?;
        // The connection lives until the response body is read or dropped, and not long
        // past the deadline (the body's own timer fails it at the deadline, typed).
        let closes_by = hop.deadline + Duration::from_secs(1);
        tokio::spawn(async move {
            let _ = tokio::time::timeout_at(closes_by.into(), conn).await;
        });
        // Origin form on the wire.
        let pq = target.uri.path_and_query().map_or("/", |p| p.as_str());
        let mut req = http::Request::builder().method(hop.method.clone()).uri(pq);
        if let Some(h) = req.headers_mut() {
            *h = hop.headers.clone();
        }
        let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let body = Counted { inner: body, seen: 0, limit: cfg.max_request_bytes, total: sent.clone() };
        let req = req.body(body).map_err(|_| Error::HttpRequestUriInvalid)?;
        let response = tokio::time::timeout_at(headers_by.into(), sender.send_request(req)).await;
        rec.sent = sent.load(std::sync::atomic::Ordering::Relaxed);
        match response {
            Err(_) => Err(Error::HttpResponseTimeout),
            Ok(Err(e)) => {
                let over = e.is_user() && rec.sent > cfg.max_request_bytes;
                Err(if over { Error::HttpRequestBodySize(Some(cfg.max_request_bytes)) } else { Error::Hyper(e) })
            }
            Ok(Ok(r)) => Ok(r.into_parts()),
        }
    }

    /// The request's headers within the limits, with the grant's secret in its header.
    async fn prepare(
        &self,
        grant: &Grant,
        caller: &Caller,
        headers: &mut http::HeaderMap,
    ) -> Result<Option<Redactor>, Error> {
        let mut redactor = None;
        if let Some(s) = &grant.secret {
            headers.remove(&s.header);
            let value = match self.secrets.reveal(&caller.tenant, &s.name).await {
                Ok(Some(v)) => v,
                Ok(None) => {
                    tracing::warn!(target: "cortex::egress", tenant = %caller.tenant, agent = %caller.agent, secret = %s.name, "a grant names a secret the tenant does not have");
                    return Err(Error::ConfigurationError);
                }
                Err(e) => {
                    tracing::warn!(target: "cortex::egress", error = %e, "secret store");
                    return Err(Error::InternalError(Some("the secret store is unavailable".into())));
                }
            };
            let formatted = zeroize::Zeroizing::new(s.format.replacen("{}", &value, 1));
            let mut v = http::HeaderValue::from_str(&formatted).map_err(|_| Error::ConfigurationError)?;
            v.set_sensitive(true);
            headers.insert(s.header.clone(), v);
            redactor = Redactor::new(value.as_bytes());
        }
        let bytes: usize = headers.iter().map(|(k, v)| k.as_str().len() + v.len()).sum();
        if headers.len() > self.config.max_headers || bytes > self.config.max_header_bytes {
            return Err(Error::HttpRequestHeaderSectionSize(u32::try_from(bytes).ok()));
        }
        Ok(redactor)
    }

    /// Resolve `host`, check every address, connect to a checked one (and TLS for https).
    async fn connect(&self, scheme: Scheme, host: &str, port: u16) -> Result<Box<dyn Stream>, Error> {
        let addrs: Vec<IpAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => self
                .resolver
                .lookup(host)
                .await
                .map_err(|_| Error::DnsError { rcode: Some("name not resolved".into()), info_code: None })?,
        };
        if addrs.is_empty() {
            return Err(Error::DestinationNotFound);
        }
        // Every address, not only the first: a name answering a public and a private
        // address is refused (DNS rebinding).
        for ip in &addrs {
            if let Some(why) = super::addr::denied(*ip, &self.allow) {
                tracing::info!(target: "cortex::egress", host, address = %ip, why, "address denied");
                return Err(Error::DestinationIpProhibited);
            }
        }
        let mut last = Error::ConnectionRefused;
        let mut tcp = None;
        for ip in addrs {
            // The checked address itself: the name is not resolved again.
            match tokio::net::TcpStream::connect(SocketAddr::new(ip, port)).await {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last = Error::Connect(e),
            }
        }
        let Some(tcp) = tcp else { return Err(last) };
        let _ = tcp.set_nodelay(true);
        match scheme {
            Scheme::Http => Ok(Box::new(tcp)),
            Scheme::Https => {
                let name = match host.parse::<IpAddr>() {
                    Ok(ip) => tokio_rustls::rustls::pki_types::ServerName::IpAddress(ip.into()),
                    Err(_) => tokio_rustls::rustls::pki_types::ServerName::try_from(host.to_owned())
                        .map_err(|_| Error::TlsProtocolError)?,
                };
                let tls = self.tls.connect(name, tcp).await.map_err(tls_error)?;
                Ok(Box::new(tls))
            }
        }
    }
}

/// A failed TLS handshake as the guest's error code: the certificate's fault
/// (`TLS-certificate-error`), an alert, or the protocol's.
fn tls_error(e: std::io::Error) -> Error {
    use tokio_rustls::rustls::Error as E;
    match e.get_ref().and_then(|i| i.downcast_ref::<E>()) {
        Some(E::InvalidCertificate(_) | E::NoCertificatesPresented | E::UnsupportedNameType) => {
            Error::TlsCertificateError
        }
        Some(E::AlertReceived(a)) => Error::TlsAlertReceived { alert_id: None, alert_message: Some(format!("{a:?}")) },
        _ => Error::TlsProtocolError,
    }
}

/// The guest's request body, counted and cut off past the limit.
struct Counted {
    inner: WasiBody,
    seen: u64,
    limit: u64,
    total: Arc<std::sync::atomic::AtomicU64>,
}

impl Body for Counted {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &polled
            && let Some(d) = f.data_ref()
        {
            self.seen += d.len() as u64;
            self.total.store(self.seen, std::sync::atomic::Ordering::Relaxed);
            if self.seen > self.limit {
                return Poll::Ready(Some(Err(Error::HttpRequestBodySize(Some(self.limit)))));
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Replaces a secret's value in a response body with `*` of the same length (the
/// Content-Length holds), across chunk boundaries: it holds back at most the secret's
/// length less one byte between chunks.
pub(crate) struct Redactor {
    needle: zeroize::Zeroizing<Vec<u8>>,
    held: Vec<u8>,
}

impl Redactor {
    /// A redactor of `secret` (`None` for a secret too short to look for).
    pub(crate) fn new(secret: &[u8]) -> Option<Self> {
        (secret.len() >= 4).then(|| Self { needle: zeroize::Zeroizing::new(secret.to_vec()), held: Vec::new() })
    }

    fn found_in(&self, hay: &[u8]) -> bool {
        hay.windows(self.needle.len()).any(|w| w == self.needle.as_slice())
    }

    /// The next chunk, with every whole occurrence masked; the tail that could begin one
    /// is held back for the next chunk.
    pub(crate) fn feed(&mut self, chunk: &[u8]) -> Bytes {
        let mut buf = std::mem::take(&mut self.held);
        buf.extend_from_slice(chunk);
        let n = self.needle.len();
        let mut i = 0;
        while i + n <= buf.len() {
            if buf[i..i + n] == self.needle[..] {
                buf[i..i + n].fill(b'*');
                i += n;
            } else {
                i += 1;
            }
        }
        let keep = (n - 1).min(buf.len());
        self.held = buf.split_off(buf.len() - keep);
        Bytes::from(buf)
    }

    /// What is held back, at the end of the body.
    pub(crate) fn finish(&mut self) -> Bytes {
        Bytes::from(std::mem::take(&mut self.held))
    }
}

/// The response body: counted, limited, metered, redacted, and ended at the deadline.
struct Limited {
    redactor: Option<Redactor>,
    flushed: bool,
    inner: hyper::body::Incoming,
    limit: u64,
    deadline: Pin<Box<tokio::time::Sleep>>,
    record: Option<Record>,
}

impl Limited {
    fn end(&mut self, status: Option<&str>) {
        if let Some(mut r) = self.record.take() {
            if let Some(s) = status {
                r.status = s.to_owned();
            }
            r.write();
        }
    }
}

impl Drop for Limited {
    fn drop(&mut self) {
        self.end(None);
    }
}

impl Body for Limited {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    let limit = this.limit;
                    if let Some(r) = this.record.as_mut() {
                        r.received += d.len() as u64;
                        if let Some(s) = r.scanner.as_mut() {
                            s.feed(d);
                        }
                        if r.received > limit {
                            this.end(Some("response_too_large"));
                            return Poll::Ready(Some(Err(Error::HttpResponseBodySize(Some(limit)))));
                        }
                    }
                    if let Some(red) = this.redactor.as_mut() {
                        return Poll::Ready(Some(Ok(Frame::data(red.feed(d)))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.end(Some("error"));
                Poll::Ready(Some(Err(Error::Hyper(e))))
            }
            Poll::Ready(None) => {
                this.end(None);
                if !this.flushed
                    && let Some(red) = this.redactor.as_mut()
                {
                    this.flushed = true;
                    let rest = red.finish();
                    if !rest.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(rest))));
                    }
                }
                Poll::Ready(None)
            }
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    this.end(Some("timeout"));
                    Poll::Ready(Some(Err(Error::HttpResponseTimeout)))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::{Redactor, Target, resolve};

    #[test]
    fn a_location_is_resolved_against_the_request() {
        let base = Target::of("http://h:8080/api/a/b?q=1".parse().unwrap());
        let r = |loc: &str| resolve(&base, loc).map(|u| u.to_string());
        assert_eq!(r("/x?y=2").as_deref(), Some("http://h:8080/x?y=2"));
        assert_eq!(r("c").as_deref(), Some("http://h:8080/api/a/c"));
        assert_eq!(r("?z=3").as_deref(), Some("http://h:8080/api/a/b?z=3"));
        assert_eq!(r("//other:81/p").as_deref(), Some("http://other:81/p"));
        assert_eq!(r("HTTPS://h/p#frag").as_deref(), Some("https://h/p"));
        for bad in ["ftp://h/x", "javascript:alert(1)", "", "http://user@h/x"] {
            assert_eq!(r(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_secret_is_masked_across_every_split() {
        let body = b"{\"authorization\":\"Bearer sk-abc123\",\"again\":\"sk-abc123sk-abc123\"}";
        let want = String::from_utf8_lossy(body).replace("sk-abc123", "*********");
        for a in 0..body.len() {
            for b in a..body.len() {
                let mut r = Redactor::new(b"sk-abc123").unwrap();
                let mut out = Vec::new();
                out.extend_from_slice(&r.feed(&body[..a]));
                out.extend_from_slice(&r.feed(&body[a..b]));
                out.extend_from_slice(&r.feed(&body[b..]));
                out.extend_from_slice(&r.finish());
                assert_eq!(String::from_utf8_lossy(&out), want, "splits {a} {b}");
            }
        }
    }
}
