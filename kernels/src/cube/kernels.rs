//! The CubeCL kernels of prefix attention.
//!
//! Layout and work split:
//! * Every `[.., d]` row is read and written as `d / N` vectors of `N` floats (`N = 4` when `d`
//!   allows it): one vector load, one dot product or one vector multiply-add moves four
//!   elements, in shared memory as in registers.
//! * Queries are viewed per key/value head: the `g = H / Hkv` query heads that share a key/value
//!   head form `g·L` query rows (row `r` is head `kv·g + r / L`, position `r % L`), so every
//!   key/value tile loaded into shared memory serves a whole group (GQA without repeating keys).
//! * Keys are the concatenation `[prefix ; sequence]` — never materialised: column `c < P` reads
//!   the shared prefix tensor (batch stride 0 when it is shared), column `c ≥ P` reads the
//!   sequence keys. Row `i` sees prefix slot `p < prefix_len[b]` and sequence key
//!   `j ≤ i + (S − L)`, `j < key_len[b]`.
//! * Forward and dQ: each unit owns `R` query rows (`rows_per_unit`; row `start + U·s + u` for
//!   slot `s` of unit `u` in a cube of `U` units), `U·R` rows per cube (`U` is chosen at
//!   launch, 8 to 64, at least 64 rows a cube); key/value tiles of `BK` columns are staged in
//!   shared memory, and every vector read from there serves the unit's `R` rows; sequence tiles
//!   above the cube's causal diagonal are skipped, and so is a column none of a unit's rows
//!   sees. The forward keeps an online softmax per row (running max and sum, rescaled only when
//!   the maximum grows) and writes the output and the log-sum-exp of the scaled scores.
//! * dK/dV: each unit owns `R` key columns for one query head of the group (the cube's `z`
//!   position), query tiles staged in shared memory, so each partial gradient is accumulated by
//!   one unit: no atomics, deterministic. The per-head partials `[g, B, Hkv, ·, d]` are summed
//!   afterwards (and over the batch for a shared prefix).
//!
//! * Lanes: with `lanes = W > 1`, `W` consecutive units share each of those rows or columns,
//!   each holding every `W`-th vector of it, and reduce the dot products with plane shuffles
//!   ([`Lanes`], [`lane_sum`]): `1/W` of the registers per unit, for the GPU backward.
//!
//! `R` is 1 on GPUs and 8 on CPU Vulkan drivers, `W` 1 on CPU drivers and by head dimension on
//! GPUs (see `rows_per_unit` and `lanes_per_row` in `launch.rs`).
//!
//! A score of a hidden pair is never used: hidden pairs are skipped, not masked with `-inf`
//! (WGSL has no `-inf` literal). A row with no visible column outputs zeros and its log-sum-exp
//! is `NEG_LARGE`.

use cubecl::{cube, prelude::*};

/// Stand-in for `-inf` (finite, so it compiles to WGSL).
pub const NEG_LARGE: f32 = -1.0e30;

/// The scalar arguments of every attention kernel: the softmax scale; `prefix`, the prefix
/// slots `P`; `prefix_shared != 0` when one prefix serves the whole batch; and `lengths_given`,
/// which per-row lengths the kernel's `lengths` buffer holds (see [`Visibility::of_row`]).
#[derive(CubeLaunch, CubeType, Debug, Clone, Copy)]
pub struct AttentionScalars {
    /// Factor of the scores, usually `1/√d`.
    pub scale: f32,
    /// Prefix slots `P` (0 without a prefix).
    pub prefix: u32,
    /// 1 when the prefix tensors hold one prefix for the batch, 0 when one per batch row.
    pub prefix_shared: u32,
    /// Bit 0: prefix lengths given; bit 1: key lengths given.
    pub lengths_given: u32,
}

impl AttentionScalars {
    /// These values as a kernel launch argument.
    pub(super) fn arg<R: Runtime>(self) -> AttentionScalarsLaunch<R> {
        AttentionScalarsLaunch::new(
            self.scale,
            self.prefix,
            self.prefix_shared,
            self.lengths_given,
        )
    }
}

/// Where the columns of `[prefix ; sequence]` of one (batch row, key/value head) live: column
/// `c < prefix` is prefix slot `c` of batch row `pb` of the prefix tensors (row 0 when the
/// prefix is shared by the batch), column `c ≥ prefix` sequence position `c - prefix` of batch
/// row `b` of the sequence tensors. Offsets are in vectors of the row layout.
#[derive(CubeType, Clone, Copy)]
pub(super) struct ColumnLayout {
    b: usize,
    pb: usize,
    kv: usize,
    kv_heads: usize,
    prefix: usize,
    seq: usize,
}

#[cube]
impl ColumnLayout {
    /// The columns of key/value head `kv` of batch row `b`, for `kv_heads` heads, `prefix`
    /// prefix slots (`shared`: one prefix for every batch row) and `seq` sequence positions.
    pub(super) fn of_head(
        b: usize,
        kv: usize,
        kv_heads: usize,
        prefix: usize,
        shared: bool,
        seq: usize,
    ) -> ColumnLayout {
        ColumnLayout {
            b,
            pb: select(shared, 0, b),
            kv,
            kv_heads,
            prefix,
            seq,
        }
    }

    /// Where column `c`'s key or value row starts, in the prefix tensor when `c < prefix`, in
    /// the sequence tensor otherwise.
    pub(super) fn offset(&self, c: usize, #[comptime] dl: usize) -> usize {
        select(
            c < self.prefix,
            ((self.pb * self.kv_heads + self.kv) * self.prefix + c) * dl,
            ((self.b * self.kv_heads + self.kv) * self.seq + (c - self.prefix)) * dl,
        )
    }

    /// Vector `x` of column `c`'s key or value row: from `prefix_t` below `prefix`, from
    /// `seq_t` above, zero from `end` on.
    pub(super) fn vector<F: Float, N: Size>(
        &self,
        seq_t: &Tensor<Vector<F, N>>,
        prefix_t: &Tensor<Vector<F, N>>,
        c: usize,
        x: usize,
        end: usize,
        #[comptime] dl: usize,
    ) -> Vector<F, N> {
        let mut val = Vector::new(F::new(0.0));
        if c < end {
            let off = self.offset(c, dl) + x;
            if c < self.prefix {
                val = prefix_t[off];
            } else {
                val = seq_t[off];
            }
        }
        val
    }

    /// Writes `val` as vector `x` of column `c`'s row: to `prefix_t` below `prefix`, to `seq_t`
    /// above; nothing from `end` on.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn write<F: Float, N: Size>(
        &self,
        seq_t: &mut Tensor<Vector<F, N>>,
        prefix_t: &mut Tensor<Vector<F, N>>,
        c: usize,
        x: usize,
        val: Vector<F, N>,
        end: usize,
        #[comptime] dl: usize,
    ) {
        if c < end {
            let off = self.offset(c, dl) + x;
            if c < self.prefix {
                prefix_t[off] = val;
            } else {
                seq_t[off] = val;
            }
        }
    }
}

/// What one batch row's queries see: prefix slots below `prefix_len`, and sequence key `j` when
/// `j ≤ i + causal_offset` and `j < key_len`. Query positions run below `l`; `l` marks an unused
/// slot.
#[derive(CubeType, Clone, Copy)]
pub(super) struct Visibility {
    l: usize,
    prefix: usize,
    prefix_len: usize,
    key_len: usize,
    causal_offset: usize,
}

#[cube]
impl Visibility {
    /// The visibility of batch row `b`. `given` says which per-row lengths `lengths` holds:
    /// bit 0 the prefix lengths (`[B]`, first), bit 1 the key lengths (`[B]`, after the prefix
    /// lengths when both are given). Lengths not given are the full `prefix` and `seq`, and
    /// `lengths` is then not read (without either it may be any buffer).
    pub(super) fn of_row<I: Int>(
        lengths: &Tensor<I>,
        given: u32,
        b: usize,
        batch: usize,
        l: usize,
        prefix: usize,
        seq: usize,
    ) -> Visibility {
        let mut prefix_len = prefix;
        let mut key_len = seq;
        let mut key_start = 0;
        if given & 1 != 0 {
            let n = u32::cast_from(lengths[b]) as usize;
            prefix_len = select(n < prefix, n, prefix);
            key_start = batch;
        }
        if given & 2 != 0 {
            key_len = u32::cast_from(lengths[key_start + b]) as usize;
        }
        Visibility {
            l,
            prefix,
            prefix_len,
            key_len,
            causal_offset: seq - l,
        }
    }

    /// Whether query position `i` (below `l`) sees column `c` of `[prefix ; sequence]`.
    pub(super) fn sees(&self, c: usize, i: usize) -> bool {
        // Sequence index of the column (0 for prefix columns, whose branch is not selected).
        let j = c - select(c < self.prefix, c, self.prefix);
        i < self.l
            && select(
                c < self.prefix,
                c < self.prefix_len,
                j <= i + self.causal_offset && j < self.key_len,
            )
    }

    /// Whether any of a unit's rows (query positions `pos`) sees column `c`.
    fn any_sees(&self, c: usize, pos: &Array<usize>, #[comptime] rows_per_unit: usize) -> bool {
        let mut any = false;
        #[unroll]
        for s in 0..rows_per_unit {
            any = any || self.sees(c, pos[s]);
        }
        any
    }

    /// Whether any of a unit's rows sees any of the `cols` columns from `c0` below `end`.
    fn any_sees_block(
        &self,
        c0: usize,
        end: usize,
        pos: &Array<usize>,
        #[comptime] cols: usize,
        #[comptime] rows_per_unit: usize,
    ) -> bool {
        let mut any = false;
        #[unroll]
        for cc in 0..cols {
            let c = c0 + cc;
            any = any || (c < end && self.any_sees(c, pos, rows_per_unit));
        }
        any
    }
}

/// How a unit's rows (or columns) are split over lanes. With `lanes = W > 1`, `W` consecutive
/// units of a plane share each row: lane `w` holds vectors `w, w + W, w + 2W, …` of it (so the
/// `W` lanes read `W` adjacent vectors of a staged tile), and a dot product is the lane's partial
/// sum reduced over the `W` lanes with plane shuffles. Fewer registers per unit (a row's vectors
/// are spread over `W` units) for `W` times the units and the reductions; the GPU layout for the
/// backward kernels, whose whole rows exceed the register file at `d = 64` (docs/measured/kernels-2026-11-27-registers.md).
#[derive(CubeType, Clone, Copy)]
pub(super) struct Lanes {
    /// This unit's lane within its row, `UNIT_POS % lanes`.
    pub(super) lane: usize,
    /// Rows between a unit's consecutive slots: `CUBE_DIM / lanes`.
    step: usize,
    /// This unit's row within a slot, `UNIT_POS / lanes`.
    pub(super) first: usize,
}

#[cube]
impl Lanes {
    fn of_unit(#[comptime] lanes: usize) -> Lanes {
        let unit = UNIT_POS_X as usize;
        Lanes {
            lane: unit % lanes,
            step: CUBE_DIM_X as usize / lanes,
            first: unit / lanes,
        }
    }

    /// The offset, from the cube's first row, of this unit's slot `s`.
    fn slot(&self, s: usize) -> usize {
        s * self.step + self.first
    }

    /// Where this lane's `t`-th vector is in a row of `dl` vectors.
    fn vector(&self, t: usize, #[comptime] lanes: usize) -> usize {
        self.lane + lanes * t
    }
}

/// Sum of `x` over the `lanes` consecutive units that share a row (butterfly of plane shuffles;
/// every lane gets the same bits). Must be reached by the whole plane (uniform control flow).
#[cube]
pub(super) fn lane_sum<F: Float>(x: F, #[comptime] lanes: usize) -> F {
    let mut sum = x;
    if comptime!(lanes >= 2) {
        sum += plane_shuffle_xor(sum, 1u32);
    }
    if comptime!(lanes >= 4) {
        sum += plane_shuffle_xor(sum, 2u32);
    }
    if comptime!(lanes >= 8) {
        sum += plane_shuffle_xor(sum, 4u32);
    }
    sum
}

/// Maximum of `x` over the `lanes` consecutive units that share a row (the butterfly of
/// [`lane_sum`] with `max`). Must be reached by the whole plane.
#[cube]
pub(super) fn lane_max<F: Float>(x: F, #[comptime] lanes: usize) -> F {
    let mut top = x;
    if comptime!(lanes >= 2) {
        let other = plane_shuffle_xor(top, 1u32);
        top = select(other > top, other, top);
    }
    if comptime!(lanes >= 4) {
        let other = plane_shuffle_xor(top, 2u32);
        top = select(other > top, other, top);
    }
    if comptime!(lanes >= 8) {
        let other = plane_shuffle_xor(top, 4u32);
        top = select(other > top, other, top);
    }
    top
}

/// `any` of this unit, or of the plane when rows are split over lanes (the shuffles that follow
/// must then be reached by every unit of the plane).
#[cube]
fn plane_uniform(any: bool, #[comptime] lanes: usize) -> bool {
    let mut out = any;
    if comptime!(lanes > 1) {
        out = plane_any(any);
    }
    out
}

/// The two dot products of a backward step, this lane's share reduced later with [`lane_sum`]:
/// for each of the unit's `slots` rows (dQ) or columns (dK/dV) `s`, held in registers `ra`,
/// `rb` (`[slots, d / (N·lanes)]`), and each of the `block` entries `e` staged in `sa`, `sb` from
/// entry `j0`, `a[s·block + e] = ra[s]·sa[e]` and `b[s·block + e] = rb[s]·sb[e]`.
#[cube]
#[allow(clippy::too_many_arguments)]
fn two_dots<F: Float, N: Size>(
    a: &mut Array<F>,
    b: &mut Array<F>,
    ra: &Array<Vector<F, N>>,
    rb: &Array<Vector<F, N>>,
    sa: &SharedMemory<Vector<F, N>>,
    sb: &SharedMemory<Vector<F, N>>,
    j0: usize,
    ln: &Lanes,
    #[comptime] dl: usize,
    #[comptime] slots: usize,
    #[comptime] block: usize,
    #[comptime] lanes: usize,
    #[comptime] unroll: bool,
) {
    let dw = comptime!(dl / lanes);
    #[unroll]
    for x in 0..slots * block {
        a[x] = F::new(0.0);
        b[x] = F::new(0.0);
    }
    #[unroll(unroll)]
    for t in 0..dw {
        #[unroll]
        for e in 0..block {
            let at = (j0 + e) * dl + ln.vector(t, lanes);
            let va = sa[at];
            let vb = sb[at];
            #[unroll]
            for s in 0..slots {
                a[s * block + e] += ra[s * dw + t].dot(va);
                b[s * block + e] += rb[s * dw + t].dot(vb);
            }
        }
    }
}

/// The query rows of one cube of the forward and dQ kernels. Queries are viewed per key/value
/// head: the `g·L` rows of head `kv` of batch row `b` (row `r` is query head `kv·g + r / L`,
/// position `r % L`); the cube owns rows `[start, start + cube_rows)`. A row is shared by
/// `lanes` consecutive units ([`Lanes`]); slot `s` of unit `u` is row
/// `start + s·(CUBE_DIM / lanes) + u / lanes`.
#[derive(CubeType, Clone, Copy)]
pub(super) struct QueryBlock {
    pub(super) b: usize,
    pub(super) kv: usize,
    heads: usize,
    g: usize,
    pub(super) l: usize,
    pub(super) rows: usize,
    start: usize,
    cube_rows: usize,
    pub(super) lanes: Lanes,
}

#[cube]
impl QueryBlock {
    /// The block of this cube (`CUBE_POS_X` over the rows, `CUBE_POS_Y` over batch·kv heads),
    /// for queries `q` `[B, H, L, ·]` and `kv_heads` key/value heads.
    pub(super) fn of_cube<F: Float, N: Size>(
        q: &Tensor<Vector<F, N>>,
        kv_heads: usize,
        #[comptime] rows_per_unit: usize,
        #[comptime] lanes: usize,
    ) -> QueryBlock {
        let heads = q.shape(1);
        let l = q.shape(2);
        let g = heads / kv_heads;
        let bkv = CUBE_POS_Y as usize;
        let lanes = Lanes::of_unit(lanes);
        let cube_rows = lanes.step * rows_per_unit;
        QueryBlock {
            b: bkv / kv_heads,
            kv: bkv % kv_heads,
            heads,
            g,
            l,
            rows: g * l,
            start: CUBE_POS_X as usize * cube_rows,
            cube_rows,
            lanes,
        }
    }

    /// The row of this unit's slot `s` (at or past `rows` for an unused slot).
    pub(super) fn row(&self, s: usize) -> usize {
        self.start + self.lanes.slot(s)
    }

    /// Where row `row` is in `[B, H, L]` order (valid for `row < rows`).
    pub(super) fn index(&self, row: usize) -> usize {
        (self.b * self.heads + self.kv * self.g + row / self.l) * self.l + row % self.l
    }

    /// The block's rows of a `[B, H, L, ·]` tensor (queries, output gradients) as the columns
    /// of a [`ColumnLayout`] without a prefix: column `row` is where [`QueryBlock::index`]
    /// puts `row` (the group's heads are consecutive, so its `g·L` rows are too).
    pub(super) fn rows_layout(&self) -> ColumnLayout {
        ColumnLayout::of_head(self.b, self.kv, self.heads / self.g, 0, false, self.rows)
    }

    /// The first row of the cube.
    pub(super) fn first(&self) -> usize {
        self.start
    }

    /// The query position of `row`, or `l` (never visible) past the last row.
    pub(super) fn position(&self, row: usize) -> usize {
        select(row < self.rows, row % self.l, self.l)
    }

    /// Highest sequence key any row of this cube can see, plus one (the end of the useful
    /// columns of `[prefix ; sequence]`).
    pub(super) fn column_end(&self, prefix: usize, seq: usize) -> usize {
        let l = self.l;
        let cube_end = self.start + self.cube_rows;
        let last = select(cube_end < self.rows, cube_end, self.rows) - 1;
        // Rows of several heads in one cube (a cube spans `CUBE_DIM·R` rows): a later head
        // restarts at position 0, an earlier one reaches position L - 1.
        let mut max_i = last % l;
        if self.start / l != last / l {
            max_i = l - 1;
        }
        let reach = max_i + (seq - l) + 1;
        prefix + select(reach < seq, reach, seq)
    }
}

/// What one cube of the forward and dQ kernels works on: its query rows, what they see, where
/// their key/value columns live, and the end of the columns any of them sees.
#[derive(CubeType, Clone, Copy)]
pub(super) struct RowCube {
    pub(super) block: QueryBlock,
    pub(super) vis: Visibility,
    pub(super) layout: ColumnLayout,
    pub(super) end: usize,
}

#[cube]
impl RowCube {
    /// This cube's rows of queries `q` `[B, H, L, ·]` against keys `k` `[B, Hkv, S, ·]`, with
    /// the prefix and per-row lengths `lengths` that `scalars` describes; units laid out as
    /// [`QueryBlock::of_cube`].
    pub(super) fn of_cube<F: Float, N: Size, I: Int>(
        q: &Tensor<Vector<F, N>>,
        k: &Tensor<Vector<F, N>>,
        lengths: &Tensor<I>,
        scalars: &AttentionScalars,
        #[comptime] rows_per_unit: usize,
        #[comptime] lanes: usize,
    ) -> RowCube {
        let batch = q.shape(0);
        let kv_heads = k.shape(1);
        let seq = k.shape(2);
        let prefix = scalars.prefix as usize;
        let given = scalars.lengths_given;
        let shared = scalars.prefix_shared != 0;
        let block = QueryBlock::of_cube::<F, N>(q, kv_heads, rows_per_unit, lanes);
        let (b, kv) = (block.b, block.kv);
        let vis = Visibility::of_row(lengths, given, b, batch, block.l, prefix, seq);
        let layout = ColumnLayout::of_head(b, kv, kv_heads, prefix, shared, seq);
        let end = block.column_end(prefix, seq);
        RowCube {
            block,
            vis,
            layout,
            end,
        }
    }
}

/// What one cube of the dK/dV kernels works on: `cube_cols` consecutive columns of
/// `[prefix ; sequence]` of one (batch row, key/value head) (`CUBE_POS_X`, `CUBE_POS_Y`), against
/// the query rows of one head of the group (`CUBE_POS_Z`); its partial gradients are that
/// head's, summed over the group afterwards.
#[derive(CubeType, Clone, Copy)]
pub(super) struct ColumnCube {
    /// What the batch row's queries see.
    pub(super) vis: Visibility,
    /// Where the cube's key and value columns are read.
    pub(super) layout: ColumnLayout,
    /// Where their partial gradients go: `[g, B, Hkv, S, d]` for sequence columns, and
    /// `[g, B, Hkv, P, d]` for prefix columns.
    pub(super) partials: ColumnLayout,
    /// The query head's rows of `[B, H, L, ·]` tensors (queries, output gradients) as the
    /// columns of a layout without a prefix: column `i` is query position `i`.
    pub(super) queries: ColumnLayout,
    /// The cube's first column.
    pub(super) first: usize,
    /// Columns of `[prefix ; sequence]`.
    pub(super) columns: usize,
    /// The first query position that can see one of the cube's sequence columns (0 when the
    /// cube has prefix columns, which every query position sees): rows above it see none of
    /// the cube's columns.
    pub(super) first_query: usize,
    /// Query positions per head.
    pub(super) l: usize,
    /// Where the head's rows start in `[B·H·L]` order.
    stats_at: usize,
    /// Query rows in all, `B·H·L`: where `D` starts in `stats`.
    n_rows: usize,
}

#[cube]
impl ColumnCube {
    /// This cube's columns, `cube_cols` of them, for queries `q` `[B, H, L, ·]` and keys `k`
    /// `[B, Hkv, S, ·]`, with the prefix and per-row lengths `lengths` that `scalars`
    /// describes.
    pub(super) fn of_cube<F: Float, N: Size, I: Int>(
        q: &Tensor<Vector<F, N>>,
        k: &Tensor<Vector<F, N>>,
        lengths: &Tensor<I>,
        scalars: &AttentionScalars,
        cube_cols: usize,
    ) -> ColumnCube {
        let batch = q.shape(0);
        let heads = q.shape(1);
        let l = q.shape(2);
        let kv_heads = k.shape(1);
        let seq = k.shape(2);
        let prefix = scalars.prefix as usize;
        let given = scalars.lengths_given;
        let shared = scalars.prefix_shared != 0;
        let bkv = CUBE_POS_Y as usize;
        let b = bkv / kv_heads;
        let kv = bkv % kv_heads;
        let h = CUBE_POS_Z as usize;
        let head = kv * (heads / kv_heads) + h;
        let vis = Visibility::of_row(lengths, given, b, batch, l, prefix, seq);
        let first = CUBE_POS_X as usize * cube_cols;
        let mut first_query = 0;
        if first >= prefix && first - prefix > vis.causal_offset {
            first_query = first - prefix - vis.causal_offset;
        }
        ColumnCube {
            vis,
            layout: ColumnLayout::of_head(b, kv, kv_heads, prefix, shared, seq),
            partials: ColumnLayout::of_head(h * batch + b, kv, kv_heads, prefix, false, seq),
            queries: ColumnLayout::of_head(b, head, heads, 0, false, l),
            first,
            columns: prefix + seq,
            first_query,
            l,
            stats_at: (b * heads + head) * l,
            n_rows: batch * heads * l,
        }
    }

    /// The log-sum-exp of query position `i` from `stats` `[2, B·H·L]` (0 from `l` on).
    pub(super) fn lse<F: Float>(&self, stats: &Tensor<F>, i: usize) -> F {
        self.stat::<F>(stats, i, 0)
    }

    /// `D = dO · O` of query position `i` from `stats` (0 from `l` on).
    pub(super) fn delta<F: Float>(&self, stats: &Tensor<F>, i: usize) -> F {
        self.stat::<F>(stats, i, self.n_rows)
    }

    fn stat<F: Float>(&self, stats: &Tensor<F>, i: usize, at: usize) -> F {
        let mut x = F::new(0.0);
        if i < self.l {
            x = stats[at + self.stats_at + i];
        }
        x
    }
}

/// Stages key/value columns `[tile, tile + bk)` of `[prefix ; sequence]` in shared memory (zeros
/// past `end`), every unit of the cube copying a strided share.
#[cube]
#[allow(clippy::too_many_arguments)]
fn stage_columns<F: Float, N: Size>(
    k: &Tensor<Vector<F, N>>,
    v: &Tensor<Vector<F, N>>,
    pk: &Tensor<Vector<F, N>>,
    pv: &Tensor<Vector<F, N>>,
    ks: &mut SharedMemory<Vector<F, N>>,
    vs: &mut SharedMemory<Vector<F, N>>,
    tile: usize,
    end: usize,
    columns: &ColumnLayout,
    #[comptime] dl: usize,
    #[comptime] bk: usize,
) {
    let mut idx = UNIT_POS_X as usize;
    while idx < bk * dl {
        let c = tile + idx / dl;
        let mut kval = Vector::new(F::new(0.0));
        let mut vval = Vector::new(F::new(0.0));
        if c < end {
            let off = columns.offset(c, dl) + idx % dl;
            if c < columns.prefix {
                kval = pk[off];
                vval = pv[off];
            } else {
                kval = k[off];
                vval = v[off];
            }
        }
        ks[idx] = kval;
        vs[idx] = vval;
        idx += CUBE_DIM_X as usize;
    }
}

/// Forward pass. Outputs `out` `[B, H, L, d]` and `lse` `[B, H, L]`. Each unit owns
/// `rows_per_unit` query rows, each shared with `lanes - 1` neighbouring units ([`Lanes`]), so
/// every key/value vector read from shared memory serves `rows_per_unit` rows.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn forward_kernel<F: Float, I: Int, N: Size>(
    q: &Tensor<Vector<F, N>>,
    k: &Tensor<Vector<F, N>>,
    v: &Tensor<Vector<F, N>>,
    pk: &Tensor<Vector<F, N>>,
    pv: &Tensor<Vector<F, N>>,
    lengths: &Tensor<I>,
    out: &mut Tensor<Vector<F, N>>,
    lse: &mut Tensor<F>,
    scalars: &AttentionScalars,
    #[comptime] dl: usize,
    #[comptime] bk: usize,
    #[comptime] rows_per_unit: usize,
    #[comptime] lanes: usize,
    #[comptime] cols: usize,
    #[comptime] unroll: bool,
    #[define(F, I)] _dtypes: [StorageType; 2],
) {
    let cube = RowCube::of_cube::<F, N, I>(q, k, lengths, scalars, rows_per_unit, lanes);
    let (block, vis, layout, end) = (cube.block, cube.vis, cube.layout, cube.end);
    let (rows, ln) = (block.rows, block.lanes);
    // Vectors of a row held by this unit.
    let dw = comptime!(dl / lanes);

    let zero = Vector::new(F::new(0.0));
    let scale_v = Vector::new(F::cast_from(scalars.scale));
    let mut qr = Array::<Vector<F, N>>::new(rows_per_unit * dw);
    let mut acc = Array::<Vector<F, N>>::new(rows_per_unit * dw);
    let mut m = Array::<F>::new(rows_per_unit);
    let mut den = Array::<F>::new(rows_per_unit);
    // A block's scores, then its probabilities: `[rows_per_unit, cols]`.
    let mut score = Array::<F>::new(rows_per_unit * cols);
    // Each slot's query position, or `l` (never visible) past the last row.
    let mut pos = Array::<usize>::new(rows_per_unit);
    #[unroll]
    for s in 0..rows_per_unit {
        let row = block.row(s);
        let r = block.index(row);
        pos[s] = block.position(row);
        m[s] = F::new(NEG_LARGE);
        den[s] = F::new(0.0);
        #[unroll(unroll)]
        for t in 0..dw {
            acc[s * dw + t] = zero;
            qr[s * dw + t] = zero;
            if row < rows {
                qr[s * dw + t] = q[r * dl + ln.vector(t, lanes)] * scale_v;
            }
        }
    }

    let mut ks = SharedMemory::<Vector<F, N>>::new(bk * dl);
    let mut vs = SharedMemory::<Vector<F, N>>::new(bk * dl);
    let mut tile = 0;
    while tile < end {
        stage_columns::<F, N>(k, v, pk, pv, &mut ks, &mut vs, tile, end, &layout, dl, bk);
        sync_cube();
        // Columns in blocks of `cols`: the block's `rows_per_unit · cols` dot products are
        // independent (instruction-level parallelism for one-row units), and a row's sums are
        // rescaled at most once per block, to the block's largest visible score.
        for jb in 0..bk / cols {
            let j0 = jb * cols;
            // Skip the block unless one of the unit's rows (of the plane's, with lanes) sees
            // one of its columns.
            let any = vis.any_sees_block(tile + j0, end, &pos, cols, rows_per_unit);
            if plane_uniform(any, lanes) {
                #[unroll]
                for x in 0..rows_per_unit * cols {
                    score[x] = F::new(0.0);
                }
                #[unroll(unroll)]
                for t in 0..dw {
                    #[unroll]
                    for cc in 0..cols {
                        let kvec = ks[(j0 + cc) * dl + ln.vector(t, lanes)];
                        #[unroll]
                        for s in 0..rows_per_unit {
                            score[s * cols + cc] += qr[s * dw + t].dot(kvec);
                        }
                    }
                }
                // Online softmax: a row's sums are rescaled only when its maximum grows;
                // hidden pairs add nothing (p = 0).
                #[unroll]
                for s in 0..rows_per_unit {
                    let mut top = m[s];
                    #[unroll]
                    for cc in 0..cols {
                        let sc = lane_sum::<F>(score[s * cols + cc], lanes);
                        score[s * cols + cc] = sc;
                        if vis.sees(tile + j0 + cc, pos[s]) && sc > top {
                            top = sc;
                        }
                    }
                    if top > m[s] {
                        let correction = F::exp(m[s] - top);
                        den[s] *= correction;
                        let cv = Vector::new(correction);
                        #[unroll(unroll)]
                        for t in 0..dw {
                            acc[s * dw + t] *= cv;
                        }
                        m[s] = top;
                    }
                    #[unroll]
                    for cc in 0..cols {
                        let seen = vis.sees(tile + j0 + cc, pos[s]);
                        let p = select(seen, F::exp(score[s * cols + cc] - m[s]), F::new(0.0));
                        den[s] += p;
                        score[s * cols + cc] = p;
                    }
                }
                #[unroll(unroll)]
                for t in 0..dw {
                    #[unroll]
                    for cc in 0..cols {
                        let vvec = vs[(j0 + cc) * dl + ln.vector(t, lanes)];
                        #[unroll]
                        for s in 0..rows_per_unit {
                            acc[s * dw + t] += Vector::new(score[s * cols + cc]) * vvec;
                        }
                    }
                }
            }
        }
        sync_cube();
        tile += bk;
    }
    #[unroll]
    for s in 0..rows_per_unit {
        let row = block.row(s);
        if row < rows {
            let r = block.index(row);
            let mut inv = F::new(0.0);
            let mut row_lse = F::new(NEG_LARGE);
            if den[s] > F::new(0.0) {
                inv = F::new(1.0) / den[s];
                row_lse = m[s] + F::ln(den[s]);
            }
            let inv_v = Vector::new(inv);
            #[unroll(unroll)]
            for t in 0..dw {
                out[r * dl + ln.vector(t, lanes)] = acc[s * dw + t] * inv_v;
            }
            if ln.lane == 0 {
                lse[r] = row_lse;
            }
        }
    }
}

/// Query gradient `dq` `[B, H, L, d]`, recomputing probabilities from the forward's output `out`
/// and log-sum-exp `lse` `[B, H, L]`. Rows are split over units as in the forward
/// (`rows_per_unit` to a unit, each shared by `lanes` units). Each row's
/// `D = Σ_t dO[r, t] · O[r, t]` is computed here, from the output-gradient row the unit holds
/// anyway, and written with a copy of the log-sum-exp to `stats` `[2, B·H·L]` for the dK/dV
/// kernel (one buffer, so that kernel stays within 12 storage bindings): no separate pre-pass,
/// one launch fewer.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn dq_kernel<F: Float, I: Int, N: Size>(
    q: &Tensor<Vector<F, N>>,
    k: &Tensor<Vector<F, N>>,
    v: &Tensor<Vector<F, N>>,
    pk: &Tensor<Vector<F, N>>,
    pv: &Tensor<Vector<F, N>>,
    lengths: &Tensor<I>,
    grad_out: &Tensor<Vector<F, N>>,
    out: &Tensor<Vector<F, N>>,
    lse: &Tensor<F>,
    stats: &mut Tensor<F>,
    dq: &mut Tensor<Vector<F, N>>,
    scalars: &AttentionScalars,
    #[comptime] dl: usize,
    #[comptime] bk: usize,
    #[comptime] rows_per_unit: usize,
    #[comptime] lanes: usize,
    #[comptime] cols: usize,
    #[comptime] unroll: bool,
    #[define(F, I)] _dtypes: [StorageType; 2],
) {
    let cube = RowCube::of_cube::<F, N, I>(q, k, lengths, scalars, rows_per_unit, lanes);
    let (block, vis, layout, end) = (cube.block, cube.vis, cube.layout, cube.end);
    let (rows, ln) = (block.rows, block.lanes);
    let n_rows = q.shape(0) * q.shape(1) * block.l;
    // Vectors of a row held by this unit.
    let dw = comptime!(dl / lanes);

    let zero = Vector::new(F::new(0.0));
    let scale_v = Vector::new(F::cast_from(scalars.scale));
    let mut qr = Array::<Vector<F, N>>::new(rows_per_unit * dw);
    let mut dor = Array::<Vector<F, N>>::new(rows_per_unit * dw);
    let mut acc = Array::<Vector<F, N>>::new(rows_per_unit * dw);
    let mut pos = Array::<usize>::new(rows_per_unit);
    let mut row_lse = Array::<F>::new(rows_per_unit);
    let mut row_delta = Array::<F>::new(rows_per_unit);
    // A block's scores (then dS) and dP: `[rows_per_unit, cols]`.
    let mut score = Array::<F>::new(rows_per_unit * cols);
    let mut dp = Array::<F>::new(rows_per_unit * cols);
    #[unroll]
    for s in 0..rows_per_unit {
        let row = block.row(s);
        let r = block.index(row);
        pos[s] = block.position(row);
        row_lse[s] = F::new(0.0);
        if row < rows {
            row_lse[s] = lse[r];
        }
        // This lane's share of `D = dO · O`, summed over the row's lanes below.
        let mut part = F::new(0.0);
        #[unroll(unroll)]
        for t in 0..dw {
            acc[s * dw + t] = zero;
            qr[s * dw + t] = zero;
            dor[s * dw + t] = zero;
            if row < rows {
                let at = r * dl + ln.vector(t, lanes);
                qr[s * dw + t] = q[at] * scale_v;
                let dov = grad_out[at];
                dor[s * dw + t] = dov;
                part += dov.dot(out[at]);
            }
        }
        // Outside the row test: the shuffles must be reached by the whole plane.
        let delta = lane_sum::<F>(part, lanes);
        row_delta[s] = delta;
        if row < rows && ln.lane == 0 {
            stats[r] = row_lse[s];
            stats[n_rows + r] = delta;
        }
    }
    let mut ks = SharedMemory::<Vector<F, N>>::new(bk * dl);
    let mut vs = SharedMemory::<Vector<F, N>>::new(bk * dl);
    let mut tile = 0;
    while tile < end {
        stage_columns::<F, N>(k, v, pk, pv, &mut ks, &mut vs, tile, end, &layout, dl, bk);
        sync_cube();
        // Columns in blocks of `cols`, as in the forward: independent dot products.
        for jb in 0..bk / cols {
            let j0 = jb * cols;
            // Skip the block unless one of the unit's rows (of the plane's, with lanes) sees
            // one of its columns.
            let any = vis.any_sees_block(tile + j0, end, &pos, cols, rows_per_unit);
            if plane_uniform(any, lanes) {
                // score = q·k, dP = dO·v.
                two_dots::<F, N>(
                    &mut score,
                    &mut dp,
                    &qr,
                    &dor,
                    &ks,
                    &vs,
                    j0,
                    &ln,
                    dl,
                    rows_per_unit,
                    cols,
                    lanes,
                    unroll,
                );
                // dS = P ∘ (dP − D), zero for hidden pairs (reusing `score`).
                #[unroll]
                for s in 0..rows_per_unit {
                    #[unroll]
                    for cc in 0..cols {
                        let x = s * cols + cc;
                        let sc = lane_sum::<F>(score[x], lanes);
                        let dps = lane_sum::<F>(dp[x], lanes);
                        let seen = vis.sees(tile + j0 + cc, pos[s]);
                        let ds = F::exp(sc - row_lse[s]) * (dps - row_delta[s]);
                        score[x] = select(seen, ds, F::new(0.0));
                    }
                }
                #[unroll(unroll)]
                for t in 0..dw {
                    #[unroll]
                    for cc in 0..cols {
                        let kvec = ks[(j0 + cc) * dl + ln.vector(t, lanes)];
                        #[unroll]
                        for s in 0..rows_per_unit {
                            acc[s * dw + t] += Vector::new(score[s * cols + cc]) * kvec;
                        }
                    }
                }
            }
        }
        sync_cube();
        tile += bk;
    }
    #[unroll]
    for s in 0..rows_per_unit {
        let row = block.row(s);
        if row < rows {
            let r = block.index(row);
            #[unroll(unroll)]
            for t in 0..dw {
                dq[r * dl + ln.vector(t, lanes)] = acc[s * dw + t] * scale_v;
            }
        }
    }
}

/// Per-head partial key and value gradients: units own `cols_per_unit` columns of
/// `[prefix ; sequence]` (`first + slot · CUBE_DIM / lanes + UNIT_POS / lanes`, each column
/// shared by `lanes` units) for query head `h = CUBE_POS_Z` of the group. Sequence columns write
/// `dk`/`dv` `[g, B, Hkv, S, d]`; prefix columns write `dpk`/`dpv` `[g, B, Hkv, P, d]`. `stats`
/// is `[2, B, H, L]` (log-sum-exp, then delta).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn dkdv_kernel<F: Float, I: Int, N: Size>(
    q: &Tensor<Vector<F, N>>,
    k: &Tensor<Vector<F, N>>,
    v: &Tensor<Vector<F, N>>,
    pk: &Tensor<Vector<F, N>>,
    pv: &Tensor<Vector<F, N>>,
    lengths: &Tensor<I>,
    grad_out: &Tensor<Vector<F, N>>,
    stats: &Tensor<F>,
    dk: &mut Tensor<Vector<F, N>>,
    dv: &mut Tensor<Vector<F, N>>,
    dpk: &mut Tensor<Vector<F, N>>,
    dpv: &mut Tensor<Vector<F, N>>,
    scalars: &AttentionScalars,
    #[comptime] dl: usize,
    #[comptime] bq: usize,
    #[comptime] cols_per_unit: usize,
    #[comptime] lanes: usize,
    #[comptime] qrows: usize,
    #[comptime] unroll: bool,
    #[define(F, I)] _dtypes: [StorageType; 2],
) {
    let ln = Lanes::of_unit(lanes);
    let cube = ColumnCube::of_cube::<F, N, I>(q, k, lengths, scalars, ln.step * cols_per_unit);
    let (vis, layout, columns) = (cube.vis, cube.layout, cube.columns);
    let scale_v = Vector::new(F::cast_from(scalars.scale));
    // Vectors of a column held by this unit.
    let dw = comptime!(dl / lanes);

    let zero = Vector::new(F::new(0.0));
    let mut kr = Array::<Vector<F, N>>::new(cols_per_unit * dw);
    let mut vr = Array::<Vector<F, N>>::new(cols_per_unit * dw);
    let mut dk_acc = Array::<Vector<F, N>>::new(cols_per_unit * dw);
    let mut dv_acc = Array::<Vector<F, N>>::new(cols_per_unit * dw);
    // A block's scores (then P) and dP (then dS): `[cols_per_unit, qrows]`.
    let mut score = Array::<F>::new(cols_per_unit * qrows);
    let mut dp = Array::<F>::new(cols_per_unit * qrows);
    #[unroll]
    for s in 0..cols_per_unit {
        let c = cube.first + ln.slot(s);
        #[unroll(unroll)]
        for t in 0..dw {
            let x = ln.vector(t, lanes);
            kr[s * dw + t] = layout.vector::<F, N>(k, pk, c, x, columns, dl) * scale_v;
            vr[s * dw + t] = layout.vector::<F, N>(v, pv, c, x, columns, dl);
            dk_acc[s * dw + t] = zero;
            dv_acc[s * dw + t] = zero;
        }
    }

    let mut qs = SharedMemory::<Vector<F, N>>::new(bq * dl);
    let mut dos = SharedMemory::<Vector<F, N>>::new(bq * dl);
    let mut lses = SharedMemory::<F>::new(bq);
    let mut deltas = SharedMemory::<F>::new(bq);
    let (l, queries) = (cube.l, cube.queries);
    let mut tile = cube.first_query - cube.first_query % bq;
    while tile < l {
        let mut idx = UNIT_POS_X as usize;
        while idx < bq * dl {
            let (i, x) = (tile + idx / dl, idx % dl);
            qs[idx] = queries.vector::<F, N>(q, q, i, x, l, dl);
            dos[idx] = queries.vector::<F, N>(grad_out, grad_out, i, x, l, dl);
            idx += CUBE_DIM_X as usize;
        }
        let mut idx = UNIT_POS_X as usize;
        while idx < bq {
            lses[idx] = cube.lse::<F>(stats, tile + idx);
            deltas[idx] = cube.delta::<F>(stats, tile + idx);
            idx += CUBE_DIM_X as usize;
        }
        sync_cube();
        // Query rows in blocks of `qrows`: independent dot products, as in the forward.
        for jb in 0..bq / qrows {
            let j0 = jb * qrows;
            // Skip the block unless one of its query rows sees one of the unit's columns (of
            // the plane's, with lanes).
            let mut any = false;
            #[unroll]
            for rr in 0..qrows {
                let i = tile + j0 + rr;
                #[unroll]
                for s in 0..cols_per_unit {
                    let c = cube.first + ln.slot(s);
                    any = any || (c < columns && vis.sees(c, i));
                }
            }
            if plane_uniform(any, lanes) {
                // score = k·q, dP = v·dO.
                two_dots::<F, N>(
                    &mut score,
                    &mut dp,
                    &kr,
                    &vr,
                    &qs,
                    &dos,
                    j0,
                    &ln,
                    dl,
                    cols_per_unit,
                    qrows,
                    lanes,
                    unroll,
                );
                // P and dS = P ∘ (dP − D), zero for hidden pairs (dS reuses `dp`).
                #[unroll]
                for s in 0..cols_per_unit {
                    let c = cube.first + ln.slot(s);
                    #[unroll]
                    for rr in 0..qrows {
                        let x = s * qrows + rr;
                        let j = j0 + rr;
                        let sc = lane_sum::<F>(score[x], lanes);
                        let dps = lane_sum::<F>(dp[x], lanes);
                        let seen = c < columns && vis.sees(c, tile + j);
                        let p = select(seen, F::exp(sc - lses[j]), F::new(0.0));
                        score[x] = p;
                        dp[x] = p * (dps - deltas[j]);
                    }
                }
                #[unroll(unroll)]
                for t in 0..dw {
                    #[unroll]
                    for rr in 0..qrows {
                        let at = (j0 + rr) * dl + ln.vector(t, lanes);
                        let qvec = qs[at];
                        let dovec = dos[at];
                        #[unroll]
                        for s in 0..cols_per_unit {
                            let x = s * qrows + rr;
                            dv_acc[s * dw + t] += Vector::new(score[x]) * dovec;
                            dk_acc[s * dw + t] += Vector::new(dp[x]) * qvec;
                        }
                    }
                }
            }
        }
        sync_cube();
        tile += bq;
    }
    #[unroll]
    for s in 0..cols_per_unit {
        let c = cube.first + ln.slot(s);
        #[unroll(unroll)]
        for t in 0..dw {
            let x = ln.vector(t, lanes);
            let dk_val = dk_acc[s * dw + t] * scale_v;
            cube.partials
                .write::<F, N>(dk, dpk, c, x, dk_val, columns, dl);
            cube.partials
                .write::<F, N>(dv, dpv, c, x, dv_acc[s * dw + t], columns, dl);
        }
    }
}

/// Sums the leading slices of two partial-gradient buffers: `a_sum[i] = Σ_s a[s·n + i]` and
/// `b_sum[i] = Σ_s b[s·n + i]` for `n = a_sum.len()` and `s` below `a.len() / n` (the slices are
/// the query heads of a group, and the batch rows for a shared prefix). `a` and `b` have one
/// shape, and so do the sums. The slices are added in order, so the result is deterministic.
/// A grid-stride loop: any number of cubes covers any length.
#[cube(launch)]
pub fn sum_partials_kernel<F: Float, N: Size>(
    a: &Tensor<Vector<F, N>>,
    b: &Tensor<Vector<F, N>>,
    a_sum: &mut Tensor<Vector<F, N>>,
    b_sum: &mut Tensor<Vector<F, N>>,
    #[define(F)] _dtype: StorageType,
) {
    let n = a_sum.len();
    let parts = a.len() / n;
    let stride = CUBE_COUNT_X as usize * CUBE_DIM_X as usize;
    let mut i = ABSOLUTE_POS_X as usize;
    while i < n {
        let mut sa = a[i];
        let mut sb = b[i];
        for s in 1..parts {
            sa += a[s * n + i];
            sb += b[s * n + i];
        }
        a_sum[i] = sa;
        b_sum[i] = sb;
        i += stride;
    }
}
