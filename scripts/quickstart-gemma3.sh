#!/usr/bin/env bash
# The quickstart task on Gemma 3 270M (Q4_K_M GGUF, dequantised to f32): the base model's
# held-out exact match, then a 16-token soft prompt and a 16-slot prefix, each trained for 60
# steps on 400 customer-support messages and evaluated on the 120 held-out ones, then one
# `peft bench train` measurement of each method at the benchmark shape (batch 8 × 128, 20
# virtual tokens). About 20 minutes on 2 cores after a one-time release build; Gemma's
# 262,144-token head makes each evaluation's greedy completions take most of a minute.
#
# Usage: scripts/quickstart-gemma3.sh [OUT_DIR]   (default: runs/)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/fetch-model.sh gemma3-270m
cargo build --release --quiet -p peft-cli
peft=target/release/peft
model=models/gemma-3-270m-q4_k_m.gguf
data=examples/data/intents
out="${1:-runs}"
init='text:Classify the customer message into one category: billing, shipping, technical or account.'

"$peft" inspect "$model"

echo
echo "== base model"
"$peft" eval --model "$model" --data "$data/test.jsonl"

for method in prompt prefix; do
  case "$method" in
    prompt) lr=3e-2 ;;
    prefix) lr=5e-3 ;;
  esac
  echo
  echo "== training a $method adapter"
  rm -rf "$out/gemma3-$method"
  "$peft" train --model "$model" --method "$method" \
    --data "$data/train.jsonl" --eval "$data/test.jsonl" --out "$out/gemma3-$method" \
    --steps 60 --batch-size 8 --lr "$lr" --virtual-tokens 16 --init "$init" \
    --eval-every 60 --checkpoint-every 60
  echo "== with the $method adapter"
  "$peft" eval --model "$model" --data "$data/test.jsonl" --adapter "$out/gemma3-$method"
done

for method in prompt prefix; do
  echo
  echo "== peft bench train --method $method"
  "$peft" bench train --model "$model" --method "$method" --steps 3 --warmup 1
done
