#!/usr/bin/env bash
# Long-run memory check (not in CI): 1000 training steps and 10 000 generation steps on the tiny
# model, resident memory sampled throughout; fails if it grows after warm-up.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo run --release --quiet --example long_run
