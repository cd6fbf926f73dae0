#!/usr/bin/env bash
# Shared set-up for the README's commands: the pinned toolchain with its wasm32-wasip2
# target (rustup does not add a listed target to an installed toolchain by itself), and
# one target directory outside the clone so later runs reuse built dependencies.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
rustup toolchain install >/dev/null
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cortex/target}"
