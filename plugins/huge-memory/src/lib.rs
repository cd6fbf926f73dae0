//! `huge-memory` (world `tool`): a 1 GiB static, so the core module's memory starts at
//! 1 GiB or more. The host must refuse it (or fail to instantiate it) under its limit.

use core::hint::black_box;
use core::ptr::addr_of_mut;

use cortex_agent::{AgentError, Tool};

const SIZE: usize = 1 << 30;

/// Zero-initialised, so it lives in bss: the module's initial memory covers it but the
/// file does not contain it.
static mut BIG: [u8; SIZE] = [0; SIZE];

struct HugeMemory;

impl Tool for HugeMemory {
    fn handle(input: Vec<u8>) -> Result<Option<Vec<u8>>, AgentError> {
        let index = black_box(input.len()) % SIZE;
        // SAFETY: single-threaded guest; a raw pointer, no reference to the `static mut`.
        let byte = unsafe {
            let big = addr_of_mut!(BIG).cast::<u8>();
            big.add(index).write_volatile(1);
            black_box(big.add(index).read_volatile())
        };
        Ok(Some(vec![byte]))
    }
}

cortex_agent::export_tool!(HugeMemory);
