#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 10) with the stable-toolchain harness
# (fuzz/src/main.rs); exits non-zero on any panic, oversized allocation or hang, and saves the
# input under fuzz/crashes/<target>/.
#
# Usage: scripts/fuzz.sh [SECONDS] [TARGET ...]
#   FUZZ_PROFILE=dev scripts/fuzz.sh 10    (the test build's profile: no separate release build;
#                                           what scripts/test.sh runs)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
seconds="${1:-10}"
shift || true
cargo run --quiet --profile "${FUZZ_PROFILE:-release}" -p peft-fuzz -- --seconds "$seconds" "$@"
