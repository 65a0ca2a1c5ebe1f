//! Few-row matrix products on host backends, split by output columns over threads.
//!
//! Burn's CPU backends run a product `x·W` whose `x` has one row (a matrix-vector product) on a
//! single core, whatever their thread pool holds. Decoding one sequence is such products
//! only, and they stream every weight of the model once per token, so decoding would run at
//! one core's memory bandwidth. Splitting `W` by columns and running the parts on the Rayon
//! pool lets every core stream its share.
//!
//! Each output column is the same dot product, summed in the same order, split or not: the
//! parts stay wide enough (more than 16·16 outputs) that the `gemm` crate under Flex keeps its
//! matrix-vector kernel for them instead of switching to its small-matrix kernel, which sums in
//! another order. A test pins this bit for bit.

use burn::tensor::Tensor;
use peft_kernels::PrefixAttentionBackend;
use rayon::prelude::*;

/// Most rows of `x` for which a product is split (above this, the backend's own matrix product
/// is parallel or the product is not bandwidth-bound).
const MAX_ROWS: usize = 8;

/// Fewest output columns per part, before rounding the part boundaries to [`ALIGN`]: every
/// part keeps more than 256 columns.
const MIN_COLUMNS_PER_PART: usize = 272;

/// Part boundaries are multiples of this (whole AVX vectors of `f32`).
const ALIGN: usize = 8;

/// How many column parts `x·W` with `rows` rows and `columns` output columns is split into on
/// backend `B` with `threads` host threads (1: not split).
fn parts<B: PrefixAttentionBackend>(rows: usize, columns: usize, threads: usize) -> usize {
    if !B::runs_on_host_thread() || rows > MAX_ROWS {
        return 1;
    }
    threads.min(columns / MIN_COLUMNS_PER_PART).max(1)
}

/// First column of part `i` of `parts` over `columns` columns.
fn boundary(i: usize, parts: usize, columns: usize) -> usize {
    if i == parts {
        columns
    } else {
        (i * columns / parts).next_multiple_of(ALIGN).min(columns)
    }
}

/// `x·w` for `x` `[M, K]` and `w` `[K, N]`, split over the Rayon threads when `B` runs on the
/// host and `x` has few rows.
pub(crate) fn matmul<B: PrefixAttentionBackend>(x: Tensor<B, 2>, w: Tensor<B, 2>) -> Tensor<B, 2> {
    let rows = x.dims()[0];
    let columns = w.dims()[1];
    let parts = parts::<B>(rows, columns, rayon::current_num_threads());
    if parts == 1 {
        return x.matmul(w);
    }
    let pieces: Vec<Tensor<B, 2>> = (0..parts)
        .into_par_iter()
        .map(|i| {
            let start = boundary(i, parts, columns);
            let end = boundary(i + 1, parts, columns);
            x.clone().matmul(w.clone().narrow(1, start, end - start))
        })
        .collect();
    Tensor::cat(pieces, 1)
}

#[cfg(test)]
mod tests {
    use burn::{
        backend::Flex,
        tensor::{Distribution, Tensor},
    };

    use super::*;

    #[test]
    fn only_few_row_products_on_host_backends_are_split() {
        assert_eq!(parts::<Flex>(1, 49_152, 2), 2);
        assert_eq!(parts::<Flex>(1, 49_152, 16), 16);
        assert_eq!(parts::<Flex>(1, 576, 16), 2);
        assert_eq!(parts::<Flex>(8, 1536, 2), 2);
        assert_eq!(
            parts::<Flex>(9, 1536, 2),
            1,
            "many rows: the backend's own product"
        );
        assert_eq!(parts::<Flex>(1, 543, 2), 1, "parts would be too narrow");
        assert_eq!(parts::<Flex>(1, 49_152, 1), 1, "one thread");
    }

    #[test]
    fn parts_cover_the_columns_in_aligned_pieces_wider_than_256() {
        for columns in [544, 576, 1000, 1536, 4099, 49_152] {
            for threads in 2..=16 {
                let parts = parts::<Flex>(1, columns, threads);
                let bounds: Vec<usize> = (0..=parts).map(|i| boundary(i, parts, columns)).collect();
                assert_eq!((bounds[0], bounds[parts]), (0, columns));
                for w in bounds.windows(2) {
                    assert!(w[1] - w[0] > 256, "{columns} on {threads}: {bounds:?}");
                }
                assert!(bounds[..parts].iter().all(|b| b % ALIGN == 0));
            }
        }
    }

    /// Every split, including uneven last parts, gives the unsplit product bit for bit: each
    /// column is the same dot product either way.
    #[test]
    fn split_products_equal_the_unsplit_product() {
        let device = Default::default();
        for (rows, inner, columns) in [(1, 576, 3072), (1, 64, 576), (1, 77, 1000), (3, 64, 700)] {
            let x = Tensor::<Flex, 2>::random([rows, inner], Distribution::Default, &device);
            let w = Tensor::<Flex, 2>::random([inner, columns], Distribution::Default, &device);
            let expected = x.clone().matmul(w.clone()).into_data();
            // `w` as the transposed view of a `[N, K]` table, the layout of a tied output head.
            let table = Tensor::<Flex, 2>::from_data(w.clone().transpose().into_data(), &device);
            for threads in [2, 3, 5] {
                let parts = parts::<Flex>(rows, columns, threads);
                assert!(parts > 1, "{rows}×{inner}×{columns} on {threads} threads");
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let got = pool.install(|| matmul(x.clone(), w.clone())).into_data();
                assert_eq!(got, expected, "{rows}×{inner}×{columns}, {threads} threads");
                let tied = pool.install(|| matmul(x.clone(), table.clone().transpose()));
                let unsplit = x.clone().matmul(table.clone().transpose()).into_data();
                assert_eq!(tied.into_data(), unsplit, "tied layout, {threads} threads");
            }
        }
    }
}
