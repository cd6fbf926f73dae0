//! Ids of requests and invocations: unique per node, cheap to make, formatted only where
//! they are shown.

use std::cell::Cell;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::LocalKey;

use http::HeaderValue;

/// The process id, read once (`std::process::id` is a system call each time).
pub fn pid() -> u32 {
    static PID: OnceLock<u32> = OnceLock::new();
    *PID.get_or_init(std::process::id)
}

/// Numbers handed out in blocks of this many to each thread.
const ID_BLOCK: u64 = 1024;

/// A number from `global` not handed out before in this process: each thread takes a block
/// of [`ID_BLOCK`] at a time into `local`, so that threads do not all write one shared
/// counter for every request and invocation. Unique, and increasing within a thread.
pub fn next_id(global: &AtomicU64, local: &'static LocalKey<Cell<(u64, u64)>>) -> u64 {
    local.with(|block| {
        let (mut next, mut end) = block.get();
        if next == end {
            next = global.fetch_add(ID_BLOCK, Ordering::Relaxed);
            end = next + ID_BLOCK;
        }
        block.set((next + 1, end));
        next
    })
}

static INVOCATIONS: AtomicU64 = AtomicU64::new(0);

/// An invocation's id, `<process start, ms since the Unix epoch, hex>-<pid>-<sequence hex>`:
/// unique across the node's restarts, and formatted only where it is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct InvocationId(u64);

impl InvocationId {
    /// A new id.
    pub fn next() -> Self {
        thread_local! {
            static BLOCK: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
        }
        Self(next_id(&INVOCATIONS, &BLOCK))
    }
}

impl std::fmt::Display for InvocationId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        static STARTED_MS: OnceLock<u128> = OnceLock::new();
        let ms = STARTED_MS.get_or_init(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis())
        });
        write!(f, "{ms:x}-{}-{:x}", pid(), self.0)
    }
}

static REQUESTS: AtomicU64 = AtomicU64::new(0);

/// A server-made request id, `<pid hex>-<sequence hex>`: formatted for the span only when a
/// subscriber records it, and written once into the `x-request-id` header.
#[derive(Clone, Copy, Debug)]
pub struct RequestId {
    pid: u32,
    seq: u64,
}

impl RequestId {
    /// A new id.
    pub fn next() -> Self {
        thread_local! {
            static BLOCK: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
        }
        Self { pid: pid(), seq: next_id(&REQUESTS, &BLOCK) }
    }

    /// The id as a header value.
    pub fn header_value(self) -> HeaderValue {
        // 8 hex digits, a dash, 16 hex digits at most.
        let mut buf = [0u8; 25];
        let mut n = hex(u64::from(self.pid), &mut buf);
        buf[n] = b'-';
        n += 1;
        n += hex(self.seq, &mut buf[n..]);
        HeaderValue::from_bytes(&buf[..n]).unwrap_or_else(|_| HeaderValue::from_static("-"))
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:x}-{:x}", self.pid, self.seq)
    }
}

/// Write `n` in lower-case hex (no leading zeros) at the start of `out`; the digits written.
fn hex(n: u64, out: &mut [u8]) -> usize {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let len = (64 - n.leading_zeros()).div_ceil(4).max(1) as usize;
    for (i, slot) in out.iter_mut().take(len).enumerate() {
        *slot = DIGITS[((n >> (4 * (len - 1 - i))) & 0xf) as usize];
    }
    len.min(out.len())
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn ids_are_unique_across_threads() {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        thread_local! {
            static BLOCK: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
        }
        let ids: Vec<u64> = std::thread::scope(|s| {
            let threads: Vec<_> =
                (0..4).map(|_| s.spawn(|| (0..3000).map(|_| next_id(&COUNTER, &BLOCK)).collect::<Vec<_>>())).collect();
            threads.into_iter().flat_map(|t| t.join().unwrap()).collect()
        });
        let unique: HashSet<u64> = ids.iter().copied().collect();
        assert_eq!(unique.len(), ids.len(), "an id was handed out twice");
        assert_eq!(ids.len(), 12_000);
    }
}
