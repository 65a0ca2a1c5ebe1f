#!/usr/bin/env bash
# Where the fused path's time goes on an NVIDIA GPU, beyond what `scripts/gpu-check.sh` times:
#
#  1. Nsight Compute, where `ncu` is installed and the driver lets it read the counters: every
#     launch of the forward, dQ and dK/dV kernels (row and tiled) in one `peft bench attention`
#     at the issue's shape (B=8, L=512, P=64, H=9, Hkv=3, d=64), default layout (the row
#     kernels), then the three tiled kernels — device time without any host cost, registers,
#     occupancy, warp scheduling (eligible warps, cycles per issued instruction) — and a
#     one-line summary per launch.
#  2. CubeCL's profiler at a tiny shape (B=1, L=16, P=4), where the kernels have next to nothing
#     to do: how much of a call's fixed cost is device time.
#
#   PEFT_GPU_BIN=DIR scripts/gpu-profile.sh [OUT_DIR]
#
# DIR holds a release `peft` built with `--features cuda` (see `scripts/gpu-check.sh`).
set -uo pipefail
out="${1:-gpu-profile-out}"
mkdir -p "$out"
bin="${PEFT_GPU_BIN:?set PEFT_GPU_BIN to a folder holding a release peft built with --features cuda}"

source "$(dirname "${BASH_SOURCE[0]}")/cuda-env.sh"
issue=(--heads 9 --kv-heads 3 --head-dim 64 --batch 8 --seq 512 --prefix 64)
status=0

# A run that panics, also after its work is done (a CUDA teardown), fails the script.
panicked() {
    if grep -q -F 'panicked' "$1"; then
        echo "error: $1 contains \"panicked\"" >&2
        status=1
    fi
}

date -u +%T
ncu="$(command -v ncu || ls "$CUDA_PATH"/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)"
if [[ -n "$ncu" ]]; then
    echo "== Nsight Compute: $ncu"
    # `--repeats 1`: per layout, two forward passes and two forward + backward passes.
    timeout 300 "$ncu" -k 'regex:^(forward|forward_tiled|dq|dq_tiled|dkdv|dkdv_tiled)_kernel' \
        --section SpeedOfLight --section Occupancy --section LaunchStats \
        --section WarpStateStats --section SchedulerStats \
        "$bin/peft" bench attention --backend cuda "${issue[@]}" --repeats 1 --forward tiles --dq tiles \
        --dkdv tiles \
        >"$out/ncu.txt" 2>&1 || status=1
    panicked "$out/ncu.txt"
    # kernel, grid x cube, device time, registers, achieved occupancy; in launch order (the
    # default layout first, then the three tiled kernels; in each, the forward pass then
    # forward + backward).
    awk '
        /^  [a-z_0-9]+_kernel/ {
            name = $1; sub(/_f_f32.*/, "", name); launch = ""
            if (match($0, /\([0-9, ]+\)x\([0-9, ]+\)/)) launch = substr($0, RSTART, RLENGTH)
            gsub(/ /, "", launch)
        }
        $1 == "Duration" { dur = $NF " " $(NF-1) }
        $1 == "Registers" && $3 == "Thread" { regs = $NF }
        $1 == "Achieved" && $2 == "Occupancy" {
            printf "%-16s %-22s %12s %4s registers %6s%% achieved occupancy\n", name, launch, dur, regs, $NF
        }' "$out/ncu.txt" | tee "$out/ncu-summary.txt"
    tail -5 "$out/ncu.txt"
else
    echo "== no ncu on this machine" | tee "$out/ncu.txt"
fi

date -u +%T
echo "== CubeCL profile at B=1, L=16, P=4 (each launch timed on the device)"
CUBECL_DEBUG_LOG="$out/tiny-profile.log" timeout 80 "$bin/peft" bench attention --backend cuda \
    --heads 9 --kv-heads 3 --head-dim 64 --batch 1 --seq 16 --prefix 4 --repeats 2 --json \
    2>"$out/tiny-bench.err" | tee "$out/tiny-bench.json" || status=1
panicked "$out/tiny-bench.err"
grep -E '^\|' "$out/tiny-profile.log" >"$out/tiny-profile.txt" || true
xz -f "$out/tiny-profile.log" || true
grep -E '^\| [0-9.]+(µs|ms) +\| (Forward|ForwardTiled|Dq|Dkdv|SumPartials|Full|SharedSum|KernelBinop)' \
    "$out/tiny-profile.txt" | tail -24 || true

date -u +%T
[ "$status" = 0 ] || echo "gpu-profile: FAILED (see the errors above)" >&2
exit $status
