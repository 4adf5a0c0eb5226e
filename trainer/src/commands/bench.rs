//! `tpv bench`: how fast this machine tunes and evaluates soft prompts (the tpv side of
//! `bench/compare.sh`, which runs the same work with PyTorch + transformers + peft).
//!
//! - training step: forward + backward w.r.t. the prompt + AdamW, timed as the difference between
//!   a long and a short run of steps (so warm-up and loading do not count), median over repeats;
//! - evaluation: greedy generation of `--target-tokens` tokens for one batch, median over repeats;
//! - loading (for a model given by path): reading and converting the weights;
//! - the machine's matmul peak (a square matmul in the bench dtype), and the GFLOP/s the step
//!   achieves by an analytic count of its matmul work (forward, plus the backward's input-gradient
//!   products, which cost the same; no weight gradients: the model is frozen).

use std::collections::HashMap;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use serde_json::{Value, json};
use tpv_shared::TaskType;
use tpv_shared::merge::SplitMix64;
use tpv_shared::model::causal;
use tpv_shared::model::load::Model;
use tpv_shared::model::t5;

use super::print_json;
use crate::cli::BenchArgs;
use crate::models;
use crate::optim::{AdamW, Schedule, ScheduleKind};
use crate::train::engine::{Encoded, Engine, State, Trainable, train_step};
use crate::train::step::DeviceTraining;
use tpv_shared::model::host;

/// SmolLM2-135M-Instruct's shape (HF config.json of HuggingFaceTB/SmolLM2-135M-Instruct).
pub fn smollm2_config() -> Value {
    json!({
        "vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
        "num_attention_heads": 9, "num_key_value_heads": 3, "rms_norm_eps": 1e-5,
        "max_position_embeddings": 8192, "rope_theta": 100000.0, "tie_word_embeddings": true,
        "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2, "model_type": "llama"
    })
}

/// LLaMA-3.1-8B(-Instruct)'s shape (HF config.json of meta-llama/Llama-3.1-8B-Instruct).
pub fn llama31_8b_config() -> Value {
    json!({
        "vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-5,
        "max_position_embeddings": 131072, "rope_theta": 500000.0,
        "rope_scaling": { "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                          "original_max_position_embeddings": 8192, "rope_type": "llama3" },
        "tie_word_embeddings": false, "attention_bias": false, "mlp_bias": false, "hidden_act": "silu",
        "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "model_type": "llama"
    })
}

/// Starts the peak over again (Linux: `5` into `/proc/self/clear_refs` resets `VmHWM`), so that
/// the peak after it is the benchmark's, not the loading's.
fn reset_peak_rss() {
    #[allow(clippy::disallowed_methods, reason = "a /proc write, native only")]
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// This process's resident memory now and at its peak (`VmRSS`, `VmHWM`; Linux), in bytes.
fn rss() -> (Option<u64>, Option<u64>) {
    #[allow(clippy::disallowed_methods, reason = "a /proc read, native only")]
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// T5-base's shape (d_model 768, 12+12 layers, relu, tied embeddings).
pub fn t5_base_config() -> Value {
    json!({
        "vocab_size": 32128, "d_model": 768, "d_kv": 64, "d_ff": 3072, "num_layers": 12, "num_heads": 12,
        "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128, "dropout_rate": 0.1,
        "layer_norm_epsilon": 1e-6, "feed_forward_proj": "relu", "tie_word_embeddings": true,
        "decoder_start_token_id": 0, "pad_token_id": 0, "eos_token_id": 1, "model_type": "t5"
    })
}

/// Frozen tensors of a freshly initialized VarMap (random weights of the right shapes).
fn frozen(varmap: &VarMap) -> Result<HashMap<String, Tensor>> {
    let data = varmap
        .data()
        .lock()
        .map_err(|_| anyhow::anyhow!("the VarMap lock is poisoned"))?;
    Ok(data.iter().map(|(k, v)| (k.clone(), v.as_tensor().detach())).collect())
}

/// A model with random weights of a known shape: the family's own spec builds it twice, once
/// to draw the weights into a VarMap and once from them, frozen.
fn random_model(config: &Value, dtype: DType, device: &Device) -> Result<Model> {
    let spec = tpv_shared::model::families::parse(&config.to_string())?;
    let varmap = VarMap::new();
    spec.build(VarBuilder::from_varmap(&varmap, dtype, device))?;
    Ok(spec.build(VarBuilder::from_tensors(frozen(&varmap)?, dtype, device))?)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn random_ids(rng: &mut SplitMix64, n: usize, vocab: usize) -> Vec<u32> {
    // Ids from 3 up, so no special token (pad 0, eos 1/2) is drawn.
    (0..n).map(|_| (3 + rng.below(vocab - 3)) as u32).collect()
}

/// Median GFLOP/s of an n×n×n matmul in `dtype` on `device`.
fn matmul_peak(device: &Device, dtype: DType, n: usize, repeats: usize) -> Result<f64> {
    let a = Tensor::randn(0f32, 1.0, (n, n), device)?.to_dtype(dtype)?;
    let b = Tensor::randn(0f32, 1.0, (n, n), device)?.to_dtype(dtype)?;
    a.matmul(&b)?;
    device.synchronize()?;
    let mut times = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        let t = Instant::now();
        let c = a.matmul(&b)?;
        device.synchronize()?;
        times.push(t.elapsed().as_secs_f64());
        drop(c);
    }
    Ok(2.0 * (n as f64).powi(3) / median(times) / 1e9)
}

/// `b` random examples of `l` input tokens (and `tt` target tokens for T5).
fn random_batch(seq2seq: bool, b: usize, l: usize, tt: usize, vocab: usize) -> Vec<Encoded> {
    let mut rng = SplitMix64::new(0);
    (0..b)
        .map(|_| {
            let input = random_ids(&mut rng, l, vocab);
            if seq2seq {
                Encoded::Seq2Seq {
                    example: t5::Example {
                        input,
                        target: random_ids(&mut rng, tt, vocab),
                    },
                    target: String::new(),
                }
            } else {
                Encoded::Causal {
                    example: causal::Example::whole(&input),
                    input,
                    target: String::new(),
                }
            }
        })
        .collect()
}

/// The phases of a step, timed apart (medians over `repeats`), each repeat followed by one
/// whole step for comparison (what the two phases leave of it is the optimizer and the host
/// copies).
fn time_phases(
    engine: &Engine<'_>,
    state: &mut State,
    batch: &[&Encoded],
    schedule: &Schedule,
    repeats: usize,
) -> Result<serde_json::Value> {
    let (r, d) = (engine_rows(state, engine), engine.model.hidden_size());
    let micro = [batch.to_vec()];
    let (mut fwd, mut bwd, mut whole) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..repeats {
        {
            let var = candle_core::Var::from_tensor(&Tensor::from_slice(&state.params, (r, d), &engine.device)?)?;
            let t = Instant::now();
            let out = engine.loss(var.as_tensor(), batch, None)?;
            host::scalar::<f32>(&out.loss.to_dtype(DType::F32)?)?;
            fwd.push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            let grads = out.loss.backward()?;
            if let Some(g) = grads.get(&var) {
                host::flat_f32(g)?;
            }
            bwd.push(t.elapsed().as_secs_f64());
        }
        let t = Instant::now();
        train_step(engine, state, &micro, schedule, Some(1.0), (r, d))?;
        whole.push(t.elapsed().as_secs_f64());
    }
    Ok(json!({ "forward_s": median(fwd), "backward_s": median(bwd), "step_s": median(whole) }))
}

/// Seconds per optimizer step: the difference of a long and a short run over their step
/// difference (what a step costs without the fixed costs), median over `--repeats`.
fn time_steps(
    engine: &Engine<'_>,
    state: &mut State,
    micro: &[Vec<&Encoded>],
    schedule: &Schedule,
    args: &BenchArgs,
) -> Result<f64> {
    let (r, d) = (engine_rows(state, engine), engine.model.hidden_size());
    // As `tpv train` steps: on the device, the statistics and the values read once at the end.
    let mut run_steps = |n: usize| -> Result<f64> {
        let t = Instant::now();
        let trainable = Trainable::Prompt((r, d));
        let mut dev = DeviceTraining::new(state, &trainable, &engine.device)?;
        for _ in 0..n {
            dev.step(engine, micro, schedule, Some(1.0), &trainable)?;
        }
        dev.read_stats()?;
        dev.sync(state)?;
        Ok(t.elapsed().as_secs_f64())
    };
    run_steps(1)?; // warm-up: kernels, allocations
    let mut per_step = Vec::with_capacity(args.repeats);
    for _ in 0..args.repeats {
        let short = run_steps(args.short)?;
        let long = run_steps(args.long)?;
        per_step.push((long - short) / (args.long - args.short) as f64);
    }
    Ok(median(per_step))
}

/// Seconds for greedy generation of `tokens` tokens for the batch, median over `repeats`.
fn time_generation(
    engine: &Engine<'_>,
    theta: &Tensor,
    batch: &[&Encoded],
    tokens: usize,
    repeats: usize,
) -> Result<f64> {
    engine.generate(theta, batch, tokens)?; // warm-up
    let mut times = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        let t = Instant::now();
        engine.generate(theta, batch, tokens)?;
        times.push(t.elapsed().as_secs_f64());
    }
    Ok(median(times))
}

/// The prompt rows of the state's parameters.
fn engine_rows(state: &State, engine: &Engine<'_>) -> usize {
    state.params.len() / engine.model.hidden_size().max(1)
}

/// The named shapes `tpv bench --model NAME` builds with random weights: each a released
/// model's config.json (the newer families' as tests/fixtures/known_models holds them, copied
/// from the sources its SOURCES.md names).
pub fn shapes() -> Vec<(&'static str, Value)> {
    let known = |text: &str| serde_json::from_str(text).unwrap_or(Value::Null);
    vec![
        ("smollm2-shaped", smollm2_config()),
        ("t5-base-shaped", t5_base_config()),
        ("llama31-8b-shaped", llama31_8b_config()),
        (
            "qwen3-1.7b-shaped",
            known(include_str!(
                "../../../tests/fixtures/known_models/Qwen--Qwen3-1.7B/config.json"
            )),
        ),
        (
            "gemma2-2b-shaped",
            known(include_str!(
                "../../../tests/fixtures/known_models/google--gemma-2-2b-it/config.json"
            )),
        ),
    ]
}

/// A named shape's config with `--layers` and `--family` applied: its first N layers (their
/// `layer_types` too), or its dimensions run as another family (the same work under, say,
/// LLaMA's code, to compare a family's overhead).
fn shaped_config(mut config: Value, args: &BenchArgs) -> Result<Value> {
    if let Some(n) = args.layers {
        let mut set = false;
        for key in ["num_hidden_layers", "num_layers", "num_decoder_layers"] {
            if config.get(key).is_some_and(|v| !v.is_null()) {
                config[key] = json!(n);
                set = true;
            }
        }
        if !set {
            bail!("--layers: the shape's config has no layer count");
        }
        if let Some(types) = config.get_mut("layer_types").and_then(Value::as_array_mut) {
            types.truncate(n);
        }
    }
    if let Some(family) = &args.family {
        config["model_type"] = json!(family);
    }
    Ok(config)
}

/// The benchmarked model: random weights of a named shape, or loaded (and how long that took).
fn bench_model(args: &BenchArgs, dtype: DType, device: &Device) -> Result<(Model, Option<f64>)> {
    let t = Instant::now();
    if let Some((_, config)) = shapes().into_iter().find(|(name, _)| *name == args.model) {
        let config = shaped_config(config, args)?;
        let model = random_model(&config, dtype, device).with_context(|| format!("building {}", args.model))?;
        return Ok((model, None));
    }
    if args.layers.is_some() || args.family.is_some() {
        bail!("--layers and --family apply to the named shapes only");
    }
    let loaded = models::load(&args.model, dtype, device).with_context(|| format!("loading {}", args.model))?;
    Ok((loaded.loaded.model, Some(t.elapsed().as_secs_f64())))
}

pub fn run(args: &BenchArgs) -> Result<()> {
    if args.long <= args.short || args.repeats == 0 {
        bail!("--long must exceed --short, and --repeats must be at least 1");
    }
    if !(0.0..1.0).contains(&args.dropout) {
        bail!("--dropout must be in [0, 1), got {}", args.dropout);
    }
    let device = models::device(&args.device)?;
    let dtype = models::dtype(&args.dtype)?;
    let (model, load_s) = bench_model(args, dtype, &device)?;
    if args.load_only {
        let out =
            json!({ "tool": "tpv", "model": args.model, "device": args.device, "dtype": args.dtype, "load_s": load_s });
        return if args.json {
            print_json(&out)
        } else {
            out!("{}: loaded in {:.3} s", args.model, load_s.unwrap_or(f64::NAN));
            Ok(())
        };
    }
    let seq2seq = model.task_type() == TaskType::Seq2SeqLm;
    let r = args.virtual_tokens.unwrap_or(if seq2seq { 50 } else { 100 });
    let b = args.batch.unwrap_or(if seq2seq { 8 } else { 4 });
    let l = args.tokens.unwrap_or(if seq2seq { 256 } else { 64 });
    let tt = args.target_tokens;
    let d = model.hidden_size();
    let vocab = model.embeddings().dim(0)?;

    let train = random_batch(seq2seq, b, l, tt, vocab);
    let engine = Engine {
        model: &model,
        codec: None,
        eos: vec![],
        dropout: args.dropout,
        device: device.clone(),
        checkpointing: args.gradient_checkpointing,
    };
    let (rss_after_load, load_peak) = rss();
    reset_peak_rss();
    let init: Vec<f32> = host::flat_f32(&model.embeddings().narrow(0, 1000.min(vocab.saturating_sub(r)), r)?)?;
    let schedule = Schedule {
        kind: ScheduleKind::Constant,
        base_lr: 0.3,
        warmup: 0,
        total: u64::MAX,
    };
    let batch: Vec<&Encoded> = train.iter().collect();
    let micro = [batch.clone()];
    let mut state = State {
        step: 0,
        params: init.clone(),
        adam: AdamW::new(r * d, 1e-5),
        rng: 0,
    };
    let step_s = time_steps(&engine, &mut state, &micro, &schedule, args)?;
    // The phases of a step, timed apart, each repeat followed by one whole step for comparison
    // (what the two phases leave of it is the optimizer and the host copies).
    let phases = if args.phases {
        Some(time_phases(&engine, &mut state, &batch, &schedule, args.repeats)?)
    } else {
        None
    };
    let theta = Tensor::from_slice(&state.params, (r, d), &device)?;
    let eval_s = time_generation(&engine, &theta, &batch, tt, args.repeats)?;

    let n = if device.is_cpu() { 1024 } else { 8192 };
    let peak = matmul_peak(&device, dtype, n, 5)?;
    let train_flops = 2.0 * model.spec().forward_flops(r, b, l, tt);
    let achieved = train_flops / step_s / 1e9;
    let threads = candle_core::utils::get_num_threads();
    let out = json!({
        "tool": "tpv",
        "model": args.model,
        "device": args.device,
        "dtype": args.dtype,
        "threads": threads,
        "virtual_tokens": r,
        "batch": b,
        "tokens": l,
        "target_tokens": tt,
        "step_s": step_s,
        "eval_batch_s": eval_s,
        "eval_examples_per_s": b as f64 / eval_s,
        "load_s": load_s,
        "train_gflop_per_step": train_flops / 1e9,
        "achieved_gflops": achieved,
        "matmul_peak_gflops": peak,
        "matmul_n": n,
        "phases": phases,
        "gradient_checkpointing": args.gradient_checkpointing,
        "rss_after_load_bytes": rss_after_load,
        "load_peak_rss_bytes": load_peak,
        "peak_rss_bytes": rss().1,
    });
    if args.json {
        print_json(&out)
    } else {
        print_text(&out, args.repeats, seq2seq)
    }
}

/// The benchmark's result as a line (and one for the phases).
fn print_text(out: &serde_json::Value, repeats: usize, seq2seq: bool) -> Result<()> {
    let f = |k: &str| out[k].as_f64().unwrap_or(f64::NAN);
    let u = |k: &str| out[k].as_u64().unwrap_or(0);
    let s = |k: &str| out[k].as_str().unwrap_or("").to_owned();
    let (r, b, l, tt, threads, n) = (
        u("virtual_tokens"),
        u("batch"),
        u("tokens"),
        u("target_tokens"),
        u("threads"),
        u("matmul_n"),
    );
    let (step_s, achieved, peak, eval_s) = (
        f("step_s"),
        f("achieved_gflops"),
        f("matmul_peak_gflops"),
        f("eval_batch_s"),
    );
    out!(
        "{} ({}, {}, {threads} threads) R={r} batch {b}×{l}{}: {step_s:.4} s/step ({achieved:.1} GFLOP/s, \
         {:.0}% of the {n}³ matmul peak {peak:.1} GFLOP/s); greedy {tt} tokens for the batch {eval_s:.4} s{}",
        s("model"),
        s("device"),
        s("dtype"),
        if seq2seq { format!("→{tt}") } else { String::new() },
        100.0 * achieved / peak,
        out["load_s"]
            .as_f64()
            .map_or(String::new(), |s| format!("; loaded in {s:.2} s")),
    );
    if let (Some(load), Some(peak)) = (out["rss_after_load_bytes"].as_f64(), out["peak_rss_bytes"].as_f64()) {
        out!(
            "  memory (resident): {:.2} GB after loading, peak {:.2} GB while stepping and generating{}",
            load / 1e9,
            peak / 1e9,
            if out["gradient_checkpointing"] == true {
                " (gradient checkpointing)"
            } else {
                ""
            }
        );
    }
    if let Some(p) = out["phases"].as_object() {
        let g = |k: &str| p.get(k).and_then(serde_json::Value::as_f64).unwrap_or(f64::NAN);
        out!(
            "  phases (medians of {repeats} repeats): forward {:.4} s, backward {:.4} s; a whole step right after each: {:.4} s",
            g("forward_s"),
            g("backward_s"),
            g("step_s"),
        );
    }
    Ok(())
}
