//! The fused LM-head log-likelihood never allocates a `[n, vocab]` tensor, forward or backward:
//! the largest single allocation of a forward + backward stays at about one chunk of logits
//! (`cross_entropy::CHUNK_VALUES` f32), while the unfused path's is the whole `[n, vocab]`
//! (which shows that the measurement sees such a tensor). One test, so that nothing else
//! allocates in this process while it measures.
#![cfg(feature = "flex")]

use burn::{
    backend::{Autodiff, Flex},
    tensor::{Int, Tensor, TensorData, activation::log_softmax},
};
use peft_kernels::{FrozenLinearBackend, WeightPrecision, linear::cross_entropy::CHUNK_VALUES};
use peft_testing::{AllocStats, CountingAllocator};

#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator;

type Ad = Autodiff<Flex>;

#[test]
fn no_rows_by_vocab_tensor_is_allocated() {
    let (n, h, vocab) = (1200, 16, 50_000);
    let device = Default::default();
    let w = Ad::frozen_weight(
        Tensor::from_data(
            TensorData::new(
                (0..vocab * h)
                    .map(|i| ((i % 97) as f32 - 48.0) / 97.0)
                    .collect(),
                [vocab, h],
            ),
            &device,
        ),
        WeightPrecision::F32,
    );
    let largest = |fused: bool| {
        let x = Tensor::<Ad, 2>::from_data(
            TensorData::new(
                (0..n * h).map(|i| ((i % 13) as f32) / 13.0).collect(),
                [n, h],
            ),
            &device,
        )
        .require_grad();
        let ids: Vec<i64> = (0..n).map(|i| ((i * 31) % vocab) as i64).collect();
        let targets = Tensor::<Ad, 1, Int>::from_data(TensorData::new(ids, [n]), &device);
        let start = AllocStats::reset_peak();
        let lp = if fused {
            Ad::frozen_log_probs(x.clone(), &w, targets)
        } else {
            log_softmax(Ad::frozen_forward(x.clone(), &w), 1)
                .gather(1, targets.unsqueeze_dim::<2>(1))
                .reshape([n])
        };
        let grads = lp.sum().backward();
        let dx = x.grad(&grads).expect("input gradient");
        let end = AllocStats::now();
        assert_eq!(dx.dims(), [n, h]);
        assert!(
            end.total > start.total,
            "the counting allocator is not installed"
        );
        end.largest
    };
    let whole = n * vocab * 4;
    let chunk = CHUNK_VALUES * 4;
    let unfused = largest(false);
    let fused = largest(true);
    eprintln!("largest allocation: fused {fused} B, unfused {unfused} B ([n, vocab] = {whole} B)");
    assert!(
        unfused >= whole,
        "the unfused path's logits were not seen ({unfused} B)"
    );
    assert!(
        fused <= chunk + chunk / 8,
        "the fused path allocated {fused} B at once, more than a chunk ({chunk} B)"
    );
}
