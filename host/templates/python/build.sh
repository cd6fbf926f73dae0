#!/bin/sh
# Builds agent.wasm with componentize-py (CPython and app.py in one component) against the
# full cortex:agent world in wit/. componentize-py comes from PyPI:
#   pip install componentize-py==0.25.1
set -e
command -v componentize-py >/dev/null || {
    echo "componentize-py is not on PATH: pip install componentize-py==0.25.1" >&2
    exit 3
}
componentize-py -d wit -w agent componentize app -p . -o agent.wasm
