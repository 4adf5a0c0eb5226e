//! The GPU kernels' self-test (`model::kernel_check`), on the CPU: its comparison and its
//! decision are device-agnostic, so a deliberately wrong twin (a kernel reading its neighbour's
//! element, as a wrong index would) stands in for a broken GPU kernel.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use tpv_shared::model::gpu::{self, FusedOp};
use tpv_shared::model::kernel_check::{self, self_test_with};
use tpv_shared::model::{DType, Device, Tensor};

/// The CPU twins themselves, run in f32 on the rounded inputs: what a correct kernel gives.
fn cpu_twin(case: &kernel_check::Case, inputs: &[Tensor], _: DType) -> candle_core::Result<Vec<Tensor>> {
    (case.run)(inputs, DType::F32)
}

#[test]
fn every_kernel_is_checked_forward_and_backward_in_f32_and_bf16_and_the_cpu_twins_pass() {
    let checks = self_test_with(cpu_twin).unwrap();
    for op in FusedOp::ALL {
        for dtype in ["f32", "bf16"] {
            assert!(
                checks.iter().any(|c| c.op == op && c.dtype == dtype),
                "{op:?} {dtype} is not checked"
            );
        }
    }
    assert!(checks.iter().all(|c| c.passed() && c.diff == 0.0), "{checks:#?}");
    let verdict = kernel_check::verdict(&checks);
    assert_eq!(verdict.enabled, FusedOp::ALL.to_vec());
    assert!(verdict.warnings.is_empty());
    // The cases reach the kernels' edges and outputs are compared whole: the gradients as well.
    let softmax = checks.iter().find(|c| c.op == FusedOp::Softmax).unwrap();
    assert!(softmax.case.contains("softmax_grad") && softmax.case.contains("1029"));
}

#[test]
fn a_kernel_that_disagrees_with_its_twin_is_not_used_and_the_warning_names_it() {
    // RMS norm's gradient reads its neighbour's element (rolled by one along the row): the
    // forward passes, the backward does not, and the whole op falls back.
    let wrong = |case: &kernel_check::Case, inputs: &[Tensor], dt: DType| {
        let mut out = cpu_twin(case, inputs, dt)?;
        if case.op == FusedOp::RmsNorm {
            let g = &out[1];
            let n = g.dim(candle_core::D::Minus1)?;
            out[1] = Tensor::cat(
                &[
                    &g.narrow(candle_core::D::Minus1, 1, n - 1)?,
                    &g.narrow(candle_core::D::Minus1, 0, 1)?,
                ],
                candle_core::D::Minus1,
            )?;
        }
        if case.op == FusedOp::Dropout && dt == DType::BF16 {
            candle_core::bail!("no bf16 entry point");
        }
        Ok(out)
    };
    let checks = self_test_with(wrong).unwrap();
    let verdict = kernel_check::verdict(&checks);
    assert!(!verdict.enabled.contains(&FusedOp::RmsNorm) && !verdict.enabled.contains(&FusedOp::Dropout));
    assert_eq!(verdict.enabled.len(), FusedOp::ALL.len() - 2, "{verdict:#?}");
    let rms = verdict
        .warnings
        .iter()
        .find(|w| w.contains("rms_norm"))
        .expect("a warning for rms_norm");
    assert!(
        rms.contains("differs from its CPU twin by") && rms.contains("candle's composed op"),
        "{rms}"
    );
    let failed = checks.iter().find(|c| c.op == FusedOp::RmsNorm && !c.passed()).unwrap();
    assert!(
        failed.diff > 0.1 && rms.contains(&format!("{:.2e}", failed.diff)),
        "{rms} vs {failed:?}"
    );
    assert!(
        verdict
            .warnings
            .iter()
            .any(|w| w.contains("dropout (bf16") && w.contains("no bf16 entry point"))
    );
    // The verdict is what the GPU dispatch consults: the failed ops are off, the rest on.
    gpu::set_enabled(&verdict.enabled);
    for op in FusedOp::ALL {
        assert_eq!(gpu::enabled(op), verdict.enabled.contains(&op), "{op:?}");
    }
    // No kernels are installed on the CPU: nothing runs one, whatever is enabled.
    assert!(!gpu::uses_kernel(FusedOp::Softmax));
}

#[test]
fn a_kernel_writing_nan_fails() {
    let nan = |case: &kernel_check::Case, inputs: &[Tensor], dt: DType| {
        let out = cpu_twin(case, inputs, dt)?;
        if case.op != FusedOp::Swiglu {
            return Ok(out);
        }
        out.into_iter().map(|t| t.affine(0.0, f64::NAN)).collect()
    };
    let checks = self_test_with(nan).unwrap();
    assert!(
        checks
            .iter()
            .filter(|c| c.op == FusedOp::Swiglu)
            .all(|c| !c.passed() && c.diff.is_infinite())
    );
    assert!(!kernel_check::verdict(&checks).enabled.contains(&FusedOp::Swiglu));
}

/// The self-test is cheap enough to run at every device opening: it runs on the device given,
/// here the CPU (the kernels are the twins), and passes.
#[test]
fn the_self_test_runs_on_a_device() {
    let checks = kernel_check::self_test(&Device::Cpu).unwrap();
    // On the CPU the bf16 cases cannot run (the twins are f32): they fail to run, naming why
    // (but the cross-entropy's, whose logits are f32 either way); every f32 case passes.
    assert!(
        checks.iter().filter(|c| c.dtype == "f32").all(|c| c.passed()),
        "{checks:#?}"
    );
    let bf16 = checks.iter().filter(|c| c.dtype == "bf16" && c.op != FusedOp::Nll);
    assert!(
        bf16.clone()
            .all(|c| c.error.as_deref().is_some_and(|e| e.contains("f32"))),
        "{checks:#?}"
    );
}
