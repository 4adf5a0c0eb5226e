//! Property tests of the algebra and of the run-file round trip.

// Helpers outside #[test] functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use tpv_shared::arith::{self, combine, linear_combination};
use tpv_shared::similarity::{Measure, similarity};
use tpv_shared::{MergeMethod, Named, OriginRef, PromptKind, PromptTensor, SignElection, SoftPrompt, runfile};

const ROWS: usize = 3;
const DIM: usize = 5;

fn tensor() -> impl Strategy<Value = PromptTensor> {
    prop::collection::vec(-10.0f32..10.0, ROWS * DIM).prop_map(|v| PromptTensor::new(ROWS, DIM, v).unwrap())
}

fn vector(values: PromptTensor) -> SoftPrompt {
    SoftPrompt::new(PromptKind::TaskPromptVector, values, None).unwrap()
}

fn origin(values: PromptTensor) -> SoftPrompt {
    SoftPrompt::origin(
        values,
        OriginRef {
            id: "o".into(),
            seed: None,
            index: None,
            sampling: None,
        },
    )
}

fn close(a: &PromptTensor, b: &PromptTensor, tol: f32) -> bool {
    a.as_slice()
        .iter()
        .zip(b.as_slice())
        .all(|(x, y)| (x - y).abs() <= tol * (1.0 + x.abs().max(y.abs())))
}

proptest! {
    #[test]
    fn add_then_sub_is_identity(a in tensor(), b in tensor()) {
        let (va, vb) = (vector(a.clone()), vector(b));
        let back = arith::sub(&arith::add(&va, &vb).unwrap(), &vb).unwrap();
        prop_assert!(close(&back.values, &a, 1e-6));
    }

    #[test]
    fn mean_of_one_is_itself(a in tensor()) {
        let va = vector(a.clone());
        prop_assert_eq!(arith::mean(&[&va]).unwrap().values, a.clone());
        let o = origin(a.clone());
        prop_assert_eq!(arith::mean(&[&o]).unwrap().values, a);
    }

    #[test]
    fn lambda_zero_gives_the_origin(o in tensor(), a in tensor(), b in tensor(), density in 0.0f64..=1.0) {
        let origin = origin(o.clone());
        let (va, vb) = (vector(a), vector(b));
        for method in [
            MergeMethod::Sum,
            MergeMethod::Mean,
            MergeMethod::Ties { density, sign: SignElection::Mass },
            MergeMethod::Magnitude { density },
            MergeMethod::Dare { drop: 1.0 - density.max(0.01), seed: 5 },
        ] {
            let out = combine(&origin, &[&va, &vb], &[], 0.0, &method).unwrap();
            prop_assert_eq!(&out.values, &o);
        }
    }

    #[test]
    fn sum_is_repeated_addition_and_negation_cancels(a in tensor(), b in tensor(), c in tensor()) {
        let (va, vb, vc) = (vector(a), vector(b), vector(c));
        let s = arith::sum(&[&va, &vb, &vc]).unwrap();
        let folded = arith::add(&arith::add(&va, &vb).unwrap(), &vc).unwrap();
        prop_assert!(close(&s.values, &folded.values, 1e-6));
        let zero = arith::add(&va, &arith::neg(&va).unwrap()).unwrap();
        prop_assert!(zero.values.as_slice().iter().all(|&x| x == 0.0));
    }

    #[test]
    fn ties_with_full_density_and_one_vector_is_the_weighted_vector(a in tensor(), w in 0.1f64..3.0) {
        let va = vector(a.clone());
        let out = arith::merge_vectors(&[&va], &[w], 1.0, &MergeMethod::Ties { density: 1.0, sign: SignElection::Count }).unwrap();
        prop_assert!(close(&out.values, &a.map(|x| (w * f64::from(x)) as f32), 1e-6));
    }

    #[test]
    fn combine_equals_linear_combination(o in tensor(), a in tensor(), b in tensor(), l in -2.0f64..2.0) {
        let origin = origin(o);
        let (va, vb) = (vector(a), vector(b));
        let out = combine(&origin, &[&va, &vb], &[], l, &MergeMethod::Sum).unwrap();
        let lin = linear_combination(&[(1.0, &origin), (l, &va), (l, &vb)]).unwrap();
        prop_assert!(close(&out.values, &lin.values, 1e-5));
    }

    #[test]
    fn similarity_is_symmetric_and_bounded(a in tensor(), b in tensor()) {
        for &m in Measure::ALL {
            let ab = similarity(&a, &b, m).unwrap();
            let ba = similarity(&b, &a, m).unwrap();
            prop_assert!((ab - ba).abs() < 1e-12);
            let aa = similarity(&a, &a, m).unwrap();
            prop_assert!((aa - m.identity()).abs() < 1e-9 || a.norm() == 0.0);
            if matches!(m, Measure::CosineMean | Measure::CosineFlat) {
                prop_assert!((-1.0 - 1e-12..=1.0 + 1e-12).contains(&ab));
            } else {
                prop_assert!(ab >= 0.0);
            }
        }
    }

    #[test]
    fn run_files_round_trip_exactly(a in tensor(), o in tensor()) {
        let mut p = SoftPrompt::new(PromptKind::TaskPrompt, a, Some(o)).unwrap();
        p.meta.tasks = vec!["sst2".into()];
        p.meta.metrics.insert("accuracy".into(), 0.93);
        p.curves.insert("train_loss".into(), tpv_shared::Curve { steps: vec![1.0, 2.0], values: vec![0.5, 0.25] });
        let bytes = runfile::write_run(&p).unwrap();
        let back = runfile::read_run(&bytes).unwrap();
        prop_assert_eq!(&back, &p);
        // Writing is deterministic.
        prop_assert_eq!(runfile::write_run(&back).unwrap(), bytes);
    }
}
