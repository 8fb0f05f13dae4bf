#!/usr/bin/env bash
# A seeded chaos soak of the whole system with an independent checker
# (the `soak` crate): PostgreSQL, Redis (one node, then a cluster of three
# primaries with replicas), two server replicas, writers and readers, under
# a fault schedule drawn from the seed. Prints a report per topology and
# exits 1 on any violation.
#
#   scripts/soak.sh [--minutes N] [--seed S] [--topology single|cluster|both]
#
# Run the README's test command once first (it installs what this needs).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PATH="$HOME/.cargo/bin:$PATH"
cd "$ROOT"
cargo build -q -p server -p soak
exec target/debug/soak --server target/debug/server "$@"
