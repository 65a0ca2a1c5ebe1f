//! Checked strided matrix products on the host CPU, through the `gemm` crate (the crate
//! burn-flex multiplies with; it picks AVX-512, AVX2 or portable micro-kernels at run time).
//!
//! `gemm::gemm` takes raw pointers and signed strides. [`MatRef`] and [`MatMut`] are views of a
//! slice whose every element is checked to lie inside it when the view is made, so [`matmul`] is
//! safe to call; its one `unsafe` block relies on those checks alone.

/// Parallelism of one product: on the calling thread, or split over the Rayon threads.
pub(crate) use gemm::Parallelism;

/// A read-only `rows × cols` matrix in a slice: element `(i, j)` at
/// `offset + i·row_stride + j·col_stride`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MatRef<'a> {
    data: &'a [f32],
    offset: usize,
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

/// A writable matrix view like [`MatRef`] whose elements are pairwise distinct.
#[derive(Debug)]
pub(crate) struct MatMut<'a> {
    data: &'a mut [f32],
    offset: usize,
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

/// Whether every element of the view lies inside a slice of `len` elements.
fn in_bounds(
    len: usize,
    offset: usize,
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
) -> bool {
    if rows == 0 || cols == 0 {
        return offset <= len;
    }
    (rows - 1)
        .checked_mul(row_stride)
        .zip((cols - 1).checked_mul(col_stride))
        .and_then(|(r, c)| r.checked_add(c))
        .and_then(|last| last.checked_add(offset))
        .is_some_and(|last| last < len)
}

impl<'a> MatRef<'a> {
    /// The view `(offset, rows, cols, row_stride, col_stride)` of `data`.
    ///
    /// # Panics
    ///
    /// If an element of the view lies outside `data`.
    pub(crate) fn new(
        data: &'a [f32],
        offset: usize,
        [rows, cols]: [usize; 2],
        [row_stride, col_stride]: [usize; 2],
    ) -> Self {
        assert!(
            in_bounds(data.len(), offset, rows, cols, row_stride, col_stride),
            "matrix view {rows}×{cols} at {offset} (strides {row_stride}, {col_stride}) \
             outside a slice of {}",
            data.len()
        );
        Self {
            data,
            offset,
            rows,
            cols,
            row_stride,
            col_stride,
        }
    }

    /// The row-major `rows × cols` matrix that fills the start of `data`.
    pub(crate) fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self::new(data, 0, [rows, cols], [cols, 1])
    }

    /// The transpose (a view of the same elements).
    pub(crate) fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }
}

impl<'a> MatMut<'a> {
    /// The row-major `rows × cols` matrix that fills the start of `data`.
    ///
    /// # Panics
    ///
    /// If `data` holds fewer than `rows·cols` elements.
    pub(crate) fn row_major(data: &'a mut [f32], rows: usize, cols: usize) -> Self {
        assert!(
            in_bounds(data.len(), 0, rows, cols, cols, 1),
            "{rows}×{cols} matrix in a slice of {}",
            data.len()
        );
        Self {
            data,
            offset: 0,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }
}

/// `dst = (dst if accumulate, else 0) + scale · lhs · rhs`, in f32.
///
/// # Panics
///
/// If the shapes do not fit together.
pub(crate) fn matmul(
    dst: MatMut<'_>,
    lhs: MatRef<'_>,
    rhs: MatRef<'_>,
    accumulate: bool,
    scale: f32,
    parallelism: Parallelism,
) {
    assert!(
        lhs.rows == dst.rows && rhs.cols == dst.cols && lhs.cols == rhs.rows,
        "product of {}×{} and {}×{} into {}×{}",
        lhs.rows,
        lhs.cols,
        rhs.rows,
        rhs.cols,
        dst.rows,
        dst.cols
    );
    if dst.rows == 0 || dst.cols == 0 {
        return;
    }
    if lhs.cols == 0 {
        if !accumulate {
            for i in 0..dst.rows {
                for j in 0..dst.cols {
                    dst.data[dst.offset + i * dst.row_stride + j * dst.col_stride] = 0.0;
                }
            }
        }
        return;
    }
    let s = |x: usize| x as isize;
    // SAFETY: every element of the three views lies inside its slice (checked when each view
    // was made; `MatMut`'s constructor also makes its elements distinct, since its row stride is
    // its column count). `dst` is borrowed mutably and so overlaps neither operand. The shapes
    // agree (asserted above) and are all non-zero, so `gemm` reads exactly the views' elements
    // and writes only `dst`'s; with `read_dst = false` it never reads `dst`.
    unsafe {
        gemm::gemm(
            dst.rows,
            dst.cols,
            lhs.cols,
            dst.data.as_mut_ptr().add(dst.offset),
            s(dst.col_stride),
            s(dst.row_stride),
            accumulate,
            lhs.data.as_ptr().add(lhs.offset),
            s(lhs.col_stride),
            s(lhs.row_stride),
            rhs.data.as_ptr().add(rhs.offset),
            s(rhs.col_stride),
            s(rhs.row_stride),
            1.0f32,
            scale,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(offset, [rows, cols], [row stride, col stride])` of a view.
    type Geometry = (usize, [usize; 2], [usize; 2]);

    fn naive(a: &[f32], ag: Geometry, b: &[f32], bg: Geometry) -> Vec<f64> {
        let (ao, [m, k], [ars, acs]) = ag;
        let (bo, [_, n], [brs, bcs]) = bg;
        let mut out = vec![0.0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                for t in 0..k {
                    out[i * n + j] +=
                        f64::from(a[ao + i * ars + t * acs]) * f64::from(b[bo + t * brs + j * bcs]);
                }
            }
        }
        out
    }

    #[test]
    fn strided_products_match_a_naive_product() {
        let mut rng = peft_testing::Rng::new(7);
        let a: Vec<f32> = (0..200).map(|_| rng.next_f32() - 0.5).collect();
        let b: Vec<f32> = (0..300).map(|_| rng.next_f32() - 0.5).collect();
        // A 5×3 view with row stride 7 and column stride 2 at offset 4; B as the transpose of a
        // 4×3 row-major block at offset 9 (a 3×4 view).
        let ag = (4, [5, 3], [7, 2]);
        let bt = MatRef::new(&b, 9, [4, 3], [3, 1]).t();
        let want = naive(&a, ag, &b, (9, [3, 4], [1, 3]));
        for accumulate in [false, true] {
            let mut out = vec![1.0f32; 20];
            matmul(
                MatMut::row_major(&mut out, 5, 4),
                MatRef::new(&a, ag.0, ag.1, ag.2),
                bt,
                accumulate,
                0.5,
                Parallelism::None,
            );
            for (o, w) in out.iter().zip(&want) {
                let w = 0.5 * w + if accumulate { 1.0 } else { 0.0 };
                assert!(
                    o.is_finite() && (f64::from(*o) - w).abs() < 1e-6,
                    "{o} vs {w} (accumulate: {accumulate})"
                );
            }
        }
    }

    #[test]
    fn an_empty_contraction_writes_zeros_or_keeps_dst() {
        let (a, b) = ([0.0f32; 0], [0.0f32; 0]);
        let mut out = vec![3.0f32; 6];
        let (lhs, rhs) = (MatRef::row_major(&a, 2, 0), MatRef::row_major(&b, 0, 3));
        matmul(
            MatMut::row_major(&mut out, 2, 3),
            lhs,
            rhs,
            true,
            1.0,
            Parallelism::None,
        );
        assert_eq!(out, [3.0; 6]);
        matmul(
            MatMut::row_major(&mut out, 2, 3),
            lhs,
            rhs,
            false,
            1.0,
            Parallelism::None,
        );
        assert_eq!(out, [0.0; 6]);
    }

    #[test]
    #[should_panic(expected = "outside a slice of 10")]
    fn a_view_past_the_slice_is_refused() {
        let data = [0.0f32; 10];
        let _ = MatRef::new(&data, 2, [3, 3], [3, 1]);
    }

    #[test]
    #[should_panic(expected = "product of 2×3 and 2×3")]
    fn mismatched_shapes_are_refused() {
        let (a, b) = ([0.0f32; 6], [0.0f32; 6]);
        let mut out = [0.0f32; 9];
        let (lhs, rhs) = (MatRef::row_major(&a, 2, 3), MatRef::row_major(&b, 2, 3));
        matmul(
            MatMut::row_major(&mut out, 3, 3),
            lhs,
            rhs,
            false,
            1.0,
            Parallelism::None,
        );
    }
}
