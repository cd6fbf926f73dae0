//! Command-line helpers of the `cortex` binary.

pub mod client;
pub mod push;
pub mod units;
