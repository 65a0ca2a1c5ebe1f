#!/usr/bin/env bash
# The CUDA check of the fused prefix-attention kernels, in one run on a machine with an NVIDIA
# GPU: the CUDA test binaries (against the f64 oracle, and the no-score-matrix allocation test),
# `peft bench attention --backend cuda` on the issue's shape and a few others, and one profiled
# run whose log gives every kernel's GPU time (CubeCL's profiler: each launch is timed on the
# device, so the log separates kernel time from launch overhead).
#
#   scripts/gpu-check.sh [OUT_DIR]
#
# With cargo on the machine it builds the binaries itself. Without (a bare GPU machine), build
# them elsewhere and point PEFT_GPU_BIN at a folder holding `attention_cuda`,
# `attention_cuda_f16`, `attention_cuda_bf16`, `attention_cuda_tiles`, `fused_memory_cuda` and
# `peft`:
#
#   CUDARC_CUDA_VERSION=13000 cargo test --release -p peft-kernels --features cuda --no-run \
#       --test attention_cuda --test attention_cuda_f16 --test attention_cuda_bf16 \
#       --test attention_cuda_tiles --test fused_memory_cuda
#   CUDARC_CUDA_VERSION=13000 cargo build --release -p peft-cli --features cuda
#
# Release builds: Burn's host-side code (fusion, autodiff, launch) is generic and compiled in
# this workspace's crates, so a dev build runs it unoptimised and inflates every launch.
# (CUDARC_CUDA_VERSION picks the CUDA API the binaries bind to; match the GPU machine's toolkit.
# Without nvcc at build time cudarc binds to its newest supported version.)
set -uo pipefail
out="${1:-gpu-check-out}"
mkdir -p "$out"

if [[ -z "${PEFT_GPU_BIN:-}" ]]; then
    command -v cargo >/dev/null || { echo "no cargo here: set PEFT_GPU_BIN" >&2; exit 2; }
    cargo test --release -p peft-kernels --features cuda --no-run --test attention_cuda \
        --test attention_cuda_f16 --test attention_cuda_bf16 --test attention_cuda_tiles \
        --test fused_memory_cuda || exit 1
    cargo build --release -p peft-cli --features cuda || exit 1
    PEFT_GPU_BIN="$(mktemp -d)"
    for t in attention_cuda attention_cuda_f16 attention_cuda_bf16 attention_cuda_tiles \
        fused_memory_cuda; do
        cp "$(ls -t target/release/deps/$t-* | grep -v '\.d$' | head -1)" "$PEFT_GPU_BIN/$t"
    done
    cp target/release/peft "$PEFT_GPU_BIN/peft"
fi
bin="$PEFT_GPU_BIN"

source "$(dirname "${BASH_SOURCE[0]}")/cuda-env.sh"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$out/gpu.txt"
"$CUDA_PATH/bin/nvcc" --version | tail -2 | tee -a "$out/gpu.txt"
ldconfig -p | grep -E 'libcuda\.so|libnvrtc' | tee -a "$out/gpu.txt"

status=0
date -u +%T
echo "== CUDA tests"
"$bin/attention_cuda" --test-threads=1 2>&1 | tee "$out/tests.log" || status=1
"$bin/fused_memory_cuda" 2>&1 | tee -a "$out/tests.log" || status=1
"$bin/attention_cuda_f16" --nocapture 2>&1 | tee -a "$out/tests.log" || status=1
"$bin/attention_cuda_bf16" --nocapture 2>&1 | tee -a "$out/tests.log" || status=1
"$bin/attention_cuda_tiles" 2>&1 | tee -a "$out/tests.log" || status=1

date -u +%T
echo "== peft bench attention --backend cuda"
: >"$out/bench.jsonl"
bench() {
    "$bin/peft" bench attention --backend cuda --heads 9 --kv-heads 3 --head-dim 64 \
        --repeats 20 --json "$@" | tee -a "$out/bench.jsonl" || status=1
}
# The issue's shape, with the fused kernels also timed with each forward, dQ and dK/dV kernel —
# the row kernels (the default) and the register-tiled ones, eight combinations — side by side
# in the same process. The row kernels' lanes and step blocks were swept on an H200 before
# (docs/kernels.md); `--lanes 1,2,4 --blocks 1,8` repeats it.
bench --batch 8 --seq 512 --prefix 64 --forward rows,tiles --dq rows,tiles --dkdv rows,tiles
date -u +%T
# The profiles next (before the other shapes), in case the device time runs out: the default
# kernels, then the tiled forward, dQ and dK/dV.
for kernels in rows tiles; do
    echo "== profiled run, $kernels kernels (every launch timed on the device; per-kernel summary at each sync)"
    PEFT_KERNEL_FORWARD=$kernels PEFT_KERNEL_DQ=$kernels PEFT_KERNEL_DKDV=$kernels \
        CUBECL_DEBUG_LOG="$out/cubecl-profile-$kernels.log" \
        "$bin/peft" bench attention --backend cuda --heads 9 --kv-heads 3 --head-dim 64 --batch 8 \
        --seq 512 --prefix 64 --repeats 2 >/dev/null || status=1
    # The timing lines alone; the full log (with the CUDA sources it compiled) compressed.
    grep -E '^\|' "$out/cubecl-profile-$kernels.log" >"$out/cubecl-profile-$kernels.txt" || true
    xz -f "$out/cubecl-profile-$kernels.log" || true
    grep -E '^\| (Forward|ForwardTiled|Dq|DqTiled|Dkdv|DkdvTiled|SumPartials)Kernel|^\| Total' \
        "$out/cubecl-profile-$kernels.txt" | tail -12 || true
done
date -u +%T
bench --batch 2 --seq 128 --prefix 64   # the lavapipe shape
date -u +%T
bench --batch 8 --seq 512 --prefix 0
# A tiny shape, where the device work is negligible: what is left is each pass's host and launch
# cost, for the fused path and for Burn's attention.
bench --batch 1 --seq 16 --prefix 4
date -u +%T
python3 - "$out/bench.jsonl" <<'EOF' || true
import json, sys
# Times in ms; "returned" is when the pass's calls returned, before waiting for the device.
print(f"{'B':>3} {'L':>5} {'P':>3} | {'fwd fused':>10} {'fwd burn':>10} {'x':>6} | {'f+b fused':>10} {'f+b burn':>10} {'x':>6}"
      f" | returned: fwd fused, burn; f+b fused, burn")
for line in open(sys.argv[1]):
    r = json.loads(line); s = r["shape"]; f = r["forward"]; b = r["forward_backward"]
    print(f"{s['batch']:>3} {s['seq']:>5} {s['prefix']:>3} | {f['fused_ms']:>10.3f} {f['unfused_ms']:>10.3f} {f['speedup']:>6.2f} | "
          f"{b['fused_ms']:>10.3f} {b['unfused_ms']:>10.3f} {b['speedup']:>6.2f} | "
          f"{f['fused_enqueue_ms']:.3f} {f['unfused_enqueue_ms']:.3f}; {b['fused_enqueue_ms']:.3f} {b['unfused_enqueue_ms']:.3f}")
    for w in r.get("fused_by_layout", []):
        print(f"    forward {w.get('forward') or 'default'}, dq {w.get('dq') or 'default'}, dkdv {w.get('dkdv') or 'default'}, rows {w['rows'] or 'default'}, lanes {w['lanes'] or 'default'}, block {w.get('block') or 'default'}: fused forward {w['forward_ms']:.3f} ms "
              f"({f['unfused_ms'] / w['forward_ms']:.2f}x), forward + backward {w['forward_backward_ms']:.3f} ms "
              f"({b['unfused_ms'] / w['forward_backward_ms']:.2f}x); returned after {w['forward_enqueue_ms']:.3f} and {w['forward_backward_enqueue_ms']:.3f} ms")
EOF
exit $status
