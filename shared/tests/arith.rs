//! Arithmetic, merges and similarity against reference numbers.
//!
//! Expected values come from `tests/reference/merges.py` (peft 0.21.2 `merge_utils` on float32
//! torch tensors, numpy in float64), whose core is:
//!
//! ```python
//! A = np.array([[0.5, -1.25, -0.625], [2.0, -0.125, 0.75]], dtype=np.float32)
//! B = np.array([[-0.25, 1.5, 0.5], [1.0, 0.375, -2.0]], dtype=np.float32)
//! C = np.array([[0.125, -0.5, -1.0], [-1.5, 0.25, 0.625]], dtype=np.float32)
//! D = np.array([[0.3, 0.1, -0.2], [0.7, -0.9, 0.05]], dtype=np.float32)
//! O = np.array([[0.1, 0.2, -0.3], [0.4, -0.5, 0.6]], dtype=np.float32)
//! W = [1.0, 0.5, 2.0]
//! tensors, w = [t(A), t(B), t(C)], torch.tensor(W)
//! SUM = mu.task_arithmetic(tensors, w)
//! MAGNITUDE_05 = mu.magnitude_prune(tensors, w, density=0.5)
//! TIES_05_MASS = mu.ties(tensors, w, density=0.5, majority_sign_method="total")
//! TIES_05_COUNT = mu.ties(tensors, w, density=0.5, majority_sign_method="frequency")
//! # DARE: peft's formula (x * mask / density) with the mask from tpv's SplitMix64(seed=7), keep if u >= 0.4
//! COMBINE_L05 = O + 0.5 * (1*A + 0.5*B + 2*C)
//! COSINE_MEAN[i][j] = cos(X_i.mean(0), X_j.mean(0)); COSINE_FLAT on the flattened arrays
//! ACROSS_ORIGINS: t1 = (A@o1, B@o2), t2 = (C@o1, D@o2), mean of the origin-pair cosines,
//!                 identical pairs omitted
//! ```

// Helpers outside #[test] functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/similarity_bits.rs"]
mod similarity_bits;

use tpv_shared::arith::{self, combine, linear_combination};
use tpv_shared::merge::{SplitMix64, magnitude_prune, merge};
use tpv_shared::similarity::{Labelled, Measure, across_origins, matrix, similarity};
use tpv_shared::{Error, MergeMethod, ModelRef, OriginRef, PromptKind, PromptTensor, SignElection, SoftPrompt};

const A: [f32; 6] = [0.5, -1.25, -0.625, 2.0, -0.125, 0.75];
const B: [f32; 6] = [-0.25, 1.5, 0.5, 1.0, 0.375, -2.0];
const C: [f32; 6] = [0.125, -0.5, -1.0, -1.5, 0.25, 0.625];
const D: [f32; 6] = [0.3, 0.1, -0.2, 0.7, -0.9, 0.05];
const O: [f32; 6] = [0.1, 0.2, -0.3, 0.4, -0.5, 0.6];
const W: [f64; 3] = [1.0, 0.5, 2.0];

// ---- pasted output of tests/reference/merges.py ----
#[rustfmt::skip]
mod reference {
pub const SUM: &[f64] = &[0.625, -1.5, -2.375, -0.5, 0.5625, 1.0];
pub const MEAN: &[f64] = &[0.20833333333333331, -0.5, -0.7916666666666666, -0.16666666666666666, 0.1875, 0.3333333333333333];
pub const MAGNITUDE_05: &[f64] = &[0.0, -0.5, -2.0, -0.5, 0.0, 1.0];
pub const TIES_05_MASS: &[f64] = &[0.0, 0.75, -2.0, 1.25, 0.0, -1.0];
pub const TIES_05_COUNT: &[f64] = &[0.0, 0.75, -2.0, 1.25, 0.0, 1.0];
pub const TIES_1_MASS: &[f64] = &[0.375, -1.125, -1.3125, 1.25, 0.34375, -1.0];
pub const DARE_04_SEED7: &[f64] = &[0.2083333283662796, -1.6666666269302368, -4.375, -0.8333334922790527, 0.625, -1.6666666269302368];
pub const DARE_TIES_04_SEED7: &[f64] = &[-0.2083333283662796, -1.6666666269302368, -2.1875, 2.0833332538604736, 0.8333333134651184, -1.6666666269302368];
pub const COMBINE_L05: &[f64] = &[0.4125000014901161, -0.5499999970197678, -1.487500011920929, 0.15000000596046448, -0.21875, 1.100000023841858];
pub const COSINE_MEAN: &[f64] = &[1.0, -0.12396871300865962, -0.7599909255356617, 0.9725424114813948, -0.12396871300865962, 0.9999999999999999, -0.2575558030954186, -0.16186050095028182, -0.7599909255356617, -0.2575558030954186, 1.0, -0.5996389329060793, 0.9725424114813948, -0.16186050095028182, -0.5996389329060793, 0.9999999999999999];
pub const COSINE_FLAT: &[f64] = &[0.9999999999999999, -0.2572637743847324, -0.24095073972009465, 0.5435457886016046, -0.2572637743847324, 0.9999999999999999, -0.7121315431501998, 0.07124792584929802, -0.24095073972009465, -0.7121315431501998, 0.9999999999999999, -0.44145042153771563, 0.5435457886016046, 0.07124792584929802, -0.44145042153771563, 1.0];
pub const MEAN_ABS_DIFF: &[f64] = &[0.0, 1.4791666666666667, 0.9166666666666666, 0.7916666623204947, 1.4791666666666667, 0.0, 1.5208333333333333, 1.0458333337058623, 0.9166666666666666, 1.5208333333333333, 0.0, 0.9166666623204947, 0.7916666623204947, 1.0458333337058623, 0.9166666623204947, 0.0];
pub const NORM_DIFF: &[f64] = &[0.0, 0.17136708189685734, 0.611911150686304, 1.403042138238255, 0.17136708189685734, 0.0, 0.7832782325831613, 1.5744092201351123, 0.611911150686304, 0.7832782325831613, 0.0, 0.791130987551951, 1.403042138238255, 1.5744092201351123, 0.791130987551951, 0.0];
pub const ACROSS_ORIGINS: &[f64] = &[-0.12396871300865962, -0.05171620452499184, -0.051716204524991816, -0.5996389329060793];
}
use reference::*;

fn t(x: [f32; 6]) -> PromptTensor {
    PromptTensor::new(2, 3, x.to_vec()).unwrap()
}

#[track_caller]
fn assert_close(got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len());
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!((f64::from(g) - w).abs() <= tol, "element {i}: got {g}, want {w}");
    }
}

fn model() -> Option<ModelRef> {
    Some(ModelRef {
        id: "tiny".into(),
        revision: None,
    })
}

fn origin(values: [f32; 6], id: &str) -> SoftPrompt {
    let mut o = SoftPrompt::origin(
        t(values),
        OriginRef {
            id: id.into(),
            seed: Some(1024),
            index: Some(0),
            sampling: None,
        },
    );
    o.meta.model = model();
    o
}

/// A task prompt θ = θ₀ + τ whose vector is `tau` exactly (τ values are exact in binary).
fn task_prompt(task: &str, tau: [f32; 6], origin_values: [f32; 6], origin_id: &str) -> SoftPrompt {
    let theta: Vec<f32> = tau.iter().zip(origin_values).map(|(a, o)| a + o).collect();
    let mut p = SoftPrompt::new(
        PromptKind::TaskPrompt,
        PromptTensor::new(2, 3, theta).unwrap(),
        Some(t(origin_values)),
    )
    .unwrap();
    p.meta.tasks = vec![task.into()];
    p.meta.model = model();
    p.meta.origin = Some(OriginRef {
        id: origin_id.into(),
        seed: None,
        index: None,
        sampling: None,
    });
    p
}

fn vector(task: &str, tau: [f32; 6]) -> SoftPrompt {
    let mut p = SoftPrompt::new(PromptKind::TaskPromptVector, t(tau), None).unwrap();
    p.meta.tasks = vec![task.into()];
    p.meta.model = model();
    p
}

fn merge_abc(method: MergeMethod) -> Vec<f32> {
    let (a, b, c) = (t(A), t(B), t(C));
    merge(&[&a, &b, &c], &W, &method).unwrap().into_vec()
}

#[test]
fn merges_match_peft() {
    assert_close(&merge_abc(MergeMethod::Sum), SUM, 1e-6);
    assert_close(&merge_abc(MergeMethod::Mean), MEAN, 1e-6);
    assert_close(&merge_abc(MergeMethod::Magnitude { density: 0.5 }), MAGNITUDE_05, 1e-6);
    assert_close(
        &merge_abc(MergeMethod::Ties {
            density: 0.5,
            sign: SignElection::Mass,
        }),
        TIES_05_MASS,
        1e-6,
    );
    assert_close(
        &merge_abc(MergeMethod::Ties {
            density: 0.5,
            sign: SignElection::Count,
        }),
        TIES_05_COUNT,
        1e-6,
    );
    assert_close(
        &merge_abc(MergeMethod::Ties {
            density: 1.0,
            sign: SignElection::Mass,
        }),
        TIES_1_MASS,
        1e-6,
    );
    assert_close(
        &merge_abc(MergeMethod::Dare { drop: 0.4, seed: 7 }),
        DARE_04_SEED7,
        1e-6,
    );
    assert_close(
        &merge_abc(MergeMethod::DareTies {
            drop: 0.4,
            seed: 7,
            sign: SignElection::Mass,
        }),
        DARE_TIES_04_SEED7,
        1e-6,
    );
}

#[test]
fn dare_is_seeded_and_unbiased() {
    let a = t(A);
    let once = merge(&[&a], &[1.0], &MergeMethod::Dare { drop: 0.5, seed: 3 }).unwrap();
    let again = merge(&[&a], &[1.0], &MergeMethod::Dare { drop: 0.5, seed: 3 }).unwrap();
    assert_eq!(once, again);
    // Each kept value is x / (1 − p); each dropped one is 0.
    for (&m, &x) in once.as_slice().iter().zip(&A) {
        assert!(m == 0.0 || (m - 2.0 * x).abs() < 1e-7, "{m} vs {x}");
    }
    // The rescale keeps the expectation: the mean over many seeds approaches τ.
    let n = 4000;
    let mut acc = [0.0f64; 6];
    for seed in 0..n {
        let m = merge(&[&a], &[1.0], &MergeMethod::Dare { drop: 0.3, seed }).unwrap();
        for (s, &v) in acc.iter_mut().zip(m.as_slice()) {
            *s += f64::from(v) / f64::from(n as u32);
        }
    }
    for (s, &x) in acc.iter().zip(&A) {
        assert!(
            (s - f64::from(x)).abs() < 0.08 * f64::from(x.abs()).max(0.5),
            "{s} vs {x}"
        );
    }
    // drop = 0 keeps everything.
    let all = merge(&[&a], &[1.0], &MergeMethod::Dare { drop: 0.0, seed: 1 }).unwrap();
    assert_eq!(all.as_slice(), &A);
}

#[test]
fn splitmix64_matches_reference_sequence() {
    // First outputs for seed 1234567 from the reference C code (Vigna, splitmix64.c).
    let mut rng = SplitMix64::new(1_234_567);
    assert_eq!(rng.next_u64(), 6_457_827_717_110_365_317);
    assert_eq!(rng.next_u64(), 3_203_168_211_198_807_973);
    assert_eq!(rng.next_u64(), 9_817_491_932_198_370_423);
}

#[test]
fn magnitude_prune_keeps_floor_of_density() {
    let v = [3.0, -1.0, 2.0, -4.0, 0.5];
    assert_eq!(magnitude_prune(&v, 0.5), vec![3.0, 0.0, 0.0, -4.0, 0.0]); // floor(2.5) = 2
    assert_eq!(magnitude_prune(&v, 0.0), vec![0.0; 5]);
    assert_eq!(magnitude_prune(&v, 1.0), v.to_vec());
    // Equal magnitudes: the earlier element is kept.
    assert_eq!(magnitude_prune(&[1.0, -1.0, 1.0], 0.34), vec![1.0, 0.0, 0.0]);
}

#[test]
fn merge_parameters_are_checked() {
    let a = t(A);
    let bad = |m: MergeMethod| matches!(merge(&[&a], &[1.0], &m), Err(Error::InvalidParameter { .. }));
    assert!(bad(MergeMethod::Ties {
        density: 1.5,
        sign: SignElection::Mass
    }));
    assert!(bad(MergeMethod::Magnitude { density: -0.1 }));
    assert!(bad(MergeMethod::Dare { drop: 1.0, seed: 0 }));
    assert!(bad(MergeMethod::DareTies {
        drop: f64::NAN,
        seed: 0,
        sign: SignElection::Count
    }));
    assert!(matches!(merge(&[], &[], &MergeMethod::Sum), Err(Error::NoOperands)));
    assert!(matches!(
        merge(&[&a], &[1.0, 2.0], &MergeMethod::Sum),
        Err(Error::WeightCount { .. })
    ));
    let wide = PromptTensor::zeros(2, 4);
    assert!(matches!(
        merge(&[&a, &wide], &[1.0, 1.0], &MergeMethod::Sum),
        Err(Error::ShapeMismatch { .. })
    ));
}

#[test]
fn combine_applies_weighted_vectors_to_the_origin() {
    let o = origin(O, "o1");
    let (a, b, c) = (
        task_prompt("a", A, O, "o1"),
        vector("b", B),
        task_prompt("c", C, O, "o1"),
    );
    let out = combine(&o, &[&a, &b, &c], &W, 0.5, &MergeMethod::Sum).unwrap();
    assert_close(out.values.as_slice(), COMBINE_L05, 1e-6);
    assert_eq!(out.kind(), PromptKind::Combination);
    assert_eq!(out.origin.as_ref(), Some(&t(O)));
    assert_eq!(out.meta.tasks, ["a", "b", "c"]);
    assert_eq!(
        out.meta.expression.as_deref(),
        Some("o1 + 0.5*sum(tau[a@o1], 0.5*tau[b], 2*tau[c@o1])")
    );
    assert_eq!(out.meta.operands.len(), 4);
    assert!(!out.meta.mixed_origins);
    // The combination's own vector is λ·Σwτ.
    let tau = out.vector_values().unwrap();
    let want: Vec<f64> = SUM.iter().map(|x| 0.5 * x).collect();
    assert_close(tau.as_slice(), &want, 1e-6);
}

#[test]
fn lambda_zero_gives_the_origin_and_one_vector_gives_its_prompt() {
    let o = origin(O, "o1");
    let a = task_prompt("a", A, O, "o1");
    let zero = combine(&o, &[&a], &[], 0.0, &MergeMethod::Sum).unwrap();
    assert_eq!(zero.values, t(O));
    let one = combine(&o, &[&a], &[], 1.0, &MergeMethod::Sum).unwrap();
    assert_eq!(one.values, a.values);
}

#[test]
fn cross_origin_is_allowed_and_recorded() {
    let o2 = origin(D, "o2");
    let a = task_prompt("a", A, O, "o1");
    let out = combine(&o2, &[&a], &[], 1.0, &MergeMethod::Sum).unwrap();
    assert!(out.meta.mixed_origins);
    let want: Vec<f64> = D.iter().zip(A).map(|(&d, a)| f64::from(d) + f64::from(a)).collect();
    assert_close(out.values.as_slice(), &want, 1e-6);
    // Vectors from two different origins, merged without an origin, are also flagged.
    let b = task_prompt("b", B, D, "o2");
    let merged = arith::merge_vectors(&[&a, &b], &[], 1.0, &MergeMethod::Sum).unwrap();
    assert!(merged.meta.mixed_origins);
    assert!(merged.meta.origin.is_none());
}

#[test]
fn nonsense_is_refused_with_typed_errors() {
    let o = origin(O, "o1");
    let a = task_prompt("a", A, O, "o1");
    // An origin is not a vector.
    assert!(matches!(
        combine(&o, &[&o], &[], 1.0, &MergeMethod::Sum),
        Err(Error::NotAVector { .. })
    ));
    // A task prompt without a stored origin has no vector.
    let mut orphan = a.clone();
    orphan.origin = None;
    assert!(matches!(orphan.vector_values(), Err(Error::NoOrigin { .. })));
    // Different base models.
    let mut other = vector("b", B);
    other.meta.model = Some(ModelRef {
        id: "other".into(),
        revision: None,
    });
    assert!(matches!(
        combine(&o, &[&a, &other], &[], 1.0, &MergeMethod::Sum),
        Err(Error::ModelMismatch { .. })
    ));
    // Different shapes.
    let mut wide = SoftPrompt::new(PromptKind::TaskPromptVector, PromptTensor::zeros(2, 4), None).unwrap();
    wide.meta.model = model();
    assert!(matches!(
        combine(&o, &[&wide], &[], 1.0, &MergeMethod::Sum),
        Err(Error::ShapeMismatch { .. })
    ));
    // θ_A + θ_B is not a prompt.
    assert!(matches!(arith::add(&a, &a), Err(Error::InvalidParameter { .. })));
    assert!(matches!(arith::scale(&o, 2.0), Err(Error::InvalidParameter { .. })));
    // Weights must match the vectors.
    assert!(matches!(
        combine(&o, &[&a], &[1.0, 2.0], 1.0, &MergeMethod::Sum),
        Err(Error::WeightCount { .. })
    ));
}

#[test]
fn prompt_algebra_kinds() {
    let o = origin(O, "o1");
    let a = task_prompt("a", A, O, "o1");
    let b = vector("b", B);
    // θ − θ₀ is the task prompt vector.
    let tau = arith::sub(&a, &o).unwrap();
    assert_eq!(tau.kind(), PromptKind::TaskPromptVector);
    assert_close(tau.values.as_slice(), &A.map(f64::from), 1e-6);
    // θ₀ + τ is a prompt keeping the origin.
    let p = arith::add(&o, &b).unwrap();
    assert_eq!(p.kind(), PromptKind::Combination);
    assert_eq!(p.origin.as_ref(), Some(&t(O)));
    // The mean of prompts from one origin is a prompt; of vectors, a vector.
    assert_eq!(arith::mean(&[&a, &a]).unwrap().kind(), PromptKind::Combination);
    assert_eq!(arith::mean(&[&b, &b]).unwrap().kind(), PromptKind::TaskPromptVector);
    assert_eq!(arith::neg(&b).unwrap().values, t(B.map(|x| -x)));
    let expr = linear_combination(&[(1.0, &a), (-1.0, &o), (0.5, &b)]).unwrap();
    assert_eq!(expr.meta.expression.as_deref(), Some("a@o1 - o1 + 0.5*tau[b]"));
}

#[test]
fn similarity_matches_numpy() {
    let items = [t(A), t(B), t(C), t(D)];
    let refs: Vec<&PromptTensor> = items.iter().collect();
    for (measure, want) in [
        (Measure::CosineMean, COSINE_MEAN),
        (Measure::CosineFlat, COSINE_FLAT),
        (Measure::MeanAbsDiff, MEAN_ABS_DIFF),
        (Measure::NormDiff, NORM_DIFF),
    ] {
        let m = matrix(&refs, measure).unwrap();
        let got: Vec<f64> = m.into_iter().flatten().collect();
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() <= 1e-6, "{measure:?} cell {i}: got {g}, want {w}");
        }
        assert_eq!(similarity(&items[0], &items[1], measure).unwrap(), want[1]);
    }
}

#[test]
fn cosine_of_zero_is_zero() {
    let z = PromptTensor::zeros(2, 3);
    assert_eq!(similarity(&z, &t(A), Measure::CosineFlat).unwrap(), 0.0);
    assert_eq!(similarity(&z, &t(A), Measure::CosineMean).unwrap(), 0.0);
}

#[test]
fn across_origins_matches_numpy() {
    let (a, b, c, d) = (t(A), t(B), t(C), t(D));
    let item = |task: &str, origin: &str, values| Labelled {
        task: task.into(),
        origin: origin.into(),
        values,
    };
    let items = [
        item("t1", "o1", &a),
        item("t1", "o2", &b),
        item("t2", "o1", &c),
        item("t2", "o2", &d),
    ];
    let view = across_origins(&items, Measure::CosineMean).unwrap();
    assert_eq!(view.tasks, ["t1", "t2"]);
    assert_eq!(view.origins, ["o1", "o2"]);
    let got: Vec<f64> = view.matrix.iter().flatten().map(|x| x.unwrap()).collect();
    for (g, w) in got.iter().zip(ACROSS_ORIGINS) {
        assert!((g - w).abs() <= 1e-6, "got {g}, want {w}");
    }
    // Identical pairs are omitted; pairs of different tasks keep the same-origin cells.
    assert_eq!(view.pairs[0][0][0][0], None);
    assert!(view.pairs[0][0][0][1].is_some());
    assert!(view.pairs[0][1][0][0].is_some());
    // A (task, origin) given twice is refused.
    let twice = [item("t1", "o1", &a), item("t1", "o1", &b)];
    assert!(across_origins(&twice, Measure::CosineMean).is_err());
}

#[test]
fn a_matrix_gives_each_pair_the_bits_of_its_own_similarity() {
    similarity_bits::assert_matrix_bits_equal_pairs();
}

#[test]
fn a_task_prompt_as_base_adds_its_own_vector() {
    // θ_A + τ_B = θ₀ + τ_A + τ_B when both come from θ₀.
    let o = origin(O, "o1");
    let (a, b) = (task_prompt("a", A, O, "o1"), task_prompt("b", B, O, "o1"));
    let from_a = combine(&a, &[&b], &[], 1.0, &MergeMethod::Sum).unwrap();
    let from_o = combine(&o, &[&a, &b], &[], 1.0, &MergeMethod::Sum).unwrap();
    assert_close(
        from_a.values.as_slice(),
        &from_o
            .values
            .as_slice()
            .iter()
            .map(|&x| f64::from(x))
            .collect::<Vec<_>>(),
        1e-6,
    );
    assert_eq!(from_a.origin.as_ref(), Some(&t(O)));
    // A vector is not a base.
    assert!(matches!(
        combine(&vector("b", B), &[&a], &[], 1.0, &MergeMethod::Sum),
        Err(Error::VectorIsNotAPrompt { .. })
    ));
}
