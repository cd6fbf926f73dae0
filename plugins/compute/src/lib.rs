//! `compute` (world `tool`), for benchmarks:
//!
//! - `cpu:N`: N rounds of integer hashing and a small sort; returns a checksum.
//! - `mem:N`: N passes of strided, pseudo-random reads and writes over a 4 MiB buffer;
//!   returns a checksum.

use core::hint::black_box;

use cortex_agent::{AgentError, Tool};

const BUFFER: usize = 4 << 20;

struct Compute;

fn mix(mut x: u64) -> u64 {
    // splitmix64 finaliser.
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn cpu(rounds: u64) -> u64 {
    let mut state = black_box(0x1234_5678_u64);
    let mut sum = 0u64;
    for round in 0..rounds {
        let mut array = [0u64; 32];
        for slot in &mut array {
            state = mix(state.wrapping_add(round));
            *slot = state;
        }
        array.sort_unstable();
        sum = sum.wrapping_add(black_box(array)[round as usize % 32]);
    }
    sum
}

fn mem(passes: u64) -> u64 {
    let mut buffer = black_box(vec![0u8; BUFFER]);
    let mut state = black_box(0x9e37_79b9_u64);
    let mut sum = 0u64;
    for pass in 0..passes {
        // One strided sweep (64-byte steps: a cache line each) ...
        let mut i = (pass as usize * 7) % 64;
        while i < BUFFER {
            buffer[i] = buffer[i].wrapping_add(1);
            i += 64;
        }
        // ... and as many random touches.
        for _ in 0..BUFFER / 64 {
            state = mix(state);
            let j = (state as usize) & (BUFFER - 1);
            sum = sum.wrapping_add(u64::from(buffer[j]));
            buffer[j] ^= state as u8;
        }
        black_box(&mut buffer);
    }
    sum
}

impl Tool for Compute {
    fn handle(input: Vec<u8>) -> Result<Option<Vec<u8>>, AgentError> {
        let text = String::from_utf8(input)?;
        let (kind, n) = text.split_once(':').ok_or_else(|| AgentError::bad_input("expected cpu:N or mem:N"))?;
        let n: u64 = n.parse().map_err(|e| AgentError::bad_input(format!("bad N: {e}")))?;
        let checksum = match kind {
            "cpu" => cpu(black_box(n)),
            "mem" => mem(black_box(n)),
            other => return Err(AgentError::bad_input(format!("unknown workload {other:?}"))),
        };
        Ok(Some(black_box(checksum).to_string().into_bytes()))
    }
}

cortex_agent::export_tool!(Compute);
