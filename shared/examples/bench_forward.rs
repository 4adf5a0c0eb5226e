//! Forward + backward throughput of soft-prompt tuning on CPU (a benchmark, not a test):
//!
//!     cargo run --release -p tpv-shared --example bench_forward [-- --steps 5]
//!
//! - SmolLM2-135M-Instruct (the GGUF `tpv fetch smollm2` puts in the cache), 100 virtual tokens,
//!   batch 4 × 64 tokens, loss on every token;
//! - a T5-base-shaped model with random weights (d_model 768, 12+12 layers, relu, vocab 32128),
//!   50 virtual tokens, batch 8 × 256 source tokens, 3 target tokens.
//!
//! Prints the median seconds per step (forward + backward w.r.t. the prompt) over `--steps`
//! steps after one warm-up, and tokens/s (batch × (virtual + input tokens) per second).
#![allow(
    clippy::disallowed_methods,
    reason = "native code: tests and tools read and write files (the library does not)"
)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use tpv_shared::merge::SplitMix64;
use tpv_shared::model::causal::{self, Example};
use tpv_shared::model::decoder::Decoder;
use tpv_shared::model::load::from_gguf;
use tpv_shared::model::t5::{self, T5, T5Config};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn time_steps(steps: usize, mut step: impl FnMut() -> Result<()>) -> Result<f64> {
    step()?; // warm-up
    let mut times = Vec::with_capacity(steps);
    for _ in 0..steps {
        let t = Instant::now();
        step()?;
        times.push(t.elapsed().as_secs_f64());
    }
    Ok(median(times))
}

fn random_ids(rng: &mut SplitMix64, n: usize, vocab: usize) -> Vec<u32> {
    (0..n).map(|_| (rng.next_u64() % vocab as u64) as u32).collect()
}

fn smollm2(steps: usize) -> Result<()> {
    let cache = std::env::var_os("TPV_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/tpv"));
    let path = cache.join("models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !path.exists() {
        return Err(format!("{} is missing: run `tpv fetch smollm2`", path.display()).into());
    }
    let t = Instant::now();
    let (model, _, _) = from_gguf(
        &mut std::io::BufReader::new(std::fs::File::open(&path)?),
        DType::F32,
        &Device::Cpu,
    )?;
    println!(
        "SmolLM2-135M: loaded and dequantized in {:.2} s",
        t.elapsed().as_secs_f64()
    );
    let model = model.downcast_ref::<Decoder>().ok_or("not a decoder-only model")?;
    let (r, b, l) = (100, 4, 64);
    let mut rng = SplitMix64::new(0);
    let prompt = Var::from_tensor(&model.embeddings().narrow(0, 1000, r)?)?;
    let batch: Vec<Example> = (0..b)
        .map(|_| Example::whole(&random_ids(&mut rng, l, model.cfg().vocab_size)))
        .collect();
    let secs = time_steps(steps, || {
        let out = causal::loss(model, prompt.as_tensor(), &batch)?;
        let grads = out.loss.backward()?;
        grads.get(prompt.as_tensor()).ok_or("no gradient")?;
        Ok(())
    })?;
    println!(
        "SmolLM2-135M  R={r} batch {b}x{l}: {secs:.3} s/step, {:.0} tokens/s (forward+backward)",
        (b * (r + l)) as f64 / secs
    );
    Ok(())
}

fn t5_base(steps: usize) -> Result<()> {
    let cfg: T5Config = serde_json::from_value(serde_json::json!({
        "vocab_size": 32128, "d_model": 768, "d_kv": 64, "d_ff": 3072, "num_layers": 12, "num_heads": 12,
        "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128, "dropout_rate": 0.1,
        "layer_norm_epsilon": 1e-6, "feed_forward_proj": "relu", "tie_word_embeddings": true,
        "decoder_start_token_id": 0, "pad_token_id": 0, "eos_token_id": 1
    }))?;
    // Random weights: build through a VarMap (which initializes), then freeze them as plain tensors.
    let varmap = VarMap::new();
    T5::load(VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu), &cfg)?;
    let frozen: HashMap<String, Tensor> = varmap
        .data()
        .lock()
        .map_err(|_| "lock")?
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
        .collect();
    let model = T5::load(VarBuilder::from_tensors(frozen, DType::F32, &Device::Cpu), &cfg)?;
    let (r, b, src, tgt) = (50, 8, 256, 3);
    let mut rng = SplitMix64::new(1);
    let prompt = Var::from_tensor(&model.embeddings().narrow(0, 1000, r)?)?;
    let batch: Vec<t5::Example> = (0..b)
        .map(|_| t5::Example {
            input: random_ids(&mut rng, src, 32128),
            target: random_ids(&mut rng, tgt, 32128),
        })
        .collect();
    let secs = time_steps(steps, || {
        let out = t5::loss(&model, prompt.as_tensor(), &batch, None)?;
        let grads = out.loss.backward()?;
        grads.get(prompt.as_tensor()).ok_or("no gradient")?;
        Ok(())
    })?;
    println!(
        "T5-base-shaped R={r} batch {b}x{src}->{tgt}: {secs:.3} s/step, {:.0} tokens/s (forward+backward)",
        (b * (r + src)) as f64 / secs
    );
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let steps = args
        .iter()
        .position(|a| a == "--steps")
        .and_then(|i| args.get(i + 1))
        .map_or(Ok(5), |s| s.parse())?;
    println!(
        "threads: {} (candle CPU backend)",
        candle_core::utils::get_num_threads()
    );
    smollm2(steps)?;
    t5_base(steps)?;
    Ok(())
}
