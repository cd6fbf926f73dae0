//! Benchmarks of the Cortex runtime; see `benches/runtime.rs` and `benches/README.md`.
