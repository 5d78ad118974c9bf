#!/bin/sh
# Builds {{ wasm }} with componentize-js as pinned in package.json (from the npm registry).
set -eu
cd "$(dirname "$0")"
command -v npm >/dev/null || { echo "build.sh: Node.js 18+ with npm is needed" >&2; exit 1; }
[ -d node_modules/@bytecodealliance/componentize-js ] || npm install --no-audit --no-fund --loglevel=error
npm run --silent build
