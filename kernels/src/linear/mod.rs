//! Products with frozen weights.
//!
//! The base model of a PEFT run never changes: each of its linear layers needs `y = x·Wᵀ`
//! forward and `dx = dy·W` backward, never a weight gradient. [`FrozenWeight`] holds such a
//! weight once, in its storage precision ([`WeightPrecision`]), prepared for the products of
//! one backend, and [`FrozenLinearBackend`] computes them:
//!
//! * by default with Burn's own matmul on the weight as a tensor of the precision's dtype (every
//!   backend, GPUs included: bf16 runs Burn's bf16 matmul);
//! * on Flex in bf16 with the weight packed once at load for the CPU's bf16 instructions
//!   ([`cpu`]: AMX, else AVX512-BF16, else a portable path), both cores, f32 accumulation;
//! * under [`Autodiff`](burn::backend::Autodiff) as one graph node whose backward is
//!   `dx = dy·W` through the same backend (no weight gradient, nothing of `x` kept).
//!
//! Activations stay f32 in and out; only the products see bf16. A new storage format (GGUF's
//! block-quantised Q8_0 or Q4, say) is one more [`WeightPrecision`] and one more way to prepare
//! and multiply it here; the models only hold [`FrozenWeight`]s.

mod autodiff;
pub mod cpu;
pub mod cross_entropy;
#[cfg(feature = "flex")]
mod flex;

use std::{
    fmt,
    str::FromStr,
    sync::{Arc, OnceLock},
};

use burn::tensor::{DType, Int, Tensor, backend::Backend};

/// The precision frozen weights are stored and multiplied in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum WeightPrecision {
    /// f32 weights and products: what the weight files' values give, numerically the model as
    /// loaded.
    #[default]
    F32,
    /// bf16 weights (rounded to nearest once, at load) multiplied with bf16-rounded activations,
    /// accumulated in f32.
    Bf16,
}

impl WeightPrecision {
    /// Every precision, in the order `--help` lists them.
    pub const ALL: [WeightPrecision; 2] = [Self::F32, Self::Bf16];

    /// The name used on the command line and in files.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
        }
    }

    /// The Burn dtype of a weight stored in this precision.
    pub fn dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::Bf16 => DType::BF16,
        }
    }
}

impl fmt::Display for WeightPrecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for WeightPrecision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| format!("unknown precision {s:?}: expected f32 or bf16"))
    }
}

/// A frozen weight `[out, in]` prepared once for the products of backend `B`.
#[derive(Debug, Clone)]
pub struct FrozenWeight<B: Backend> {
    shape: [usize; 2],
    precision: WeightPrecision,
    storage: Storage<B>,
}

#[derive(Debug, Clone)]
enum Storage<B: Backend> {
    /// `[out, in]` in the precision's dtype; Burn's matmul multiplies it.
    Tensor(Tensor<B, 2>),
    /// Packed for the host CPU kernels: `W` for the forward and `Wᵀ` for the backward (made by
    /// Flex only).
    #[cfg_attr(not(feature = "flex"), allow(dead_code))]
    Cpu(Arc<CpuPair>),
}

/// A weight packed twice for [`cpu`]: as `[out, in]` (forward) and as `[in, out]` (backward).
#[derive(Debug)]
struct CpuPair {
    forward: cpu::PackedWeight,
    /// `Wᵀ`, packed on the first backward product: generation and evaluation never need it.
    backward: OnceLock<cpu::PackedWeight>,
}

#[cfg_attr(not(feature = "flex"), allow(dead_code))]
impl CpuPair {
    fn new(forward: cpu::PackedWeight) -> Self {
        Self {
            forward,
            backward: OnceLock::new(),
        }
    }

    /// The packing of `Wᵀ` (made now if this is the first backward product).
    fn backward(&self) -> &cpu::PackedWeight {
        self.backward.get_or_init(|| self.forward.transposed())
    }
}

impl<B: Backend> FrozenWeight<B> {
    /// `weight` `[out, in]` as a tensor in `precision`'s dtype, for Burn's matmul.
    pub fn tensor(weight: Tensor<B, 2>, precision: WeightPrecision) -> Self {
        let shape = weight.dims();
        let weight = match precision {
            WeightPrecision::F32 => weight,
            WeightPrecision::Bf16 => weight.cast(DType::BF16),
        };
        Self {
            shape,
            precision,
            storage: Storage::Tensor(weight),
        }
    }

    /// `[out, in]`.
    pub fn dims(&self) -> [usize; 2] {
        self.shape
    }

    /// The precision it is stored and multiplied in.
    pub fn precision(&self) -> WeightPrecision {
        self.precision
    }

    /// The CPU kernel its products run on, when it is packed for one (`None`: Burn's matmul).
    pub fn cpu_kernel(&self) -> Option<cpu::CpuKernel> {
        match &self.storage {
            Storage::Tensor(_) => None,
            Storage::Cpu(p) => Some(p.forward.kernel()),
        }
    }

    /// The weight as an f32 tensor `[out, in]`, when it is stored as one (f32 precision on every
    /// backend): callers with their own f32 products (few-row decoding) use it directly.
    pub fn f32_tensor(&self) -> Option<&Tensor<B, 2>> {
        match (&self.storage, self.precision) {
            (Storage::Tensor(t), WeightPrecision::F32) => Some(t),
            _ => None,
        }
    }

    /// Bytes the weight holds (where it is packed for the CPU: the forward packing, and the
    /// backward one once a backward product has made it).
    pub fn bytes(&self) -> usize {
        match &self.storage {
            Storage::Tensor(t) => t.shape().num_elements() * t.dtype().size(),
            Storage::Cpu(p) => {
                p.forward.bytes() + p.backward.get().map_or(0, cpu::PackedWeight::bytes)
            }
        }
    }

    /// The same weight for another backend whose tensors are `map` of these (the packed CPU
    /// form is shared).
    fn retensor<B2: Backend>(
        &self,
        map: impl FnOnce(Tensor<B, 2>) -> Tensor<B2, 2>,
    ) -> FrozenWeight<B2> {
        FrozenWeight {
            shape: self.shape,
            precision: self.precision,
            storage: match &self.storage {
                Storage::Tensor(t) => Storage::Tensor(map(t.clone())),
                Storage::Cpu(p) => Storage::Cpu(Arc::clone(p)),
            },
        }
    }
}

/// Backend extension for products with frozen weights. Every method has a default made of Burn's
/// own ops, so a backend without kernels implements it with an empty `impl` block.
pub trait FrozenLinearBackend: Backend {
    /// Whether `device` can hold and multiply frozen weights in `precision`. The default asks
    /// Burn whether the device computes in that dtype (WGSL has no bf16, so wgpu refuses it).
    fn supports_precision(device: &Self::Device, precision: WeightPrecision) -> bool {
        precision == WeightPrecision::F32 || Self::supports_dtype(device, precision.dtype())
    }

    /// Prepares `weight` `[out, in]` (f32 values) for products in `precision`.
    fn frozen_weight(weight: Tensor<Self, 2>, precision: WeightPrecision) -> FrozenWeight<Self> {
        FrozenWeight::tensor(weight, precision)
    }

    /// `x·Wᵀ`: `x` `[m, in]` to `[m, out]`, f32 in and out.
    fn frozen_forward(x: Tensor<Self, 2>, weight: &FrozenWeight<Self>) -> Tensor<Self, 2> {
        burn_forward(x, weight)
    }

    /// `dy·W`: `dy` `[m, out]` to `[m, in]`, f32 in and out (the input gradient of
    /// [`frozen_forward`](Self::frozen_forward)).
    fn frozen_backward(dy: Tensor<Self, 2>, weight: &FrozenWeight<Self>) -> Tensor<Self, 2> {
        burn_backward(dy, weight)
    }

    /// `log softmax(x·Wᵀ)[i, targets[i]]` `[n]` for `x` `[n, in]`: the log-likelihood of each
    /// target through an output layer such as the LM head, without a `[n, out]` tensor
    /// (computed in chunks of rows, [`cross_entropy`]). Under `Autodiff` the forward also
    /// computes each row's input gradient, chunk by chunk, and the backward only scales it.
    fn frozen_log_probs(
        x: Tensor<Self, 2>,
        weight: &FrozenWeight<Self>,
        targets: Tensor<Self, 1, Int>,
    ) -> Tensor<Self, 1> {
        cross_entropy::log_probs(x, weight, targets, false).0
    }

    /// The row pass of [`frozen_log_probs`](Self::frozen_log_probs) over one chunk of logits
    /// `[rows, out]`: `log softmax(logits)[i, targets[i]]` `[rows]` and, when `grad`, the
    /// logits' gradient of it, `onehot(targets) − softmax(logits)` `[rows, out]`.
    fn target_log_softmax(
        logits: Tensor<Self, 2>,
        targets: Tensor<Self, 1, Int>,
        grad: bool,
    ) -> (Tensor<Self, 1>, Option<Tensor<Self, 2>>) {
        cross_entropy::target_log_softmax_reference(logits, targets, grad)
    }
}

/// The tensor of a weight that Burn's matmul multiplies. A weight packed for the CPU kernels
/// belongs to a backend that multiplies it itself.
fn weight_tensor<B: Backend>(w: &FrozenWeight<B>) -> &Tensor<B, 2> {
    match &w.storage {
        Storage::Tensor(t) => t,
        Storage::Cpu(_) => unreachable!(
            "a weight packed for the CPU kernels is only made, and multiplied, by the Flex backend"
        ),
    }
}

/// [`FrozenLinearBackend::frozen_forward`] by Burn's matmul, in the weight's dtype.
pub fn burn_forward<B: Backend>(x: Tensor<B, 2>, weight: &FrozenWeight<B>) -> Tensor<B, 2> {
    let w = weight_tensor(weight).clone().transpose();
    match weight.precision {
        WeightPrecision::F32 => x.matmul(w),
        WeightPrecision::Bf16 => x.cast(DType::BF16).matmul(w).cast(DType::F32),
    }
}

/// [`FrozenLinearBackend::frozen_backward`] by Burn's matmul, in the weight's dtype.
pub fn burn_backward<B: Backend>(dy: Tensor<B, 2>, weight: &FrozenWeight<B>) -> Tensor<B, 2> {
    let w = weight_tensor(weight).clone();
    match weight.precision {
        WeightPrecision::F32 => dy.matmul(w),
        WeightPrecision::Bf16 => dy.cast(DType::BF16).matmul(w).cast(DType::F32),
    }
}

/// A frozen weight is a constant of the module that holds it: no parameter, no record (the
/// weights come from the model files, not from a saved module), moved with the module to a
/// device, and the same weight in the inner module of an autodiff one.
mod module {
    use burn::{
        module::{
            AutodiffModule, Content, Devices, EmptyRecord, Module, ModuleDisplay,
            ModuleDisplayDefault, ModuleMapper, ModuleVisitor,
        },
        tensor::{
            Tensor,
            backend::{AutodiffBackend, Backend},
        },
    };

    use super::{FrozenWeight, Storage};

    impl<B: Backend> Module<B> for FrozenWeight<B> {
        type Record = EmptyRecord;

        fn visit<V: ModuleVisitor<B>>(&self, _visitor: &mut V) {}

        fn map<M: ModuleMapper<B>>(self, _mapper: &mut M) -> Self {
            self
        }

        fn into_record(self) -> Self::Record {
            EmptyRecord
        }

        fn load_record(self, _record: Self::Record) -> Self {
            self
        }

        fn to_device(self, device: &B::Device) -> Self {
            self.retensor(|t: Tensor<B, 2>| t.to_device(device))
        }

        fn fork(self, device: &B::Device) -> Self {
            self.retensor(|t: Tensor<B, 2>| t.to_device(device))
        }

        fn collect_devices(&self, mut devices: Devices<B>) -> Devices<B> {
            if let Storage::Tensor(t) = &self.storage {
                let device = t.device();
                if !devices.contains(&device) {
                    devices.push(device);
                }
            }
            devices
        }
    }

    impl<B: Backend> ModuleDisplayDefault for FrozenWeight<B> {
        fn content(&self, content: Content) -> Option<Content> {
            let [out, input] = self.shape;
            content
                .add_single(&format!(
                    "FrozenWeight {{out: {out}, in: {input}, precision: {}}}",
                    self.precision
                ))
                .optional()
        }
    }

    impl<B: Backend> ModuleDisplay for FrozenWeight<B> {}

    impl<B: AutodiffBackend> AutodiffModule<B> for FrozenWeight<B> {
        type InnerModule = FrozenWeight<B::InnerBackend>;

        fn valid(&self) -> Self::InnerModule {
            self.retensor(Tensor::inner)
        }

        fn from_inner(module: Self::InnerModule) -> Self {
            module.retensor(Tensor::from_inner)
        }
    }
}
