//! `tpv origins` and `tpv eval` on the tiny fixture models (tests/fixtures/models, with the
//! word-level tokenizers of tests/reference/tiny_tokenizers.py).

// Helpers outside #[test] functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(clippy::disallowed_methods, reason = "a test reads tensors directly")]

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use serde_json::Value;
use tpv_shared::model::load::from_safetensors;
use tpv_shared::model::{DType, Device, Tensor};
use tpv_shared::{PromptKind, runfile};

#[path = "../../shared/tests/common/fixtures.rs"]
mod fixtures;

fn model_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/models")
        .join(name)
}

fn tpv() -> Command {
    Command::cargo_bin("tpv").unwrap()
}

fn json_out(cmd: &mut Command) -> Value {
    let out = cmd.assert().success().get_output().stdout.clone();
    serde_json::from_slice(&out).unwrap()
}

fn write_data(dir: &Path, lines: &[(&str, &str)]) -> PathBuf {
    let path = dir.join("data.jsonl");
    let text: String = lines
        .iter()
        .map(|(i, t)| serde_json::json!({ "input": i, "target": t }).to_string() + "\n")
        .collect();
    std::fs::write(&path, text).unwrap();
    path
}

const DATA: &[(&str, &str)] = &[
    ("w5 w17 w33 w9", "w12 w7"),
    ("w44 w3", "w30"),
    ("w8 w8 w21 w60 w61 w62 w63 w4 w11 w40", "w9 w9 w10"),
    ("w13", "w14"),
];

#[test]
fn origins_are_rows_of_the_embedding_matrix() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = model_dir("llama_tied");
    let v = json_out(
        tpv()
            .args([
                "origins", "--json", "--count", "2", "--tokens", "3", "--below", "64", "--draw", "10", "--model",
            ])
            .arg(&dir)
            .arg("-o")
            .arg(tmp.path()),
    );
    assert_eq!(v["origins"].as_array().unwrap().len(), 2);
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let weights = std::fs::read(dir.join("model.safetensors")).unwrap();
    let model = from_safetensors(&config, &[weights], DType::F32, &Device::Cpu).unwrap();
    for i in 0..2 {
        let p = runfile::read_run(&std::fs::read(tmp.path().join(format!("origin{i}.safetensors"))).unwrap()).unwrap();
        assert_eq!(p.kind(), PromptKind::Origin);
        assert_eq!(p.origin_id(), Some(format!("origin{i}").as_str()));
        let ids: Vec<u32> = serde_json::from_value(p.meta.config.as_ref().unwrap()["token_ids"].clone()).unwrap();
        assert!(ids.iter().all(|&t| t < 64));
        let rows: Vec<f32> = model
            .embeddings()
            .index_select(&Tensor::from_slice(&ids, ids.len(), &Device::Cpu).unwrap(), 0)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(p.values.as_slice(), rows.as_slice());
    }
}

fn eval(model: &str, prompt: Option<&Path>, data: &Path, extra: &[&str]) -> Value {
    let mut cmd = tpv();
    cmd.args(["eval", "--json", "--max-new-tokens", "4", "--model"])
        .arg(model_dir(model))
        .arg("--data")
        .arg(data);
    if let Some(p) = prompt {
        cmd.arg("--prompt").arg(p);
    }
    json_out(cmd.args(extra))
}

#[track_caller]
fn assert_same_results(a: &Value, b: &Value) {
    let (ea, eb) = (a["examples"].as_array().unwrap(), b["examples"].as_array().unwrap());
    assert_eq!(ea.len(), eb.len());
    for (x, y) in ea.iter().zip(eb) {
        assert_eq!(x["prediction"], y["prediction"]);
        let (lx, ly) = (x["loss"].as_f64().unwrap(), y["loss"].as_f64().unwrap());
        assert!((lx - ly).abs() <= 1e-5 * lx.abs().max(1.0), "{lx} vs {ly}");
    }
}

#[test]
fn eval_batched_equals_one_by_one_on_every_family() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_data(tmp.path(), DATA);
    for model in fixtures::MODELS {
        let origins = tmp.path().join(model);
        tpv()
            .args([
                "origins", "--count", "1", "--tokens", "3", "--below", "64", "--draw", "10", "--model",
            ])
            .arg(model_dir(model))
            .arg("-o")
            .arg(&origins)
            .assert()
            .success();
        let prompt = origins.join("origin0.safetensors");
        let one = eval(model, Some(&prompt), &data, &["--batch-size", "1"]);
        let all = eval(model, Some(&prompt), &data, &["--batch-size", "3"]);
        assert_same_results(&one, &all);
        assert_eq!(one["examples"].as_array().unwrap().len(), 4);
        let mean: f64 = one["examples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["loss"].as_f64().unwrap())
            .sum::<f64>()
            / 4.0;
        assert!((one["mean_loss"].as_f64().unwrap() - mean).abs() < 1e-9);
        let em = one["exact_match"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&em));
    }
    // Raw text and no prompt at all (zero-shot) work too.
    let raw = eval("llama_tied", None, &data, &["--no-chat-template", "--batch-size", "2"]);
    assert_eq!(raw["examples"].as_array().unwrap().len(), 4);
}

#[test]
fn eval_accepts_peft_adapters_and_refuses_mismatches() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_data(tmp.path(), DATA);
    let adapter = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/peft/t5_seq2seq");
    let v = eval("t5_relu_tied", Some(&adapter), &data, &[]);
    assert_eq!(v["examples"].as_array().unwrap().len(), 4);

    // A prompt of another width is refused, naming both sizes.
    let wide = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/runs/v1/sst2-origin0.safetensors");
    let out = tpv()
        .args(["eval", "--model"])
        .arg(model_dir("llama_tied"))
        .arg("--prompt")
        .arg(&wide)
        .arg("--data")
        .arg(&data)
        .assert()
        .failure();
    let err = String::from_utf8(out.get_output().stderr.clone()).unwrap();
    assert!(err.contains("token dim 8") && err.contains("16"), "{err}");

    // A record without the task's columns names the file, the example and the column.
    std::fs::write(&data, "{\"input\": \"w5\", \"target\": \"w6\"}\n{\"text\": \"w5\"}\n").unwrap();
    let out = tpv()
        .args(["eval", "--model"])
        .arg(model_dir("llama_tied"))
        .arg("--data")
        .arg(&data)
        .assert()
        .failure();
    let err = String::from_utf8(out.get_output().stderr.clone()).unwrap();
    assert!(err.contains("example 2") && err.contains("no column"), "{err}");
}

/// Issue 15 (5): sequence lengths are checked against the model before anything is allocated
/// for them. A 6.4 MB run file of 100,000 prompt rows through `tpv eval` aborted on a 160 GB
/// allocation, a 10 MB training line on 108 TB; generation ran past the model's positions.
#[test]
fn sequences_longer_than_the_model_are_refused_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_data(tmp.path(), DATA);
    // A prompt of 100,000 rows of the fixture's width (16): 6.4 MB.
    let rows = 100_000;
    let values = tpv_shared::PromptTensor::new(rows, 16, vec![0.01; rows * 16]).unwrap();
    let mut prompt = tpv_shared::SoftPrompt::new(PromptKind::TaskPrompt, values, None).unwrap();
    prompt.meta.layout.num_transformer_submodules = 1;
    let file = tmp.path().join("huge.safetensors");
    std::fs::write(&file, runfile::write_run(&prompt).unwrap()).unwrap();
    for (model, max) in [("llama_tied", "64"), ("t5_gated_untied", "4096")] {
        let out = tpv()
            .args(["eval", "--json", "--model"])
            .arg(model_dir(model))
            .arg("--prompt")
            .arg(&file)
            .arg("--data")
            .arg(&data)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{model}");
        assert!(err.contains(&format!("exceeds the model's {max}")), "{model}: {err}");
    }
    // Generation that would run past the fixture LLaMA's 64 positions.
    let out = tpv()
        .args(["eval", "--json", "--max-new-tokens", "60", "--model"])
        .arg(model_dir("llama_tied"))
        .arg("--data")
        .arg(&data)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("to generate") && err.contains("64"),
        "{err}"
    );
    // A training line far longer than the model: an error, not an allocation.
    let long = tmp.path().join("long.jsonl");
    let line = serde_json::json!({ "input": "w5 ".repeat(2_000_000), "target": "w12" }).to_string();
    std::fs::write(
        &long,
        format!("{line}\n{}\n", serde_json::json!({ "input": "w5", "target": "w6" })),
    )
    .unwrap();
    let config = tmp.path().join("long.toml");
    std::fs::write(
        &config,
        format!(
            "[model]\npath = {:?}\n[prompt]\nvirtual_tokens = 2\ninit = {{ sample_vocab = {{ seed = 7 }} }}\n[data]\ntrain = {:?}\nvalidation = {:?}\ntest = {:?}\n[optim]\nmax_steps = 2\nbatch_size = 2\n[train]\noutput = {:?}\n",
            model_dir("llama_tied").display().to_string(),
            long.display().to_string(),
            data.display().to_string(),
            data.display().to_string(),
            tmp.path().join("long-run").display().to_string()
        ),
    )
    .unwrap();
    let out = tpv().arg("train").arg(&config).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("exceeds the model's 64"), "{err}");
    // And a prompt with no room left for the input.
    let out = tpv()
        .arg("train")
        .arg(&config)
        .args(["--set", "prompt.virtual_tokens=64"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("no room"), "{err}");
}

/// `tpv origins` of one 3-token origin of the model in `dir`, into `out/origin0.safetensors`.
fn one_origin(dir: &Path, out: &Path) {
    tpv()
        .args([
            "origins", "--count", "1", "--tokens", "3", "--below", "64", "--draw", "10", "--model",
        ])
        .arg(dir)
        .arg("-o")
        .arg(out)
        .assert()
        .success();
}

/// Issue 18, readable prompts: an origin sampled from the vocabulary reads back as the tokens it
/// was sampled from (each virtual token's nearest token, cosine 1), and the rest follow in
/// decreasing cosine.
#[test]
fn nearest_tokens_read_an_origin_back_as_its_tokens() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = model_dir("llama_tied");
    one_origin(&dir, tmp.path());
    let file = tmp.path().join("origin0.safetensors");
    let p = runfile::read_run(&std::fs::read(&file).unwrap()).unwrap();
    let ids: Vec<u32> = serde_json::from_value(p.meta.config.as_ref().unwrap()["token_ids"].clone()).unwrap();
    let v = json_out(
        tpv()
            .args(["inspect", "--json", "--nearest-tokens", "4", "--model"])
            .arg(&dir)
            .arg(&file),
    );
    let rows = v[0]["nearest_tokens"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    for (row, id) in rows.iter().zip(&ids) {
        let near = row.as_array().unwrap();
        assert_eq!(near.len(), 4);
        assert_eq!(near[0]["token"], *id, "{row}");
        assert!((near[0]["cosine"].as_f64().unwrap() - 1.0).abs() < 1e-5, "{row}");
        assert!(!near[0]["text"].as_str().unwrap().is_empty());
        let cos: Vec<f64> = near.iter().map(|n| n["cosine"].as_f64().unwrap()).collect();
        assert!(cos.windows(2).all(|w| w[0] >= w[1]), "{cos:?}");
    }
    // Without --model: the model the file names (its path here).
    let out = tpv()
        .args(["inspect", "--nearest-tokens", "2"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("token 2"));
}

/// Issue 18, learned combination weights: `tpv combine --learn` moves only the K weights of
/// θ₀ + Σ wᵢτᵢ (or K·R with --per-token; or without gradients, --gradient-free), lowers the
/// examples' loss from the TPV sum's, and writes the combination of the weights it kept, which
/// `tpv eval` scores at that loss.
#[test]
fn combine_learns_the_weights_of_a_sum_on_few_examples() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = model_dir("llama_tied");
    let data = write_data(tmp.path(), DATA);
    one_origin(&dir, tmp.path());
    let origin = tmp.path().join("origin0.safetensors");
    // Two task prompt vectors (fixed pseudo-random directions of the fixture's width 16).
    let vectors: Vec<PathBuf> = (0..2u32)
        .map(|k| {
            let values: Vec<f32> = (0..48u32)
                .map(|i| (((i * 7 + k * 13) % 11) as f32 - 5.0) * 0.02)
                .collect();
            let tau = tpv_shared::PromptTensor::new(3, 16, values).unwrap();
            let mut p = tpv_shared::SoftPrompt::new(PromptKind::TaskPromptVector, tau, None).unwrap();
            p.meta.name = Some(format!("tau{k}"));
            let file = tmp.path().join(format!("tau{k}.safetensors"));
            std::fs::write(&file, runfile::write_run(&p).unwrap()).unwrap();
            file
        })
        .collect();
    for mode in ["", "--per-token", "--gradient-free"] {
        let per_token = mode == "--per-token";
        let out_file = tmp.path().join(format!("learned{mode}.safetensors"));
        let mut cmd = tpv();
        cmd.args(["combine", "--json", "--origin"])
            .arg(&origin)
            .arg("--vector")
            .arg(&vectors[0])
            .arg("--vector")
            .arg(&vectors[1])
            .arg("--learn")
            .arg(&data)
            .arg("--model")
            .arg(&dir)
            .args(["--steps", "15", "--learning-rate", "0.2", "-o"])
            .arg(&out_file);
        if !mode.is_empty() {
            cmd.arg(mode);
        }
        let v = json_out(&mut cmd);
        let l = &v["learned"];
        let losses: Vec<f64> = l["losses"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert_eq!(losses.len(), 16);
        let kept = l["loss"].as_f64().unwrap();
        assert!(kept < losses[0] - 1e-3, "{mode}: {losses:?}");
        assert_eq!(l["weights"].as_array().unwrap().len(), if per_token { 6 } else { 2 });
        assert!(v["expression"].as_str().unwrap().contains("weights learned"), "{v}");
        // The file is the kept weights' combination: tpv eval scores it at the kept loss.
        let p = runfile::read_run(&std::fs::read(&out_file).unwrap()).unwrap();
        assert_eq!(p.kind(), PromptKind::Combination);
        assert!(p.meta.config.as_ref().unwrap()["learned_combination"]["weights"].is_array());
        let eval = json_out(
            tpv()
                .args(["eval", "--json", "--max-new-tokens", "1", "--model"])
                .arg(&dir)
                .arg("--prompt")
                .arg(&out_file)
                .arg("--data")
                .arg(&data),
        );
        let scored = eval["loss"].as_f64().unwrap();
        assert!((scored - kept).abs() < 1e-4, "eval {scored} vs learned {kept}");
    }
}
