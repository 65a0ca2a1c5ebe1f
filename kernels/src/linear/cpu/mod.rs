//! Products `x·Wᵀ` with a frozen weight `W` packed once, on the host CPU, in bf16 with f32
//! accumulation: AMX (`TDPBF16PS`) where the CPU and the OS allow it, else AVX512-BF16
//! (`VDPBF16PS`), else a portable path (the weight held in bf16 and widened to f32: products of
//! a few rows, decoding's, read the bf16 rows directly; larger ones are multiplied by the `gemm`
//! crate). The three compute the same product of bf16-rounded inputs; they differ only in the
//! order of the f32 sums.
//!
//! `x` is rounded to bf16 (nearest, ties to even) on the way in, once per call; the weight once,
//! at packing. The intrinsics are in [`simd`]; this module calls them and hands the kernels
//! uninitialised output (each call with a `SAFETY:` comment).

mod simd;

use std::{
    cell::Cell,
    mem::MaybeUninit,
    sync::{Arc, OnceLock},
};

use rayon::prelude::*;

use crate::host::gemm::{MatMut, MatRef, Parallelism, matmul};

/// A CPU kernel for bf16 products.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CpuKernel {
    /// Intel AMX tiles (`TDPBF16PS`): 32 × 32 blocks of the output per instruction sequence.
    Amx,
    /// AVX512-BF16 (`VDPBF16PS`): 8 rows × 48 columns of the output in registers.
    Avx512Bf16,
    /// Any CPU: the weight held in bf16, widened to f32 as it is read (few-row products, with
    /// AVX2 and FMA where the CPU has them) or multiplied by the `gemm` crate after widening.
    Portable,
}

impl CpuKernel {
    /// Every kernel, fastest first.
    pub const ALL: [CpuKernel; 3] = [Self::Amx, Self::Avx512Bf16, Self::Portable];

    /// The fastest kernel this CPU and OS allow (probed once per process; for AMX this requests
    /// the tile-data permission from Linux).
    pub fn best() -> Self {
        Self::ALL
            .into_iter()
            .find(|k| k.is_available())
            .unwrap_or(Self::Portable)
    }

    /// Whether this CPU and OS can run the kernel.
    pub fn is_available(self) -> bool {
        static AMX: OnceLock<bool> = OnceLock::new();
        match self {
            Self::Amx => *AMX.get_or_init(simd::request_amx),
            Self::Avx512Bf16 => simd::has_avx512_bf16(),
            Self::Portable => true,
        }
    }

    /// Products this kernel computed for the calling thread so far ([`kernel_calls`]).
    pub fn calls(self) -> u64 {
        kernel_calls()[self as usize]
    }

    /// Whether the kernel multiplies on a bf16 unit of the CPU (AMX or AVX512-BF16). The
    /// portable kernel multiplies bf16 values widened to f32: no faster than f32 products,
    /// except where reading the weight is the bound (decoding).
    pub fn uses_bf16_unit(self) -> bool {
        !matches!(self, Self::Portable)
    }

    /// One line for users on what bf16 weights run on, e.g. `bf16 products: amx`; for the
    /// portable kernel it says that bf16 brings no speed on this CPU.
    pub fn note(self) -> String {
        if self.uses_bf16_unit() {
            format!("bf16 products: {self}")
        } else {
            format!(
                "bf16 products: {self} (this CPU has neither AMX nor AVX512-BF16: the weights \
                 are held in bf16 and multiplied in f32; training is no faster than \
                 --precision f32, decoding reads half the bytes)"
            )
        }
    }

    /// Its name, as benchmarks and errors print it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Amx => "amx",
            Self::Avx512Bf16 => "avx512-bf16",
            Self::Portable => "portable",
        }
    }
}

impl std::fmt::Display for CpuKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

thread_local! {
    static CALLS: Cell<[u64; 3]> = const { Cell::new([0; 3]) };
    static MATVECS: Cell<u64> = const { Cell::new(0) };
}

/// Portable products the calling thread took as matrix-vector products on the bf16 rows so
/// far (a subset of the portable kernel's [`kernel_calls`]): tests assert that decoding's path
/// ran.
pub fn portable_matvec_calls() -> u64 {
    MATVECS.with(Cell::get)
}

/// Products computed by each kernel of [`CpuKernel::ALL`] (in that order) for the calling
/// thread so far: tests assert the kernel they meant to test.
pub fn kernel_calls() -> [u64; 3] {
    CALLS.with(Cell::get)
}

fn count(kernel: CpuKernel) {
    CALLS.with(|c| {
        let mut v = c.get();
        v[kernel as usize] += 1;
        c.set(v);
    });
}

/// A kernel this CPU cannot run was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the {0} kernel is not available on this CPU/OS")]
pub struct Unavailable(pub CpuKernel);

/// Output columns per panel of the packed weight.
const PANEL: usize = 16;
/// Contraction elements per AMX step (one A tile row of 64 bytes).
const KBLOCK: usize = 32;
/// Output rows per AMX block.
const AMX_ROWS: usize = 32;
/// Output rows per AVX512-BF16 block.
const AVX_ROWS: usize = 8;
/// Panels per AVX512-BF16 block.
const AVX_PANELS: usize = 3;

/// `f` rounded to bf16 (nearest, ties to even; NaN stays NaN), as its bits.
pub fn bf16_bits(f: f32) -> u16 {
    let b = f.to_bits();
    let rounded = (b.wrapping_add(0x7FFF + ((b >> 16) & 1)) >> 16) as u16;
    let quiet = ((b >> 16) as u16) | 0x0040;
    // A select, not an early return, so that loops over it vectorise.
    if f.is_nan() { quiet } else { rounded }
}

/// The f32 value of bf16 bits.
pub fn bf16_value(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

/// A weight `[n, k]` packed for products `x·Wᵀ` by one [`CpuKernel`].
#[derive(Debug, Clone)]
pub struct PackedWeight {
    n: usize,
    k: usize,
    kernel: CpuKernel,
    data: Packed,
}

#[derive(Debug, Clone)]
enum Packed {
    /// bf16 panels of 16 columns (see [`simd`]), `kpad` (a multiple of 32) contraction
    /// elements each, zero beyond `k` and `n`; an even number of panels (AMX takes two at once).
    Panels {
        kpad: usize,
        panels: usize,
        data: Vec<u16>,
    },
    /// The weight's values rounded to bf16, row-major as the weight file holds them, shared by
    /// the packing of `W` (`[n, k]`) and of `Wᵀ` (`transposed`: the stored rows are `[k, n]`,
    /// this packing's inputs).
    Rows {
        bits: Arc<Vec<u16>>,
        transposed: bool,
    },
}

impl PackedWeight {
    /// Packs `w` (`[n, k]` row-major, the `[out, in]` layout of weight files) for `kernel`.
    ///
    /// # Panics
    ///
    /// If `w.len() != n·k`.
    pub fn pack(w: &[f32], n: usize, k: usize, kernel: CpuKernel) -> Result<Self, Unavailable> {
        assert_eq!(
            w.len(),
            n * k,
            "a weight of {n} × {k} needs {} values",
            n * k
        );
        if !kernel.is_available() {
            return Err(Unavailable(kernel));
        }
        Ok(Self::pack_for(w, n, k, kernel))
    }

    /// [`pack`](Self::pack) for a kernel known to be available.
    fn pack_for(w: &[f32], n: usize, k: usize, kernel: CpuKernel) -> Self {
        let data = match kernel {
            CpuKernel::Portable => Packed::Rows {
                bits: Arc::new(w.par_iter().map(|&v| bf16_bits(v)).collect()),
                transposed: false,
            },
            CpuKernel::Amx | CpuKernel::Avx512Bf16 => {
                let kpad = k.div_ceil(KBLOCK).max(1) * KBLOCK;
                let panels = n.div_ceil(PANEL).next_multiple_of(2);
                let per_panel = kpad * PANEL;
                let mut data = vec![0u16; panels * per_panel];
                data.par_chunks_mut(per_panel)
                    .enumerate()
                    .for_each(|(p, panel)| {
                        for c in 0..PANEL {
                            let col = p * PANEL + c;
                            if col >= n {
                                break;
                            }
                            let row = &w[col * k..col * k + k];
                            for (kk, &v) in row.iter().enumerate() {
                                // pair-row kk / 2, column c, half kk % 2
                                panel[(kk / 2) * 2 * PANEL + 2 * c + kk % 2] = bf16_bits(v);
                            }
                        }
                    });
                Packed::Panels { kpad, panels, data }
            }
        };
        Self { n, k, kernel, data }
    }

    /// The values `[n, k]` row-major as packed: each rounded to bf16, widened to f32.
    pub fn unpack(&self) -> Vec<f32> {
        let (n, k) = (self.n, self.k);
        match &self.data {
            Packed::Rows { bits, transposed } => {
                let w = widen(bits);
                if *transposed { transpose(&w, k, n) } else { w }
            }
            Packed::Panels { kpad, data, .. } => {
                let per_panel = kpad * PANEL;
                let mut w = vec![0.0f32; n * k];
                w.par_chunks_mut(k.max(1))
                    .enumerate()
                    .for_each(|(col, row)| {
                        let panel = &data[(col / PANEL) * per_panel..];
                        let c = col % PANEL;
                        for (kk, v) in row.iter_mut().enumerate() {
                            *v = bf16_value(panel[(kk / 2) * 2 * PANEL + 2 * c + kk % 2]);
                        }
                    });
                w
            }
        }
    }

    /// `Wᵀ` `[k, n]` packed for the same kernel: the weight of the input gradient's product
    /// `dy·W`. Bit for bit the packing of the transposed original values, since those were
    /// already rounded to bf16 here and rounding is idempotent.
    ///
    /// The portable kernel's rows serve both products: its `Wᵀ` shares them (nothing is copied,
    /// and [`bytes`](Self::bytes) counts them once, in `W`'s packing).
    pub fn transposed(&self) -> Self {
        let (n, k) = (self.n, self.k);
        if let Packed::Rows { bits, transposed } = &self.data {
            return Self {
                n: k,
                k: n,
                kernel: self.kernel,
                data: Packed::Rows {
                    bits: Arc::clone(bits),
                    transposed: !transposed,
                },
            };
        }
        Self::pack_for(&transpose(&self.unpack(), n, k), k, n, self.kernel)
    }

    /// Output columns `n`.
    pub fn outputs(&self) -> usize {
        self.n
    }

    /// Contraction length `k`.
    pub fn inputs(&self) -> usize {
        self.k
    }

    /// The kernel this weight was packed for.
    pub fn kernel(&self) -> CpuKernel {
        self.kernel
    }

    /// Bytes the packed weight holds (the portable kernel's `Wᵀ`, which shares `W`'s rows: 0).
    pub fn bytes(&self) -> usize {
        match &self.data {
            Packed::Panels { data, .. } => data.len() * 2,
            Packed::Rows {
                transposed: true, ..
            } => 0,
            Packed::Rows { bits, .. } => bits.len() * 2,
        }
    }

    /// `x·Wᵀ` for `x` `[m, k]` row-major: `[m, n]` row-major, on the Rayon threads.
    ///
    /// Each task rounds its own rows of `x` to bf16 into a buffer of its own (kept in cache for
    /// its products) and writes its rows of the output once: nothing of size `m·n` or `m·k` is
    /// zeroed or copied on the calling thread.
    ///
    /// # Panics
    ///
    /// If `x.len() != m·k`.
    pub fn matmul_wt(&self, x: &[f32], m: usize) -> Vec<f32> {
        let (n, k) = (self.n, self.k);
        assert_eq!(x.len(), m * k, "x of {m} rows × {k} needs {} values", m * k);
        count(self.kernel);
        if m == 0 || n == 0 || k == 0 {
            // An empty contraction sums nothing.
            return vec![0.0; m * n];
        }
        match &self.data {
            Packed::Rows { bits, transposed } => {
                if !transposed && m <= MATVEC_ROWS {
                    MATVECS.with(|c| c.set(c.get() + 1));
                    matvec(x, m, k, bits, n)
                } else {
                    portable(x, m, k, bits, n, *transposed)
                }
            }
            Packed::Panels { kpad, panels, data } => {
                let p = Panels {
                    data,
                    kpad: *kpad,
                    panels: *panels,
                    n,
                    k,
                };
                let (kernel, block): (PanelKernel, usize) = match self.kernel {
                    CpuKernel::Amx => (amx, AMX_ROWS),
                    _ => (avx512, AVX_ROWS),
                };
                let groups = column_groups(m, block, &p, rayon::current_num_threads());
                // SAFETY: `amx` and `avx512` write every element of the slice they are given:
                // they split it into tasks of whole rows that cover all rows, and each task
                // covers all `n` columns of its rows (whole blocks by the kernels' stores,
                // partial ones through their masks or the copy from the edge buffer).
                unsafe {
                    if groups > 1 {
                        by_columns(x, &p, groups, kernel)
                    } else {
                        run_panel_kernel(x, &p, kernel)
                    }
                }
            }
        }
    }
}

/// A product `x·Pᵀ` into `out` (`x.len() / k` rows of `n`, every element written): [`amx`] or
/// [`avx512`].
type PanelKernel = fn(&[f32], &Panels<'_>, &mut [MaybeUninit<f32>]);

/// `kernel`'s product `x·Pᵀ`, `[x.len() / k, n]` row-major.
///
/// # Safety
///
/// `kernel` writes every element of the output slice it is given.
unsafe fn run_panel_kernel(x: &[f32], p: &Panels<'_>, kernel: PanelKernel) -> Vec<f32> {
    let len = x.len() / p.k * p.n;
    let mut out = Vec::with_capacity(len);
    kernel(x, p, &mut out.spare_capacity_mut()[..len]);
    // SAFETY: `kernel` wrote every element of the first `len` of the capacity (the caller's
    // contract).
    unsafe { out.set_len(len) };
    out
}

/// Into how many groups of columns a product of `m` rows is split: one (not split) when its
/// blocks of `block` rows give every thread a task, else one per thread, at most one per pair of
/// panels. Decoding's one-row products are then streamed by every core, not by one.
fn column_groups(m: usize, block: usize, p: &Panels<'_>, threads: usize) -> usize {
    if m.div_ceil(block) >= threads {
        1
    } else {
        threads.min(p.panels / 2).max(1)
    }
}

/// `kernel`'s product `x·Pᵀ` computed as `groups` products with consecutive column slices of
/// `p` (whole pairs of panels each, as AMX takes them), on the Rayon threads, joined into
/// `[x.len() / k, n]` rows. Each output is the same sum as without the split.
///
/// # Safety
///
/// As [`run_panel_kernel`]; `groups` is at most `p.panels / 2`.
unsafe fn by_columns(x: &[f32], p: &Panels<'_>, groups: usize, kernel: PanelKernel) -> Vec<f32> {
    let m = x.len() / p.k;
    let pairs = p.panels / 2;
    let parts: Vec<Vec<f32>> = (0..groups)
        .into_par_iter()
        .map(|g| {
            let slice = p.columns(2 * (g * pairs / groups), 2 * ((g + 1) * pairs / groups));
            // SAFETY: the caller's contract on `kernel`, passed on.
            unsafe { run_panel_kernel(x, &slice, kernel) }
        })
        .collect();
    join_columns(parts, m)
}

/// The `[m, Σ colsᵢ]` rows of products `parts` of `m` rows each (`[m, colsᵢ]` row-major), their
/// columns side by side in order; one part is returned as it is.
fn join_columns(mut parts: Vec<Vec<f32>>, m: usize) -> Vec<f32> {
    if let [_] = &parts[..] {
        return parts.swap_remove(0);
    }
    let mut out = Vec::with_capacity(parts.iter().map(Vec::len).sum());
    for r in 0..m {
        for part in &parts {
            let cols = part.len() / m;
            out.extend_from_slice(&part[r * cols..(r + 1) * cols]);
        }
    }
    out
}

/// Rows of `x` (rows of `k` values) rounded to bf16, `rows` rows (zero past those `x` holds)
/// of `kpad` elements (zero past `k`).
fn to_bf16_rows(x: &[f32], k: usize, rows: usize, kpad: usize) -> Vec<u16> {
    let mut a = vec![0u16; rows * kpad];
    for (dst, src) in a.chunks_exact_mut(kpad).zip(x.chunks_exact(k)) {
        round_to_bf16(src, &mut dst[..k]);
    }
    a
}

/// `src` rounded to bf16 into `dst` (same length): by `VCVTNE2PS2BF16` where the CPU has
/// AVX512-BF16 (always, where these kernels run: AMX CPUs have it too), else [`bf16_bits`].
/// The two differ only on subnormal inputs, which the instruction rounds to zero.
pub fn round_to_bf16(src: &[f32], dst: &mut [u16]) {
    assert_eq!(
        src.len(),
        dst.len(),
        "bf16 rounding of {} values into {}",
        src.len(),
        dst.len()
    );
    #[cfg(target_arch = "x86_64")]
    if simd::has_avx512_bf16() {
        // SAFETY: the CPU has AVX512F and AVX512-BF16 (checked just above).
        unsafe { simd::to_bf16_avx512(src, dst) };
        return;
    }
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = bf16_bits(s);
    }
}

/// A packed weight's panels, borrowed.
struct Panels<'a> {
    data: &'a [u16],
    kpad: usize,
    panels: usize,
    /// Output columns.
    n: usize,
    /// Contraction length before padding.
    k: usize,
}

impl Panels<'_> {
    fn panel_len(&self) -> usize {
        self.kpad * PANEL
    }

    /// Panels `first..last` (`last` at most `panels`): the weight's columns `16·first..16·last`
    /// that exist, themselves a packed weight. Both even, so that AMX's pairs stay whole.
    fn columns(&self, first: usize, last: usize) -> Panels<'_> {
        debug_assert!(
            first.is_multiple_of(2)
                && last.is_multiple_of(2)
                && first <= last
                && last <= self.panels
        );
        Panels {
            data: &self.data[first * self.panel_len()..last * self.panel_len()],
            kpad: self.kpad,
            panels: last - first,
            n: self.n.min(last * PANEL) - self.n.min(first * PANEL),
            k: self.k,
        }
    }
}

/// Packed weights larger than this (about the L2 cache of one core of the machines this
/// project runs on) are split over the threads in one task each: each task streams the whole
/// weight once, so more tasks would stream it more often.
const LARGE_WEIGHT_BYTES: usize = 2 << 20;

/// The rows of the output each task computes: whole blocks of `block` rows, about four tasks
/// per thread so that uneven blocks even out, or one per thread for a large weight.
fn rows_per_task(m: usize, block: usize, p: &Panels<'_>) -> usize {
    let blocks = m.div_ceil(block);
    let per_thread = if p.data.len() * 2 > LARGE_WEIGHT_BYTES {
        1
    } else {
        4
    };
    let tasks = (per_thread * rayon::current_num_threads()).max(1);
    blocks.div_ceil(tasks).max(1) * block
}

/// The AMX product `x·Pᵀ` into `out` (`x.len() / k` rows of `n`, every element written).
fn amx(x: &[f32], p: &Panels<'_>, out: &mut [MaybeUninit<f32>]) {
    #[cfg(target_arch = "x86_64")]
    {
        let (n, k, kpad) = (p.n, p.k, p.kpad);
        let m = out.len() / n;
        let task_rows = rows_per_task(m, AMX_ROWS, p);
        out.par_chunks_mut(task_rows * n)
            .zip(x.par_chunks(task_rows * k))
            .for_each(|(out, x)| {
                let task_m = out.len() / n;
                let a = to_bf16_rows(x, k, task_m.next_multiple_of(AMX_ROWS), kpad);
                simd::amx_configure();
                // A 32 × 32 block whose outputs fall partly outside `out` is stored here first.
                let mut edge = [0.0f32; AMX_ROWS * 2 * PANEL];
                for pair in 0..p.panels / 2 {
                    let col0 = pair * 2 * PANEL;
                    let cols = (n - col0.min(n)).min(2 * PANEL);
                    if cols == 0 {
                        break;
                    }
                    let b0 = &p.data[2 * pair * p.panel_len()..(2 * pair + 2) * p.panel_len()];
                    for r in (0..task_m).step_by(AMX_ROWS) {
                        let rows = (task_m - r).min(AMX_ROWS);
                        let a_rows = &a[r * kpad..(r + AMX_ROWS) * kpad];
                        let whole = rows == AMX_ROWS && cols == 2 * PANEL;
                        let (c, ldc) = if whole {
                            (out[r * n + col0..].as_mut_ptr().cast::<f32>(), n * 4)
                        } else {
                            (edge.as_mut_ptr(), 2 * PANEL * 4)
                        };
                        // SAFETY: `amx_configure` ran on this thread above; `a_rows` holds 32
                        // rows of `kpad` bf16 (`kpad / 32` blocks of 64 bytes) at stride
                        // `2·kpad` bytes; `b0` holds two panels of `kpad / 32` KiB; `c` is either
                        // `out` at row `r`, column `col0` with 32 rows of 32 columns left in
                        // `out` (the block is whole; f32 and `MaybeUninit<f32>` share their
                        // layout), or the 32 × 32 `edge` buffer.
                        unsafe {
                            simd::amx_block(
                                a_rows.as_ptr(),
                                2 * kpad,
                                b0.as_ptr(),
                                b0[p.panel_len()..].as_ptr(),
                                kpad / KBLOCK,
                                c,
                                ldc,
                            );
                        }
                        if !whole {
                            for i in 0..rows {
                                let dst = &mut out[(r + i) * n + col0..][..cols];
                                for (d, &v) in dst.iter_mut().zip(&edge[i * 2 * PANEL..]) {
                                    d.write(v);
                                }
                            }
                        }
                    }
                }
                simd::amx_release();
            });
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!(
        "the AMX kernel is never available off x86_64: {} {} {}",
        x.len(),
        p.n,
        out.len()
    );
}

/// The AVX512-BF16 product `x·Pᵀ` into `out` (`x.len() / k` rows of `n`, every element
/// written).
fn avx512(x: &[f32], p: &Panels<'_>, out: &mut [MaybeUninit<f32>]) {
    #[cfg(target_arch = "x86_64")]
    {
        let (n, k, kpad) = (p.n, p.k, p.kpad);
        let m = out.len() / n;
        let used_panels = n.div_ceil(PANEL);
        let task_rows = rows_per_task(m, AVX_ROWS, p);
        out.par_chunks_mut(task_rows * n)
            .zip(x.par_chunks(task_rows * k))
            .for_each(|(out, x)| {
                let task_m = out.len() / n;
                let a = to_bf16_rows(x, k, task_m, kpad);
                for p0 in (0..used_panels).step_by(AVX_PANELS) {
                    let np = (used_panels - p0).min(AVX_PANELS);
                    let last_cols = n - (p0 + np - 1) * PANEL;
                    let last_cols = last_cols.min(PANEL);
                    let b = &p.data[p0 * p.panel_len()..(p0 + np) * p.panel_len()];
                    for r in (0..task_m).step_by(AVX_ROWS) {
                        let mr = (task_m - r).min(AVX_ROWS);
                        let a_rows = &a[r * kpad..(r + mr) * kpad];
                        let c = &mut out[r * n + p0 * PANEL..];
                        // SAFETY: AVX512-BF16 is available (checked when the weight was packed
                        // for this kernel); `a_rows` holds `mr` rows of `kpad` bf16; `b` holds
                        // `np` panels of `16·kpad` bf16; `c` starts at row `r`, column
                        // `16·p0` of `out`, which has `mr` rows of `n` columns from there, so
                        // `16·(np − 1) + last_cols` columns fit in each.
                        unsafe { avx512_dispatch(mr, np, a_rows, kpad, b, p, c, n, last_cols) };
                    }
                }
            });
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!(
        "the AVX512-BF16 kernel is never available off x86_64: {} {} {}",
        x.len(),
        p.n,
        out.len()
    );
}

/// [`simd::avx512_block`] for `mr` rows (1–8) and `np` panels (1–3).
///
/// # Safety
///
/// As [`simd::avx512_block`] with `MR = mr`, `NP = np`.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn avx512_dispatch(
    mr: usize,
    np: usize,
    a: &[u16],
    lda: usize,
    b: &[u16],
    p: &Panels<'_>,
    c: &mut [MaybeUninit<f32>],
    ldc: usize,
    last_cols: usize,
) {
    let c = c.as_mut_ptr().cast::<f32>();
    macro_rules! call {
        ($($mr:literal),*) => {
            match (mr, np) {
                $(
                    ($mr, 1) => simd::avx512_block::<$mr, 1>(a.as_ptr(), lda, b.as_ptr(), p.panel_len(), p.kpad / 2, c, ldc, last_cols),
                    ($mr, 2) => simd::avx512_block::<$mr, 2>(a.as_ptr(), lda, b.as_ptr(), p.panel_len(), p.kpad / 2, c, ldc, last_cols),
                    ($mr, 3) => simd::avx512_block::<$mr, 3>(a.as_ptr(), lda, b.as_ptr(), p.panel_len(), p.kpad / 2, c, ldc, last_cols),
                )*
                _ => unreachable!("blocks are 1–8 rows of 1–3 panels, not {mr} × {np}"),
            }
        };
    }
    // SAFETY: the caller's contract, passed on.
    unsafe { call!(1, 2, 3, 4, 5, 6, 7, 8) }
}

/// bf16 bits widened to their f32 values, on the Rayon threads.
fn widen(bits: &[u16]) -> Vec<f32> {
    bits.par_iter().map(|&b| bf16_value(b)).collect()
}

/// `w` `[rows, cols]` row-major, transposed to `[cols, rows]`.
fn transpose(w: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0.0f32; rows * cols];
    for (r, row) in w.chunks(cols.max(1)).enumerate() {
        for (c, &v) in row.iter().enumerate() {
            t[c * rows + r] = v;
        }
    }
    t
}

/// The portable product of more than [`MATVEC_ROWS`] rows (or with `Wᵀ`): `x` rounded to
/// bf16, times the rows `bits` widened to f32 for this product (`[n, k]`, or `[k, n]` when
/// `transposed`), in f32 by the `gemm` crate on the Rayon threads.
fn portable(x: &[f32], m: usize, k: usize, bits: &[u16], n: usize, transposed: bool) -> Vec<f32> {
    let xr: Vec<f32> = x.par_iter().map(|&v| bf16_value(bf16_bits(v))).collect();
    let w = widen(bits);
    let rhs = if transposed {
        MatRef::row_major(&w, k, n)
    } else {
        MatRef::row_major(&w, n, k).t()
    };
    let mut out = vec![0.0f32; m * n];
    matmul(
        MatMut::row_major(&mut out, m, n),
        MatRef::row_major(&xr, m, k),
        rhs,
        false,
        1.0,
        Parallelism::Rayon(0),
    );
    out
}

/// Most rows of `x` the portable kernel multiplies by [`matvec`] (decoding's products), reading
/// the bf16 rows in place: such products are bound by reading the weight, which bf16 halves.
const MATVEC_ROWS: usize = 8;

/// Fewest rows of the weight per task of [`matvec`] (smaller weights are not split).
const MATVEC_MIN_ROWS: usize = 64;

/// `x·Wᵀ` for `x` `[m, k]` and the bf16 rows `bits` `[n, k]`, as `m` dot products per row of
/// `W`: the rows split in one contiguous block per Rayon thread, each row widened as it is read
/// (AVX2 and FMA where the CPU has them). Each output is one [`dot`], split or not.
fn matvec(x: &[f32], m: usize, k: usize, bits: &[u16], n: usize) -> Vec<f32> {
    let xr: Vec<f32> = x.iter().map(|&v| bf16_value(bf16_bits(v))).collect();
    let parts = rayon::current_num_threads().min(n / MATVEC_MIN_ROWS).max(1);
    let fma = simd::has_avx2_fma();
    let pieces: Vec<Vec<f32>> = (0..parts)
        .into_par_iter()
        .map(|i| {
            let (first, last) = (i * n / parts, (i + 1) * n / parts);
            let mut piece = vec![0.0f32; m * (last - first)];
            let rows = &bits[first * k..last * k];
            if fma {
                // SAFETY: the CPU has AVX2 and FMA (`has_avx2_fma` above).
                unsafe { simd::dots_avx2_fma(rows, k, &xr, &mut piece) };
            } else {
                dots(rows, k, &xr, &mut piece);
            }
            piece
        })
        .collect();
    join_columns(pieces, m)
}

/// `out` `[m, rows]` (`m = x.len() / k`) ← every row of `x` dotted with every row of `w`
/// (`rows` rows of `k` bf16 values), by [`dot`]; [`simd::dots_avx2_fma`] is the same with
/// AVX2 and fused multiply-adds.
fn dots(w: &[u16], k: usize, x: &[f32], out: &mut [f32]) {
    dots_with(w, k, x, out, dot);
}

/// [`dots`] with the dot product `dot` (inlined, so that a caller compiled for more CPU
/// features compiles the loop with them).
#[inline(always)]
fn dots_with(w: &[u16], k: usize, x: &[f32], out: &mut [f32], dot: impl Fn(&[u16], &[f32]) -> f32) {
    let rows = w.len() / k.max(1);
    for (j, wrow) in w.chunks_exact(k.max(1)).enumerate() {
        for (r, xrow) in x.chunks_exact(k.max(1)).enumerate() {
            out[r * rows + j] = dot(wrow, xrow);
        }
    }
}

/// Lanes of [`dot`]'s partial sums (four AVX2 registers).
const DOT_LANES: usize = 32;

/// `Σᵢ wᵢ·xᵢ` with `w` in bf16: lane `l` sums the terms `i ≡ l (mod 32)` in order, then
/// [`reduce_lanes`]: a fixed order.
fn dot(w: &[u16], x: &[f32]) -> f32 {
    let mut acc = [0.0f32; DOT_LANES];
    let (wc, wt) = w.as_chunks::<DOT_LANES>();
    let (xc, xt) = x.as_chunks::<DOT_LANES>();
    for (w, x) in wc.iter().zip(xc) {
        for l in 0..DOT_LANES {
            acc[l] += bf16_value(w[l]) * x[l];
        }
    }
    for (l, (&w, &x)) in wt.iter().zip(xt).enumerate() {
        acc[l] += bf16_value(w) * x;
    }
    reduce_lanes(acc)
}

/// The sum of [`dot`]'s lanes, added pairwise: `l + 16` into `l`, then `l + 8`, `l + 4`, ….
fn reduce_lanes(mut acc: [f32; DOT_LANES]) -> f32 {
    let mut width = DOT_LANES;
    while width > 1 {
        width /= 2;
        for l in 0..width {
            acc[l] += acc[l + width];
        }
    }
    acc[0]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plain reference [`PanelKernel`]: each output summed in order from the packed values,
    /// with `x` rounded to bf16 as the kernels round it.
    fn reference(x: &[f32], p: &Panels<'_>, out: &mut [MaybeUninit<f32>]) {
        let m = out.len() / p.n;
        for i in 0..m {
            for c in 0..p.n {
                let panel = &p.data[(c / PANEL) * p.panel_len()..];
                let (cc, mut s) = (c % PANEL, 0.0f32);
                for kk in 0..p.k {
                    let w = bf16_value(panel[(kk / 2) * 2 * PANEL + 2 * cc + kk % 2]);
                    s += bf16_value(bf16_bits(x[i * p.k + kk])) * w;
                }
                out[i * p.n + c].write(s);
            }
        }
    }

    /// Values in [-0.5, 0.5) from a linear congruential sequence started at `seed`.
    fn values(mut seed: u32) -> impl FnMut() -> f32 {
        move || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        }
    }

    /// The portable kernel's dot products, plain and compiled for AVX2 and FMA (where this CPU
    /// has them), against f64 sums of the same bf16 values: within `(k + 2)·2⁻²⁴·Σ|wᵢ·xᵢ|` on
    /// lengths around the 32 lanes and SmolLM2's, and a NaN of `x` reaches its outputs only.
    #[test]
    fn portable_dots_match_the_f64_reference() {
        let mut next = values(7);
        type Dots = fn(&[u16], usize, &[f32], &mut [f32]);
        let mut variants: Vec<(&str, Dots)> = vec![("plain", dots)];
        if simd::has_avx2_fma() {
            // SAFETY: the CPU has AVX2 and FMA (checked just above).
            variants.push(("avx2+fma", |w, k, x, out| unsafe {
                simd::dots_avx2_fma(w, k, x, out)
            }));
        }
        for (m, rows, k) in [
            (1, 1, 1),
            (2, 3, 31),
            (3, 5, 32),
            (1, 7, 33),
            (8, 9, 576),
            (1, 4, 1536),
        ] {
            let w: Vec<u16> = (0..rows * k).map(|_| bf16_bits(next())).collect();
            let mut x: Vec<f32> = (0..m * k).map(|_| bf16_value(bf16_bits(next()))).collect();
            for (name, f) in &variants {
                let mut out = vec![f32::NAN; m * rows];
                f(&w, k, &x, &mut out);
                for r in 0..m {
                    for j in 0..rows {
                        let terms = (0..k)
                            .map(|i| f64::from(bf16_value(w[j * k + i])) * f64::from(x[r * k + i]));
                        let (want, s) = terms.fold((0.0, 0.0), |(a, s), t| (a + t, s + t.abs()));
                        let got = f64::from(out[r * rows + j]);
                        let bound = (k as f64 + 2.0) * 2f64.powi(-24) * s;
                        assert!(
                            got.is_finite() && (got - want).abs() <= bound,
                            "{name} {m}×{rows}×{k} at ({r}, {j}): {got} against {want}"
                        );
                    }
                }
            }
            x[k / 2] = f32::NAN;
            for (name, f) in &variants {
                let mut out = vec![0.0f32; m * rows];
                f(&w, k, &x, &mut out);
                assert!(out[..rows].iter().all(|v| v.is_nan()), "{name}: row 0");
                assert!(
                    out[rows..].iter().all(|v| v.is_finite()),
                    "{name}: other rows"
                );
            }
        }
    }

    /// Splitting a few-row product by columns of the packed weight gives the unsplit product
    /// bit for bit, for uneven column counts, one and several rows, and 2 to 5 groups.
    #[test]
    fn a_product_split_by_columns_equals_the_unsplit_one() {
        let mut next = values(1);
        for (m, n, k) in [
            (1, 1, 1),
            (1, 33, 7),
            (3, 100, 64),
            (1, 192, 576),
            (5, 577, 33),
        ] {
            let w: Vec<f32> = (0..n * k).map(|_| next()).collect();
            let x: Vec<f32> = (0..m * k).map(|_| next()).collect();
            let packed = PackedWeight::pack_for(&w, n, k, CpuKernel::Amx);
            let Packed::Panels { kpad, panels, data } = &packed.data else {
                unreachable!("AMX weights are packed in panels")
            };
            let p = Panels {
                data,
                kpad: *kpad,
                panels: *panels,
                n,
                k,
            };
            // SAFETY: `reference` writes every element of its output.
            let whole = unsafe { run_panel_kernel(&x, &p, reference) };
            assert!(whole.iter().all(|v| v.is_finite()), "{m}×{n}×{k}");
            for groups in 2..=5.min(p.panels / 2) {
                // SAFETY: as above; `groups` is at most `p.panels / 2`.
                let split = unsafe { by_columns(&x, &p, groups, reference) };
                assert_eq!(split, whole, "{m}×{n}×{k} in {groups} groups");
            }
        }
        let p = |panels| Panels {
            data: &[],
            kpad: 32,
            panels,
            n: 16 * panels,
            k: 1,
        };
        assert_eq!(
            column_groups(1, AMX_ROWS, &p(4), 2),
            2,
            "one row: every thread"
        );
        assert_eq!(
            column_groups(1, AMX_ROWS, &p(2), 2),
            1,
            "one pair of panels"
        );
        assert_eq!(
            column_groups(64, AMX_ROWS, &p(4), 2),
            1,
            "a block of rows each"
        );
        assert_eq!(column_groups(9, AVX_ROWS, &p(36), 3), 3);
    }
}
