//! The model's matrix products `x·Wᵀ`, with `W` stored `[out, in]` as the weight files store it,
//! and few-row products on CPU backends.
//!
//! Decoding one sequence is products with one row only, which stream every weight of the model
//! once per token. On backends whose ops run on the host
//! ([`runs_on_host_thread`](PrefixAttentionBackend::runs_on_host_thread)) such a product is
//! taken as `(W·xᵀ)ᵀ`, which reads the stored `W` in place (NdArray would copy the transposed
//! view `Wᵀ` into standard layout on every call). Flex runs it on a single core whatever its
//! thread pool holds ([`single_threaded_matvec`](PrefixAttentionBackend::single_threaded_matvec)),
//! so decoding would run at one core's memory bandwidth; there `W` is split by rows over the
//! Rayon threads, each part a contiguous block of the stored matrix that one core streams.
//!
//! Each output is the same dot product, summed in the same order, split or not: the parts stay
//! larger than 16·16 outputs, so the `gemm` crate under Flex keeps its matrix-vector kernel for
//! them instead of switching to its small-matrix kernel, which sums in another order. A test
//! pins this bit for bit.

use burn::tensor::Tensor;
use peft_kernels::PrefixAttentionBackend;
use rayon::prelude::*;

/// Most rows of `x` taken as a split `(W·xᵀ)ᵀ` (above this, the backend's own matrix product is
/// parallel, or the product is not bound by reading `W`).
const MAX_ROWS: usize = 8;

/// Fewest rows of `W` per part, before rounding the part boundaries to [`ALIGN`]: every part
/// keeps more than 256 rows.
const MIN_ROWS_PER_PART: usize = 272;

/// Part boundaries are multiples of this (whole AVX vectors of `f32`).
const ALIGN: usize = 8;

/// How many parts the rows of a `W` with `outputs` rows are split into on `threads` host threads
/// (1: not split).
fn parts(outputs: usize, threads: usize) -> usize {
    threads.min(outputs / MIN_ROWS_PER_PART).max(1)
}

/// First row of part `i` of `parts` over `outputs` rows.
fn boundary(i: usize, parts: usize, outputs: usize) -> usize {
    if i == parts {
        outputs
    } else {
        (i * outputs / parts).next_multiple_of(ALIGN).min(outputs)
    }
}

/// Whether a product with `rows` rows is taken by [`matmul_wt_many`]'s split on this backend
/// (a few rows, ops on the host).
pub(crate) fn few_rows_on_host<B: PrefixAttentionBackend>(rows: usize) -> bool {
    B::runs_on_host_thread() && rows <= MAX_ROWS
}

/// `x·wᵀ` for `x` `[M, K]` and `w` `[N, K]` (the tests' single-product form of
/// [`matmul_wt_many`]).
///
/// On backends whose ops run on the host, a product with at most [`MAX_ROWS`] rows is taken as
/// `(w·xᵀ)ᵀ`, split by rows of `w` over the Rayon threads where the backend's own product would
/// run on one thread.
#[cfg(test)]
pub(crate) fn matmul_wt<B: PrefixAttentionBackend>(
    x: Tensor<B, 2>,
    w: Tensor<B, 2>,
) -> Tensor<B, 2> {
    let [y] = matmul_wt_many(x, [w]);
    y
}

/// [`matmul_wt`] of every `wᵢ` `[Nᵢ, K]` with the same `x`. Where products are split, the parts
/// of all of them run in one parallel region: one fork-join for the layer's query, key and value
/// projections instead of one per projection, and the narrow key and value products, too small
/// to split, run beside the query's parts.
pub(crate) fn matmul_wt_many<B: PrefixAttentionBackend, const N: usize>(
    x: Tensor<B, 2>,
    ws: [Tensor<B, 2>; N],
) -> [Tensor<B, 2>; N] {
    if !few_rows_on_host::<B>(x.dims()[0]) {
        return ws.map(|w| x.clone().matmul(w.transpose()));
    }
    let split = B::single_threaded_matvec();
    let threads = if split {
        rayon::current_num_threads()
    } else {
        1
    };
    // (which product, first row, rows) of every part.
    let pieces: Vec<(usize, usize, usize)> = ws
        .iter()
        .enumerate()
        .flat_map(|(j, w)| {
            let outputs = w.dims()[0];
            let parts = parts(outputs, threads);
            (0..parts).map(move |i| {
                let start = boundary(i, parts, outputs);
                (j, start, boundary(i + 1, parts, outputs) - start)
            })
        })
        .collect();
    let xt = x.transpose();
    let product = |&(j, start, rows): &(usize, usize, usize)| {
        let w = &ws[j];
        // A whole matrix is used as it is: NdArray's slices are copies.
        let part = match rows == w.dims()[0] {
            true => w.clone(),
            false => w.clone().narrow(0, start, rows),
        };
        part.matmul(xt.clone())
    };
    let products: Vec<Tensor<B, 2>> = match split {
        true => pieces.par_iter().map(product).collect(),
        false => pieces.iter().map(product).collect(),
    };
    let mut grouped: [Vec<Tensor<B, 2>>; N] = std::array::from_fn(|_| Vec::new());
    for (&(j, ..), product) in pieces.iter().zip(products) {
        grouped[j].push(product);
    }
    grouped.map(|parts| match <[_; 1]>::try_from(parts) {
        Ok([part]) => part.transpose(),
        Err(parts) => Tensor::cat(parts, 0).transpose(),
    })
}

#[cfg(test)]
mod tests {
    use burn::{
        backend::Flex,
        tensor::{Distribution, Tensor, Tolerance},
    };

    use super::*;

    #[test]
    fn parts_follow_threads_and_stay_above_256_rows() {
        assert_eq!(parts(49_152, 2), 2);
        assert_eq!(parts(49_152, 16), 16);
        assert_eq!(parts(576, 16), 2);
        assert_eq!(parts(543, 2), 1, "parts would be too small");
        assert_eq!(parts(49_152, 1), 1, "one thread");
        for outputs in [544, 576, 1000, 1536, 4099, 49_152] {
            for threads in 2..=16 {
                let parts = parts(outputs, threads);
                let bounds: Vec<usize> = (0..=parts).map(|i| boundary(i, parts, outputs)).collect();
                assert_eq!((bounds[0], bounds[parts]), (0, outputs));
                for w in bounds.windows(2) {
                    assert!(w[1] - w[0] > 256, "{outputs} on {threads}: {bounds:?}");
                }
                assert!(bounds[..parts].iter().all(|b| b % ALIGN == 0));
            }
        }
    }

    fn on_threads<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(f)
    }

    /// Split products equal the unsplit one bit for bit (each output is the same dot product
    /// either way, uneven last parts included), and the few-row form equals `x·wᵀ`.
    #[test]
    fn split_products_equal_the_unsplit_product() {
        let device = Default::default();
        for (rows, inner, outputs) in [(1, 576, 3072), (1, 64, 576), (1, 77, 1000), (3, 64, 700)] {
            let x = Tensor::<Flex, 2>::random([rows, inner], Distribution::Default, &device);
            let w = Tensor::<Flex, 2>::random([outputs, inner], Distribution::Default, &device);
            let unsplit = on_threads(1, || matmul_wt(x.clone(), w.clone())).into_data();
            unsplit.assert_approx_eq::<f32>(
                &x.clone().matmul(w.clone().transpose()).into_data(),
                Tolerance::absolute(1e-4),
            );
            for threads in [2, 3, 5] {
                assert!(
                    parts(outputs, threads) > 1,
                    "{outputs} rows on {threads} threads"
                );
                let got = on_threads(threads, || matmul_wt(x.clone(), w.clone())).into_data();
                assert_eq!(got, unsplit, "{rows}×{inner}×{outputs}, {threads} threads");
            }
        }
    }

    #[test]
    fn grouped_products_equal_the_single_ones() {
        let device = Default::default();
        let x = Tensor::<Flex, 2>::random([1, 64], Distribution::Default, &device);
        let ws = [576, 192, 192]
            .map(|n| Tensor::<Flex, 2>::random([n, 64], Distribution::Default, &device));
        for threads in [1, 2, 3] {
            let grouped = on_threads(threads, || matmul_wt_many(x.clone(), ws.clone()));
            for (got, w) in grouped.into_iter().zip(&ws) {
                let single = on_threads(threads, || matmul_wt(x.clone(), w.clone()));
                assert_eq!(got.into_data(), single.into_data(), "{threads} threads");
            }
        }
    }

    /// Many rows take the backend's own product; gradients flow through both forms.
    #[test]
    fn both_forms_differentiate_like_the_plain_product() {
        type A = burn::backend::Autodiff<Flex>;
        let device = Default::default();
        for rows in [2, 12] {
            let x =
                Tensor::<A, 2>::random([rows, 64], Distribution::Default, &device).require_grad();
            let w =
                Tensor::<A, 2>::random([600, 64], Distribution::Default, &device).require_grad();
            let grads = on_threads(2, || matmul_wt(x.clone(), w.clone()).sum().backward());
            let plain = x.clone().matmul(w.clone().transpose()).sum().backward();
            for t in [&x, &w] {
                // Sums of up to 600 products of magnitude ~1, in another order.
                t.grad(&grads).unwrap().into_data().assert_approx_eq::<f32>(
                    &t.grad(&plain).unwrap().into_data(),
                    Tolerance::rel_abs(1e-5, 1e-5),
                );
            }
        }
    }
}
