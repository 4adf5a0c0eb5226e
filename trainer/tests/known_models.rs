//! The released models of docs/models.md's "Known models" table: each one's config.json, copied
//! from the public source `tests/fixtures/known_models/SOURCES.md` names, is read and checked by
//! its family in the registry, and the table's family, parameter count and preflight memory
//! estimate are what tpv computes from it (so the table cannot drift from the code).
#![allow(
    clippy::disallowed_methods,
    reason = "native code: tests read the fixtures and the docs"
)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use tpv_shared::model::families;
use tpv_trainer::study::preflight::memory_estimate;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The paper's LLM recipe (configs/paper/llama31_8b.toml): 100 virtual tokens, sources of up to
/// 512 tokens, batch 4, bf16, gradient checkpointing.
const BATCH: usize = 4;
const SEQ: usize = 100 + 512;

/// The table row tpv computes for a known model's config.
fn row(hub_id: &str, config_json: &str) -> String {
    let spec = families::parse(config_json).unwrap_or_else(|e| panic!("{hub_id}: {e}"));
    let params = spec.parameters();
    let (weights, activations) = memory_estimate(&*spec, params as f64, 2.0, (BATCH, SEQ), true);
    format!(
        "| `{hub_id}` | `{}` | {:.2} B | {:.1} GB |",
        spec.model_type(),
        params as f64 / 1e9,
        (weights + activations) / 1e9
    )
}

#[test]
fn every_known_model_is_read_by_its_family_and_the_docs_table_is_what_tpv_computes() {
    let dir = root().join("tests/fixtures/known_models");
    let mut rows = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if !path.is_dir() {
            continue;
        }
        let hub_id = path.file_name().unwrap().to_string_lossy().replacen("--", "/", 1);
        rows.push(row(
            &hub_id,
            &std::fs::read_to_string(path.join("config.json")).unwrap(),
        ));
    }
    assert!(!rows.is_empty(), "no known models in {}", dir.display());
    rows.sort();
    let docs = std::fs::read_to_string(root().join("docs/models.md")).unwrap();
    let missing: Vec<&String> = rows.iter().filter(|r| !docs.contains(r.as_str())).collect();
    assert!(
        missing.is_empty(),
        "docs/models.md's known-models table differs from what tpv computes; its rows are:\n{}",
        rows.join("\n")
    );
}

/// The tensors a checkpoint of `config` holds, named and shaped as transformers' Qwen3 and
/// Gemma 2 modules save them (written here from transformers' modeling files, not from tpv's
/// loader, so the check below compares two readings of the model).
fn checkpoint_tensors(config: &serde_json::Value) -> Vec<(String, Vec<usize>)> {
    let get = |k: &str| config[k].as_u64().unwrap_or_else(|| panic!("{k}")) as usize;
    let (d, layers, heads, kv, inter, vocab) = (
        get("hidden_size"),
        get("num_hidden_layers"),
        get("num_attention_heads"),
        get("num_key_value_heads"),
        get("intermediate_size"),
        get("vocab_size"),
    );
    let hd = config["head_dim"].as_u64().map_or(d / heads, |h| h as usize);
    let model_type = config["model_type"].as_str().unwrap();
    let mut t = vec![("model.embed_tokens.weight".to_owned(), vec![vocab, d])];
    for i in 0..layers {
        let p = format!("model.layers.{i}");
        let mut norms = vec!["input_layernorm", "post_attention_layernorm"];
        if model_type == "gemma2" {
            norms.extend(["pre_feedforward_layernorm", "post_feedforward_layernorm"]);
        }
        for n in norms {
            t.push((format!("{p}.{n}.weight"), vec![d]));
        }
        if model_type == "qwen3" {
            t.push((format!("{p}.self_attn.q_norm.weight"), vec![hd]));
            t.push((format!("{p}.self_attn.k_norm.weight"), vec![hd]));
        }
        for (name, shape) in [
            ("self_attn.q_proj", vec![heads * hd, d]),
            ("self_attn.k_proj", vec![kv * hd, d]),
            ("self_attn.v_proj", vec![kv * hd, d]),
            ("self_attn.o_proj", vec![d, heads * hd]),
            ("mlp.gate_proj", vec![inter, d]),
            ("mlp.up_proj", vec![inter, d]),
            ("mlp.down_proj", vec![d, inter]),
        ] {
            t.push((format!("{p}.{name}.weight"), shape));
        }
    }
    t.push(("model.norm.weight".to_owned(), vec![d]));
    if config["tie_word_embeddings"] == false {
        t.push(("lm_head.weight".to_owned(), vec![vocab, d]));
    }
    t
}

/// The start of a bf16 safetensors file holding `tensors` (its length and header), and the
/// whole file's size.
fn safetensors_start(tensors: &[(String, Vec<usize>)]) -> (Vec<u8>, usize) {
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, shape) in tensors {
        let bytes = 2 * shape.iter().product::<usize>();
        header.insert(
            name.clone(),
            serde_json::json!({ "dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + bytes] }),
        );
        offset += bytes;
    }
    let json = serde_json::Value::Object(header).to_string().into_bytes();
    let mut start = (json.len() as u64).to_le_bytes().to_vec();
    start.extend(&json);
    let size = start.len() + offset;
    (start, size)
}

#[path = "common/hub_server.rs"]
mod hub_server;

/// Every known model's hub id and config.json.
fn known_configs() -> Vec<(String, String)> {
    let dir = root().join("tests/fixtures/known_models");
    let mut out: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .map(|p| {
            let hub_id = p.file_name().unwrap().to_string_lossy().replacen("--", "/", 1);
            (hub_id, std::fs::read_to_string(p.join("config.json")).unwrap())
        })
        .collect();
    out.sort();
    out
}

/// A model repo of `config` and the start (length and header) of a safetensors file of the
/// checkpoint `shapes_of` describes; the weights themselves are not there.
fn header_only_repo(
    config: Vec<u8>,
    shapes_of: &serde_json::Value,
) -> std::collections::BTreeMap<String, hub_server::File> {
    let (start, size) = safetensors_start(&checkpoint_tensors(shapes_of));
    [
        ("config.json", config, hub_server::Fault::None),
        ("model.safetensors", start, hub_server::Fault::StartOnly(size)),
    ]
    .into_iter()
    .map(|(name, bytes, fault)| (name.to_owned(), hub_server::File { bytes, fault }))
    .collect()
}

/// The known models on a local hub, each with its real config.json, and `test/one-layer-more`
/// whose config says one layer more than its weights hold.
fn known_repos() -> hub_server::Repos {
    let mut repos = hub_server::Repos::new();
    for (i, (hub_id, config)) in known_configs().into_iter().enumerate() {
        let parsed: serde_json::Value = serde_json::from_str(&config).unwrap();
        let files = header_only_repo(config.into_bytes(), &parsed);
        hub_server::add(
            &mut repos,
            &format!("models/{hub_id}"),
            "main",
            &format!("{i:040}"),
            files,
        );
    }
    let (_, config) = &known_configs()[0];
    let parsed: serde_json::Value = serde_json::from_str(config).unwrap();
    let mut more = parsed.clone();
    more["num_hidden_layers"] = (parsed["num_hidden_layers"].as_u64().unwrap() + 1).into();
    let files = header_only_repo(more.to_string().into_bytes(), &parsed);
    hub_server::add(&mut repos, "models/test/one-layer-more", "main", &"f".repeat(40), files);
    repos
}

/// A one-task study of the paper's LLM recipe (bf16, batch 4, 100 virtual tokens + 512 source
/// tokens, gradient checkpointing) in `dir`, its model set on the command line.
fn write_study(dir: &Path) -> PathBuf {
    let line = |i: usize| format!("{{\"input\": \"w{i} w{}\", \"target\": \"w{}\"}}\n", i + 1, i % 2);
    for split in ["train", "valid", "test"] {
        std::fs::write(
            dir.join(format!("a-{split}.jsonl")),
            (0..8).map(line).collect::<String>(),
        )
        .unwrap();
    }
    let study = dir.join("study.toml");
    let text = format!(
        r#"[study]
name = "known"
output = "{out}"
origins = [0]
tasks = ["a"]

[study.data.a]
train = "a-train.jsonl"
validation = "a-valid.jsonl"
test = "a-test.jsonl"

[model]
path = "unset"
dtype = "bf16"
device = "cpu"

[prompt]
virtual_tokens = 100

[data]
max_source_tokens = {source}

[optim]
batch_size = {BATCH}
max_steps = 1

[train]
gradient_checkpointing = true
output = "unused"
"#,
        out = dir.join("out").display(),
        source = SEQ - 100,
    );
    std::fs::write(&study, text).unwrap();
    study
}

/// `tpv --json sweep --check --no-download` of `study` with `model` against the hub at
/// `endpoint`: whether it passed, and the check whose `what` starts with each of `rows`.
fn check(study: &Path, model: &str, endpoint: &str, cache: &Path, rows: &[&str]) -> (bool, Vec<serde_json::Value>) {
    let out = assert_cmd::Command::cargo_bin("tpv")
        .unwrap()
        .args(["--json", "sweep", "--check", "--no-download", "--set"])
        .arg(format!("model.path={model}"))
        .arg(study)
        .env("HF_HUB_CACHE", cache)
        .env("HF_ENDPOINT", endpoint)
        .env_remove("HF_HOME")
        .env_remove("HF_HUB_OFFLINE")
        .output()
        .unwrap();
    let checks: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{model}: {e}: {}", String::from_utf8_lossy(&out.stderr)));
    let found = rows
        .iter()
        .map(|prefix| {
            let all = checks.as_array().unwrap();
            let row = all.iter().find(|c| c["what"].as_str().unwrap().starts_with(prefix));
            row.unwrap_or_else(|| panic!("{model}: no {prefix} row: {checks:#}"))
                .clone()
        })
        .collect();
    (out.status.success(), found)
}

/// Issue 33: `tpv sweep --check --no-download` resolves each known model by its id on a hub
/// that serves its real config.json: the family reads it, its shapes agree with the
/// checkpoint's headers (read by range requests, the weights never asked for), and the memory
/// estimate is the docs table's at the paper's LLM recipe. A config its headers contradict
/// fails the check, naming the field.
#[test]
fn the_preflight_resolves_the_known_models_from_the_hub_without_their_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let (endpoint, log) = hub_server::serve_repos(known_repos);
    let study = write_study(tmp.path());
    let cache = tmp.path().join("hub");
    let docs = std::fs::read_to_string(root().join("docs/models.md")).unwrap();
    for (hub_id, _) in known_configs() {
        let (_, rows) = check(&study, &hub_id, &endpoint, &cache, &["model ", "memory "]);
        assert_eq!(rows[0]["ok"], true, "{hub_id}: {:#}", rows[0]);
        // The docs' row for this model: `| `ID` | `FAMILY` | P B | M GB |`.
        let docs_row: Vec<&str> = docs
            .lines()
            .find(|l| l.starts_with(&format!("| `{hub_id}` |")))
            .unwrap_or_else(|| panic!("{hub_id} is not in docs/models.md"))
            .split('|')
            .map(str::trim)
            .collect();
        let (family, params, memory) = (docs_row[2].trim_matches('`'), docs_row[3], docs_row[4]);
        let detail = rows[0]["detail"].as_str().unwrap();
        assert!(
            detail.contains(&format!("on the hub: {family}, {params} parameters")),
            "{hub_id}: {detail}"
        );
        let memory_detail = rows[1]["detail"].as_str().unwrap();
        assert!(
            memory_detail.starts_with(&format!("needs ≈ {memory}")),
            "{hub_id}: {memory_detail}"
        );
    }
    let (ok, rows) = check(&study, "test/one-layer-more", &endpoint, &cache, &["model "]);
    assert!(!ok && rows[0]["ok"] == false, "{:#}", rows[0]);
    let detail = rows[0]["detail"].as_str().unwrap();
    assert!(
        detail.contains("against its weights' headers") && detail.contains("num_hidden_layers"),
        "{detail}"
    );
    // Headers only: two closed ranges per weight file (its length, its header), never the whole
    // file; nothing of the models was written into the cache.
    let requests = log.lock().unwrap().clone();
    let weights: Vec<&String> = requests.iter().filter(|r| r.contains(".safetensors")).collect();
    assert_eq!(weights.len(), 2 * (known_configs().len() + 1), "{requests:#?}");
    assert!(
        weights.iter().all(|r| !r.ends_with("WHOLE") && r.contains('-')),
        "{requests:#?}"
    );
    assert!(!cache.join("models--Qwen--Qwen3-0.6B").exists());
}
