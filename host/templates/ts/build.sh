#!/bin/sh
# Builds agent.wasm: tsc compiles src/ to dist/, then componentize-js (the StarlingMonkey
# engine and the JavaScript in one component) builds against the full cortex:agent world
# in wit/. `npm install` puts tsc and componentize-js in node_modules/ (pinned in
# package.json).
set -e
PATH="$PWD/node_modules/.bin:$PATH"
for tool in tsc componentize-js; do
    command -v "$tool" >/dev/null || {
        echo "$tool is not installed: run npm install (Node.js 20 or later)" >&2
        exit 3
    }
done
tsc -p .
# -d http fetch-event: leave fetch (wasi:http) out; the host refuses wasi:http.
componentize-js dist/app.js --wit wit --world-name agent -d http fetch-event -o agent.wasm
