#!/usr/bin/env bash
# Runs every test: unit and integration tests against real redis-servers
# (started by the tests on free loopback ports), then the Playwright suite in
# Debian's Chromium against the real server. Installs what is missing first.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WITH_BROWSER=1 "$ROOT/scripts/setup.sh"
export PATH="$HOME/.cargo/bin:$PATH"
cd "$ROOT"

# The real-size tests run once per run on a 1,000,000-row table (generated
# in PostgreSQL); set these lower for a quick local run.
export PREFETCH_REAL_SIZE_ROWS="${PREFETCH_REAL_SIZE_ROWS:-1000000}"
export PF_REAL_SIZE_ROWS="${PF_REAL_SIZE_ROWS:-1000000}"

echo "== cargo test (workspace)" >&2
cargo test --workspace

# A short chaos soak, fixed seed, one node then a cluster: every fault kind
# may come up; the independent checker must find nothing (docs/reliability.md).
echo "== soak (short, seed 7)" >&2
"$ROOT/scripts/soak.sh" --minutes 0.75 --seed 7

if [ -f end2end/playwright.config.ts ]; then
  echo "== playwright (end2end)" >&2
  cargo leptos build
  (cd end2end && npx playwright test)
fi
