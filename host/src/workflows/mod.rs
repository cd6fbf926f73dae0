//! Workflows: durable multi-agent DAG runs.
//!
//! - [`def`]: the definition a tenant uploads (steps, dependencies, conditions, retries,
//!   `for_each`, compensations) and its validation;
//! - [`path`]: the path language of inputs, conditions and `for_each`;
//! - [`run`]: a run's persisted state and its pure state machine;
//! - [`engine`]: the per-tenant engine that drives runs, persisting the run before and
//!   after every call.
//!
//! Placement: each tenant's runs are driven by one node, the holder of the lease
//! `tenant/~workflows`, placed by the agents' lease loop
//! ([`crate::agents::ownership`]): rendezvous hashing over live nodes, taken over when the
//! owner dies, every run write fenced by the lease ([`crate::store::Fenced`]).
//!
//! Storage: definitions are records of kind [`crate::store::RecordKind::Workflow`]
//! (`tenant/name/<version>`), runs of kind [`crate::store::RecordKind::WorkflowRun`] (`tenant/run/<id>`,
//! with the index of active runs `tenant/active/<id>` and idempotency keys
//! `tenant/key/<workflow>/<hash>`). Neither is replicated through the registry stream:
//! every node reads them from the store when asked. Every transition of a run rewrites the
//! document `workflow-runs/<run id>` of the tenant (a summary: state and each step's
//! state), so it appears in the tenant's change feed, in the same atomic write as the run
//! record and its index entry (one fenced [`crate::store::RecordStore::record_apply`] with
//! a [`crate::store::RecordOp::PutDocument`]: one durable commit per transition, and no
//! crash leaves the summary behind the run). Run-level transitions also go to the audit
//! log, appended after that write.

pub mod def;
pub mod engine;
pub mod path;
pub mod run;

pub use def::{Definition, Invalid};
pub use engine::{WorkflowError, WorkflowRecord, Workflows};
pub use run::{Run, RunState, StepState};

/// The collection of each run's summary document (in the tenant's change feed).
pub const FEED_COLLECTION: &str = "workflow-runs";

/// The lease key of a tenant's workflow engine.
pub fn lease_key(tenant: &str) -> String {
    format!("{tenant}/~workflows")
}

/// The config keys a step's agent reads (`runtime.config`) for its run id, step id and
/// attempt (1-based).
pub const CONFIG_RUN: &str = "cortex.workflow.run";
/// See [`CONFIG_RUN`].
pub const CONFIG_STEP: &str = "cortex.workflow.step";
/// See [`CONFIG_RUN`].
pub const CONFIG_ATTEMPT: &str = "cortex.workflow.attempt";
