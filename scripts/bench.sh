#!/usr/bin/env bash
# Benchmarks in release mode against a redis-server of their own (free
# loopback port) and a private PostgreSQL: bulk load vs redis-cli --pipe,
# reads vs bare redis-rs and redis-benchmark, versioned sync bursts and
# sustained rates vs raw MULTI/EXEC, re-prefetch under readers, the
# PostgreSQL initial load vs COPY + --pipe and commit-to-Redis lag, HTTP
# under wrk vs raw HGETALL, memory, page weight, the UI's figures in
# Chromium, and a 10,000,000-row table (load, RSS, page open, a million-row
# UPDATE, TTL renewal). Prints a markdown table and writes
# target/bench/report.{md,json}. Takes about 30 minutes after the build.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WITH_BENCH=1 WITH_WASM_OPT=1 WITH_BROWSER=1 "$ROOT/scripts/setup.sh"
export PATH="$HOME/.cargo/bin:$PATH"
cd "$ROOT"
export LEPTOS_SITE_ROOT="$ROOT/target/site-release"
cargo leptos build --release
# The UI figures (mutation request -> DOM; the main-thread cost of one feed
# event with 1,000 rows), measured on the release build.
(cd end2end && PF_BENCH=1 SERVER_BIN="$ROOT/target/release/server" npx playwright test latency.spec.ts apply-cost.spec.ts)
cargo bench -p server --bench bench
