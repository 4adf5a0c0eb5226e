//! Training parity with torch + peft: a few optimizer steps of prompt tuning on the tiny fixture
//! models reproduce the reference trajectory (tests/reference/train_fixtures.py →
//! tests/fixtures/train/*.json): per-step loss (relative 1e-5), learning rate, gradient norm, and
//! the trained prompt (absolute 1e-4).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use candle_core::{DType, Device};
use serde_json::Value;
use tpv_shared::model::causal;
use tpv_shared::model::load::{Model, from_safetensors};
use tpv_shared::model::t5;
use tpv_trainer::optim::{AdamW, Schedule, ScheduleKind};
use tpv_trainer::train::engine::{Encoded, Engine, State, train_step};

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// The CPU, or the device `TPV_TEST_DEVICE` names (`cuda:0` in a build with `--features cuda`,
/// for the check on a GPU machine).
fn device() -> Device {
    match std::env::var("TPV_TEST_DEVICE") {
        Ok(spec) => tpv_trainer::models::device(&spec).unwrap(),
        Err(_) => Device::Cpu,
    }
}

/// f32, or the dtype `TPV_TEST_DTYPE` names (`bf16`: the GPU check's second pass).
fn dtype() -> DType {
    match std::env::var("TPV_TEST_DTYPE").as_deref() {
        Ok("bf16") => DType::BF16,
        Ok(other) => panic!("TPV_TEST_DTYPE={other}: f32 or bf16"),
        Err(_) => DType::F32,
    }
}

/// The tolerances of the comparison with torch's f32 trajectory: (loss relative, gradient norm
/// relative, trained prompt: f32 absolute per element, bf16 the update's relative L2 distance).
/// In bf16 the frozen weights and activations carry 8 bits of mantissa (the prompt and AdamW stay
/// f32), and an element whose gradient is near 0 may take Adam's ±lr step either way, so the
/// update is compared as a whole (measured on the CPU, 2026-12-08: 0.05–0.23 on these fixtures).
fn tolerances(dtype: DType) -> (f64, f64, f64) {
    if dtype == DType::F32 {
        (1e-5, 1e-4, 1e-4)
    } else {
        (2e-2, 5e-2, 0.35)
    }
}

fn model_in(name: &str, dtype: DType) -> Model {
    let dir = root().join("tests/fixtures/models").join(name);
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let weights = std::fs::read(dir.join("model.safetensors")).unwrap();
    from_safetensors(&config, &[weights], dtype, &device()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn check(fixture: &str, model_name: &str, checkpointing: bool, encode: impl Fn(&Value) -> Encoded) {
    check_in(dtype(), fixture, model_name, checkpointing, encode);
}

/// [`check`] with the frozen model in `dtype`.
fn check_in(dtype: DType, fixture: &str, model_name: &str, checkpointing: bool, encode: impl Fn(&Value) -> Encoded) {
    let f = setup(dtype, fixture, model_name, encode);
    let (want, schedule, max_grad_norm, (r, d)) = (&f.want, f.schedule, f.max_norm, f.shape());
    let micro_refs = f.micro_refs();
    let engine = f.engine(0.0, checkpointing);
    let mut state = f.state.clone();
    let steps = schedule.total;
    let (loss_tol, norm_tol, prompt_tol) = tolerances(dtype);
    for s in 0..steps as usize {
        let stats = train_step(&engine, &mut state, &micro_refs, &schedule, max_grad_norm, (r, d)).unwrap();
        let loss = want["losses"][s].as_f64().unwrap();
        assert!(
            (f64::from(stats.loss) - loss).abs() / loss <= loss_tol,
            "step {s}: loss {} vs {loss}",
            stats.loss
        );
        assert!(
            (stats.lr - want["lrs"][s].as_f64().unwrap()).abs() < 1e-12,
            "step {s}: lr {}",
            stats.lr
        );
        if let Some(norm) = want["grad_norms"].get(s) {
            let norm = norm.as_f64().unwrap();
            assert!(
                (stats.grad_norm - norm).abs() / norm <= norm_tol,
                "step {s}: grad norm {} vs {norm}",
                stats.grad_norm
            );
        }
    }
    let trained = floats(&want["trained"]);
    let worst = state
        .params
        .iter()
        .zip(&trained)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    if dtype == DType::F32 {
        assert!(f64::from(worst) <= prompt_tol, "trained prompt differs by {worst}");
    } else {
        // The update's relative L2 distance from torch's.
        let init = floats(&want["init"]);
        let (mut diff, mut norm) = (0f64, 0f64);
        for ((a, b), i) in state.params.iter().zip(&trained).zip(&init) {
            diff += f64::from(a - b).powi(2);
            norm += f64::from(b - i).powi(2);
        }
        let relative = (diff / norm).sqrt();
        assert!(
            relative <= prompt_tol,
            "the update differs from torch's by {relative} (relative L2)"
        );
    }
    // The run moved the prompt: the comparison is not trivially true.
    let moved = state
        .params
        .iter()
        .zip(floats(&want["init"]))
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(moved > 1e-2, "the prompt barely moved ({moved})");
}

#[test]
fn t5_five_steps_linear_warmup_match_torch_peft() {
    check("t5_linear.json", "t5_relu_tied", false, t5_example);
}

/// bf16 (the frozen model's weights and activations; the prompt and AdamW in f32) against the same
/// f32 trajectories, with [`tolerances`]' looser bounds: a left-padded decoder-only batch (whose
/// padding rows see no key: their mask must stay finite in bf16) and T5.
#[test]
fn llama_and_t5_in_bf16_follow_torch_within_bf16_tolerances() {
    check_in(
        DType::BF16,
        "llama_cosine_accum_clip.json",
        "llama_gqa_rope3",
        false,
        causal_example,
    );
    check_in(DType::BF16, "t5_linear.json", "t5_relu_tied", false, t5_example);
}

fn causal_example(e: &Value) -> Encoded {
    let input = ids(&e["input_ids"]);
    Encoded::Causal {
        example: causal::Example::answer(&input, &ids(&e["answer_ids"])),
        input,
        target: String::new(),
    }
}

#[test]
fn llama_cosine_accumulation_clipping_match_torch_peft() {
    check("llama_cosine_accum_clip.json", "llama_gqa_rope3", false, causal_example);
}

/// The same trajectory with `train.gradient_checkpointing` (each layer recomputed in the
/// backward pass).
#[test]
fn llama_with_gradient_checkpointing_matches_torch_peft() {
    check("llama_cosine_accum_clip.json", "llama_gqa_rope3", true, causal_example);
}

/// A newer family (Qwen3: per-head q/k norms, explicit head_dim, tied head) trains as torch +
/// peft train it: `tests/reference/train_fixtures.py qwen3_cosine_accum_clip`, the LLaMA case's
/// micro-batches and hyper-parameters on `models/qwen3_qknorm_tied`.
#[test]
fn qwen3_cosine_accumulation_clipping_match_torch_peft() {
    check(
        "qwen3_cosine_accum_clip.json",
        "qwen3_qknorm_tied",
        false,
        causal_example,
    );
}

#[test]
fn qwen3_with_gradient_checkpointing_matches_torch_peft() {
    check(
        "qwen3_cosine_accum_clip.json",
        "qwen3_qknorm_tied",
        true,
        causal_example,
    );
}

/// A training fixture of tests/fixtures/train: the reference trajectory, the model (in
/// `dtype`), the micro-batches (encoded by `encode`), the schedule, the clipping and the starting
/// state.
struct Fixture {
    want: Value,
    model: Model,
    micro: Vec<Vec<Encoded>>,
    schedule: Schedule,
    max_norm: Option<f64>,
    state: State,
}

impl Fixture {
    fn micro_refs(&self) -> Vec<Vec<&Encoded>> {
        self.micro.iter().map(|mb| mb.iter().collect()).collect()
    }

    /// An engine on the test device over the fixture's model.
    fn engine(&self, dropout: f32, checkpointing: bool) -> Engine<'_> {
        Engine {
            model: &self.model,
            codec: None,
            eos: vec![],
            dropout,
            device: device(),
            checkpointing,
        }
    }

    /// The prompt's shape (R, d).
    fn shape(&self) -> (usize, usize) {
        let d = self.model.hidden_size();
        (self.state.params.len() / d, d)
    }
}

fn setup(dtype: DType, fixture: &str, model_name: &str, encode: impl Fn(&Value) -> Encoded) -> Fixture {
    let want: Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("tests/fixtures/train").join(fixture)).unwrap())
            .unwrap();
    let model = model_in(model_name, dtype);
    let d = model.hidden_size();
    let r = want["virtual_tokens"].as_u64().unwrap() as usize;
    let micro: Vec<Vec<Encoded>> = want["micro_batches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|mb| mb.as_array().unwrap().iter().map(&encode).collect())
        .collect();
    let schedule = Schedule {
        kind: match want["scheduler"].as_str().unwrap() {
            "linear" => ScheduleKind::Linear,
            _ => ScheduleKind::Cosine,
        },
        base_lr: want["learning_rate"].as_f64().unwrap(),
        warmup: want["warmup_steps"].as_u64().unwrap(),
        total: want["steps"].as_u64().unwrap(),
    };
    let state = State {
        step: 0,
        params: floats(&want["init"]),
        adam: AdamW::new(r * d, want["weight_decay"].as_f64().unwrap()),
        rng: 0,
    };
    let max_norm = want["max_grad_norm"].as_f64();
    Fixture {
        want,
        model,
        micro,
        schedule,
        max_norm,
        state,
    }
}

fn t5_example(e: &Value) -> Encoded {
    Encoded::Seq2Seq {
        example: t5::Example {
            input: ids(&e["input_ids"]),
            target: ids(&e["labels"]),
        },
        target: String::new(),
    }
}

/// Steps `state` on the device through the whole schedule, counting the reads of each step (none
/// allowed), of the statistics (one) and of the values (one); then the same steps one at a time
/// (a read after each: [`train_step_with`]) give the same statistics and state.
fn assert_steps_read_nothing(
    engine: &Engine<'_>,
    state: &State,
    trainable: &tpv_trainer::train::engine::Trainable<'_>,
    micro: &[Vec<&Encoded>],
    (schedule, max_norm): (&Schedule, Option<f64>),
    what: &str,
) {
    use tpv_shared::model::host;
    use tpv_trainer::train::engine::train_step_with;
    use tpv_trainer::train::step::DeviceTraining;
    let mut dev = DeviceTraining::new(state, trainable, &engine.device).unwrap();
    for step in 1..=schedule.total {
        let before = host::reads();
        dev.step(engine, micro, schedule, max_norm, trainable).unwrap();
        assert_eq!(host::reads() - before, 0, "{what}: reads in step {step}");
    }
    let before = host::reads();
    let stats = dev.read_stats().unwrap();
    assert_eq!(
        host::reads() - before,
        1,
        "{what}: one read for every pending step's statistics"
    );
    let steps: Vec<u64> = stats.iter().map(|(s, _)| *s).collect();
    assert_eq!(steps, (1..=schedule.total).collect::<Vec<_>>());
    let mut deferred = state.clone();
    let before = host::reads();
    dev.sync(&mut deferred).unwrap();
    assert_eq!(
        host::reads() - before,
        1,
        "{what}: one read for the values and AdamW's moments"
    );
    let mut stepwise = state.clone();
    for (step, deferred_stats) in &stats {
        let one = train_step_with(engine, &mut stepwise, micro, schedule, max_norm, trainable).unwrap();
        assert_eq!(one, *deferred_stats, "{what}: step {step}");
    }
    assert_eq!(deferred, stepwise, "{what}");
    assert_ne!(deferred.params, state.params, "{what}: the steps moved nothing");
}

/// Issue 34: a training step reads nothing back from the device (on a GPU the host would wait
/// for the stream): the loss and gradient norm stay there until the loop reads every pending
/// step's at once, and the values until a checkpoint or validation needs them. The reads are
/// counted where every read of tpv's goes (`tpv_shared::model::host`; clippy refuses candle's
/// own elsewhere): a decoder-only model with and without gradient checkpointing, T5 with
/// dropout, and ATTEMPT's target prompt and module.
#[test]
fn a_training_step_reads_nothing_back_from_the_device() {
    use tpv_trainer::train::engine::{AttemptSetup, Trainable};
    let llama = setup(
        dtype(),
        "llama_cosine_accum_clip.json",
        "llama_gqa_rope3",
        causal_example,
    );
    let (micro, (r, d)) = (llama.micro_refs(), llama.shape());
    let steps = (&llama.schedule, llama.max_norm);
    for checkpointing in [false, true] {
        let engine = llama.engine(0.0, checkpointing);
        let what = format!("llama, checkpointing {checkpointing}");
        assert_steps_read_nothing(&engine, &llama.state, &Trainable::Prompt((r, d)), &micro, steps, &what);
    }
    // ATTEMPT: two source prompts mixed per input by a module trained with the target prompt.
    let engine = llama.engine(0.0, false);
    let source = |k: usize| {
        let values = (0..r * d).map(|i| ((i * 7 + k * 3) % 11) as f32 / 11.0 - 0.5).collect();
        tpv_shared::PromptTensor::new(r, d, values).unwrap()
    };
    let (a, b) = (source(1), source(2));
    let module = tpv_shared::attempt::Module::init(&[&a, &b], vec!["a".into(), "b".into()], 7).unwrap();
    let setup_attempt = AttemptSetup::new(module, (r, d), &engine.device).unwrap();
    let attempt_state = State {
        params: setup_attempt.initial(&llama.state.params),
        adam: AdamW::new(setup_attempt.param_count(), 0.01),
        ..llama.state.clone()
    };
    let trainable = Trainable::Attempt(&setup_attempt);
    assert_steps_read_nothing(&engine, &attempt_state, &trainable, &micro, steps, "ATTEMPT");
    // T5 with dropout (masks drawn on the host from the run's generator, uploaded).
    let t5 = setup(dtype(), "t5_linear.json", "t5_relu_tied", t5_example);
    assert_steps_read_nothing(
        &t5.engine(0.1, false),
        &t5.state,
        &Trainable::Prompt(t5.shape()),
        &t5.micro_refs(),
        (&t5.schedule, t5.max_norm),
        "T5 with dropout",
    );
}

/// A step whose loss is not finite is found at the next read, naming it (the loop then stops
/// before any value is copied out); a single step leaves the state as it was.
#[test]
fn a_non_finite_step_is_named_at_the_read_and_its_values_are_never_kept() {
    use tpv_trainer::train::engine::{StepError, Trainable};
    use tpv_trainer::train::step::DeviceTraining;
    let f = setup(
        dtype(),
        "llama_cosine_accum_clip.json",
        "llama_gqa_rope3",
        causal_example,
    );
    let (micro, (r, d), max_norm, state, engine) =
        (f.micro_refs(), f.shape(), f.max_norm, &f.state, f.engine(0.0, false));
    // A learning rate that throws the prompt to ~1e38 at the first update (warmup off).
    let mut schedule = f.schedule;
    schedule.base_lr = 3e38;
    schedule.warmup = 0;
    let trainable = Trainable::Prompt((r, d));
    let mut dev = DeviceTraining::new(state, &trainable, &engine.device).unwrap();
    for _ in 0..3 {
        dev.step(&engine, &micro, &schedule, max_norm, &trainable).unwrap();
    }
    match dev.read_stats() {
        Err(StepError::NonFiniteLoss { step: 2, .. }) => {}
        other => panic!("{other:?}"),
    }
    // Stepping one at a time: the failed step's values never reach the state.
    let mut untouched = state.clone();
    train_step(&engine, &mut untouched, &micro, &schedule, max_norm, (r, d)).expect("the first step is finite");
    let before = untouched.clone();
    let err = train_step(&engine, &mut untouched, &micro, &schedule, max_norm, (r, d)).unwrap_err();
    assert!(matches!(err, StepError::NonFiniteLoss { step: 2, .. }), "{err}");
    assert_eq!(untouched, before, "a failed step leaves the state as it was");
}
