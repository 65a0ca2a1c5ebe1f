#!/usr/bin/env bash
# The test suite: CPU tests of every crate, the wgpu tests on lavapipe (or a real GPU), a short
# fuzz run of every parser, a CUDA compile check, rustfmt and clippy. Run scripts/setup.sh once
# first on a fresh machine.
#
# Tests that need SmolLM2 skip loudly when models/ has no model; PEFT_REQUIRE_MODEL=1 (set by CI)
# turns that into a failure. PEFT_TEST_PRUNE=1 (set by CI) deletes the test executables and
# examples of each test step once it has passed, for machines short of disk.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

target="${CARGO_TARGET_DIR:-target}"

step() {
  printf '\n=== %s (%s; %s free on the target disk)\n' "$1" "$(date +%T)" \
    "$(df -h --output=avail "$(dirname "$target")" 2>/dev/null | tail -n 1 | tr -d ' ')"
}

# The linked test executables and examples of the dev profile: files without an extension (the
# libraries, build scripts and fingerprints stay, so later steps rebuild nothing they need).
prune() {
  [ "${PEFT_TEST_PRUNE:-0}" = 1 ] || return 0
  find "$target/debug/deps" "$target/debug/examples" -maxdepth 1 -type f -perm -u+x \
    ! -name '*.*' -delete 2>/dev/null || true
}

step "format"
cargo fmt --all -- --check

step "CPU tests (flex; reference attention path)"
cargo test --workspace --quiet
prune

step "wgpu tests (fused kernels; lavapipe when no GPU)"
cargo test --quiet -p peft-kernels -p peft-models -p burn-peft \
  --features peft-kernels/wgpu,peft-models/wgpu,burn-peft/wgpu --test '*wgpu*'
prune

step "fuzz smoke run (10 s per parser; scripts/fuzz.sh SECONDS for longer runs)"
FUZZ_PROFILE=dev scripts/fuzz.sh 10

# The kernels crate is built with CUDA here (its unit tests and cuda_source link against it);
# the rest of the workspace is type-checked with CUDA by the clippy step below, which enables
# every backend at once so that the dependencies are checked once, not once per feature set.
step "CUDA build of the kernels, their CUDA C++ generated through lavapipe, and the CubeCL launch-choice unit tests"
cargo test --quiet -p peft-kernels --features wgpu,cuda --lib --test cuda_source
prune

step "clippy (every crate and target; every backend feature of the CLI and the kernels)"
cargo clippy --workspace --all-targets --quiet \
  --features burn-peft/cuda,burn-peft/wgpu,peft-cli/cuda,peft-cli/wgpu,peft-kernels/flex,peft-kernels/ndarray \
  -- -D warnings

step "all tests passed"
