# Sourced by the GPU scripts (`scripts/gpu-check.sh`, `scripts/gpu-profile.sh`): CUDA_PATH, and
# the folders holding libcuda and NVRTC on the library path, as CubeCL's CUDA runtime loads them.
export CUDA_PATH="${CUDA_PATH:-/usr/local/cuda}"
for dir in "$CUDA_PATH/lib64" /usr/local/nvidia/lib64 /usr/lib/x86_64-linux-gnu; do
    if [[ -d "$dir" ]]; then export LD_LIBRARY_PATH="$dir:${LD_LIBRARY_PATH:-}"; fi
done
