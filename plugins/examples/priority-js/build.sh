#!/bin/sh
# Builds priority.wasm with the toolchain pinned in package-lock.json (npm registry). The SDK
# helper is copied in because componentize-js loads modules only from the source's directory.
set -eu
cd "$(dirname "$0")"
command -v npm >/dev/null || { echo "build.sh: Node.js 18+ with npm is needed" >&2; exit 1; }
[ -d node_modules/@bytecodealliance/componentize-js ] || npm ci --no-audit --no-fund --loglevel=error
cmp -s ../../../sdk/js/usm.js usm.js || cp ../../../sdk/js/usm.js usm.js
npm run --silent build
