#!/bin/sh
# Builds {{ wasm }}: a WebAssembly component for wasm32-wasip2.
set -eu
cd "$(dirname "$0")"
rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
cargo build --quiet --release --target wasm32-wasip2
cp target/wasm32-wasip2/release/{{ lib }}.wasm {{ wasm }}
