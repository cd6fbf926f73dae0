//! The load tool of the HTTP benches: keep-alive HTTP/1.1 clients that send one prebuilt
//! request over and over on their own connection and read each response whole
//! (`Content-Length` or chunked), like `wrk`. Every server compared in a bench is driven by
//! this same client, and the client does as little as it can, so that the numbers measure
//! the servers (a full client such as reqwest spends as much CPU per request as the servers
//! do, on the same two cores).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What a load run did.
pub struct Run {
    pub requests: u64,
    pub elapsed: Duration,
    pub latencies: Vec<Duration>,
}

// Each bench uses part of this file.
#[allow(dead_code)]
impl Run {
    /// Requests per second.
    pub fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    /// Print a line with the rate and p50/p99 latency; the rate.
    pub fn report(&self, label: &str) -> f64 {
        let mut l = self.latencies.clone();
        l.sort();
        let pct =
            |p: f64| l.get(((l.len() as f64 * p) as usize).min(l.len().saturating_sub(1))).copied().unwrap_or_default();
        let rps = self.rate();
        println!(
            "{label:<28} {rps:>10.0} req/s   p50 {:>8.1} us   p99 {:>8.1} us   ({} requests)",
            pct(0.50).as_secs_f64() * 1e6,
            pct(0.99).as_secs_f64() * 1e6,
            self.requests
        );
        rps
    }
}

/// Run `make()` from `clients` tasks for `duration`, each call timed.
#[allow(dead_code)]
pub async fn drive<F, Fut>(clients: usize, duration: Duration, make: F) -> Run
where
    F: Fn() -> Fut + Send + Sync + 'static + Clone,
    Fut: std::future::Future<Output = bool> + Send,
{
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let make = make.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while start.elapsed() < duration {
                let t = Instant::now();
                assert!(make().await, "a request failed");
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    collect(start, tasks).await
}

/// `request` (a whole HTTP/1.1 request) sent by `clients` keep-alive connections to `addr`
/// for `duration`; every response must be a 2xx.
#[allow(dead_code)]
pub async fn hammer(addr: SocketAddr, request: Arc<[u8]>, clients: usize, duration: Duration) -> Run {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let request = request.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(addr).await;
            let mut lat = Vec::new();
            while start.elapsed() < duration {
                let t = Instant::now();
                conn.exchange(&request).await;
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    collect(start, tasks).await
}

/// The latencies the client tasks recorded, as one run that began at `start`.
#[allow(dead_code)]
async fn collect(start: Instant, tasks: Vec<tokio::task::JoinHandle<Vec<Duration>>>) -> Run {
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.unwrap());
    }
    Run { requests: latencies.len() as u64, elapsed: start.elapsed(), latencies }
}

/// Send `request` `n` times on one keep-alive connection, reading each response whole.
#[allow(dead_code)]
pub async fn keep_alive(addr: SocketAddr, request: &[u8], n: usize) {
    let mut conn = Conn::open(addr).await;
    for _ in 0..n {
        conn.exchange(request).await;
    }
}

/// `METHOD path` with `headers` (`name: value` lines) and `body`, as bytes.
#[allow(dead_code)]
pub fn request(method: &str, addr: SocketAddr, path: &str, headers: &[String], body: &[u8]) -> Arc<[u8]> {
    let mut r = format!("{method} {path} HTTP/1.1\r\nhost: {addr}\r\n");
    for h in headers {
        r.push_str(h);
        r.push_str("\r\n");
    }
    if !body.is_empty() || method == "POST" {
        r.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    r.push_str("\r\n");
    let mut bytes = r.into_bytes();
    bytes.extend_from_slice(body);
    bytes.into()
}

/// One keep-alive connection and the bytes read ahead on it.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        Self { stream, buf: Vec::with_capacity(8192) }
    }

    async fn fill(&mut self) {
        let mut chunk = [0u8; 8192];
        let got = self.stream.read(&mut chunk).await.unwrap();
        assert!(got > 0, "the server closed the connection");
        self.buf.extend_from_slice(&chunk[..got]);
    }

    /// Bytes up to and including the next CRLF, once they are in.
    async fn line(&mut self, from: usize) -> usize {
        loop {
            if let Some(i) = self.buf[from..].windows(2).position(|w| w == b"\r\n") {
                return from + i + 2;
            }
            self.fill().await;
        }
    }

    async fn need(&mut self, len: usize) {
        while self.buf.len() < len {
            self.fill().await;
        }
    }

    /// Write `request`, read the whole response, check it is a 2xx.
    async fn exchange(&mut self, request: &[u8]) {
        self.stream.write_all(request).await.unwrap();
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            self.fill().await;
        };
        let head = &self.buf[..head_end];
        assert!(head.starts_with(b"HTTP/1.1 2"), "not a 2xx: {}", String::from_utf8_lossy(head));
        let mut length = None;
        let mut chunked = false;
        for line in head.split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
            let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
            if name.eq_ignore_ascii_case(b"content-length") {
                length = std::str::from_utf8(value).ok().and_then(|v| v.parse::<usize>().ok());
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") && value.eq_ignore_ascii_case(b"chunked") {
                chunked = true;
            }
        }
        let end = if chunked {
            let mut at = head_end;
            loop {
                let size_end = self.line(at).await;
                let size = std::str::from_utf8(&self.buf[at..size_end - 2]).unwrap();
                let size = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16).unwrap();
                at = size_end + size + 2;
                if size == 0 {
                    // No trailers from these servers: the last chunk ends with one CRLF.
                    self.need(at).await;
                    break at;
                }
                self.need(at).await;
            }
        } else {
            let end = head_end + length.unwrap_or(0);
            self.need(end).await;
            end
        };
        self.buf.drain(..end);
    }
}
