#!/usr/bin/env bash
# The whole test suite: unit, integration (real wasmtime, real built plugins, real store)
# and doc tests. Guest components are built by the build itself (tests/artifacts/build.rs).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
# Toolchains for the Python, JavaScript/TypeScript, Go and C agents (apt, pip, npm, crates;
# pinned in the repo; about a minute on a fresh machine, a fraction of a second after).
scripts/install-language-toolchains.sh
# It installed kubectl, promtool and kubernetes-validate: the manifests' test
# (tests/all/deploy.rs) fails instead of skipping when one is missing.
export CORTEX_REQUIRE_DEPLOY_TOOLS=1
# Doc tests first, so the run closes on the main suite's summary line.
cargo test --workspace --doc
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --no-fail-fast "$@"
else
    echo "cargo-nextest not found; running cargo test instead" >&2
    cargo test --workspace --no-fail-fast "$@"
fi
