//! Command-line helpers of the `cortex` binary.

pub mod client;
pub mod units;
