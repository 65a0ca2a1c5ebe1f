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
# `peft`, and set PEFT_GPU_COMMIT to the commit they were built from (`git rev-parse --short
# HEAD`, plus "-dirty" if the tree had changes), so that the run's gpu.txt names the code it
# measured:
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
#
# Pass or fail: every step runs even when an earlier one failed (a GPU run is short and rare, so
# it collects everything it can), and the script exits 1 at the end, listing the failed steps in
# OUT_DIR/result.txt and on stderr, if any step exited non-zero OR printed "panicked" anywhere —
# also after its test summary. A binary can pass its tests and then panic while tearing down
# (CubeCL's device thread outliving the CUDA driver at exit, CUDA_ERROR_DEINITIALIZED, exit
# status 0: docs/measured/h200-2026-11-28-run2-tests.log); that counts as a failure here.
set -euo pipefail
trap 'echo "gpu-check: FAILED at line $LINENO (exit status $?): $BASH_COMMAND" >&2' ERR
out="${1:-gpu-check-out}"
mkdir -p "$out"

if [[ -z "${PEFT_GPU_BIN:-}" ]]; then
    command -v cargo >/dev/null || { echo "gpu-check: no cargo here: set PEFT_GPU_BIN" >&2; exit 2; }
    cargo test --release -p peft-kernels --features cuda --no-run --test attention_cuda \
        --test attention_cuda_f16 --test attention_cuda_bf16 --test attention_cuda_tiles \
        --test fused_memory_cuda
    cargo build --release -p peft-cli --features cuda
    PEFT_GPU_BIN="$(mktemp -d)"
    for t in attention_cuda attention_cuda_f16 attention_cuda_bf16 attention_cuda_tiles \
        fused_memory_cuda; do
        exe="$(ls -t target/release/deps/"$t"-* | grep -v '\.d$' | sed -n 1p)"
        cp "$exe" "$PEFT_GPU_BIN/$t"
    done
    cp target/release/peft "$PEFT_GPU_BIN/peft"
    if [[ -z "${PEFT_GPU_COMMIT:-}" ]] && git rev-parse --git-dir >/dev/null 2>&1; then
        PEFT_GPU_COMMIT="$(git rev-parse --short HEAD)"
        if [[ -n "$(git status --porcelain -- kernels crates Cargo.toml Cargo.lock)" ]]; then
            PEFT_GPU_COMMIT="$PEFT_GPU_COMMIT-dirty"
        fi
    fi
fi
bin="$PEFT_GPU_BIN"
for b in attention_cuda attention_cuda_f16 attention_cuda_bf16 attention_cuda_tiles \
    fused_memory_cuda peft; do
    [[ -x "$bin/$b" ]] || { echo "gpu-check: $bin/$b missing or not executable" >&2; exit 2; }
done

source "$(dirname "${BASH_SOURCE[0]}")/cuda-env.sh"
command -v nvidia-smi >/dev/null || { echo "gpu-check: no nvidia-smi: no NVIDIA driver here" >&2; exit 2; }
echo "commit: ${PEFT_GPU_COMMIT:-unknown (set PEFT_GPU_COMMIT)}" | tee "$out/gpu.txt"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee -a "$out/gpu.txt"
if [[ -x "$CUDA_PATH/bin/nvcc" ]]; then
    "$CUDA_PATH/bin/nvcc" --version | tail -2 | tee -a "$out/gpu.txt"
else
    echo "no nvcc at $CUDA_PATH/bin" | tee -a "$out/gpu.txt"
fi
# Informational: libcuda and NVRTC may also be found through LD_LIBRARY_PATH (cuda-env.sh).
{ ldconfig -p | grep -E 'libcuda\.so|libnvrtc' || echo "no libcuda/libnvrtc in the ldconfig cache"; } \
    | tee -a "$out/gpu.txt"

failures=()
# step NAME LOG CMD...: runs CMD with its stdout and stderr appended to LOG (and shown), and
# records NAME as failed if CMD exits non-zero or if anything it printed contains "panicked".
step() {
    local name="$1" log="$2" rc=0 from
    shift 2
    touch "$log"
    from=$(($(stat -c %s "$log") + 1))
    "$@" 2>&1 | tee -a "$log" || rc=$?
    if ((rc != 0)); then
        failures+=("$name: exit status $rc")
    fi
    if tail -c "+$from" "$log" | grep -q -F 'panicked'; then
        failures+=("$name: output contains \"panicked\" (see $log)")
    fi
    return 0
}

date -u +%T
echo "== CUDA tests"
: >"$out/tests.log"
step attention_cuda "$out/tests.log" "$bin/attention_cuda" --test-threads=1
step fused_memory_cuda "$out/tests.log" "$bin/fused_memory_cuda"
step attention_cuda_f16 "$out/tests.log" "$bin/attention_cuda_f16" --nocapture
step attention_cuda_bf16 "$out/tests.log" "$bin/attention_cuda_bf16" --nocapture
step attention_cuda_tiles "$out/tests.log" "$bin/attention_cuda_tiles"

date -u +%T
echo "== peft bench attention --backend cuda"
# bench.log holds everything the benchmark printed; bench.jsonl its JSON lines (one per call).
: >"$out/bench.log"
bench() {
    step "peft bench attention $*" "$out/bench.log" \
        "$bin/peft" bench attention --backend cuda --heads 9 --kv-heads 3 --head-dim 64 \
        --repeats 20 --json "$@"
}
# The issue's shape, with the fused kernels also timed with each forward, dQ and dK/dV kernel —
# the row kernels (the default) and the register-tiled ones, eight combinations — side by side
# in the same process. The row kernels' lanes and step blocks were swept on an H200 before
# (docs/measured/kernels-2026-11-28-h200-runs2-3.md); `--lanes 1,2,4 --blocks 1,8` repeats it.
bench --batch 8 --seq 512 --prefix 64 --forward rows,tiles --dq rows,tiles --dkdv rows,tiles
date -u +%T
# The profiles next (before the other shapes), in case the device time runs out: the default
# kernels, then the tiled forward, dQ and dK/dV.
for kernels in rows tiles; do
    echo "== profiled run, $kernels kernels (every launch timed on the device; per-kernel summary at each sync)"
    : >"$out/profile-$kernels-run.log"
    step "profiled run, $kernels kernels" "$out/profile-$kernels-run.log" \
        env PEFT_KERNEL_FORWARD=$kernels PEFT_KERNEL_DQ=$kernels PEFT_KERNEL_DKDV=$kernels \
        CUBECL_DEBUG_LOG="$out/cubecl-profile-$kernels.log" \
        "$bin/peft" bench attention --backend cuda --heads 9 --kv-heads 3 --head-dim 64 --batch 8 \
        --seq 512 --prefix 64 --repeats 2
    # The timing lines alone; the full log (with the CUDA sources it compiled) compressed. The
    # greps only select what to show: finding nothing is not a failure.
    if [[ -f "$out/cubecl-profile-$kernels.log" ]]; then
        grep -E '^\|' "$out/cubecl-profile-$kernels.log" >"$out/cubecl-profile-$kernels.txt" || true
        if command -v xz >/dev/null; then xz -f "$out/cubecl-profile-$kernels.log"; fi
        grep -E '^\| (Forward|ForwardTiled|Dq|DqTiled|Dkdv|DkdvTiled|SumPartials)Kernel|^\| Total' \
            "$out/cubecl-profile-$kernels.txt" | tail -12 || true
    else
        failures+=("profiled run, $kernels kernels: no CubeCL profile written")
    fi
done
date -u +%T
bench --batch 2 --seq 128 --prefix 64   # the lavapipe shape
date -u +%T
bench --batch 8 --seq 512 --prefix 0
# A tiny shape, where the device work is negligible: what is left is each pass's host and launch
# cost, for the fused path and for Burn's attention.
bench --batch 1 --seq 16 --prefix 4
date -u +%T
grep -E '^\{' "$out/bench.log" >"$out/bench.jsonl" || failures+=("benchmark: no JSON output")
step "benchmark summary" "$out/summary.txt" python3 - "$out/bench.jsonl" <<'PY'
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
PY

if ((${#failures[@]} > 0)); then
    {
        echo "gpu-check: FAILED (${#failures[@]}):"
        printf '  %s\n' "${failures[@]}"
    } | tee "$out/result.txt" >&2
    exit 1
fi
echo "gpu-check: passed (every step exited 0; no \"panicked\" in any output)" | tee "$out/result.txt"
