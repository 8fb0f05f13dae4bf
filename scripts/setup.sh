#!/usr/bin/env bash
# Installs what the demo and the tests need, skipping everything already
# present at the right version (a cold install takes ~20 min on 2 cores,
# a warm run ~1 s). Safe to re-run. Sourced by demo.sh, test.sh, bench.sh.
#
#   WITH_BROWSER=1   also Debian's chromium + the Playwright npm packages
#   WITH_WASM_OPT=1  also wasm-opt (binaryen 116, needed by --release builds)
#   WITH_BENCH=1     also wrk (HTTP load generator)
#   WITH_LINT=1      also cargo-machete (the unused-dependency gate in CI)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PATH="$HOME/.cargo/bin:$PATH"
log() { printf '\033[1;34m[setup]\033[0m %s\n' "$*" >&2; }
# shellcheck source=scripts/toolchain.sh
source "$ROOT/scripts/toolchain.sh"

# --- Debian packages -------------------------------------------------------
# Never binaryen: Debian's wasm-opt 108 silently breaks release wasm.
pkgs=()
command -v redis-server >/dev/null || pkgs+=(redis-server)
command -v openssl >/dev/null || pkgs+=(openssl)
command -v redis-cli >/dev/null || pkgs+=(redis-tools)
command -v node >/dev/null || pkgs+=(nodejs)
command -v npm >/dev/null || pkgs+=(npm)
command -v cc >/dev/null || pkgs+=(build-essential)
command -v python3 >/dev/null || pkgs+=(python3)
command -v pkg-config >/dev/null || pkgs+=(pkg-config)
# A locale that collates unlike C, for the version guard's locale test.
command -v localedef >/dev/null || pkgs+=(locales)
# PostgreSQL: libpq to build the replication source against, the server
# binaries for `--primary postgres` and the tests' private databases.
pkg-config --exists libpq 2>/dev/null || pkgs+=(libpq-dev)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || pkgs+=(postgresql)
if [ "${WITH_BROWSER:-0}" = 1 ]; then
  command -v chromium >/dev/null || pkgs+=(chromium)
fi
if [ "${WITH_BENCH:-0}" = 1 ]; then
  command -v wrk >/dev/null || pkgs+=(wrk)
  command -v redis-benchmark >/dev/null || pkgs+=(redis-tools)
fi
if [ ${#pkgs[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  log "apt-get install ${pkgs[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
fi

if ! locale -a 2>/dev/null | grep -qix 'en_US.utf8'; then
  log "localedef en_US.UTF-8"
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO localedef -i en_US -f UTF-8 en_US.UTF-8 || log "could not generate en_US.UTF-8 (the locale test falls back to C.UTF-8)"
fi

# --- Rust targets and tools ------------------------------------------------
if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  log "rustup target add wasm32-unknown-unknown"
  rustup target add wasm32-unknown-unknown
fi

# cargo-leptos 0.3.11 needs rustc 1.96 with --locked; 0.3.10 is the same code.
if ! cargo leptos --version 2>/dev/null | grep -q '^cargo-leptos 0\.3\.'; then
  log "cargo install cargo-leptos 0.3.10 (about 13 min)"
  cargo install cargo-leptos --locked --version 0.3.10
fi

# The wasm-bindgen CLI must match the crate in Cargo.lock exactly.
wb_version="$(awk '/^name = "wasm-bindgen"$/ {getline; gsub(/version = |"/, ""); print; exit}' "$ROOT/Cargo.lock")"
if [ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" != "$wb_version" ]; then
  log "cargo install wasm-bindgen-cli $wb_version (about 2 min)"
  # --locked fails against this registry (webpki-roots); fall back by MSRV.
  CARGO_RESOLVER_INCOMPATIBLE_RUST_VERSIONS=fallback \
    cargo install wasm-bindgen-cli --version "$wb_version" --force
fi

if [ "${WITH_WASM_OPT:-0}" = 1 ] && ! "$HOME/.cargo/bin/wasm-opt" --version 2>/dev/null | grep -q 'version 116'; then
  log "cargo install wasm-opt 0.116.1 (binaryen 116, about 6 min)"
  cargo install wasm-opt --version 0.116.1 --locked
fi

if [ "${WITH_LINT:-0}" = 1 ] && ! cargo machete --version >/dev/null 2>&1; then
  log "cargo install cargo-machete (about 2 min)"
  cargo install cargo-machete --locked
fi

# --- npm packages for the browser tests ------------------------------------
if [ "${WITH_BROWSER:-0}" = 1 ] && [ -f "$ROOT/end2end/package-lock.json" ]; then
  stamp="$ROOT/end2end/node_modules/.package-lock.json"
  if [ ! -f "$stamp" ] || [ "$ROOT/end2end/package-lock.json" -nt "$stamp" ]; then
    log "npm ci (end2end)"
    (cd "$ROOT/end2end" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)
  fi
fi
