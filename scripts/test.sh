#!/usr/bin/env bash
# The whole test suite: unit, integration (real wasmtime, real built plugins, real store)
# and doc tests. Guest components are built by the build itself (tests/artifacts/build.rs).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --no-fail-fast "$@"
else
    echo "cargo-nextest not found; running cargo test instead" >&2
    cargo test --workspace --no-fail-fast "$@"
fi
cargo test --workspace --doc
