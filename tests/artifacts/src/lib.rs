//! Paths of the guest components in `plugins/`, built for `wasm32-wasip2` by this
//! crate's build script (`plugins/wat/*.wat` compiled with the `wat` crate).
//!
//! One constant per component, named after its directory or file (`huge-memory` ->
//! [`HUGE_MEMORY`]), holding the absolute path of the `.wasm` component, and [`ALL`].
//! [`bombs`] generates compile bombs (no build step: they are made to a test's size).
//!
//! ```
//! for (name, path) in cortex_artifacts::ALL {
//!     assert!(std::path::Path::new(path).is_file(), "{name}: {path}");
//! }
//! ```

include!(concat!(env!("OUT_DIR"), "/artifacts.rs"));

pub mod bombs;
