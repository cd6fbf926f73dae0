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
use super::grant::{Grant, Scheme, normal_host};
use super::meter::UsageScanner;
use super::{Egress, EgressLink};

/// What `send_request` answers: the response and the connection's I/O future.
pub(crate) type Sent = (http::Response<WasiBody>, Box<dyn std::future::Future<Output = Result<(), Error>> + Send>);

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
        _ => "error",
    }
}

impl Egress {
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
        let uri = parts.uri.clone();
        let scheme = match uri.scheme_str() {
            Some("https") => Some(Scheme::Https),
            Some("http") => Some(Scheme::Http),
            _ => None,
        };
        let host = normal_host(uri.host().unwrap_or(""));
        let port = uri.port_u16().or(scheme.map(Scheme::default_port)).unwrap_or(0);
        let path = if uri.path().is_empty() { "/".to_owned() } else { uri.path().to_owned() };
        let grant: Option<Grant> =
            scheme.and_then(|s| link.grants.iter().find(|g| g.allows(&parts.method, s, &host, port, &path)).cloned());
        let mut rec = Record {
            service: self.clone(),
            tenant: caller.tenant.clone(),
            agent: caller.agent.clone(),
            method: parts.method.to_string(),
            host_label: if grant.is_some() { host.clone() } else { "-".into() },
            host,
            path,
            started,
            sent: 0,
            received: 0,
            status: String::new(),
            metered: false,
            scanner: None,
            _permit: Some(permit),
        };
        let (Some(grant), Some(scheme)) = (grant, scheme) else {
            rec.finish("denied");
            return Err(Error::HttpRequestDenied);
        };
        rec.metered = grant.meter.is_some();
        if let Err(r) = self.budget.admit(&caller.tenant, &link.quotas, rec.metered) {
            rec.finish(r.code());
            return Ok((too_many(r), Box::new(async { Ok(()) })));
        }
        let redactor = match self.prepare(&grant, &caller, &mut parts.headers).await {
            Ok(r) => r,
            Err(e) => {
                rec.finish(status_of(&e));
                return Err(e);
            }
        };
        // The Host header is the granted authority, once, whatever the guest set.
        if let Some(a) = uri.authority().and_then(|a| http::HeaderValue::from_str(a.as_str()).ok()) {
            parts.headers.insert(http::header::HOST, a);
        }
        let cfg = &self.config;
        let deadline = caller.deadline.min(started + Duration::from_millis(cfg.request_timeout_ms));
        let mut connect_by = started + Duration::from_millis(cfg.connect_timeout_ms);
        let mut headers_by = deadline;
        if let Some(o) = options {
            if let Some(t) = o.connect_timeout {
                connect_by = connect_by.min(started + t);
            }
            if let Some(t) = o.first_byte_timeout {
                headers_by = headers_by.min(started + t);
            }
        }
        let connect_by = connect_by.min(deadline);
        let stream = match tokio::time::timeout_at(connect_by.into(), self.connect(scheme, &rec.host, port)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                rec.finish(status_of(&e));
                return Err(e);
            }
            Err(_) => {
                rec.finish("timeout");
                return Err(Error::ConnectionTimeout);
            }
        };
        let mut builder = hyper::client::conn::http1::Builder::new();
        builder.max_headers(cfg.max_headers.max(1));
        let (mut sender, conn) = match builder.handshake::<_, Counted>(TokioIo::new(stream)).await {
            Ok(x) => x,
            Err(e) => {
                rec.finish("error");
                return Err(Error::Hyper(e));
            }
        };
        // The connection lives until the response body is read or dropped, and not long
        // past the deadline (the body's own timer fails it at the deadline, typed).
        let closes_by = deadline + Duration::from_secs(1);
        tokio::spawn(async move {
            let _ = tokio::time::timeout_at(closes_by.into(), conn).await;
        });
        // Origin form on the wire.
        let pq = uri.path_and_query().map_or("/", |p| p.as_str());
        parts.uri = match http::Uri::builder().path_and_query(pq).build() {
            Ok(u) => u,
            Err(_) => {
                rec.finish("denied");
                return Err(Error::HttpRequestUriInvalid);
            }
        };
        let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let body = Counted { inner: body, seen: 0, limit: cfg.max_request_bytes, total: sent.clone() };
        let req = http::Request::from_parts(parts, body);
        let response = match tokio::time::timeout_at(headers_by.into(), sender.send_request(req)).await {
            Err(_) => {
                rec.sent = sent.load(std::sync::atomic::Ordering::Relaxed);
                rec.finish("timeout");
                return Err(Error::HttpResponseTimeout);
            }
            Ok(Err(e)) => {
                rec.sent = sent.load(std::sync::atomic::Ordering::Relaxed);
                let over = e.is_user() && rec.sent > cfg.max_request_bytes;
                let err = if over { Error::HttpRequestBodySize(Some(cfg.max_request_bytes)) } else { Error::Hyper(e) };
                rec.finish(status_of(&err));
                return Err(err);
            }
            Ok(Ok(r)) => r,
        };
        rec.sent = sent.load(std::sync::atomic::Ordering::Relaxed);
        let (mut parts, incoming) = response.into_parts();
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
                let tls = self.tls.connect(name, tcp).await.map_err(Error::Tls)?;
                Ok(Box::new(tls))
            }
        }
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
    use super::Redactor;

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
