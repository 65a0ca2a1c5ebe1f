#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 10) with the stable-toolchain harness
# (fuzz/src/main.rs); exits non-zero on any panic, oversized allocation or hang, and saves the
# input under fuzz/crashes/.
#
# Usage: scripts/fuzz.sh [SECONDS] [TARGET ...]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
seconds="${1:-10}"
shift || true
cargo build --release --quiet -p peft-fuzz
target/release/peft-fuzz --seconds "$seconds" "$@"
