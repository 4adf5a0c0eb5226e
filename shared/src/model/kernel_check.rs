//! The self-test of the fused ops' GPU kernels, run when a device opens: each kernel runs once
//! on small random inputs against its CPU twin ([`super::fused`] on the CPU, in f32, from the
//! same inputs rounded to the kernel's dtype), forward and backward, f32 and bf16, on shapes that
//! reach the edges of the kernels' indexing (odd lengths, rows longer than a block of threads,
//! more rows than one block, a bias broadcast over heads or batch, rotary tables per row or
//! shared). An op any of whose kernels disagrees beyond its tolerance is not used
//! ([`super::gpu::set_enabled`]): candle's composed op runs instead, and the verdict's warning
//! names the kernel and the difference. A kernel with a wrong index would otherwise train wrong
//! prompts silently.
//!
//! The comparison is device-agnostic ([`self_test_with`] takes the candidate as a function), so
//! the decision is tested on the CPU with a deliberately wrong twin (`tests/kernel_check.rs`).

use candle_core::{D, DType, Device, Result, Tensor, Var};

use super::fused;
use super::gpu::FusedOp;
use crate::merge::SplitMix64;

/// Largest |candidate − reference| / max(1, max |reference|) a kernel may show: f32 kernels
/// reorder sums (≈ 1e-6 here); bf16 ones round every value to 8 bits of mantissa (≈ 4e-3).
pub fn tolerance(dtype: DType) -> f32 {
    if dtype == DType::F32 { 1e-4 } else { 3e-2 }
}

/// One comparison of the self-test.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KernelCheck {
    pub op: FusedOp,
    /// The case: kernels, shapes and what was compared.
    pub case: String,
    /// `f32` or `bf16`.
    pub dtype: String,
    /// Largest |candidate − reference| / max(1, max |reference|) over the outputs.
    pub diff: f32,
    pub tolerance: f32,
    /// Why the candidate did not run, if it did not.
    pub error: Option<String>,
}

impl KernelCheck {
    pub fn passed(&self) -> bool {
        self.error.is_none() && self.diff <= self.tolerance
    }
}

/// What the self-test decided: the ops whose kernels are used, and a warning per failed check.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Verdict {
    pub enabled: Vec<FusedOp>,
    pub warnings: Vec<String>,
}

/// The ops every check of which passed, and a warning naming each failed kernel and its
/// difference.
pub fn verdict(checks: &[KernelCheck]) -> Verdict {
    let failed: Vec<&KernelCheck> = checks.iter().filter(|c| !c.passed()).collect();
    let enabled = FusedOp::ALL
        .into_iter()
        .filter(|op| checks.iter().any(|c| c.op == *op) && !failed.iter().any(|c| c.op == *op))
        .collect();
    let warnings = failed
        .iter()
        .map(|c| {
            let why = match &c.error {
                Some(e) => format!("failed to run ({e})"),
                None => format!(
                    "differs from its CPU twin by {:.2e} (tolerance {:.0e})",
                    c.diff, c.tolerance
                ),
            };
            format!(
                "the fused GPU kernel {} ({} {}) {why}: not used, candle's composed op runs instead",
                c.op.name(),
                c.dtype,
                c.case
            )
        })
        .collect();
    Verdict { enabled, warnings }
}

/// One case: inputs made on the CPU in f32 (u32 for targets), and what runs on them.
pub struct Case {
    pub op: FusedOp,
    pub what: String,
    pub inputs: Vec<Tensor>,
    /// The op's outputs (forward values and gradients) from inputs on one device, computed in
    /// `dtype` (the cross-entropy's logits stay f32, as training gives them).
    pub run: fn(&[Tensor], DType) -> Result<Vec<Tensor>>,
}

impl Case {
    fn new(op: FusedOp, what: &str, inputs: Vec<Tensor>, run: fn(&[Tensor], DType) -> Result<Vec<Tensor>>) -> Self {
        Self {
            op,
            what: what.to_owned(),
            inputs,
            run,
        }
    }
}

fn randn(rng: &mut SplitMix64, dims: &[usize], scale: f64) -> Result<Tensor> {
    let n: usize = dims.iter().product();
    // Box–Muller from the generator's uniform draws: reproducible on every host.
    let v: Vec<f32> = (0..n)
        .map(|_| {
            let (u1, u2) = (rng.next_f64().max(1e-12), rng.next_f64());
            ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos() * scale) as f32
        })
        .collect();
    Tensor::from_vec(v, dims, &Device::Cpu)
}

/// `y` and the gradient of Σ y ⊙ g with respect to `x` (a fresh variable of `x`'s values).
fn with_grad(x: &Tensor, g: &Tensor, f: impl Fn(&Tensor) -> Result<Tensor>) -> Result<Vec<Tensor>> {
    let var = Var::from_tensor(x)?;
    let y = f(var.as_tensor())?;
    let grads = (&y * g.to_dtype(y.dtype())?)?.sum_all()?.backward()?;
    let dx = grads
        .get(var.as_tensor())
        .ok_or_else(|| candle_core::Error::Msg("no gradient reached the input".into()))?
        .clone();
    Ok(vec![y, dx])
}

fn softmax_case(i: &[Tensor], dt: DType) -> Result<Vec<Tensor>> {
    with_grad(&i[0].to_dtype(dt)?, &i[1], |x| fused::softmax(x, 0.7, None))
}

fn biased_softmax_case(i: &[Tensor], dt: DType) -> Result<Vec<Tensor>> {
    let bias = i[2].to_dtype(dt)?;
    with_grad(&i[0].to_dtype(dt)?, &i[1], |x| fused::softmax(x, 0.125, Some(&bias)))
}

fn rms_norm_case(i: &[Tensor], dt: DType) -> Result<Vec<Tensor>> {
    let w = i[2].to_dtype(dt)?;
    with_grad(&i[0].to_dtype(dt)?, &i[1], |x| fused::rms_norm(x, &w, 1e-6))
}

fn rope_case(i: &[Tensor], dt: DType) -> Result<Vec<Tensor>> {
    let (cos, sin) = (i[2].cos()?.to_dtype(dt)?, i[2].sin()?.to_dtype(dt)?);
    with_grad(&i[0].to_dtype(dt)?, &i[1], |x| fused::rope(x, &cos, &sin))
}

fn swiglu_case(i: &[Tensor], dt: DType) -> Result<Vec<Tensor>> {
    let (a, b, g) = (i[0].to_dtype(dt)?, i[1].to_dtype(dt)?, i[2].to_dtype(dt)?);
    let (da, db) = fused::swiglu_grad(&g, &a, &b)?;
    Ok(vec![fused::swiglu(&a, &b)?, da, db])
}

fn relu_grad_case(i: &[Tensor], dt: DType) -> Result<Vec<Tensor>> {
    let (g, h) = (i[0].to_dtype(dt)?, i[1].relu()?.to_dtype(dt)?);
    Ok(vec![fused::relu_grad(&g, &h, 1.0 / 0.9)?])
}

fn nll_case(i: &[Tensor], _: DType) -> Result<Vec<Tensor>> {
    let targets = i[2].to_dtype(DType::U32)?;
    with_grad(&i[0], &i[1], |x| fused::nll(x, &targets))
}

fn dropout_case(i: &[Tensor], dt: DType) -> Result<Vec<Tensor>> {
    let like = i[0].to_dtype(dt)?;
    Ok(vec![fused::dropout_mask(&like, &(3, 1029).into(), 0x9e37_79b9, 0.1)?])
}

/// The self-test's cases (a few hundred thousand values in all).
pub fn cases() -> Result<Vec<Case>> {
    let mut rng = SplitMix64::new(0x5e1f_7e57);
    // Normal draws of each (dims, scale).
    let mut n = |specs: &[(&[usize], f64)]| -> Result<Vec<Tensor>> {
        specs
            .iter()
            .map(|(dims, scale)| randn(&mut rng, dims, *scale))
            .collect()
    };
    const ROWS: &[usize] = &[37, 1029];
    // Targets as f32 values (converted by the case), one per row of 37 rows of 1,029 logits.
    let targets: Vec<f32> = (0..37u32).map(|i| ((i * 331) % 1029) as f32).collect();
    let mut nll_inputs = n(&[(ROWS, 3.0), (&[37], 1.0)])?;
    nll_inputs.push(Tensor::from_vec(targets, 37, &Device::Cpu)?);
    // Rotary tables' angles are the third input: per row (2) or shared (1).
    let x = &[2, 3, 5, 8][..];
    Ok(vec![
        Case::new(
            FusedOp::Softmax,
            "softmax + softmax_grad [37, 1029] (rows longer than a block)",
            n(&[(ROWS, 3.0), (ROWS, 1.0)])?,
            softmax_case,
        ),
        Case::new(
            FusedOp::Softmax,
            "softmax with a bias [2, 1, 5, 33] broadcast over heads + softmax_grad, x [2, 3, 5, 33]",
            n(&[(&[2, 3, 5, 33], 3.0), (&[2, 3, 5, 33], 1.0), (&[2, 1, 5, 33], 2.0)])?,
            biased_softmax_case,
        ),
        Case::new(
            FusedOp::Softmax,
            "softmax with a bias [1, 3, 1, 7] broadcast over batch and queries, x [4, 3, 9, 7]",
            n(&[(&[4, 3, 9, 7], 3.0), (&[4, 3, 9, 7], 1.0), (&[1, 3, 1, 7], 2.0)])?,
            biased_softmax_case,
        ),
        Case::new(
            FusedOp::RmsNorm,
            "rms_norm + rms_norm_grad [37, 1029]",
            n(&[(ROWS, 2.0), (ROWS, 1.0), (&[1029], 1.0)])?,
            rms_norm_case,
        ),
        Case::new(
            FusedOp::RmsNorm,
            "rms_norm + rms_norm_grad [2, 300, 7] (more rows than a block, odd width)",
            n(&[(&[2, 300, 7], 2.0), (&[2, 300, 7], 1.0), (&[7], 1.0)])?,
            rms_norm_case,
        ),
        Case::new(
            FusedOp::Rope,
            "rope and its transpose, x [2, 3, 5, 8], tables per row [2, 1, 5, 8]",
            n(&[(x, 1.0), (x, 1.0), (&[2, 1, 5, 8], 3.0)])?,
            rope_case,
        ),
        Case::new(
            FusedOp::Rope,
            "rope and its transpose, x [2, 3, 5, 8], shared tables [1, 1, 5, 8]",
            n(&[(x, 1.0), (x, 1.0), (&[1, 1, 5, 8], 3.0)])?,
            rope_case,
        ),
        Case::new(
            FusedOp::Swiglu,
            "swiglu + swiglu_grad [37, 1029]",
            n(&[(ROWS, 3.0), (ROWS, 1.0), (ROWS, 1.0)])?,
            swiglu_case,
        ),
        Case::new(
            FusedOp::ReluGrad,
            "relu_grad [37, 1029]",
            n(&[(ROWS, 1.0), (ROWS, 1.0)])?,
            relu_grad_case,
        ),
        Case::new(
            FusedOp::Nll,
            "nll + nll_grad, logits [37, 1029] (f32)",
            nll_inputs,
            nll_case,
        ),
        Case::new(
            FusedOp::Dropout,
            "dropout_mask of 3 × 1029 values, p = 0.1",
            vec![Tensor::zeros(1, DType::F32, &Device::Cpu)?],
            dropout_case,
        ),
    ])
}

/// The largest |a − b| / max(1, max |b|) over paired outputs; an output of another shape is
/// infinitely far.
fn difference(candidate: &[Tensor], reference: &[Tensor]) -> Result<f32> {
    if candidate.len() != reference.len() {
        return Ok(f32::INFINITY);
    }
    let mut worst = 0f32;
    for (c, r) in candidate.iter().zip(reference) {
        if c.dims() != r.dims() {
            return Ok(f32::INFINITY);
        }
        let c = c.to_device(&Device::Cpu)?.to_dtype(DType::F32)?.flatten_all()?;
        let r = r.to_dtype(DType::F32)?.flatten_all()?;
        let scale = super::host::scalar::<f32>(&r.abs()?.max(D::Minus1)?)?.max(1.0);
        let diff = super::host::scalar::<f32>(&(c - &r)?.abs()?.max(D::Minus1)?)?;
        // NaN (a kernel writing garbage) compares as a failure.
        worst = if diff.is_nan() {
            f32::INFINITY
        } else {
            worst.max(diff / scale)
        };
    }
    Ok(worst)
}

/// Runs every case in f32 and bf16: the reference is the CPU twin in f32 on the inputs rounded to
/// the dtype; `candidate(case, rounded inputs, dtype)` gives the outputs to check.
pub fn self_test_with(candidate: impl Fn(&Case, &[Tensor], DType) -> Result<Vec<Tensor>>) -> Result<Vec<KernelCheck>> {
    let mut checks = Vec::new();
    for case in cases()? {
        for dtype in [DType::F32, DType::BF16] {
            let rounded = case
                .inputs
                .iter()
                .map(|t| t.to_dtype(dtype)?.to_dtype(DType::F32))
                .collect::<Result<Vec<_>>>()?;
            let reference = (case.run)(&rounded, DType::F32)?;
            let (diff, error) = match candidate(&case, &rounded, dtype) {
                Ok(outputs) => (difference(&outputs, &reference)?, None),
                Err(e) => (f32::INFINITY, Some(e.to_string())),
            };
            checks.push(KernelCheck {
                op: case.op,
                case: case.what.clone(),
                dtype: format!("{dtype:?}").to_lowercase(),
                diff,
                tolerance: tolerance(dtype),
                error,
            });
        }
    }
    Ok(checks)
}

/// [`self_test_with`] the kernels of `device`: each case's inputs moved there and run in the
/// dtype.
pub fn self_test(device: &Device) -> Result<Vec<KernelCheck>> {
    self_test_with(|case, inputs, dtype| {
        let moved = inputs.iter().map(|t| t.to_device(device)).collect::<Result<Vec<_>>>()?;
        (case.run)(&moved, dtype)
    })
}
