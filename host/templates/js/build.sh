#!/bin/sh
# Builds agent.wasm with componentize-js (the StarlingMonkey engine and app.js in one
# component) against the full cortex:agent world in wit/. `npm install` puts
# componentize-js in node_modules/ (versions pinned in package.json).
set -e
PATH="$PWD/node_modules/.bin:$PATH"
command -v componentize-js >/dev/null || {
    echo "componentize-js is not installed: run npm install (Node.js 20 or later)" >&2
    exit 3
}
# -d http fetch-event: leave fetch (wasi:http) out; the host refuses wasi:http.
componentize-js app.js --wit wit --world-name agent -d http fetch-event -o agent.wasm
