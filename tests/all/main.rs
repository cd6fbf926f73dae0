//! All integration tests in one binary (one link; see tests/README.md).

mod common;
mod counter;
mod documents;
mod hostile;
mod load;
