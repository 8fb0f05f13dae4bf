#!/usr/bin/env bash
# Benchmarks in release mode against a redis-server of their own (free
# loopback port): bulk load vs redis-cli --pipe, reads vs bare redis-rs and
# redis-benchmark, sync burst and sustained rates, HTTP under wrk vs raw
# HGETALL, memory, page weight, and the UI's mutation-to-DOM latency in
# Chromium. Prints a markdown table and writes
# target/bench/report.{md,json}. Takes about 6 minutes after the build.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WITH_BENCH=1 WITH_WASM_OPT=1 WITH_BROWSER=1 "$ROOT/scripts/setup.sh"
export PATH="$HOME/.cargo/bin:$PATH"
cd "$ROOT"
export LEPTOS_SITE_ROOT="$ROOT/target/site-release"
cargo leptos build --release
# The UI figure (mutation request -> DOM), measured on the release build.
(cd end2end && SERVER_BIN="$ROOT/target/release/server" npx playwright test latency.spec.ts)
cargo bench -p server --bench bench
