//! Fuzzing every parser of untrusted input in `tpv-shared`, on stable Rust, as part of the normal
//! test run (a bounded number of cases each): run files, peft adapters with their config, eval
//! sets, report manifests, GGUF headers and every model family's config.json. Each gets arbitrary
//! bytes, byte-level corruptions of a valid sample, and (for the JSON formats) valid JSON whose
//! values are swapped for hostile ones (huge and negative numbers, NaN, long strings, path
//! traversal, control characters, deep nesting). The property: an `Err` or an `Ok`, never a
//! panic, an abort or a runaway allocation (and a model config that loads computes no NaN).
//! The committed corpus of crafted files (tests/fixtures/hostile) is replayed by `corpus.rs`.
//! (Study configs are a `tpv-trainer` format: trainer/tests/fuzz.rs.)
#![allow(
    clippy::disallowed_methods,
    reason = "native code: tests and tools read and write files (the library does not)"
)]
// Helpers outside #[test] functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use serde_json::Value;
use tpv_shared::eval::{EvalSet, ReportModel};
use tpv_shared::model::decoder::Decoder;
use tpv_shared::model::load::{Model, from_safetensors};
use tpv_shared::model::{DType, Device, causal, t5};
use tpv_shared::peft::PeftAdapter;
use tpv_shared::report::{ExampleSet, Manifest, ManifestRun, Tables};
use tpv_shared::tasks::Record;
use tpv_shared::{Document, runfile};

#[path = "common/fixtures.rs"]
mod fixtures;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

fn read(path: &str) -> Vec<u8> {
    std::fs::read(fixtures().join(path)).unwrap()
}

/// Values that have broken parsers: sizes that overflow or allocate, non-numbers, traversal,
/// terminal escapes, deep nesting.
fn hostile_values() -> Vec<Value> {
    let deep = (0..200).fold(Value::Null, |v, _| Value::Array(vec![v]));
    vec![
        Value::Null,
        Value::Bool(true),
        serde_json::json!(-1),
        serde_json::json!(0),
        serde_json::json!(u64::MAX),
        serde_json::json!(i64::MIN),
        serde_json::json!(1u64 << 62),
        serde_json::json!(1e300),
        serde_json::json!(-0.0),
        serde_json::json!("NaN"),
        serde_json::json!("../../../../etc/passwd"),
        serde_json::json!("\u{1b}]0;x\u{7}\n#SBATCH --wrap=x"),
        serde_json::json!("x".repeat(100_000)),
        serde_json::json!([]),
        serde_json::json!({}),
        serde_json::json!([1, 2, 3]),
        deep,
    ]
}

/// Replaces the value at the `pick`-th position of a walk over `v` (objects and arrays) with
/// `with`, or drops an object key when `drop` is set.
fn swap(v: &mut Value, pick: &mut usize, with: &Value, drop: bool) {
    match v {
        Value::Object(map) => {
            let keys: Vec<String> = map.keys().cloned().collect();
            for k in keys {
                if *pick == 0 {
                    if drop {
                        map.remove(&k);
                    } else if let Some(slot) = map.get_mut(&k) {
                        *slot = with.clone();
                    }
                    *pick = usize::MAX;
                    return;
                }
                *pick -= 1;
                if let Some(child) = map.get_mut(&k) {
                    swap(child, pick, with, drop);
                }
                if *pick == usize::MAX {
                    return;
                }
            }
        }
        Value::Array(items) => {
            for item in items.iter_mut() {
                if *pick == 0 {
                    *item = with.clone();
                    *pick = usize::MAX;
                    return;
                }
                *pick -= 1;
                swap(item, pick, with, drop);
                if *pick == usize::MAX {
                    return;
                }
            }
        }
        _ => {}
    }
}

/// `sample` with some of its values swapped for hostile ones (or keys dropped).
fn mutate_json(sample: &Value, edits: &[(usize, usize, bool)]) -> Vec<u8> {
    let values = hostile_values();
    let mut v = sample.clone();
    for &(at, which, drop) in edits {
        let mut pick = at % 64;
        swap(&mut v, &mut pick, &values[which % values.len()], drop);
    }
    serde_json::to_vec(&v).unwrap()
}

fn flip(mut bytes: Vec<u8>, flips: &[(prop::sample::Index, u8)], cut: Option<prop::sample::Index>) -> Vec<u8> {
    if bytes.is_empty() {
        return bytes;
    }
    for (i, b) in flips {
        let i = i.index(bytes.len());
        bytes[i] = *b;
    }
    if let Some(c) = cut {
        bytes.truncate(c.index(bytes.len() + 1));
    }
    bytes
}

fn eval_set_sample() -> Value {
    let records: Vec<Record> = (0..3)
        .map(|i| {
            [
                ("input".to_owned(), format!("w{i} w5")),
                ("target".to_owned(), "w12".to_owned()),
            ]
            .into_iter()
            .collect()
        })
        .collect();
    let set: EvalSet = tpv_shared::eval::plain_set(records, true, 4);
    serde_json::to_value(&set).unwrap()
}

fn manifest_sample() -> Value {
    let m = Manifest {
        format: tpv_shared::report::FORMAT.into(),
        version: tpv_shared::report::VERSION,
        name: "tiny".into(),
        tool_version: "0.1.0".into(),
        origins: vec![0, 1],
        jobs: 2,
        finished: 1,
        missing: vec!["prompt_tuning/b/origin1".into()],
        tables: Some(Tables {
            markdown: "tables.md".into(),
            csv: "tables.csv".into(),
            json: "tables.json".into(),
            html: "results.html".into(),
        }),
        runs: vec![ManifestRun {
            id: "prompt_tuning/a/origin0".into(),
            file: "runs/prompt_tuning/a/origin0.safetensors".into(),
            experiment: "prompt_tuning".into(),
            task: Some("a".into()),
            tasks: vec!["a".into()],
            target: None,
            origin: Some(0),
            from: None,
            init: None,
            source: None,
            shots: None,
            deps: vec![],
            kind: "task-prompt".into(),
            model: Some("llama_tied".into()),
            origin_id: Some("origin0".into()),
            metrics: [("test_exact_match".to_owned(), Some(0.5))].into_iter().collect(),
        }],
        examples: vec![ExampleSet {
            task: "a".into(),
            file: "examples/a.json".into(),
            split: "test".into(),
            records: 3,
            split_size: 3,
        }],
        model: Some(ReportModel {
            url: "model/".into(),
            name: "llama_tied".into(),
            bytes: Some(1000),
            bundled: true,
        }),
    };
    serde_json::to_value(&m).unwrap()
}

/// A small GGUF file of the LLaMA architecture (one tensor), written by candle's writer.
fn gguf_sample() -> Vec<u8> {
    use candle_core::quantized::gguf_file::{Value as G, write};
    use candle_core::quantized::{GgmlDType, QTensor};
    let t = candle_core::Tensor::zeros((4, 4), DType::F32, &Device::Cpu).unwrap();
    let q = QTensor::quantize(&t, GgmlDType::F32).unwrap();
    let meta: Vec<(&str, G)> = vec![
        ("general.architecture", G::String("llama".into())),
        ("general.name", G::String("tiny".into())),
        ("llama.block_count", G::U32(1)),
        ("llama.embedding_length", G::U32(4)),
        ("llama.feed_forward_length", G::U32(8)),
        ("llama.attention.head_count", G::U32(2)),
        ("llama.context_length", G::U32(64)),
        (
            "tokenizer.ggml.tokens",
            G::Array(vec![G::String("a".into()), G::String("b".into())]),
        ),
    ];
    let meta_refs: Vec<(&str, &G)> = meta.iter().map(|(k, v)| (*k, v)).collect();
    let mut out = std::io::Cursor::new(Vec::new());
    write(&mut out, &meta_refs, &[("token_embd.weight", &q)]).unwrap();
    out.into_inner()
}

/// The tiny model fixtures of every family: name, config.json, weights (read once).
fn model_fixtures() -> &'static [(&'static str, Value, Vec<u8>)] {
    static FIXTURES: std::sync::OnceLock<Vec<(&'static str, Value, Vec<u8>)>> = std::sync::OnceLock::new();
    FIXTURES.get_or_init(|| {
        fixtures::MODELS
            .into_iter()
            .map(|name| {
                let dir = format!("models/{name}");
                let config = serde_json::from_slice(&read(&format!("{dir}/config.json"))).unwrap();
                (name, config, read(&format!("{dir}/model.safetensors")))
            })
            .collect()
    })
}

/// How many values (object members and array items, nested ones too) `v` holds.
fn positions(v: &Value) -> usize {
    match v {
        Value::Object(map) => map.values().map(|c| 1 + positions(c)).sum(),
        Value::Array(items) => items.iter().map(|c| 1 + positions(c)).sum(),
        _ => 0,
    }
}

/// The loss of one short example with a one-row prompt, if the model computes one.
fn tiny_loss(model: &Model) -> Option<f32> {
    let prompt = candle_core::Tensor::zeros((1, model.hidden_size()), DType::F32, &Device::Cpu).ok()?;
    let loss = if let Some(m) = model.downcast_ref::<Decoder>() {
        causal::loss(m, &prompt, &[causal::Example::answer(&[5, 17], &[12])])
            .ok()?
            .loss
    } else {
        let m = model.downcast_ref::<t5::T5>()?;
        let example = t5::Example {
            input: vec![5, 17, 1],
            target: vec![12, 1],
        };
        t5::loss(m, &prompt, &[example], None).ok()?.loss
    };
    loss.to_scalar::<f32>().ok()
}

fn gguf(bytes: &[u8]) {
    let _ = tpv_shared::eval::Loaded::from_gguf(&mut std::io::Cursor::new(bytes), DType::F32, &Device::Cpu);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn run_files(bytes in prop::collection::vec(any::<u8>(), 0..512),
                 flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..12),
                 cut in prop::option::of(any::<prop::sample::Index>())) {
        let _ = runfile::read_run(&bytes);
        let sample = flip(read("runs/v1/sst2-origin1.safetensors"), &flips, cut);
        let _ = runfile::read_run(&sample);
        // An ATTEMPT run (format v2): its module's tensors and metadata key too.
        let sample = flip(read("runs/v2/attempt-origin0.safetensors"), &flips, cut);
        let _ = runfile::read_run(&sample);
    }

    #[test]
    fn peft_adapters(flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..12),
                     cut in prop::option::of(any::<prop::sample::Index>()),
                     edits in prop::collection::vec((any::<usize>(), any::<usize>(), any::<bool>()), 1..5)) {
        let weights = flip(read("peft/t5_seq2seq/adapter_model.safetensors"), &flips, cut);
        let config: Value = serde_json::from_slice(&read("peft/t5_seq2seq/adapter_config.json")).unwrap();
        let config = String::from_utf8(mutate_json(&config, &edits)).unwrap();
        if let Ok(a) = PeftAdapter::from_parts(Some(&config), &weights) {
            // Whatever reads must also convert and write back without trouble.
            if let Ok(p) = a.to_prompt(tpv_shared::PromptKind::TaskPrompt, None) {
                let _ = PeftAdapter::from_prompt(&p).and_then(|a| a.to_files());
            }
        }
        let _ = Document::read(&weights, Some(&config));
    }

    #[test]
    fn eval_sets(bytes in prop::collection::vec(any::<u8>(), 0..256),
                 edits in prop::collection::vec((any::<usize>(), any::<usize>(), any::<bool>()), 1..5),
                 flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6)) {
        let _ = EvalSet::from_json(&bytes);
        let mutated = mutate_json(&eval_set_sample(), &edits);
        let _ = EvalSet::from_json(&mutated);
        let _ = EvalSet::from_json(&flip(mutated, &flips, None));
    }

    #[test]
    fn report_manifests(bytes in prop::collection::vec(any::<u8>(), 0..256),
                        edits in prop::collection::vec((any::<usize>(), any::<usize>(), any::<bool>()), 1..5),
                        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6)) {
        let _ = Manifest::from_json(&bytes);
        let mutated = mutate_json(&manifest_sample(), &edits);
        if let Ok(m) = Manifest::from_json(&mutated) {
            let _ = m.to_json();
        }
        let _ = Manifest::from_json(&flip(mutated, &flips, None));
    }

    #[test]
    fn gguf_headers(bytes in prop::collection::vec(any::<u8>(), 0..256),
                    flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..10),
                    cut in prop::option::of(any::<prop::sample::Index>())) {
        // Arbitrary bytes behind the magic, and a valid small file corrupted.
        let mut magic = b"GGUF\x03\x00\x00\x00".to_vec();
        magic.extend_from_slice(&bytes);
        gguf(&magic);
        gguf(&flip(gguf_sample(), &flips, cut));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(320))]

    /// Every family's config.json with hostile values (issue items 5 and 6), loaded with the
    /// fixture's weights: an error, or a model whose loss is a number (not NaN).
    #[test]
    fn model_configs(which in 0..fixtures::MODELS.len(),
                     edits in prop::collection::vec((any::<usize>(), any::<usize>(), any::<bool>()), 1..4)) {
        let (name, config, weights) = &model_fixtures()[which];
        // Every edit lands on one of the config's values (mutate_json picks among 64 positions).
        let n = positions(config);
        let edits: Vec<_> = edits.iter().map(|&(at, which, drop)| (at % n, which, drop)).collect();
        let config = String::from_utf8(mutate_json(config, &edits)).unwrap();
        if let Ok(model) = from_safetensors(&config, &[weights], DType::F32, &Device::Cpu)
            && let Some(loss) = tiny_loss(&model)
        {
            prop_assert!(loss.is_finite(), "{name}: loss {loss} with {config}");
        }
    }
}

#[test]
fn the_fuzzed_samples_are_valid_to_begin_with() {
    assert!(runfile::read_run(&read("runs/v1/sst2-origin1.safetensors")).is_ok());
    assert!(EvalSet::from_json(&serde_json::to_vec(&eval_set_sample()).unwrap()).is_ok());
    assert!(Manifest::from_json(&serde_json::to_vec(&manifest_sample()).unwrap()).is_ok());
    for (name, config, weights) in model_fixtures() {
        let model = from_safetensors(&config.to_string(), &[weights], DType::F32, &Device::Cpu).unwrap();
        assert!(tiny_loss(&model).is_some_and(f32::is_finite), "{name}");
    }
    // The GGUF sample parses as far as its (deliberately incomplete) model: an error, not a panic.
    let err = tpv_shared::eval::Loaded::from_gguf(&mut std::io::Cursor::new(gguf_sample()), DType::F32, &Device::Cpu)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("GGUF") || err.contains("gguf") || err.contains("missing") || err.contains("no "),
        "{err}"
    );
}
