#!/usr/bin/env bash
# Builds (release) and runs the demo on http://127.0.0.1:8791.
# Extra arguments go to the server, e.g. `./scripts/demo.sh --port 9000`.
# With no Redis given and none on localhost:6379 it starts a private one.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WITH_WASM_OPT=1 "$ROOT/scripts/setup.sh"
export PATH="$HOME/.cargo/bin:$PATH"
cd "$ROOT"
# The release site has a directory of its own (the tests build the debug
# one into target/site), so the demo and the tests can run side by side.
export LEPTOS_SITE_ROOT=target/site-release
cargo leptos build --release
export LEPTOS_OUTPUT_NAME=prefetch-demo LEPTOS_SITE_PKG_DIR=pkg
exec target/release/server "$@"
