#!/usr/bin/env python3
"""Registers and spills of the fused prefix-attention kernels on an NVIDIA architecture, without a GPU.

  python3 scripts/kernel_registers.py [--head-dim 64] [--rows 1] [--lanes 1] [--no-unroll] [--arch sm_90a]

1. `cargo run --example cuda_source` writes the CUDA C++ that CubeCL's CUDA runtime would compile
   for each kernel (the kernels are expanded through a wgpu client; lavapipe is enough), the
   tiled forward's, dQ's and dK/dV's too where the head dimension is a multiple of 32 (they ignore
   --rows, --lanes).
2. NVRTC (the `nvidia-cuda-nvrtc-cu12` wheel, loaded with ctypes) compiles each file to PTX, as
   the runtime does on a GPU machine.
3. `ptxas -v` (the `nvidia-cuda-nvcc-cu12` wheel) assembles the PTX for the architecture and
   reports registers per thread, spill stores/loads and the stack frame.

With --sass, also the SASS of each kernel (ptxas to a cubin, then `cuobjdump -sass` from the
`nvidia-cuda-cuobjdump` and `nvidia-cuda-nvdisasm` wheels), written next to the sources as
KERNEL.sass, and a count of the instructions that matter for these kernels (f32 multiply-adds,
shared-memory loads and stores, global loads, local-memory spills, shuffles, barriers).

The wheels come from PyPI with `pip download` into target/cuda-tools (about 150 MB, once).
The NVRTC here (12.9) may differ from a GPU machine's, so counts can differ by a few registers.
"""
import argparse
import ctypes
import glob
import os
import re
import subprocess
import sys
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(ROOT, "target", "cuda-tools")
WHEELS = ["nvidia-cuda-nvrtc-cu12==12.9.86", "nvidia-cuda-nvcc-cu12==12.9.86", "nvidia-cuda-runtime-cu12==12.9.79"]
SASS_WHEELS = ["nvidia-cuda-cuobjdump==13.5.37", "nvidia-cuda-nvdisasm==13.5.37"]
# The opcodes --sass counts (a mnemonic's modifiers, as in LDS.128, count with it).
SASS_OPS = ["FFMA", "FMUL", "FADD", "LDS", "STS", "LDG", "STG", "LDL", "STL", "SHFL", "BAR", "MUFU"]
# Registers in one SM's register file, and the most resident warps per SM (Hopper and Ampere).
REGISTER_FILE, MAX_WARPS = 65536, 64


def tools():
    nvrtc = os.path.join(TOOLS, "nvidia", "cuda_nvrtc", "lib", "libnvrtc.so.12")
    ptxas = os.path.join(TOOLS, "nvidia", "cuda_nvcc", "bin", "ptxas")
    include = os.path.join(TOOLS, "nvidia", "cuda_runtime", "include")
    if not all(os.path.exists(p) for p in (nvrtc, ptxas, include)):
        os.makedirs(TOOLS, exist_ok=True)
        print(f"fetching NVRTC and ptxas from PyPI into {os.path.relpath(TOOLS, ROOT)}", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", TOOLS, *WHEELS],
                       check=True)
        for wheel in glob.glob(os.path.join(TOOLS, "nvidia_cuda_*.whl")):
            with zipfile.ZipFile(wheel) as z:
                z.extractall(TOOLS)
        os.chmod(ptxas, 0o755)
    return nvrtc, ptxas, include


def sass_tools():
    """cuobjdump and the nvdisasm it runs, from PyPI into target/cuda-tools (once)."""
    bin_dir = os.path.join(TOOLS, "nvidia", "cu13", "bin")
    cuobjdump = os.path.join(bin_dir, "cuobjdump")
    if not all(os.path.exists(os.path.join(bin_dir, t)) for t in ("cuobjdump", "nvdisasm")):
        print(f"fetching cuobjdump and nvdisasm from PyPI into {os.path.relpath(TOOLS, ROOT)}", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", TOOLS, *SASS_WHEELS],
                       check=True)
        for wheel in glob.glob(os.path.join(TOOLS, "nvidia_cuda_cuobjdump-*.whl")) + \
                glob.glob(os.path.join(TOOLS, "nvidia_cuda_nvdisasm-*.whl")):
            with zipfile.ZipFile(wheel) as z:
                z.extractall(TOOLS)
        for t in ("cuobjdump", "nvdisasm"):
            os.chmod(os.path.join(bin_dir, t), 0o755)
    return cuobjdump, bin_dir


def sass_counts(ptxas, cuobjdump, bin_dir, ptx_path, arch):
    """The kernel's SASS (written to KERNEL.sass) and how many of each SASS_OPS opcode it has."""
    cubin = ptx_path.replace(".cu.ptx", ".cubin")
    subprocess.run([ptxas, f"-arch={arch}", ptx_path, "-o", cubin], check=True)
    env = dict(os.environ, PATH=bin_dir + os.pathsep + os.environ.get("PATH", ""))
    sass = subprocess.run([cuobjdump, "-sass", cubin], capture_output=True, text=True, check=True, env=env).stdout
    with open(ptx_path.replace(".cu.ptx", ".sass"), "w") as f:
        f.write(sass)
    ops = re.findall(r"^\s*/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P[T0-9]\s+)?([A-Z0-9]+)", sass, re.M)
    return {op: sum(1 for o in ops if o == op) for op in SASS_OPS}


def nvrtc_ptx(lib, source, arch, include):
    """PTX of `source` for the virtual architecture of `arch` (sm_90a -> compute_90a)."""
    prog = ctypes.c_void_p()

    def check(status, what):
        if status != 0:
            size = ctypes.c_size_t()
            lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
            log = ctypes.create_string_buffer(size.value)
            lib.nvrtcGetProgramLog(prog, log)
            sys.exit(f"NVRTC {what} failed (status {status}):\n{log.value.decode()[-4000:]}")

    check(lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), b"kernel.cu", 0, None, None), "create")
    opts = [f"--gpu-architecture={arch.replace('sm_', 'compute_')}".encode(), f"--include-path={include}".encode()]
    check(lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts)), "compile")
    size = ctypes.c_size_t()
    lib.nvrtcGetPTXSize(prog, ctypes.byref(size))
    ptx = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetPTX(prog, ptx)
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
    return ptx.value


def ptxas_report(ptxas, ptx_path, arch):
    out = subprocess.run([ptxas, f"-arch={arch}", "-v", ptx_path, "-o", os.devnull],
                         capture_output=True, text=True, check=True).stderr
    num = lambda pattern: int(m.group(1)) if (m := re.search(pattern, out)) else 0
    return {"registers": num(r"Used (\d+) registers"), "stack": num(r"(\d+) bytes stack frame"),
            "spill_stores": num(r"(\d+) bytes spill stores"), "spill_loads": num(r"(\d+) bytes spill loads")}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--rows", type=int, default=1, help="rows (columns for dK/dV) per unit, as PEFT_KERNEL_ROWS")
    p.add_argument("--lanes", type=int, default=1,
                   help="units sharing one row or column (1, 2, 4 or 8), as PEFT_KERNEL_LANES")
    p.add_argument("--no-unroll", action="store_true", help="roll the head-dimension loops (PEFT_KERNEL_UNROLL=0)")
    p.add_argument("--arch", default="sm_90a", help="ptxas architecture (sm_90a: H100/H200, sm_80: A100)")
    p.add_argument("--sass", action="store_true",
                   help="also disassemble each kernel and count its instructions by opcode")
    a = p.parse_args()

    nvrtc, ptxas, include = tools()
    out_dir = os.path.join(ROOT, "target", "cuda-source", f"d{a.head_dim}-r{a.rows}-w{a.lanes}-u{int(not a.no_unroll)}")
    subprocess.run(["cargo", "run", "--quiet", "-p", "peft-kernels", "--features", "wgpu,cuda", "--example",
                    "cuda_source", "--", out_dir, str(a.head_dim), str(a.rows), "0" if a.no_unroll else "1", str(a.lanes)],
                   cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    lib = ctypes.CDLL(nvrtc)
    print(f"head dim {a.head_dim}, {a.rows} row(s) per unit, {a.lanes} lane(s) per row, "
          f"loops {'rolled' if a.no_unroll else 'unrolled'}, {a.arch}")
    print(f"{'kernel':<13} {'cube':>5} {'registers':>9} {'spill st':>9} {'spill ld':>9} {'stack':>6} {'warps/SM cap':>13}")
    counts = {}
    for name in ["forward", "dq", "dkdv", "forward_tiled", "dq_tiled", "dkdv_tiled"]:
        cu = os.path.join(out_dir, f"{name}.cu")
        if name.endswith("_tiled") and not os.path.exists(cu):
            continue  # written only where the head dimension is a multiple of 32
        source = open(cu).read()
        # The units per cube the launch uses, as the generated kernel declares them.
        cube = int(re.search(r"__launch_bounds__\((\d+)\)", source).group(1))
        ptx_path = cu + ".ptx"
        with open(ptx_path, "wb") as f:
            f.write(nvrtc_ptx(lib, source, a.arch, include))
        r = ptxas_report(ptxas, ptx_path, a.arch)
        # Registers are allocated per warp in blocks of 256, and warps come in whole cubes.
        per_warp = -(-r["registers"] * 32 // 256) * 256
        cube_warps = -(-cube // 32)
        warps = min(MAX_WARPS, REGISTER_FILE // per_warp // cube_warps * cube_warps)
        print(f"{name:<13} {cube:>5} {r['registers']:>9} {r['spill_stores']:>8}B {r['spill_loads']:>8}B {r['stack']:>5}B {warps:>13}")
        if a.sass:
            counts[name] = sass_counts(ptxas, *sass_tools(), ptx_path, a.arch)
    if a.sass:
        print(f"\nSASS instructions (static counts; in {os.path.relpath(out_dir, ROOT)}/KERNEL.sass)")
        print(f"{'kernel':<13} " + " ".join(f"{op:>5}" for op in SASS_OPS))
        for name, c in counts.items():
            print(f"{name:<13} " + " ".join(f"{c[op]:>5}" for op in SASS_OPS))


if __name__ == "__main__":
    main()
