//! All integration tests in one binary (one link; see tests/README.md).

// Test code may panic on broken set-up; clippy's in-test allowance misses helper functions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod api;
mod api_security;
mod arangodb;
mod cluster;
mod cluster_faults;
mod common;
mod counter;
mod deploy;
mod documents;
mod edge;
mod events;
mod exposition;
mod fake_arango;
mod fake_arango_process;
mod feed;
mod graph;
mod guides;
mod hostile;
mod languages;
mod load;
mod logs;
mod messaging;
mod metrics;
mod modules;
mod openapi_doc;
mod pipeline;
mod pools;
mod profiles;
mod quotas_across_nodes;
mod request_ids;
mod routes_in_process;
mod schemathesis;
mod server;
mod shared_modules;
mod store_contract;
mod supervision;
mod tenants;
mod tracing_otlp;
