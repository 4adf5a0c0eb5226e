//! Issue 32's hostile inputs that reach the CLI: a shared study folder naming any file as its
//! model, names that break tables, prompts that overflow the similarity, data files with a BOM or
//! nothing in them, and counts that size allocations.

// Helpers outside #[test] functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use serde_json::{Value, json};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

fn tpv() -> Command {
    Command::cargo_bin("tpv").unwrap()
}

/// A study folder with no runs whose `study.json` names `model`.
fn study_naming(dir: &Path, model: &str) -> PathBuf {
    let study = dir.join("study");
    std::fs::create_dir_all(&study).unwrap();
    let file = json!({
        "format": "tpv-study", "version": 1, "name": "shared", "config": "study.toml",
        "model": model, "origins": [0], "tasks": ["a"], "study": {}, "jobs": [],
    });
    std::fs::write(study.join("study.json"), serde_json::to_vec_pretty(&file).unwrap()).unwrap();
    study
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// Item 1: `tpv report` copied any file a study.json named as its model into the site.
#[test]
fn a_report_never_publishes_a_file_the_study_names_that_is_not_a_model() {
    let tmp = tempfile::tempdir().unwrap();
    let secret = tmp.path().join("shadow");
    std::fs::write(&secret, "root:SECRET-HASH:19000:0:99999:7:::\n").unwrap();
    let secret_gguf = tmp.path().join("secret.gguf");
    std::fs::write(&secret_gguf, "GGUF-but-not-really SECRET-HASH").unwrap();
    for model in [secret.to_str().unwrap(), secret_gguf.to_str().unwrap()] {
        let study = study_naming(tmp.path(), model);
        let site = tmp.path().join("site");
        // auto: the model is left out (not a hub id, so not linked either), the report is written.
        tpv()
            .args(["report"])
            .arg(&study)
            .arg("-o")
            .arg(&site)
            .assert()
            .success();
        for f in files_under(&site) {
            let bytes = std::fs::read(&f).unwrap();
            assert!(
                !String::from_utf8_lossy(&bytes).contains("SECRET-HASH"),
                "{} leaks the file",
                f.display()
            );
        }
        let manifest: Value = serde_json::from_slice(&std::fs::read(site.join("manifest.json")).unwrap()).unwrap();
        assert!(manifest["model"].is_null(), "{manifest}");
        // always: an error naming the model, and still nothing copied.
        let out = tpv()
            .args(["report"])
            .arg(&study)
            .arg("-o")
            .arg(tmp.path().join("site2"))
            .args(["--bundle-model", "always"])
            .assert()
            .failure();
        let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
        assert!(err.contains(model) && !err.contains("SECRET-HASH"), "{err}");
        assert!(!tmp.path().join("site2/model").exists());
    }
}

/// Item 1: a model folder whose files link elsewhere (a tokenizer_config.json that is a link to
/// any JSON file parses) is not published; the folder itself, copied whole, is.
#[test]
fn a_report_refuses_model_folders_with_links_out_of_them() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    std::fs::create_dir_all(&model).unwrap();
    let source = fixtures().join("models/llama_tied");
    for name in ["config.json", "tokenizer.json", "model.safetensors"] {
        std::fs::copy(source.join(name), model.join(name)).unwrap();
    }
    let secret = tmp.path().join("credentials.json");
    std::fs::write(&secret, r#"{"token": "SECRET-TOKEN"}"#).unwrap();
    std::os::unix::fs::symlink(&secret, model.join("tokenizer_config.json")).unwrap();
    let study = study_naming(tmp.path(), model.to_str().unwrap());
    let out = tpv()
        .args(["report"])
        .arg(&study)
        .arg("-o")
        .arg(tmp.path().join("site"))
        .args(["--bundle-model", "always"])
        .assert()
        .failure();
    let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(err.contains("outside the model folder"), "{err}");
    assert!(!tmp.path().join("site/model/tokenizer_config.json").exists());

    // The same folder with its own file is bundled, byte for byte.
    std::fs::remove_file(model.join("tokenizer_config.json")).unwrap();
    std::fs::copy(
        source.join("tokenizer_config.json"),
        model.join("tokenizer_config.json"),
    )
    .unwrap();
    tpv()
        .args(["report"])
        .arg(&study)
        .arg("-o")
        .arg(tmp.path().join("site3"))
        .args(["--bundle-model", "always"])
        .assert()
        .success();
    assert_eq!(
        std::fs::read(tmp.path().join("site3/model/model.safetensors")).unwrap(),
        std::fs::read(model.join("model.safetensors")).unwrap()
    );
}

/// Item 12: finite prompts near ±3e38 have vectors that overflow f32; `tpv similarity --vectors`
/// printed all-NaN matrices with exit 0 (`combine` refused the same inputs).
#[test]
fn similarity_refuses_vectors_that_overflow() {
    use tpv_shared::{PromptKind, PromptTensor, SoftPrompt, runfile};
    let tmp = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (i, sign) in [1.0f32, -1.0].into_iter().enumerate() {
        let theta = PromptTensor::new(2, 3, vec![3.0e38 * sign; 6]).unwrap();
        let origin = PromptTensor::new(2, 3, vec![-3.0e38 * sign; 6]).unwrap();
        let mut p = SoftPrompt::new(PromptKind::TaskPrompt, theta, Some(origin)).unwrap();
        p.meta.tasks = vec![format!("task{i}")];
        let file = tmp.path().join(format!("p{i}.safetensors"));
        std::fs::write(&file, runfile::write_run(&p).unwrap()).unwrap();
        files.push(file);
    }
    let out = tpv().args(["similarity", "--vectors"]).args(&files).assert().failure();
    let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(err.contains("NaN/inf"), "{err}");
    // The prompts themselves are finite, and their similarity is.
    let out = tpv().args(["similarity", "--json"]).args(&files).assert().success();
    let v: Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(v["matrix"][0][1].as_f64(), Some(-1.0), "{v}");
}

/// A copy of the fixture study in `dir` with tasks `a` and `b` renamed (data files copied, the
/// model by its absolute path).
fn study_with_tasks(dir: &Path, a: &str, b: &str) -> PathBuf {
    let src = fixtures().join("study");
    for f in [
        "a-train", "a-valid", "a-test", "b-train", "b-valid", "b-test", "c-train", "c-valid", "c-test",
    ] {
        std::fs::copy(src.join(format!("{f}.jsonl")), dir.join(format!("{f}.jsonl"))).unwrap();
    }
    let text = std::fs::read_to_string(src.join("study.toml"))
        .unwrap()
        .replace("tasks = [\"a\", \"b\"]", &format!("tasks = [\"{a}\", \"{b}\"]"))
        .replace("sources = [\"a\", \"b\"]", &format!("sources = [\"{a}\", \"{b}\"]"))
        .replace("[study.data.a]", &format!("[study.data.\"{a}\"]"))
        .replace("[study.data.b]", &format!("[study.data.\"{b}\"]"))
        .replace(
            "../models/llama_tied",
            fixtures().join("models/llama_tied").to_str().unwrap(),
        )
        .replace(
            "output = \"runs/tiny\"",
            &format!("output = {:?}", dir.join("out").to_str().unwrap()),
        );
    let path = dir.join("study.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Item 13: two 200-byte task names passed `--check`; the addition job failed with "File name
/// too long" after the prompt-tuning jobs had run.
#[test]
fn the_preflight_refuses_job_directories_the_file_system_cannot_hold() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = ("a".repeat(200), "b".repeat(200));
    let config = study_with_tasks(tmp.path(), &a, &b);
    let out = tpv().args(["sweep", "--check"]).arg(&config).assert().failure();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.get_output().stdout),
        String::from_utf8_lossy(&out.get_output().stderr)
    );
    assert!(
        text.contains("401 bytes") && text.contains(&format!("path of addition/{a}+{b}")),
        "{text}"
    );
    assert!(!tmp.path().join("out").join("prompt_tuning").exists(), "no job ran");
    // Short names pass the same check.
    let tmp = tempfile::tempdir().unwrap();
    let config = study_with_tasks(tmp.path(), "a", "b");
    tpv().args(["sweep", "--check"]).arg(&config).assert().success();
}

/// Item 14: "café" in NFC and in NFD ran as two tasks shown as two identical rows.
#[test]
fn a_task_name_not_in_nfc_is_refused_naming_its_composed_form() {
    let tmp = tempfile::tempdir().unwrap();
    let config = study_with_tasks(tmp.path(), "caf\u{e9}", "cafe\u{301}");
    let out = tpv().args(["sweep", "--check"]).arg(&config).assert().failure();
    let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(err.contains("NFC"), "{err}");
}

/// Item 14: an empty data file scored "0 examples … loss NaN" with exit 0, and a JSONL file with
/// a UTF-8 byte order mark was refused (CSV and TSV with one worked).
#[test]
fn eval_refuses_empty_data_and_reads_jsonl_with_a_byte_order_mark() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixtures().join("models/llama_tied");
    for (name, text) in [
        ("empty.jsonl", ""),
        ("blank.jsonl", "\n\n"),
        ("empty.csv", "input,target\n"),
    ] {
        let data = tmp.path().join(name);
        std::fs::write(&data, text).unwrap();
        let out = tpv()
            .args(["eval", "--model"])
            .arg(&model)
            .arg("--data")
            .arg(&data)
            .assert()
            .failure();
        let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
        assert!(err.contains("holds no examples") && err.contains(name), "{err}");
    }
    let data = tmp.path().join("bom.jsonl");
    std::fs::write(
        &data,
        "\u{feff}{\"input\": \"a b\", \"target\": \"a\"}\n{\"input\": \"b\", \"target\": \"b\"}\n",
    )
    .unwrap();
    let out = tpv()
        .args(["eval", "--json", "--model"])
        .arg(&model)
        .arg("--data")
        .arg(&data)
        .assert()
        .success();
    let v: Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(v["examples"].as_array().map(Vec::len), Some(2), "{v}");
}

/// Item 14: `tpv origins --count 1000000000` aborted on a 24 GB allocation.
#[test]
fn origins_beyond_the_vocabulary_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tpv()
        .args(["origins", "--model"])
        .arg(fixtures().join("models/llama_tied"))
        .args(["--count", "1000000000", "--tokens", "4", "--sample-vocab", "-o"])
        .arg(tmp.path())
        .assert()
        .failure();
    let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(err.contains("more origins than the vocabulary"), "{err}");
}

/// Item 8: rank scoring put every label in one pass; its tree mask and logits grew with the
/// square of all labels' tokens (an eval set with 10,000 labels aborted asking for 14.4 GB). Now
/// the 10,000 labels here (three tokens and the end token each) go through in passes of bounded
/// size, and `tpv eval` runs in 2 GiB of address space.
#[test]
fn rank_scoring_of_ten_thousand_labels_runs_in_bounded_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let labels: Vec<String> = (0..10_000)
        .map(|i| format!("w{} w{} w{}", 3 + i % 60, 3 + (i / 60) % 60, 3 + i / 3600))
        .collect();
    let set = json!({
        "format": "tpv-eval-set", "version": 1, "name": "many", "split": "test", "split_size": 2,
        "task": {"name": "many", "template": "{input}", "instruction": "", "fields": [],
                 "label_column": "label", "labels": labels, "label_kind": "class", "metrics": []},
        "encode": {"chat": false, "loss_on": "answer"}, "max_new_tokens": 4, "scoring": "rank",
        "records": [{"input": "w5 w17", "label": "7"}, {"input": "w9", "label": "9999"}],
    });
    let data = tmp.path().join("many.json");
    std::fs::write(&data, serde_json::to_vec(&set).unwrap()).unwrap();
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg("ulimit -v 2097152 && exec \"$@\"")
        // Address space that does not grow with the host's cores (thread stacks, malloc arenas).
        .env("RAYON_NUM_THREADS", "2")
        .env("MALLOC_ARENA_MAX", "2")
        .arg("sh")
        .arg(env!("CARGO_BIN_EXE_tpv"))
        .args(["eval", "--json", "--model"])
        .arg(fixtures().join("models/llama_tied"))
        .arg("--data")
        .arg(&data)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["examples"].as_array().map(Vec::len), Some(2), "{v}");
    // 10,000 classes: no confusion matrix (item 7), its size stated.
    assert_eq!(v["confusion"]["omitted"], 10_000, "{}", v["confusion"]);
}
