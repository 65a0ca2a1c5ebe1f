#!/usr/bin/env bash
# Data-parallel training on this machine: tokens/s of `peft train` with one peer, two peers in
# one process (--devices 2, burn-collective) and two nodes (two processes meeting at
# `peft coordinator` over 127.0.0.1), alternated, two rounds; with the seconds each step spent
# in the gradient sum (metrics.jsonl's sync_seconds, waiting for the slower peer included).
# Then the cost of one sum alone, for both layouts and both gradient sizes (criterion,
# benches/allreduce.rs). Uses target/release/peft (`cargo build --release -p peft-cli`) and
# the model scripts/fetch-model.sh fetches.
#
#   scripts/bench-parallel.sh [STEPS]       # default 12; the first 2 steps are not counted
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
steps="${1:-12}"
peft=target/release/peft
data=examples/data/intents/train.jsonl
tmp=$(mktemp -d)
trap 'pkill -P $$ 2>/dev/null || true; rm -rf "$tmp"' EXIT

echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(nproc) cores;" \
  "flags:$(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx512f|avx512_bf16|amx_bf16|amx_tile)$' | tr '\n' ' ')"
echo "commit: $(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo ' (uncommitted changes)')"

# Mean tokens/s and sync ms over steps 3.. of a run's metrics.jsonl.
summary() {
  python3 - "$1" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"train"' in l]
rows = [r for r in rows if r["step"] > 2]
tok = sum(r["tokens"] for r in rows) / sum(r["seconds"] for r in rows)
sync = 1000 * sum(r["sync_seconds"] for r in rows) / len(rows)
step = 1000 * sum(r["seconds"] for r in rows) / len(rows)
print(f"{tok:8.1f} tok/s   step {step:7.1f} ms   in the sum {sync:6.1f} ms ({len(rows)} steps)")
EOF
}

train() {
  local method=$1 out=$2
  shift 2
  "$peft" train --method "$method" --data "$data" --out "$out" --steps "$steps" --batch-size 8 \
    --virtual-tokens 20 --warmup 1 --checkpoint-every 1000 "$@"
}

port=29700
for method in prompt prefix-mlp; do
  for round in 1 2; do
    echo "== $method, round $round"
    RAYON_NUM_THREADS=2 train "$method" "$tmp/one" >/dev/null 2>"$tmp/log" || { cat "$tmp/log"; exit 1; }
    printf '  1 peer              %s\n' "$(summary "$tmp/one/metrics.jsonl")"
    RAYON_NUM_THREADS=2 train "$method" "$tmp/dev2" --devices 2 >/dev/null 2>"$tmp/log" || { cat "$tmp/log"; exit 1; }
    printf '  --devices 2         %s\n' "$(summary "$tmp/dev2/metrics.jsonl")"
    port=$((port + 1))
    "$peft" coordinator --port "$port" --runs 1 2>/dev/null &
    RAYON_NUM_THREADS=1 train "$method" "$tmp/nodes" --nodes 2 --node-rank 1 \
      --coordinator "127.0.0.1:$port" >/dev/null 2>"$tmp/log1" &
    RAYON_NUM_THREADS=1 train "$method" "$tmp/nodes" --nodes 2 --node-rank 0 \
      --coordinator "127.0.0.1:$port" >/dev/null 2>"$tmp/log" || { cat "$tmp/log"; exit 1; }
    wait
    printf '  --nodes 2 (1 core)  %s\n' "$(summary "$tmp/nodes/metrics.jsonl")"
  done
done

echo "== one gradient sum alone (criterion, benches/allreduce.rs)"
cargo bench -q --bench allreduce 2>&1 | grep -E '^(allreduce|Intel|AMD|model name)|time:|thrpt:' || true
