#!/usr/bin/env bash
# Build the host and the example agents, then run hello and counter through `cortex run`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cargo build --release -p cortex-host -p cortex-artifacts
cortex="$CARGO_TARGET_DIR/release/cortex"
hello=$(cargo run --release -q -p cortex-artifacts -- hello)
counter=$(cargo run --release -q -p cortex-artifacts -- counter)
data="${CORTEX_DATA:-$(mktemp -d)}"
echo "== hello"
"$cortex" run "$hello" --input "${1:-Cortex}" --data "$data"
echo "== counter, three times (state lives in $data)"
for _ in 1 2 3; do "$cortex" run "$counter" --input demo --data "$data"; done
echo "== a runaway agent stopped by its deadline"
"$cortex" run "$(cargo run --release -q -p cortex-artifacts -- hostile)" --input loop --timeout 300ms --data "$data" || true
