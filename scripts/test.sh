#!/usr/bin/env bash
# The test suite: CPU tests of every crate, the wgpu tests on lavapipe (or a real GPU), a short
# fuzz run of every parser, a CUDA compile check, rustfmt and clippy. It first runs
# scripts/setup.sh (lavapipe and the model; idempotent), so on a fresh machine it is the only
# command to run.
#
# A test that cannot run here (no model, a device too narrow for a kernel layout) records a skip
# (peft_testing::skip): this script prints how many were skipped and which. PEFT_NO_SKIP=1 (set
# by CI) makes every skip a failure. PEFT_TEST_PRUNE=1 (set by CI) deletes the test executables
# and examples of each test step once it has passed, for machines short of disk.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

target="${CARGO_TARGET_DIR:-target}"
mkdir -p "$target"
export PEFT_SKIP_LOG
PEFT_SKIP_LOG="$(cd "$target" && pwd)/peft-skipped-tests.log"
: >"$PEFT_SKIP_LOG"

# Printed however the run ends: the skips so far, and whether they are allowed.
report_skips() {
  local n
  n=$(wc -l <"$PEFT_SKIP_LOG" | tr -d ' ')
  printf '\n=== %s test(s) skipped\n' "$n"
  [ "$n" = 0 ] || sed 's/^/  /' "$PEFT_SKIP_LOG"
  if [ "$n" != 0 ] && [ "${PEFT_NO_SKIP:-0}" = 1 ]; then
    echo "error: PEFT_NO_SKIP=1 and $n test(s) skipped" >&2
    return 1
  fi
}
trap 'report_skips || exit 1' EXIT

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

step "setup (lavapipe, the model)"
scripts/setup.sh

step "format"
cargo fmt --all -- --check

step "CPU tests (flex and its host kernels; the reference attention op on NdArray, which has no kernels)"
cargo test --workspace --quiet
cargo test --quiet -p peft-kernels --features flex,ndarray --test attention_reference
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
