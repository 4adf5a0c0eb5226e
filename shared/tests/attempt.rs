//! ATTEMPT's mixing (`tpv_shared::attempt`) against the torch reference of the replication the
//! paper ran, and ATTEMPT run files (version 2, refused by arithmetic).
#![allow(
    clippy::disallowed_methods,
    reason = "native code: tests read the committed fixtures (the library does not)"
)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use candle_core::{Device, Tensor, Var};
use tpv_shared::attempt::{self, Module, Parts};
use tpv_shared::{Error, PromptKind, PromptTensor, SoftPrompt, arith, runfile};

// Printed by tests/reference/attempt_mixing.py (torch 2.15.0, float64), whose computation is:
//
//     pooled = torch.stack([t.max(0).values for t in tokens])           # each example's own tokens
//     x = torch.nn.functional.silu(pooled @ w_down) @ w_up
//     x = torch.nn.functional.layer_norm(x, (D,), ln_w, ln_b, eps=1e-5)
//     stacked = torch.cat([sources, target.unsqueeze(0)], 0)             # [K+1, R, D]
//     keys = stacked.max(1).values
//     attention = torch.softmax(x @ keys.T / T, -1)
//     mixed = torch.einsum("bp,pld->bld", attention, stacked) + target.unsqueeze(0)
//     (C * mixed).sum().backward()
const ATTENTION: [f64; 6] = [
    9.996856170e-02,
    1.301273386e-01,
    7.699040997e-01,
    4.909739396e-01,
    4.079294206e-01,
    1.010966398e-01,
];
const MIXED: [f64; 24] = [
    1.692032836e+00,
    1.452910316e+00,
    9.015494251e-01,
    1.877049937e-01,
    -4.490087762e-01,
    -8.621967293e-01,
    -1.094063534e+00,
    -1.298907061e+00,
    -1.568432173e+00,
    -1.822422822e+00,
    -1.867522522e+00,
    -1.571417921e+00,
    1.550842030e+00,
    1.617680641e+00,
    8.340109533e-01,
    -3.018642859e-01,
    -1.004859390e+00,
    -9.017534038e-01,
    -3.499316662e-01,
    -8.535098382e-02,
    -5.254828869e-01,
    -1.369929921e+00,
    -1.867296642e+00,
    -1.503787266e+00,
];
const GRAD_TARGET: [f64; 12] = [
    -8.806660130e-01,
    9.814213930e-02,
    2.035670873e+00,
    3.548396421e+00,
    1.212720255e+00,
    1.191105327e+00,
    1.122004788e+00,
    1.008173459e+00,
    8.541494361e-01,
    6.660731703e-01,
    4.514426691e-01,
    2.188145732e-01,
];
const GRAD_W_DOWN: [f64; 12] = [
    1.866768367e+00,
    -1.667575565e-01,
    -1.671106472e+00,
    3.178739543e+00,
    2.542998443e-01,
    -3.843351215e+00,
    2.248267203e+00,
    8.106244672e-01,
    -3.887605663e+00,
    1.045329389e+00,
    -1.301540779e-01,
    -8.675932740e-01,
];
const GRAD_W_UP: [f64; 12] = [
    -3.953473474e-01,
    4.431648684e-01,
    -1.743823733e+00,
    1.696006212e+00,
    -2.642906465e-01,
    -1.898009459e-01,
    -1.253897750e-01,
    5.794813675e-01,
    -1.480846845e-02,
    -5.751122683e-01,
    1.201185032e+00,
    -6.112642954e-01,
];
const GRAD_LN_WEIGHT: [f64; 4] = [-6.892165112e-02, 2.184468514e-01, -1.535137146e-01, -1.422722395e+00];
const GRAD_LN_BIAS: [f64; 4] = [-2.060351807e-02, 1.379108842e-01, 1.054335901e-01, 4.092485455e-01];

const K: usize = 2;
const R: usize = 3;
const D: usize = 4;
const T: f64 = 0.7;

fn filled(n: usize, f: impl Fn(f64) -> f64) -> Vec<f32> {
    (0..n).map(|i| f(i as f64) as f32).collect()
}

fn close(name: &str, got: &Tensor, want: &[f64], tol: f64) {
    let got: Vec<f32> = got.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(got.len(), want.len(), "{name}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (f64::from(*g) - w).abs() <= tol * (1.0 + w.abs()),
            "{name}[{i}]: {g} vs {w}"
        );
    }
}

#[test]
fn mixing_and_its_gradient_equal_the_torch_reference() {
    let dev = Device::Cpu;
    let var = |v: Vec<f32>, shape: &[usize]| Var::from_tensor(&Tensor::from_vec(v, shape, &dev).unwrap()).unwrap();
    let target = var(filled(R * D, |i| (0.5 + 0.3 * i).cos()), &[R, D]);
    let w_down = var(filled(D * R, |i| 0.3 * (2.0 + 0.7 * i).sin()), &[D, R]);
    let w_up = var(filled(R * D, |i| 0.4 * (1.0 + 0.9 * i).cos()), &[R, D]);
    let ln_w = var(filled(D, |i| 1.0 + 0.1 * i), &[D]);
    let ln_b = var(filled(D, |i| 0.05 * i - 0.1), &[D]);
    let sources = Tensor::from_vec(filled(K * R * D, |i| (1.0 + i).sin()), (K, R, D), &dev).unwrap();
    let tokens = [
        Tensor::from_vec(filled(3 * D, |i| (3.0 + 1.3 * i).sin()), (3, D), &dev).unwrap(),
        Tensor::from_vec(filled(2 * D, |i| (2.0 + 0.8 * i).cos()), (2, D), &dev).unwrap(),
    ];
    let pooled = Tensor::stack(&[tokens[0].max(0).unwrap(), tokens[1].max(0).unwrap()], 0).unwrap();
    let c = Tensor::from_vec(filled(2 * R * D, |i| (0.2 * i + 0.1).sin()), (2, R, D), &dev).unwrap();
    let parts = Parts {
        target: target.as_tensor().clone(),
        w_down: w_down.as_tensor().clone(),
        w_up: w_up.as_tensor().clone(),
        ln_weight: ln_w.as_tensor().clone(),
        ln_bias: ln_b.as_tensor().clone(),
    };
    let (mixed, attention) = attempt::mix(&parts, &sources, &pooled, T).unwrap();
    close("attention", &attention, &ATTENTION, 1e-5);
    close("mixed", &mixed, &MIXED, 1e-5);
    let grads = (mixed * c).unwrap().sum_all().unwrap().backward().unwrap();
    for (name, v, want) in [
        ("target", &target, &GRAD_TARGET[..]),
        ("w_down", &w_down, &GRAD_W_DOWN[..]),
        ("w_up", &w_up, &GRAD_W_UP[..]),
        ("ln_weight", &ln_w, &GRAD_LN_WEIGHT[..]),
        ("ln_bias", &ln_b, &GRAD_LN_BIAS[..]),
    ] {
        close(name, grads.get(v).unwrap(), want, 1e-4);
    }
}

fn attempt_run() -> SoftPrompt {
    let t = |seed: f64| PromptTensor::new(R, D, filled(R * D, |i| (seed + i).sin())).unwrap();
    let (a, b, target, origin) = (t(1.0), t(2.0), t(3.0), t(4.0));
    let module = Module::init(&[&a, &b], vec!["a@origin0".into(), "b@origin0".into()], 3).unwrap();
    let mut p = SoftPrompt::new(PromptKind::Attempt, target, Some(origin)).unwrap();
    p.meta.tasks = vec!["c".into()];
    p.attempt = Some(Box::new(module));
    p
}

#[test]
fn attempt_runs_round_trip_as_version_2_and_stay_out_of_arithmetic() {
    let p = attempt_run();
    let bytes = runfile::write_run(&p).unwrap();
    let back = runfile::read_run(&bytes).unwrap();
    assert_eq!(back, p);
    let version = |b: &[u8]| {
        let st = safetensors::SafeTensors::read_metadata(b).unwrap().1;
        st.metadata().as_ref().unwrap()["format_version"].clone()
    };
    assert_eq!(version(&bytes), "2");
    // Every other run stays version 1, which older readers open.
    let mut plain = p.clone();
    plain.meta.kind = PromptKind::TaskPrompt;
    plain.attempt = None;
    assert_eq!(version(&runfile::write_run(&plain).unwrap()), "1");

    // An ATTEMPT run is not a prompt for arithmetic, a vector, or without its module.
    let origin = SoftPrompt::new(PromptKind::Origin, p.origin.clone().unwrap(), None).unwrap();
    for err in [
        arith::combine(&origin, &[&p], &[], 1.0, &tpv_shared::MergeMethod::Sum).unwrap_err(),
        arith::combine(&p, &[&plain], &[], 1.0, &tpv_shared::MergeMethod::Sum).unwrap_err(),
        arith::add(&plain, &p).unwrap_err(),
        p.to_vector().unwrap_err(),
    ] {
        assert!(matches!(err, Error::AttemptRun { .. }), "{err}");
        assert!(err.to_string().contains("tpv eval"), "{err}");
    }
    let mut bare = p.clone();
    bare.attempt = None;
    assert!(runfile::write_run(&bare).is_err());
    let mut odd = plain.clone();
    odd.attempt = p.attempt.clone();
    assert!(runfile::write_run(&odd).is_err());
}

#[test]
fn damaged_attempt_modules_are_refused() {
    let p = attempt_run();
    let module = p.attempt.as_deref().unwrap();
    // A module whose sources have another row count than the target prompt.
    let mut short = p.clone();
    short.attempt = Some(Box::new(Module {
        sources: PromptTensor::new(2 * R - 1, D, vec![0.0; (2 * R - 1) * D]).unwrap(),
        ..module.clone()
    }));
    assert!(matches!(runfile::write_run(&short), Err(Error::WrongShape { .. })));
    let mut cold = p.clone();
    cold.attempt = Some(Box::new(Module {
        temperature: 0.0,
        ..module.clone()
    }));
    assert!(runfile::write_run(&cold).is_err());
}

fn fixture(rel: &str) -> Vec<u8> {
    std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/runs")
            .join(rel),
    )
    .unwrap()
}

/// The committed v2 sample (shared/examples/make_attempt_sample.rs) keeps opening: its sources are
/// the v1 samples it was made from, and it reads back as written.
#[test]
fn the_committed_v2_attempt_sample_reads() {
    let bytes = fixture("v2/attempt-origin0.safetensors");
    let p = runfile::read_run(&bytes).unwrap();
    assert_eq!(p.kind(), PromptKind::Attempt);
    let m = p.attempt.as_deref().unwrap();
    assert_eq!(m.source_labels, ["sst2@origin0", "mnli@origin0"]);
    let sst2 = runfile::read_run(&fixture("v1/sst2-origin0.safetensors")).unwrap();
    let mnli = runfile::read_run(&fixture("v1/mnli-origin0.safetensors")).unwrap();
    assert_eq!(
        m.sources.as_slice(),
        [sst2.values.as_slice(), mnli.values.as_slice()].concat()
    );
    assert_eq!(runfile::read_run(&runfile::write_run(&p).unwrap()).unwrap(), p);
    let doc = tpv_shared::Document::read(&bytes, None).unwrap().summary();
    assert_eq!(doc.format, "tpv-run v2");
    assert_eq!(doc.attempt.unwrap().sources, m.source_labels);
}
