//! The fused ops' kernels on a GPU, supplied from outside this crate. `shared` runs on the CPU and
//! in the browser and depends on no GPU crate (`scripts/check-layering.sh`), so the CUDA kernels
//! live in the trainer (`trainer/src/cuda_kernels.rs`, feature `cuda`), which installs them here
//! at start-up. Each op of [`super::fused`] then runs on a CUDA tensor through its `cuda_fwd`,
//! which calls the installed kernel; its backward pass is the same code as on the CPU, built from
//! the same ops, so the formulas `shared/tests/fused.rs` checks on the CPU are the ones the GPU runs.
//! Without installed kernels, [`super::ops`] keeps composing candle ops on a GPU.
//!
//! The storages are candle's `CudaStorage`. Built without CUDA (as `shared` is on its own), candle
//! defines it as a type no tensor can have (there is no CUDA device then), so these functions are
//! never called; with the trainer's `cuda` feature it is the device memory the kernels work on.

use std::sync::OnceLock;

use candle_core::{CudaStorage, Layout, Result};

/// A tensor's storage and layout, as a custom op receives them. The layouts given to the kernels
/// are contiguous and their shapes checked by the op ([`super::fused`]).
pub type Arg<'a> = (&'a CudaStorage, &'a Layout);

/// The kernels of [`super::fused`]'s ops on a CUDA device, each returning the output's storage
/// (shaped as its CPU twin's output). Floating-point operands are f32 or bf16, all of one dtype
/// (the cross-entropy's logits f32); targets u32.
pub trait CudaKernels: Send + Sync {
    /// softmax(x · scale + bias) over the last dimension; x `[B, H, T, S]` when biased, the bias
    /// `[B or 1, H or 1, T or 1, S]`.
    fn softmax(&self, x: Arg, bias: Option<Arg>, scale: f32) -> Result<CudaStorage>;
    /// scale · y ⊙ (g − Σ g ⊙ y) over the last dimension.
    fn softmax_grad(&self, g: Arg, y: Arg, scale: f32) -> Result<CudaStorage>;
    /// x · rsqrt(mean(x²) + eps) · w over the last dimension.
    fn rms_norm(&self, x: Arg, w: Arg, eps: f32) -> Result<CudaStorage>;
    /// The input gradient of [`Self::rms_norm`] given the output's `g`.
    fn rms_norm_grad(&self, g: Arg, x: Arg, w: Arg, eps: f32) -> Result<CudaStorage>;
    /// Rotary embedding ("rotate half") of x `[B, H, T, D]` with tables `[B or 1, 1, T, D]`; its
    /// transpose (the backward) when `transposed`.
    fn rope(&self, x: Arg, cos: Arg, sin: Arg, transposed: bool) -> Result<CudaStorage>;
    /// silu(a) ⊙ b.
    fn swiglu(&self, a: Arg, b: Arg) -> Result<CudaStorage>;
    /// [da; db] (twice g's length) for silu(a) ⊙ b given the output's `g`.
    fn swiglu_grad(&self, g: Arg, a: Arg, b: Arg) -> Result<CudaStorage>;
    /// g · keep where h > 0, else 0.
    fn relu_grad(&self, g: Arg, h: Arg, keep: f32) -> Result<CudaStorage>;
    /// logsumexp(x_i) − x_i[t_i] for logits `[N, V]` (f32) and targets `[N]`.
    fn nll(&self, x: Arg, t: Arg) -> Result<CudaStorage>;
    /// g_i · (softmax(x_i) − onehot(t_i)).
    fn nll_grad(&self, g: Arg, x: Arg, t: Arg) -> Result<CudaStorage>;
    /// `len` dropout multipliers ([`super::fused::dropout_multipliers`]: the same values) in the
    /// dtype of `like`, on its device.
    fn dropout_mask(&self, like: Arg, len: usize, state: u64, p: f32) -> Result<CudaStorage>;
}

static CUDA: OnceLock<&'static dyn CudaKernels> = OnceLock::new();

/// The fused ops whose kernels [`CudaKernels`] supplies, each the unit a GPU uses or not: an op
/// runs its kernels (forward and backward) only when all of them passed the self-test
/// ([`super::kernel_check`]), else candle's composed op runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FusedOp {
    /// [`CudaKernels::softmax`] (with and without a bias) and [`CudaKernels::softmax_grad`].
    Softmax,
    /// [`CudaKernels::rms_norm`] and [`CudaKernels::rms_norm_grad`].
    RmsNorm,
    /// [`CudaKernels::rope`], both directions.
    Rope,
    /// [`CudaKernels::swiglu`] and [`CudaKernels::swiglu_grad`].
    Swiglu,
    /// [`CudaKernels::relu_grad`] (T5's feed-forward backward).
    ReluGrad,
    /// [`CudaKernels::nll`] and [`CudaKernels::nll_grad`].
    Nll,
    /// [`CudaKernels::dropout_mask`].
    Dropout,
}

impl FusedOp {
    pub const ALL: [Self; 7] = [
        Self::Softmax,
        Self::RmsNorm,
        Self::Rope,
        Self::Swiglu,
        Self::ReluGrad,
        Self::Nll,
        Self::Dropout,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Softmax => "softmax",
            Self::RmsNorm => "rms_norm",
            Self::Rope => "rope",
            Self::Swiglu => "swiglu",
            Self::ReluGrad => "relu_grad",
            Self::Nll => "nll",
            Self::Dropout => "dropout",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// The ops whose installed kernels a GPU uses (a bit per [`FusedOp`]); all until
/// [`set_enabled`] says otherwise.
static ENABLED: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(u8::MAX);

/// Installs the CUDA kernels for the rest of the process; false when some already were.
pub fn install_cuda(kernels: &'static dyn CudaKernels) -> bool {
    CUDA.set(kernels).is_ok()
}

/// The installed CUDA kernels, if any.
pub fn cuda() -> Option<&'static dyn CudaKernels> {
    CUDA.get().copied()
}

/// Uses the installed kernels of `ops` only (the self-test's verdict); the others' composed ops
/// run on a GPU.
pub fn set_enabled(ops: &[FusedOp]) {
    let mask = ops.iter().fold(0u8, |m, op| m | op.bit());
    ENABLED.store(mask, std::sync::atomic::Ordering::Relaxed);
}

/// Whether [`set_enabled`] leaves `op`'s kernels in use (installed or not).
pub fn enabled(op: FusedOp) -> bool {
    ENABLED.load(std::sync::atomic::Ordering::Relaxed) & op.bit() != 0
}

/// Whether a CUDA tensor's `op` runs the installed kernels: installed, and not turned off.
pub fn uses_kernel(op: FusedOp) -> bool {
    cuda().is_some() && enabled(op)
}

/// The installed CUDA kernels, or the error an op on a CUDA tensor gives without them.
pub(crate) fn cuda_kernels(op: &str) -> Result<&'static dyn CudaKernels> {
    cuda().ok_or_else(|| {
        candle_core::Error::Msg(format!(
            "{op}: no CUDA kernels installed (build tpv with --features cuda)"
        ))
    })
}
