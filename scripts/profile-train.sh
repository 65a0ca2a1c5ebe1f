#!/usr/bin/env bash
# Where a CPU training step's time goes: for each --precision, the CPU use of a
# `peft bench train` run (user + system time over wall time, from /usr/bin/time) and its
# hottest functions (perf, no call graphs). Uses target/release/peft (benches/compare.py or
# `cargo build --release -p peft-cli` builds it) and the benchmark's shape: prompt tuning,
# batch 8 x 128, 20 virtual tokens, 2 threads.
#
#   scripts/profile-train.sh [METHOD]        # prompt (default), prefix or prefix-mlp
#
# MODEL=path (default: the CLI's, SmolLM2) profiles another model; STEPS=n (default 3) timed
# steps after one warm-up step.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
method="${1:-prompt}"
peft=target/release/peft
export RAYON_NUM_THREADS=2
args=(bench train --backend flex --method "$method" --batch-size 8 --seq-len 128
  --virtual-tokens 20 --steps "${STEPS:-3}" --warmup 1 --json)
if [ -n "${MODEL:-}" ]; then args+=(--model "$MODEL"); fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for precision in f32 bf16; do
  echo "== $method, --precision $precision: CPU use"
  /usr/bin/time -f 'wall %e s, user %U s, system %S s, CPU %P' "$peft" "${args[@]}" --precision "$precision" 2>&1 | tail -n 2
  echo "== $method, --precision $precision: hottest functions (perf, share of samples)"
  perf record -q -F 499 -o "$tmp/perf.data" -- "$peft" "${args[@]}" --precision "$precision" >/dev/null 2>&1
  perf report -q -i "$tmp/perf.data" --no-children --sort dso,symbol --percent-limit 1.5 2>/dev/null |
    sed 's/ \+$//' | head -n 30
done
