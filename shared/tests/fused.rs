//! The fused CPU kernels (`model::fused`) against the same ops composed of candle ops (which the
//! model tests check against HF transformers): values and gradients, on random inputs of several
//! shapes, including every broadcast the attention bias and the rotary tables allow.

#![allow(clippy::unwrap_used)]
#![allow(clippy::disallowed_methods, reason = "a test reads tensors directly")]

use candle_core::{DType, Device, Result, Tensor, Var};
use tpv_shared::model::{fused, ops};

fn randn(shape: &[usize], seed: u64) -> Tensor {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n)
        .map(|_| {
            // xorshift → roughly uniform in [-2, 2)
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0
        })
        .collect();
    Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Value and gradient (w.r.t. every input) of `f` under a fixed random upstream gradient.
fn value_and_grads(inputs: &[Tensor], f: &dyn Fn(&[Tensor]) -> Result<Tensor>) -> (Tensor, Vec<Tensor>) {
    let vars: Vec<Var> = inputs.iter().map(|t| Var::from_tensor(t).unwrap()).collect();
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let y = f(&ts).unwrap();
    let upstream = randn(y.dims(), 99);
    let loss = (&y * &upstream).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let gs = vars.iter().map(|v| grads.get(v).unwrap().clone()).collect();
    (y.detach(), gs)
}

fn check(
    name: &str,
    inputs: &[Tensor],
    fused: &dyn Fn(&[Tensor]) -> Result<Tensor>,
    composed: &dyn Fn(&[Tensor]) -> Result<Tensor>,
    tol: f32,
) {
    let (yf, gf) = value_and_grads(inputs, fused);
    let (yc, gc) = value_and_grads(inputs, composed);
    let dy = max_abs_diff(&yf, &yc);
    assert!(dy <= tol, "{name}: values differ by {dy}");
    for (i, (a, b)) in gf.iter().zip(&gc).enumerate() {
        let dg = max_abs_diff(a, b);
        assert!(dg <= tol, "{name}: gradient of input {i} differs by {dg}");
    }
}

#[test]
fn softmax_with_scale_and_every_bias_broadcast() {
    let x = randn(&[2, 3, 5, 7], 1);
    let plain = |t: &[Tensor]| fused::softmax(&t[0], 1.0, None);
    check(
        "softmax",
        std::slice::from_ref(&x),
        &plain,
        &|t| ops::softmax_last_composed(&t[0]),
        1e-6,
    );
    // A causal mask per example ([B, 1, T, S]), T5's position bias ([1, H, T, S]), an encoder
    // padding mask ([B, 1, 1, S]), a full bias.
    for (k, shape) in [[2, 1, 5, 7], [1, 3, 5, 7], [2, 1, 1, 7], [2, 3, 5, 7]]
        .iter()
        .enumerate()
    {
        let mut bias = randn(shape, 10 + k as u64);
        if k == 0 {
            // Masked entries as the models write them.
            let keep = randn(shape, 20).ge(0.0).unwrap().to_dtype(DType::F32).unwrap();
            bias = ((keep.clone() * &bias).unwrap() + ((1.0 - keep).unwrap() * f64::from(f32::MIN)).unwrap()).unwrap();
        }
        let scale = 0.37;
        let f = |t: &[Tensor]| ops::attention_softmax(&t[0], scale, &bias);
        let c = |t: &[Tensor]| ops::softmax_last_composed(&(&t[0] * scale)?.broadcast_add(&bias)?);
        check(
            &format!("attention softmax, bias {shape:?}"),
            std::slice::from_ref(&x),
            &f,
            &c,
            1e-6,
        );
    }
}

#[test]
fn a_bias_that_does_not_broadcast_is_an_error() {
    let x = randn(&[2, 3, 5, 7], 1);
    assert!(fused::softmax(&x, 1.0, Some(&randn(&[3, 1, 5, 7], 2))).is_err());
    assert!(fused::softmax(&x, 1.0, Some(&randn(&[2, 1, 5, 6], 2))).is_err());
    // ops falls back to candle's broadcasting rules (which reject it too).
    assert!(ops::attention_softmax(&x, 1.0, &randn(&[3, 1, 5, 7], 2)).is_err());
}

/// A padding-style bias: entries kept from `randn` or set to `f32::MIN` as the models mask them.
fn masked_bias(shape: &[usize], seed: u64) -> Tensor {
    let bias = randn(shape, seed);
    let keep = randn(shape, seed + 1).ge(-1.0).unwrap().to_dtype(DType::F32).unwrap();
    ((keep.clone() * &bias).unwrap() + ((1.0 - keep).unwrap() * f64::from(f32::MIN)).unwrap()).unwrap()
}

#[test]
fn attention_matches_composed() {
    // (B, H, Hkv, Tq, Tk, D, bias): T5's self-attention (position bias + padding, one [B, H, T, T]
    // tensor), cross-attention (a padding mask), grouped-query causal attention, one decoding step,
    // no bias, and enough keys that the queries come in several blocks.
    let cases: [([usize; 6], Option<&[usize]>); 6] = [
        ([2, 3, 3, 5, 5, 4], Some(&[2, 3, 5, 5])),
        ([2, 3, 3, 3, 7, 4], Some(&[2, 1, 1, 7])),
        ([2, 4, 2, 6, 6, 8], Some(&[2, 1, 6, 6])),
        ([3, 2, 1, 1, 9, 4], Some(&[1, 2, 1, 9])),
        ([1, 2, 2, 4, 6, 4], None),
        ([1, 2, 1, 200, 700, 4], Some(&[1, 2, 200, 700])),
    ];
    for (i, ([b, h, hkv, tq, tk, d], bias)) in cases.into_iter().enumerate() {
        let seed = 100 + 10 * i as u64;
        // q arrives as the models make it: [B, Tq, H·D] split into heads, a transposed view.
        let q = randn(&[b, tq, h, d], seed).transpose(1, 2).unwrap();
        let (k, v) = (randn(&[b, hkv, tk, d], seed + 1), randn(&[b, hkv, tk, d], seed + 2));
        let bias = bias.map(|shape| masked_bias(shape, seed + 3));
        let scale = 0.41;
        let f = |t: &[Tensor]| ops::attention(&t[0], &t[1], &t[2], scale, bias.as_ref(), None);
        let c = |t: &[Tensor]| ops::attention_composed(&t[0], &t[1], &t[2], scale, bias.as_ref(), None);
        check(&format!("attention case {i}"), &[q, k, v], &f, &c, 2e-5);
    }
}

#[test]
fn attention_dropout_draws_the_same_multipliers_fused_and_composed() {
    let (q, k, v) = (
        randn(&[2, 3, 4, 8], 1),
        randn(&[2, 3, 6, 8], 2),
        randn(&[2, 3, 6, 8], 3),
    );
    let bias = masked_bias(&[2, 1, 1, 6], 4);
    let f = |t: &[Tensor]| {
        let mut rng = tpv_shared::merge::SplitMix64::new(7);
        ops::attention(&t[0], &t[1], &t[2], 0.3, Some(&bias), Some((0.25, &mut rng)))
    };
    let c = |t: &[Tensor]| {
        let mut rng = tpv_shared::merge::SplitMix64::new(7);
        let mask = ops::dropout(&Tensor::ones((2, 3, 4, 6), DType::F32, &Device::Cpu)?, 0.25, &mut rng)?;
        assert!(mask.eq(0.0)?.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()? > 0.0);
        ops::attention_composed(&t[0], &t[1], &t[2], 0.3, Some(&bias), Some(&mask))
    };
    check("attention with dropout", &[q, k, v], &f, &c, 2e-5);
}

#[test]
fn attention_rejects_shapes_that_do_not_fit() {
    let q = randn(&[1, 3, 4, 8], 1);
    let kv = randn(&[1, 2, 5, 8], 2);
    // 3 query heads over 2 key/value heads
    assert!(ops::attention(&q, &kv, &kv, 1.0, None, None).is_err());
    let kv = randn(&[1, 3, 5, 8], 2);
    assert!(ops::attention(&q, &kv, &kv, 1.0, Some(&randn(&[1, 3, 4, 6], 3)), None).is_err());
    assert!(ops::attention(&q, &kv, &randn(&[1, 3, 5, 4], 3), 1.0, None, None).is_err());
}

#[test]
fn rms_norm_matches_composed() {
    for (k, shape) in [[3, 4, 16], [1, 1, 5], [2, 64, 48]].iter().enumerate() {
        let x = randn(shape, 30 + k as u64);
        let w = randn(&[shape[2]], 40 + k as u64);
        let f = |t: &[Tensor]| ops::rms_norm(&t[0], &w, 1e-6);
        let c = |t: &[Tensor]| ops::rms_norm_composed(&t[0], &w, 1e-6);
        check(&format!("rms norm {shape:?}"), &[x], &f, &c, 2e-5);
    }
}

#[test]
fn rope_matches_composed_with_shared_and_per_example_tables() {
    let x = randn(&[2, 3, 5, 8], 50);
    for table_batch in [1, 2] {
        let angles = randn(&[table_batch, 1, 5, 4], 60);
        let angles = Tensor::cat(&[&angles, &angles], 3).unwrap();
        let (cos, sin) = (angles.cos().unwrap(), angles.sin().unwrap());
        let f = |t: &[Tensor]| ops::rope(&t[0], &cos, &sin);
        let c = |t: &[Tensor]| ops::rope_composed(&t[0], &cos, &sin);
        check(
            &format!("rope, tables for {table_batch}"),
            std::slice::from_ref(&x),
            &f,
            &c,
            1e-6,
        );
    }
}

#[test]
fn swiglu_matches_composed() {
    let (a, b) = (randn(&[2, 7, 40], 70), randn(&[2, 7, 40], 71));
    let f = |t: &[Tensor]| ops::swiglu(&t[0], &t[1]);
    let c = |t: &[Tensor]| t[0].silu()? * &t[1];
    check("swiglu", &[a, b], &f, &c, 1e-5);
    // Large enough for the threaded path.
    let (a, b) = (randn(&[64, 1024], 72), randn(&[64, 1024], 73));
    check("swiglu (threaded)", &[a, b], &f, &c, 1e-5);
}

#[test]
fn linear_layers_agree_in_every_stored_layout() {
    // Narrowing, widening and square layers, with and without a bias, on 3-D inputs whose row
    // count crosses the panel kernel's row blocks; each layout's value and input gradient against
    // candle's product with W.
    for (k, &(inp, out, bias)) in [(40, 24, true), (24, 72, false), (33, 33, true), (520, 9, false)]
        .iter()
        .enumerate()
    {
        let w = randn(&[out, inp], 80 + k as u64);
        let b = bias.then(|| randn(&[out], 90 + k as u64));
        let layer = candle_nn::Linear::new(w.clone(), b.clone());
        let x = randn(&[3, 47, inp], 100 + k as u64);
        let c = |t: &[Tensor]| {
            let y = t[0].broadcast_matmul(&w.t()?)?;
            match &b {
                Some(b) => y.broadcast_add(b),
                None => Ok(y),
            }
        };
        for (name, frozen) in [
            ("chosen", ops::FrozenLinear::new(&layer).unwrap()),
            ("panels", ops::FrozenLinear::with_panels(&layer).unwrap()),
        ] {
            let f = |t: &[Tensor]| ops::linear(&frozen, &t[0]);
            check(
                &format!("linear {inp} -> {out} ({name})"),
                std::slice::from_ref(&x),
                &f,
                &c,
                2e-4,
            );
            // A strided view (a narrowed middle dimension), as a decoder's last positions are.
            let f = |t: &[Tensor]| ops::linear(&frozen, &t[0].narrow(1, 3, 20)?);
            let c = |t: &[Tensor]| c(&[t[0].narrow(1, 3, 20)?]);
            check(
                &format!("linear {inp} -> {out} ({name}, strided)"),
                std::slice::from_ref(&x),
                &f,
                &c,
                2e-4,
            );
        }
    }
    let half = candle_nn::Linear::new(randn(&[4, 4], 1).to_dtype(DType::F16).unwrap(), None);
    assert!(ops::FrozenLinear::with_panels(&half).is_err());
}

#[test]
fn relu_feed_forward_matches_composed_with_and_without_dropout() {
    // Wi widens (W kept), Wo narrows (Wᵀ kept): both stored layouts of the backward's weights.
    let (d, f) = (16, 40);
    let (wi, wo) = (randn(&[f, d], 110), randn(&[d, f], 111));
    let frozen = |w: &Tensor| ops::FrozenLinear::new(&candle_nn::Linear::new(w.clone(), None)).unwrap();
    let (fwi, fwo) = (frozen(&wi), frozen(&wo));
    let x = randn(&[3, 37, d], 112);
    for p in [0.0, 0.3] {
        let f = |t: &[Tensor]| {
            let mut rng = tpv_shared::merge::SplitMix64::new(7);
            ops::relu_ff(&fwi, &fwo, &t[0], Some((p, &mut rng)))
        };
        let c = |t: &[Tensor]| {
            let mut rng = tpv_shared::merge::SplitMix64::new(7);
            let h = t[0].broadcast_matmul(&wi.t()?)?.relu()?;
            ops::dropout(&h, p, &mut rng)?.broadcast_matmul(&wo.t()?)
        };
        check(
            &format!("relu feed-forward, dropout {p}"),
            std::slice::from_ref(&x),
            &f,
            &c,
            1e-4,
        );
    }
    // Without a gradient to compute (evaluation) the composed path runs; same values.
    let y = ops::relu_ff(&fwi, &fwo, &x, None).unwrap();
    let want = x
        .broadcast_matmul(&wi.t().unwrap())
        .unwrap()
        .relu()
        .unwrap()
        .broadcast_matmul(&wo.t().unwrap())
        .unwrap();
    assert!(max_abs_diff(&y, &want) < 1e-4);
}

#[test]
fn swiglu_feed_forward_matches_composed() {
    // Gate and up widen (W kept), down narrows (Wᵀ kept).
    let (d, f) = (16, 40);
    // Scaled so that the gated products stay near 1 (absolute tolerances then mean something).
    let small = |shape: &[usize], seed| (randn(shape, seed) * 0.25).unwrap();
    let (wg, wu, wd) = (small(&[f, d], 120), small(&[f, d], 121), small(&[d, f], 122));
    let frozen = |w: &Tensor| ops::FrozenLinear::new(&candle_nn::Linear::new(w.clone(), None)).unwrap();
    let (g, u, dn) = (frozen(&wg), frozen(&wu), frozen(&wd));
    let x = small(&[2, 29, d], 123);
    let f = |t: &[Tensor]| ops::swiglu_ff(&g, &u, &dn, &t[0]);
    let c = |t: &[Tensor]| {
        let a = t[0].broadcast_matmul(&wg.t()?)?;
        let b = t[0].broadcast_matmul(&wu.t()?)?;
        (a.silu()? * b)?.broadcast_matmul(&wd.t()?)
    };
    check("swiglu feed-forward", std::slice::from_ref(&x), &f, &c, 1e-5);
    let y = ops::swiglu_ff(&g, &u, &dn, &x).unwrap();
    assert!(max_abs_diff(&y, &c(std::slice::from_ref(&x)).unwrap()) < 1e-5);
}

#[test]
fn geglu_feed_forward_matches_composed() {
    // Gemma's block: gelu_tanh(x·Wgᵀ) ⊙ x·Wuᵀ, then down; the fused node against candle ops
    // (`ops::gelu_tanh`, the tanh formula written out), values and gradients.
    let (d, f) = (16, 40);
    let small = |shape: &[usize], seed| (randn(shape, seed) * 0.5).unwrap();
    let (wg, wu, wd) = (small(&[f, d], 130), small(&[f, d], 131), small(&[d, f], 132));
    let frozen = |w: &Tensor| ops::FrozenLinear::new(&candle_nn::Linear::new(w.clone(), None)).unwrap();
    let (g, u, dn) = (frozen(&wg), frozen(&wu), frozen(&wd));
    let x = small(&[2, 29, d], 133);
    let f = |t: &[Tensor]| ops::geglu_ff(&g, &u, &dn, &t[0]);
    let c = |t: &[Tensor]| {
        let a = t[0].broadcast_matmul(&wg.t()?)?;
        let b = t[0].broadcast_matmul(&wu.t()?)?;
        (ops::gelu_tanh(&a)? * b)?.broadcast_matmul(&wd.t()?)
    };
    check("geglu feed-forward", std::slice::from_ref(&x), &f, &c, 1e-5);
    // Without a graph (evaluation), and large enough for the threaded gradient.
    let y = ops::geglu_ff(&g, &u, &dn, &x.detach()).unwrap();
    assert!(max_abs_diff(&y, &c(std::slice::from_ref(&x)).unwrap()) < 1e-5);
    let x = small(&[64, 64, d], 134);
    check("geglu feed-forward (threaded)", std::slice::from_ref(&x), &f, &c, 1e-5);
}

#[test]
fn nll_matches_composed() {
    for (rows, vocab) in [(5, 11), (40, 3000)] {
        let logits = (randn(&[rows, vocab], 80) * 3.0).unwrap();
        let targets: Vec<u32> = (0..rows as u32).map(|i| (i * 7919) % vocab as u32).collect();
        let targets = Tensor::new(targets.as_slice(), &Device::Cpu).unwrap();
        let f = |t: &[Tensor]| ops::nll(&t[0], &targets).map(|(_, rows)| rows);
        let c = |t: &[Tensor]| ops::nll_composed(&t[0], &targets).map(|(_, rows)| rows);
        check(&format!("nll {rows}×{vocab}"), &[logits], &f, &c, 1e-5);
    }
    let bad = Tensor::new(&[0u32, 11], &Device::Cpu).unwrap();
    assert!(
        ops::nll(&randn(&[2, 11], 1), &bad).is_err(),
        "a target out of range is an error"
    );
}

#[test]
fn exp_is_within_3e7_of_the_exact_value_and_saturates_like_f32_exp() {
    // Every 1/4096 over the range where e^x is a normal f32, and then some: relative error against
    // e^x computed in f64.
    let mut worst = (0f64, 0f32);
    let mut x = -87.336_f32;
    while x <= 88.0 {
        let exact = f64::from(x).exp();
        let rel = ((f64::from(fused::exp(x)) - exact) / exact).abs();
        if rel > worst.0 {
            worst = (rel, x);
        }
        x += 1.0 / 4096.0;
    }
    assert!(worst.0 < 3e-7, "relative error {:e} at x = {}", worst.0, worst.1);
    assert_eq!(fused::exp(0.0), 1.0);
    assert_eq!(fused::exp(f32::NEG_INFINITY), 0.0);
    assert_eq!(fused::exp(-100.0), 0.0);
    assert_eq!(fused::exp(f32::INFINITY), f32::INFINITY);
    assert_eq!(fused::exp(89.0), f32::INFINITY);
    assert!(fused::exp(f32::NAN).is_nan());
    // Softmax rows with -inf (masked) entries give them exactly 0.
    let x = Tensor::new(
        &[[[[0.5f32, f32::NEG_INFINITY, -1.0, f32::NEG_INFINITY]]]],
        &Device::Cpu,
    )
    .unwrap();
    let y: Vec<f32> = fused::softmax(&x, 1.0, None)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!((y[1], y[3]), (0.0, 0.0));
    assert!((y[0] + y[2] - 1.0).abs() < 1e-7 && (y[0] / y[2] - 1.5f32.exp()).abs() < 1e-5);
}

/// The multipliers of drawing one value per element in order, as dropout did before its draws
/// were made in parallel: 0 where the draw is below p, else 1/(1 − p).
fn sequential_multipliers(rng: &mut tpv_shared::merge::SplitMix64, p: f32, n: usize) -> Vec<f32> {
    let scale = 1.0 / (1.0 - p);
    (0..n)
        .map(|_| if rng.next_f64() < f64::from(p) { 0.0 } else { scale })
        .collect()
}

#[test]
fn dropout_multipliers_are_the_draws_made_one_by_one() {
    use tpv_shared::merge::SplitMix64;
    // Lengths below and above the parallel threshold, and across chunks of different sizes.
    for (seed, p, n) in [
        (7u64, 0.1f32, 100_003usize),
        (u64::MAX - 3, 0.5, 1_000),
        (42, 1e-4, 40_000),
    ] {
        let mut seq = SplitMix64::new(seed);
        let want = sequential_multipliers(&mut seq, p, n);
        assert_eq!(
            fused::dropout_multipliers(seed, p, n),
            want,
            "seed {seed}, p {p}, n {n}"
        );
        let like = Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap();
        let mask = fused::dropout_mask(&like, &(n / 10, 10).into(), seed, p).unwrap();
        assert_eq!(mask.dims(), &[n / 10, 10]);
        assert_eq!(
            mask.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            want[..n / 10 * 10]
        );
        // Skipping n draws leaves the generator where drawing them does.
        let mut skipped = SplitMix64::new(seed);
        skipped.skip(n as u64);
        assert_eq!(skipped.state(), seq.state());
        assert_eq!(skipped.next_u64(), seq.next_u64());
    }
}

#[test]
fn dropout_draws_one_value_per_element_in_order_and_moves_the_generator_past_them() {
    use tpv_shared::merge::SplitMix64;
    let x = randn(&[6, 7000], 3);
    let (mut rng, mut seq) = (SplitMix64::new(11), SplitMix64::new(11));
    let first = ops::dropout(&x, 0.25, &mut rng).unwrap();
    let second = ops::dropout(&x, 0.25, &mut rng).unwrap();
    for y in [first, second] {
        let m = Tensor::from_vec(sequential_multipliers(&mut seq, 0.25, 42_000), (6, 7000), &Device::Cpu).unwrap();
        assert_eq!(max_abs_diff(&y, &(&x * m).unwrap()), 0.0);
    }
    assert_eq!(rng.state(), seq.state());
}
