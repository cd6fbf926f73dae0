//! `hostile` (world `agent`): misbehaves on request, to test the host's limits and
//! isolation. The input text picks the misbehaviour:
//!
//! | input              | behaviour                                                         |
//! |--------------------|-------------------------------------------------------------------|
//! | `loop`             | spins forever without host calls (fuel / epoch deadline)          |
//! | `grow`             | allocates and touches 1 MiB blocks forever (memory limit)         |
//! | `recurse`          | unbounded non-tail recursion (stack overflow)                     |
//! | `big-output:N`     | returns N bytes (output limit)                                    |
//! | `trap`             | executes `unreachable`                                            |
//! | `panic`            | `panic!("hostile panic")` (a trap: panic = abort)                 |
//! | `flood`            | up to 1 000 000 puts to `flood` (host-call limit); stops at the first error and returns `error:<variant>:<detail>` |
//! | `oversize-key`     | a put with a 100 000-byte key: `error:<variant>:<detail>` or `stored` |
//! | `oversize-value`   | a put with an 8 MiB JSON string: `error:<variant>:<detail>` or `stored` |
//! | `net`              | a TCP connect to 127.0.0.1:80 and a DNS lookup of example.com: one line each, `denied: tcp: <err>` / `denied: dns: <err>`, or `connected` / `resolved` |
//! | `files`            | reads /etc/passwd and lists /: one line each, `denied: file: <err>` / `denied: dir: <err>`, or `read` |
//! | `sleep:MS`         | `std::thread::sleep` (blocks inside a WASI host call); returns `slept` |
//! | `wait:KEY`         | reads `hostile/KEY` every 20 ms until it exists (a test's release): `released`; `gave-up` after 2 000 reads (under the default host-call limit) |
//! | `probe`            | checks a 64 KiB bss array and 4 freshly grown pages are zero, then dirties them: `clean` / `dirty` (`grow-failed` if memory.grow failed) |
//! | `print:N`          | writes N bytes of `x` to stdout; returns `printed`                |
//! | `echo:TEXT`        | returns TEXT                                                      |
//! | `exit:N`           | prints `exiting` to stdout, then `std::process::exit(N)`          |
//!
//! Anything else is `Err(bad-input)`.

use core::hint::black_box;
use core::ptr::addr_of_mut;
use std::io::Write;

use cortex_agent::{Agent, AgentError, documents};

struct Hostile;

const MIB: usize = 1 << 20;
const PAGE: usize = 64 * 1024;

/// Lives in bss: must read as zeros in every fresh instance.
static mut SCRATCH: [u8; PAGE] = [0; PAGE];

fn spin() -> ! {
    let mut i = 0u64;
    loop {
        i = black_box(i.wrapping_add(1));
    }
}

fn grow() -> ! {
    let mut kept: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut block = vec![0u8; MIB];
        // Touch every page so the memory is really used.
        for i in (0..MIB).step_by(4096) {
            block[i] = black_box(1);
        }
        kept.push(black_box(block));
    }
}

/// Non-tail recursion that keeps several values live across each call, so every level
/// costs native stack (the engine's stack limit trips: a stack-overflow trap) while using
/// little of the shadow stack in linear memory. `black_box` on the result keeps LLVM from
/// turning the recursion into a loop (accumulator tail-recursion elimination).
#[inline(never)]
fn recurse(depth: u64) -> u64 {
    if black_box(depth) == u64::MAX {
        return 0;
    }
    let (a, b, c, d) = (mix(depth), mix(depth ^ 1), mix(depth ^ 2), mix(depth ^ 3));
    let below = black_box(recurse(depth + 1));
    below.rotate_left((a % 63) as u32).wrapping_mul(b | 1) ^ c.wrapping_sub(d)
}

fn mix(mut x: u64) -> u64 {
    x ^= x >> 31;
    x = x.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x ^ (x >> 29)
}

fn store_result(result: Result<u64, documents::StoreError>) -> String {
    match result {
        Ok(_) => "stored".to_owned(),
        Err(err) => format!("error:{}:{}", err.code(), err.detail()),
    }
}

fn flood() -> String {
    for i in 0..1_000_000u32 {
        if let Err(err) = documents::put("flood", &format!("k{i}"), "0", None) {
            return format!("error:{}:{}", err.code(), err.detail());
        }
    }
    "flooded".to_owned()
}

fn net() -> String {
    use std::net::{TcpStream, ToSocketAddrs};
    let tcp = match TcpStream::connect("127.0.0.1:80") {
        Ok(_) => "connected".to_owned(),
        Err(err) => format!("denied: tcp: {err}"),
    };
    let dns = match "example.com:80".to_socket_addrs() {
        Ok(addrs) => format!("resolved: {}", addrs.count()),
        Err(err) => format!("denied: dns: {err}"),
    };
    format!("{tcp}\n{dns}")
}

fn files() -> String {
    let read = match std::fs::read_to_string("/etc/passwd") {
        Ok(_) => "read".to_owned(),
        Err(err) => format!("denied: file: {err}"),
    };
    let dir = match std::fs::read_dir("/") {
        Ok(_) => "read".to_owned(),
        Err(err) => format!("denied: dir: {err}"),
    };
    format!("{read}\n{dir}")
}

fn probe() -> &'static str {
    let grown = core::arch::wasm32::memory_grow(0, 4);
    if grown == usize::MAX {
        return "grow-failed";
    }
    // SAFETY: the grown pages belong to no allocation (the allocator grows memory for
    // itself and gets pages after these), and the guest is single-threaded; raw pointers
    // only, no reference to the `static mut`.
    let clean = unsafe {
        let regions = [(addr_of_mut!(SCRATCH).cast::<u8>(), PAGE), ((grown * PAGE) as *mut u8, 4 * PAGE)];
        let mut clean = true;
        for (start, len) in regions {
            let bytes = core::slice::from_raw_parts_mut(start, len);
            clean &= black_box(&*bytes).iter().all(|&b| b == 0);
            bytes.fill(0xA5);
            black_box(bytes);
        }
        clean
    };
    if clean { "clean" } else { "dirty" }
}

/// Polls `hostile/key` until a test writes it, so an invocation is held for exactly as
/// long as the test needs (no wall-clock guess).
fn wait(key: &str) -> Result<String, AgentError> {
    for _ in 0..2_000 {
        let found = documents::get("hostile", key)
            .map_err(|e| AgentError::internal(format!("documents: {}: {}", e.code(), e.detail())))?;
        if found.is_some() {
            return Ok("released".to_owned());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Ok("gave-up".to_owned())
}

fn parse_n(s: &str) -> Result<u64, AgentError> {
    s.parse().map_err(|e| AgentError::bad_input(format!("bad number {s:?}: {e}")))
}

impl Agent for Hostile {
    fn handle(input: Vec<u8>) -> Result<Option<Vec<u8>>, AgentError> {
        let command = String::from_utf8(input)?;
        let (verb, arg) = command.split_once(':').unwrap_or((command.as_str(), ""));
        let out: String = match verb {
            "loop" => spin(),
            "grow" => grow(),
            "recurse" => recurse(0).to_string(),
            "big-output" => return Ok(Some(vec![b'x'; parse_n(arg)? as usize])),
            "trap" => core::arch::wasm32::unreachable(),
            "panic" => panic!("hostile panic"),
            "flood" => flood(),
            "oversize-key" => store_result(documents::put("hostile", &"k".repeat(100_000), "0", None)),
            "oversize-value" => {
                let value = format!("\"{}\"", "v".repeat(8 * MIB - 2));
                store_result(documents::put("hostile", "big", &value, None))
            }
            "net" => net(),
            "files" => files(),
            "sleep" => {
                std::thread::sleep(std::time::Duration::from_millis(parse_n(arg)?));
                "slept".to_owned()
            }
            "wait" => wait(arg)?,
            "probe" => probe().to_owned(),
            "print" => {
                let bytes = vec![b'x'; parse_n(arg)? as usize];
                let mut stdout = std::io::stdout().lock();
                stdout
                    .write_all(&bytes)
                    .and_then(|()| stdout.flush())
                    .map_err(|e| AgentError::internal(format!("stdout: {e}")))?;
                "printed".to_owned()
            }
            "echo" => arg.to_owned(),
            "exit" => {
                let code = i32::try_from(parse_n(arg)?).map_err(|e| AgentError::bad_input(e.to_string()))?;
                let mut stdout = std::io::stdout().lock();
                stdout
                    .write_all(b"exiting\n")
                    .and_then(|()| stdout.flush())
                    .map_err(|e| AgentError::internal(format!("stdout: {e}")))?;
                std::process::exit(code)
            }
            _ => return Err(AgentError::bad_input(format!("unknown command {command:?}"))),
        };
        Ok(Some(out.into_bytes()))
    }
}

cortex_agent::export_agent!(Hostile);
