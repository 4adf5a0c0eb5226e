//! The fused ops' CUDA kernels (`trainer/kernels/fused.cu`) against their CPU twins
//! (`tpv_shared::model::fused`, themselves checked against candle's composed ops in
//! `shared/tests/fused.rs`): values and gradients (the backward passes run the gradient kernels),
//! in f32 and bf16, on shapes that exercise broadcasting, rows longer than a block and odd sizes.
//! Built only with `--features cuda` and run on a GPU by `bench/gpu_check.sh`; it fails without
//! one (a GPU test that passes without a GPU would check nothing).
#![cfg(feature = "cuda")]
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(clippy::disallowed_methods, reason = "a test reads tensors directly")]

use candle_core::{DType, Device, Result, Tensor, Var};
use tpv_shared::model::fused;

fn gpu() -> Device {
    tpv_trainer::models::device("cuda:0").expect("this test needs a CUDA GPU")
}

fn randn(dims: &[usize], seed: u64) -> Tensor {
    let n: usize = dims.iter().product();
    let mut rng = tpv_shared::merge::SplitMix64::new(seed);
    let v: Vec<f32> = (0..n).map(|_| (rng.next_f64() * 4.0 - 2.0) as f32).collect();
    Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
}

/// `f`'s output and the gradients of Σ f(inputs) ⊙ r w.r.t. the inputs marked in `differentiate`,
/// on `device` in `dtype`, as f32 on the CPU.
fn run(
    device: &Device,
    dtype: DType,
    inputs: &[Tensor],
    differentiate: &[bool],
    f: &dyn Fn(&[Tensor]) -> Result<Tensor>,
) -> (Tensor, Vec<Tensor>) {
    let vars: Vec<Option<Var>> = inputs
        .iter()
        .zip(differentiate)
        .map(|(t, &d)| d.then(|| Var::from_tensor(&t.to_device(device).unwrap().to_dtype(dtype).unwrap()).unwrap()))
        .collect();
    let args: Vec<Tensor> = inputs
        .iter()
        .zip(&vars)
        .map(|(t, v)| match v {
            Some(v) => v.as_tensor().clone(),
            None if t.dtype() == DType::U32 => t.to_device(device).unwrap(),
            None => t.to_device(device).unwrap().to_dtype(dtype).unwrap(),
        })
        .collect();
    let y = f(&args).unwrap();
    let r = randn(y.dims(), 99).to_device(device).unwrap();
    let loss = (y.to_dtype(DType::F32).unwrap() * r).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let to_cpu = |t: &Tensor| t.to_dtype(DType::F32).unwrap().to_device(&Device::Cpu).unwrap();
    let gs = vars
        .iter()
        .flatten()
        .map(|v| to_cpu(grads.get(v.as_tensor()).expect("a gradient")))
        .collect();
    (to_cpu(&y), gs)
}

/// Max |a − b| over max |b|; infinite where `a` has a value that is not finite (candle's max
/// would skip a NaN, and a kernel that leaves an output unwritten may leave one).
fn rel_diff(a: &Tensor, b: &Tensor) -> f32 {
    let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(a.len(), b.len());
    if a.iter().any(|v| !v.is_finite()) {
        return f32::INFINITY;
    }
    let d = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    let m = b.iter().map(|v| v.abs()).fold(1e-6f32, f32::max);
    d / m
}

/// `f` on the GPU (f32, then bf16) against `f` on the CPU in f32.
fn twin(name: &str, inputs: &[Tensor], differentiate: &[bool], f: &dyn Fn(&[Tensor]) -> Result<Tensor>) {
    let gpu = gpu();
    let (y0, g0) = run(&Device::Cpu, DType::F32, inputs, differentiate, f);
    for (dtype, tol) in [(DType::F32, 2e-5), (DType::BF16, 3e-2)] {
        let (y, g) = run(&gpu, dtype, inputs, differentiate, f);
        let dy = rel_diff(&y, &y0);
        assert!(dy <= tol, "{name} {dtype:?}: values differ by {dy:e} (relative)");
        for (i, (a, b)) in g.iter().zip(&g0).enumerate() {
            let d = rel_diff(a, b);
            assert!(d <= tol, "{name} {dtype:?}: gradient {i} differs by {d:e} (relative)");
        }
        println!("{name} {dtype:?}: values {dy:.2e}, gradients ok");
    }
}

#[test]
fn softmax_with_and_without_a_bias() {
    let x = randn(&[2, 3, 5, 1500], 1);
    twin("softmax", &[x], &[true], &|t| fused::softmax(&t[0], 0.7, None));
    let x = randn(&[2, 3, 5, 37], 2);
    for (i, bias) in [[2, 1, 5, 37], [1, 3, 5, 37], [2, 1, 1, 37], [2, 3, 5, 37]]
        .iter()
        .enumerate()
    {
        let b = randn(bias, 10 + i as u64);
        twin("biased softmax", &[x.clone(), b], &[true, false], &|t| {
            fused::softmax(&t[0], 0.125, Some(&t[1]))
        });
    }
}

#[test]
fn rms_norm() {
    for n in [64, 576, 2100] {
        let (x, w) = (randn(&[3, 7, n], 3), randn(&[n], 4));
        twin("rms norm", &[x, w], &[true, false], &|t| {
            fused::rms_norm(&t[0], &t[1], 1e-6)
        });
    }
}

#[test]
fn rotary_embedding_with_shared_and_per_example_tables() {
    let x = randn(&[2, 3, 9, 64], 5);
    for b in [1, 2] {
        let (cos, sin) = (randn(&[b, 1, 9, 64], 6), randn(&[b, 1, 9, 64], 7));
        twin("rope", &[x.clone(), cos, sin], &[true, false, false], &|t| {
            fused::rope(&t[0], &t[1], &t[2])
        });
    }
}

#[test]
fn swiglu_and_relus_gradient() {
    let (a, b) = (randn(&[3, 5, 1537], 8), randn(&[3, 5, 1537], 9));
    twin("swiglu", &[a.clone(), b], &[true, true], &|t| {
        fused::swiglu(&t[0], &t[1])
    });
    let h = a.relu().unwrap();
    twin("relu gradient", &[randn(&[3, 5, 1537], 10), h], &[false, false], &|t| {
        fused::relu_grad(&t[0], &t[1], 1.25)
    });
}

#[test]
fn cross_entropy() {
    let logits = randn(&[13, 3001], 11);
    let targets = Tensor::from_vec((0..13u32).map(|i| i * 230 % 3001).collect::<Vec<_>>(), 13, &Device::Cpu).unwrap();
    let gpu = gpu();
    // In f32 only: `ops::nll` gives the kernel f32 logits whatever the model's dtype.
    let f = |t: &[Tensor]| fused::nll(&t[0].to_dtype(DType::F32)?, &t[1]);
    let (y0, g0) = run(
        &Device::Cpu,
        DType::F32,
        &[logits.clone(), targets.clone()],
        &[true, false],
        &f,
    );
    let (y, g) = run(&gpu, DType::F32, &[logits, targets], &[true, false], &f);
    assert!(rel_diff(&y, &y0) <= 2e-5, "nll values");
    assert!(rel_diff(&g[0], &g0[0]) <= 2e-5, "nll gradient");
}

#[test]
fn dropout_masks_are_the_cpus() {
    let gpu = gpu();
    for (state, p, shape) in [(7u64, 0.1f32, vec![8, 12, 306, 306]), (u64::MAX - 3, 0.5, vec![1001])] {
        let shape = candle_core::Shape::from(shape);
        let cpu = fused::dropout_multipliers(state, p, shape.elem_count());
        for dtype in [DType::F32, DType::BF16] {
            let like = Tensor::zeros(1, dtype, &gpu).unwrap();
            let mask = fused::dropout_mask(&like, &shape, state, p).unwrap();
            assert_eq!(mask.dims(), shape.dims());
            let got = mask
                .to_dtype(DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            // bf16 holds 1/(1 − p) rounded, as the CPU's mask converted to bf16 does.
            let want = Tensor::from_vec(cpu.clone(), cpu.len(), &Device::Cpu).unwrap();
            let want = want
                .to_dtype(dtype)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            assert!(got == want, "dropout mask {dtype:?}, p {p}: differs from the CPU's");
        }
    }
}
