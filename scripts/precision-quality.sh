#!/usr/bin/env bash
# Quality of --precision bf16 against f32 on the quickstart's task (scripts/quickstart.sh): the
# same 60-step prompt-tuning run in each precision, each evaluated on the held-out messages in
# its own precision. Prints both runs' exact match and eval loss and the differences that
# issue 23 bounds (exact match within 2 points, eval loss within 10%); exits non-zero when a
# bound is missed. About 10 minutes on 2 cores after the release build.
#
#   scripts/precision-quality.sh            # builds target/release/peft first
#   PEFT_BIN=path/to/peft scripts/precision-quality.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/fetch-model.sh
if [ -z "${PEFT_BIN:-}" ]; then
  cargo build --release --quiet -p peft-cli
  PEFT_BIN=target/release/peft
fi

for precision in f32 bf16; do
  out="runs/quality-$precision"
  rm -rf "$out"
  echo "== train, --precision $precision"
  start=$(date +%s)
  "$PEFT_BIN" train \
    --method prompt \
    --data examples/data/intents/train.jsonl \
    --out "$out" \
    --steps 60 --batch-size 8 --lr 3e-2 \
    --virtual-tokens 16 \
    --init 'text:Classify the customer message into one category: billing, shipping, technical or account.' \
    --precision "$precision" >/dev/null
  echo "trained in $(( $(date +%s) - start )) s"
  "$PEFT_BIN" eval --data examples/data/intents/test.jsonl --adapter "$out" \
    --precision "$precision" --json | tail -n 1 | tee "runs/quality-$precision.json"
done

python3 - <<'PY'
import json, sys
f32, bf16 = (json.load(open(f"runs/quality-{p}.json")) for p in ("f32", "bf16"))
em = 100 * (bf16["exact_match"] - f32["exact_match"])
loss = bf16["loss"] / f32["loss"] - 1
print(f"exact match: f32 {100 * f32['exact_match']:.1f}%, bf16 {100 * bf16['exact_match']:.1f}% "
      f"({em:+.1f} points; bound ±2)")
print(f"eval loss:   f32 {f32['loss']:.4f}, bf16 {bf16['loss']:.4f} ({100 * loss:+.1f}%; bound ±10%)")
ok = abs(em) <= 2 and abs(loss) <= 0.10
print("within the bounds" if ok else "OUTSIDE the bounds")
sys.exit(0 if ok else 1)
PY
