#!/usr/bin/env bash
# The test suite: CPU tests of every crate, the wgpu tests on lavapipe (or a real GPU), a short
# fuzz run of every parser, a CUDA compile check, rustfmt and clippy. Run scripts/setup.sh once
# first on a fresh machine.
#
# Tests that need SmolLM2 skip loudly when models/ has no model; PEFT_REQUIRE_MODEL=1 (set by CI)
# turns that into a failure.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n=== %s (%s)\n' "$1" "$(date +%T)"; }

step "format"
cargo fmt --all -- --check

step "CPU tests (flex; reference attention path)"
cargo test --workspace --quiet

step "wgpu tests (fused kernels; lavapipe when no GPU)"
cargo test --quiet -p peft-kernels -p peft-models -p burn-peft \
  --features peft-kernels/wgpu,peft-models/wgpu,burn-peft/wgpu --test '*wgpu*'

step "fuzz smoke run (10 s per parser; scripts/fuzz.sh SECONDS for longer runs)"
FUZZ_PROFILE=dev scripts/fuzz.sh 10

step "CUDA compile check, the kernels' CUDA C++ generated through lavapipe, and the CubeCL launch-choice unit tests"
cargo build --quiet -p peft-cli --features cuda
cargo test --quiet -p peft-kernels --features wgpu,cuda --lib --test cuda_source

step "clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo clippy --quiet -p peft-kernels --features flex,ndarray,wgpu,cuda --all-targets -- -D warnings

step "all tests passed"
