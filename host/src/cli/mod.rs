//! Command-line helpers of the `cortex` binary.

pub mod client;
pub mod deadletters;
pub mod deploy;
pub mod dev;
pub mod events;
pub mod logs;
pub mod new;
pub mod project;
pub mod push;
pub mod sse;
pub mod tenants;
pub mod units;
pub mod workflows;
