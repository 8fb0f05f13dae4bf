#!/usr/bin/env bash
# Benchmarks in release mode against a redis-server of their own (free
# loopback port): bulk load vs redis-cli --pipe, reads vs bare redis-rs and
# redis-benchmark, sync burst and sustained rates, HTTP under wrk vs raw
# HGETALL, memory, page weight. Prints a markdown table and writes
# target/bench/report.{md,json}. Takes about 6 minutes after the build.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WITH_BENCH=1 WITH_WASM_OPT=1 "$ROOT/scripts/setup.sh"
export PATH="$HOME/.cargo/bin:$PATH"
cd "$ROOT"
cargo leptos build --release
cargo bench -p server --bench bench
