//! Cortex: a multi-tenant WebAssembly host for sandboxed agents.
//!
//! Layers, lowest first: [`store`] (documents behind one async trait), [`runtime`] (the
//! wasmtime sandbox with hard limits), [`capabilities`] (the host imports agents see),
//! [`agents`] (the lifecycle: deployed agents, modules, invocations, deliveries, messaging),
//! [`api`] (the HTTP service over it).
//! See `README.md` for usage, configuration, the API and the limits.

pub mod agents;
pub mod api;
pub mod capabilities;
pub mod civil;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod coordination;
pub mod egress;
pub mod fsutil;
pub mod ids;
pub mod names;
pub mod oci;
pub mod registry;
pub mod runtime;
pub mod secrets;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod vault;
pub mod workflows;
