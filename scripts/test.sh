#!/usr/bin/env bash
# Runs every test: unit and integration tests against real redis-servers
# (started by the tests on free loopback ports), then the Playwright suite in
# Debian's Chromium against the real server. Installs what is missing first.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WITH_BROWSER=1 "$ROOT/scripts/setup.sh"
export PATH="$HOME/.cargo/bin:$PATH"
cd "$ROOT"

echo "== cargo test (workspace)" >&2
cargo test --workspace

if [ -f end2end/playwright.config.ts ]; then
  echo "== playwright (end2end)" >&2
  cargo leptos build
  (cd end2end && npx playwright test)
fi
