//! Every `unsafe` block of the CPU products: the AMX permission and tile instructions (through
//! `asm!`: the AMX intrinsics are not stable in Rust 1.95), the AVX512-BF16 micro-kernel
//! (stable intrinsics) and the portable kernel's dot products compiled for AVX2 and FMA; the
//! portable path's `gemm` call is in `crate::host::gemm`. The safe code in [`super`] checks
//! every length and pointer these functions are given; each function states what it relies on.
//!
//! Both kernels read the same packed weight: panels of 16 output columns, each panel `kpad / 2`
//! pair-rows of 64 bytes, a pair-row holding, for each of the 16 columns, the two bf16 values
//! of rows `2r` and `2r + 1` of the contraction (the "VNNI" order both `TDPBF16PS` and
//! `VDPBF16PS` take). 16 consecutive pair-rows are one AMX B tile (16 rows × 64 bytes).

/// Requests permission to use AMX tile data for this process (Linux: `arch_prctl(
/// ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`), after checking with `cpuid` that the CPU has
/// AMX-TILE and AMX-BF16. Returns whether tiles may be used. Without the permission the first
/// tile instruction raises SIGILL.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
pub(super) fn request_amx() -> bool {
    use std::arch::x86_64::__cpuid_count;
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // CPUID leaf 7, sub-leaf 0: EDX bit 22 AMX-BF16, bit 24 AMX-TILE. (`__cpuid_count` is safe to
    // call on every x86_64 CPU.)
    let leaf7 = __cpuid_count(7, 0);
    let has_amx = leaf7.edx & (1 << 22) != 0 && leaf7.edx & (1 << 24) != 0;
    if !has_amx {
        return false;
    }
    // SAFETY: arch_prctl with ARCH_REQ_XCOMP_PERM takes two integer arguments and touches no
    // memory of this process; it fails cleanly (non-zero) where the kernel refuses.
    let status = unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        )
    };
    status == 0
}

/// AMX exists only on x86_64 Linux here.
#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
pub(super) fn request_amx() -> bool {
    false
}

/// Whether the CPU has AVX512-BF16 (and the AVX-512 foundation it needs).
pub(super) fn has_avx512_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the CPU has AVX2 and FMA (the portable kernel's few-row products use them).
pub(super) fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// [`super::dots`] with AVX2 and FMA intrinsics: the same lanes and the same order of sums
/// (each bf16 value widened by a zero-extension and a 16-bit shift), fused multiply-adds.
///
/// # Safety
///
/// The CPU has AVX2 and FMA ([`has_avx2_fma`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn dots_avx2_fma(w: &[u16], k: usize, x: &[f32], out: &mut [f32]) {
    super::dots_with(w, k, x, out, |w, x| dot_avx2_fma(w, x));
}

/// One dot product of [`dots_avx2_fma`]: four registers of eight lanes, lane `l` of the 32
/// summing the terms `i ≡ l (mod 32)`; a tail shorter than 32 is zero-padded (zero times zero
/// adds nothing, so a NaN or infinity of `x` still reaches the sum); the lanes then reduced as
/// [`super::reduce_lanes`] does.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn dot_avx2_fma(w: &[u16], x: &[f32]) -> f32 {
    use std::arch::x86_64::{
        __m128i, __m256, _mm_loadu_si128, _mm256_castsi256_ps, _mm256_cvtepu16_epi32,
        _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_setzero_ps, _mm256_slli_epi32, _mm256_storeu_ps,
    };
    const LANES: usize = super::DOT_LANES;
    debug_assert_eq!(w.len(), x.len());
    let len = w.len().min(x.len());
    let whole = len / LANES * LANES;
    let (mut wt, mut xt) = ([0u16; LANES], [0.0f32; LANES]);
    wt[..len - whole].copy_from_slice(&w[whole..len]);
    xt[..len - whole].copy_from_slice(&x[whole..len]);
    let mut acc: [__m256; 4] = [_mm256_setzero_ps(); 4];
    let mut block = |wp: *const u16, xp: *const f32| {
        for (q, a) in acc.iter_mut().enumerate() {
            // SAFETY: `wp` and `xp` point at 32 readable values (a whole block of `w` and `x`
            // below `whole`, or the padded tails); unaligned loads take any address.
            unsafe {
                let wi = _mm_loadu_si128(wp.add(8 * q).cast::<__m128i>());
                let wf = _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(wi)));
                *a = _mm256_fmadd_ps(wf, _mm256_loadu_ps(xp.add(8 * q)), *a);
            }
        }
    };
    for i in (0..whole).step_by(LANES) {
        block(w[i..i + LANES].as_ptr(), x[i..i + LANES].as_ptr());
    }
    if whole < len {
        block(wt.as_ptr(), xt.as_ptr());
    }
    let mut lanes = [0.0f32; LANES];
    for (q, a) in acc.iter().enumerate() {
        // SAFETY: `lanes[8q..8q + 8]` is 8 writable f32; unaligned stores take any address.
        unsafe { _mm256_storeu_ps(lanes[8 * q..8 * q + 8].as_mut_ptr(), *a) };
    }
    super::reduce_lanes(lanes)
}

/// Never called off x86_64 ([`has_avx2_fma`] is false there).
///
/// # Safety
///
/// None needed; `unsafe` as on x86_64.
#[cfg(not(target_arch = "x86_64"))]
pub(super) unsafe fn dots_avx2_fma(w: &[u16], k: usize, x: &[f32], out: &mut [f32]) {
    super::dots(w, k, x, out);
}

/// The tile configuration of the AMX block below: palette 1, tiles 0–7 of 16 rows × 64 bytes
/// (C tiles 0–3: 16 × 16 f32; A tiles 4–5: 16 rows × 32 bf16; B tiles 6–7: 16 pair-rows × 16
/// columns).
#[cfg(target_arch = "x86_64")]
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

#[cfg(target_arch = "x86_64")]
impl TileConfig {
    fn full() -> Self {
        let mut c = [0u8; 64];
        c[0] = 1; // palette 1
        for t in 0..8 {
            c[16 + 2 * t..18 + 2 * t].copy_from_slice(&64u16.to_le_bytes()); // bytes per row
            c[48 + t] = 16; // rows
        }
        Self(c)
    }
}

/// Loads this thread's tile configuration for [`amx_block`]; [`amx_release`] ends it. Call
/// only after [`request_amx`] returned true.
#[cfg(target_arch = "x86_64")]
pub(super) fn amx_configure() {
    let cfg = TileConfig::full();
    // SAFETY: `request_amx` granted tile data to the process (the caller's contract); the
    // 64-byte configuration is valid (palette 1, 8 tiles within 16 rows × 64 bytes) and lives
    // across the instruction. LDTILECFG reads exactly those 64 bytes.
    unsafe {
        std::arch::asm!("ldtilecfg [{cfg}]", cfg = in(reg) cfg.0.as_ptr(), options(nostack, readonly));
    }
}

/// Releases this thread's tiles (so the OS need not save them on a context switch).
#[cfg(target_arch = "x86_64")]
pub(super) fn amx_release() {
    // SAFETY: TILERELEASE only resets the tile state of this thread; it is valid with or without
    // a configuration loaded (on a CPU with AMX, which `request_amx` checked).
    unsafe {
        std::arch::asm!("tilerelease", options(nostack, nomem));
    }
}

/// One 32 × 32 block of `C = A·B` with AMX, all of the contraction: `A` is 32 rows of bf16 (row
/// `i` at `a + i·lda` bytes), `b0` and `b1` two packed panels of `kblocks · 16` pair-rows
/// (16 columns each), and the four 16 × 16 f32 results are stored at `c` (row stride `ldc`
/// bytes): columns 0–15 from `b0`, 16–31 from `b1`.
///
/// # Safety
///
/// [`amx_configure`] ran on this thread. `a` points to 32 readable rows of `kblocks · 64` bytes
/// at stride `lda`; `b0` and `b1` to `kblocks · 1024` readable bytes each; `c` to 32 writable
/// rows of 128 bytes at stride `ldc`. `kblocks ≥ 1`.
#[cfg(target_arch = "x86_64")]
pub(super) unsafe fn amx_block(
    a: *const u16,
    lda: usize,
    b0: *const u16,
    b1: *const u16,
    kblocks: usize,
    c: *mut f32,
    ldc: usize,
) {
    // SAFETY: the caller's contract above: every load and store stays within the ranges it
    // names (A: 16-row tiles at `a` and `a + 16·lda`, advancing 64 bytes per K block; B: 1 KiB
    // tiles advancing 1 KiB; C: four 16 × 64-byte tiles at `c`, `c + 64`, `c + 16·ldc`,
    // `c + 16·ldc + 64`).
    unsafe {
        std::arch::asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            "2:",
            "tileloadd tmm4, [{a0} + {lda}]",
            "tileloadd tmm5, [{a1} + {lda}]",
            "tileloadd tmm6, [{b0} + {s64}]",
            "tileloadd tmm7, [{b1} + {s64}]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            "add {a0}, 64",
            "add {a1}, 64",
            "add {b0}, 1024",
            "add {b1}, 1024",
            "dec {n}",
            "jnz 2b",
            "tilestored [{c0} + {ldc}], tmm0",
            "tilestored [{c1} + {ldc}], tmm1",
            "tilestored [{c2} + {ldc}], tmm2",
            "tilestored [{c3} + {ldc}], tmm3",
            a0 = inout(reg) a => _,
            a1 = inout(reg) a.byte_add(16 * lda) => _,
            b0 = inout(reg) b0 => _,
            b1 = inout(reg) b1 => _,
            n = inout(reg) kblocks => _,
            lda = in(reg) lda,
            s64 = in(reg) 64usize,
            c0 = in(reg) c,
            c1 = in(reg) c.byte_add(64),
            c2 = in(reg) c.byte_add(16 * ldc),
            c3 = in(reg) c.byte_add(16 * ldc + 64),
            ldc = in(reg) ldc,
            options(nostack),
        );
    }
}

/// Up to `MR` rows × `NP` panels of `C = A·B` with AVX512-BF16 (`VDPBF16PS`), all of the
/// contraction: row `i` of `A` at `a + i·lda` (bf16 elements, `2·kpairs` of them), panel `j`
/// at `b + j·panel` (elements), `kpairs` pair-rows each; result row `i`, panel `j` stored at
/// `c + i·ldc + 16·j` (f32 elements), the last panel's `last_cols` first columns only.
///
/// # Safety
///
/// The CPU has AVX512F and AVX512-BF16. `a` points to `MR` readable rows of `2·kpairs` bf16 at
/// stride `lda`; `b` to `NP` readable panels of `32·kpairs` bf16 at stride `panel`; `c` to `MR`
/// writable rows at stride `ldc` holding `16·(NP − 1) + last_cols` f32 each;
/// `1 ≤ last_cols ≤ 16`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn avx512_block<const MR: usize, const NP: usize>(
    a: *const u16,
    lda: usize,
    b: *const u16,
    panel: usize,
    kpairs: usize,
    c: *mut f32,
    ldc: usize,
    last_cols: usize,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); NP]; MR];
    for r in 0..kpairs {
        let mut bv = [_mm512_setzero_si512(); NP];
        for (j, v) in bv.iter_mut().enumerate() {
            // SAFETY: pair-row `r` of panel `j` is in bounds (the caller's contract); unaligned
            // loads are allowed.
            *v = unsafe { _mm512_loadu_si512(b.add(j * panel + 32 * r).cast()) };
        }
        for (i, row) in acc.iter_mut().enumerate() {
            // SAFETY: elements `2r` and `2r + 1` of row `i` are in bounds; read unaligned.
            let pair = unsafe { a.add(i * lda + 2 * r).cast::<i32>().read_unaligned() };
            let av = bf16s(_mm512_set1_epi32(pair));
            for (j, acc) in row.iter_mut().enumerate() {
                *acc = _mm512_dpbf16_ps(*acc, av, bf16s(bv[j]));
            }
        }
    }
    let last: __mmask16 = if last_cols >= 16 {
        0xFFFF
    } else {
        (1u16 << last_cols) - 1
    };
    for (i, row) in acc.iter().enumerate() {
        for (j, acc) in row.iter().enumerate() {
            let mask = if j + 1 == NP { last } else { 0xFFFF };
            // SAFETY: the masked store writes only the columns the caller says exist.
            unsafe { _mm512_mask_storeu_ps(c.add(i * ldc + 16 * j), mask, *acc) };
        }
    }
}

/// `src` rounded to bf16 (nearest, ties to even) into `dst`, 32 values per `VCVTNE2PS2BF16`.
/// NaN becomes a quiet NaN; subnormal inputs become zero of the same sign (the instruction
/// treats them as zero), which no product here can tell from their bf16 rounding (below
/// 1.2e-38).
///
/// # Safety
///
/// The CPU has AVX512F and AVX512-BF16.
///
/// # Panics
///
/// If `src` and `dst` differ in length.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) unsafe fn to_bf16_avx512(src: &[f32], dst: &mut [u16]) {
    use std::arch::x86_64::*;
    assert_eq!(
        src.len(),
        dst.len(),
        "bf16 rounding of {} values into {}",
        src.len(),
        dst.len()
    );
    let (mut s, mut d) = (src.chunks_exact(32), dst.chunks_exact_mut(32));
    for (s, d) in (&mut s).zip(&mut d) {
        // SAFETY: `s` holds 32 f32 and `d` 32 u16 (chunks_exact); unaligned loads and stores
        // are allowed.
        unsafe {
            let lo = _mm512_loadu_ps(s.as_ptr());
            let hi = _mm512_loadu_ps(s.as_ptr().add(16));
            let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
            _mm512_storeu_si512(d.as_mut_ptr().cast(), v);
        }
    }
    let (s, d) = (s.remainder(), d.into_remainder());
    if !s.is_empty() {
        let n = s.len();
        let lo_mask: __mmask16 = if n >= 16 { 0xFFFF } else { (1u16 << n) - 1 };
        let hi_mask: __mmask16 = if n > 16 { (1u16 << (n - 16)) - 1 } else { 0 };
        let out_mask: __mmask32 = (1u32 << n) - 1;
        // SAFETY: the masks select the `n < 32` values `s` and `d` hold; masked-off lanes are
        // neither read nor written.
        unsafe {
            let lo = _mm512_maskz_loadu_ps(lo_mask, s.as_ptr());
            let hi = _mm512_maskz_loadu_ps(hi_mask, s.as_ptr().wrapping_add(16));
            let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
            _mm512_mask_storeu_epi16(d.as_mut_ptr().cast(), out_mask, v);
        }
    }
}

/// The 32 bf16 lanes of a 512-bit integer vector.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
fn bf16s(v: std::arch::x86_64::__m512i) -> std::arch::x86_64::__m512bh {
    // SAFETY: both are 64-byte vectors of plain bits; every bit pattern is a valid bf16 vector.
    unsafe { std::mem::transmute(v) }
}
