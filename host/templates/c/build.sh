#!/usr/bin/env bash
# Builds this agent into build/{{name}}.wasm (what `cortex build` runs, see cortex.toml):
#   clang-19 --target=wasm32-wasi (wasi-libc) -> build/core.wasm, a WASI preview 1 module
#   wasm-tools component embed wit --world agent -> the world's types added
#   wasm-tools component new --adapt (the preview 1 adapter) -> the component
# Tools: clang-19 and wasm-ld-19 with wasi-libc (apt: clang-19 lld-19 wasi-libc
# libclang-rt-19-dev-wasm32); wasm-tools and the adapter from $CORTEX_LANG_TOOLS (default
# ~/.cache/cortex/lang-tools), where the Cortex repo's
# scripts/install-language-toolchains.sh puts them. CC overrides the compiler.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
TOOLS="${CORTEX_LANG_TOOLS:-$HOME/.cache/cortex/lang-tools}"
ADAPTER="$TOOLS/wasi_snapshot_preview1.reactor.wasm"
CC="${CC:-clang-19}"
export PATH="$TOOLS/venv/bin:$PATH"

missing() {
    echo "build.sh: missing $1; install the toolchains with scripts/install-language-toolchains.sh" >&2
    echo "    from a clone of the Cortex repository (or set CORTEX_LANG_TOOLS to where they are)" >&2
    exit 3
}
command -v "$CC" >/dev/null || missing "$CC (apt clang-19)"
command -v wasm-tools >/dev/null || missing "wasm-tools (PyPI wasm-tools)"
[[ -f "$ADAPTER" ]] || missing "$ADAPTER (the preview 1 adapter)"

# The bindings were generated from the WIT whose hash gen/WIT.sha256 records.
have=$(wasm-tools component wit wit | sha256sum | cut -c1-64)
if [[ "$have" != "$(cat gen/WIT.sha256)" ]]; then
    echo "build.sh: wit/ changed since the bindings were generated: regenerate them with" >&2
    echo "    wit-bindgen c wit --world agent --no-object-file --out-dir gen   (wit-bindgen-cli 0.63.0)" >&2
    exit 4
fi

mkdir -p build
# reactor: a library-style module (no main).
"$CC" --target=wasm32-wasi -mexec-model=reactor -O2 -Wall -Werror -Igen \
    src/*.c gen/agent.c gen/component_type.c -o build/core.wasm
wasm-tools component embed wit --world agent build/core.wasm -o build/embedded.wasm
wasm-tools component new build/embedded.wasm --adapt "wasi_snapshot_preview1=$ADAPTER" -o "build/{{name}}.wasm"
