//! Command-line helpers of the `cortex` binary.

pub mod units;
