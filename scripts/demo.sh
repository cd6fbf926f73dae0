#!/usr/bin/env bash
# The main job on the embedded default: build the host and the example agents, then serve
# the API on 127.0.0.1:8080 with a `demo` tenant whose `hello` and `counter` agents are
# deployed. Prints a token and curl lines. Stop with Ctrl-C (graceful drain).
#   scripts/demo.sh [extra `cortex serve` flags]
# The dev profile is used on purpose: dependencies are optimized (see Cargo.toml) and the
# build is shared with the test suite.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cargo build -p cortex-host -p cortex-artifacts
cortex="$CARGO_TARGET_DIR/debug/cortex"
artifacts="$CARGO_TARGET_DIR/debug/cortex-artifacts"
data="${CORTEX_DATA:-.cortex}"
exec "$cortex" serve --data "$data" \
    --deploy "hello=$("$artifacts" hello)" \
    --deploy "counter=$("$artifacts" counter)" "$@"
