#!/usr/bin/env bash
# Makes the toolchain rust-toolchain.toml pins available without a download:
# where a machine's `stable` is 1.95.0 but no toolchain carries that name,
# link it under the name. Sourced by setup.sh and .ci/run; safe to re-run.
if command -v rustup >/dev/null && ! rustup toolchain list | grep -q '^1\.95\.0'; then
  stable_version="$(RUSTUP_TOOLCHAIN=stable rustc --version 2>/dev/null | awk '{print $2}')"
  if [ "$stable_version" = 1.95.0 ]; then
    rustup toolchain link 1.95.0 "$(RUSTUP_TOOLCHAIN=stable rustc --print sysroot)"
  fi
fi
