#!/bin/sh
# Builds agent.wasm: cargo for wasm32-wasip2 (the target rust-toolchain.toml asks rustup
# for), then the component is copied out of cargo's target folder.
set -e
cargo build --release --target wasm32-wasip2
cp "${CARGO_TARGET_DIR:-target}/wasm32-wasip2/release/{{name_snake}}.wasm" agent.wasm
