//! `tpv train` end to end on the tiny fixture models: a killed run resumed from its checkpoint
//! ends exactly where an uninterrupted run ends; a diverging run stops with a clear message and
//! keeps its last checkpoint; config mistakes are errors naming the key.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use serde_json::Value;

fn root() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .canonicalize()
        .unwrap()
}

fn write_data(dir: &Path) {
    // Two classes over the tiny vocabulary (tokens w3 … w63): the target is w10 or w11.
    let line = |i: usize| {
        let target = if i.is_multiple_of(2) { "w10" } else { "w11" };
        format!(
            "{{\"input\": \"w{} w{} w{}\", \"target\": \"{target}\"}}\n",
            20 + i % 7,
            30 + (i * 3) % 11,
            45 + i % 2
        )
    };
    std::fs::write(dir.join("train.jsonl"), (0..10).map(line).collect::<String>()).unwrap();
    std::fs::write(dir.join("valid.jsonl"), (10..14).map(line).collect::<String>()).unwrap();
    std::fs::write(dir.join("test.jsonl"), (14..18).map(line).collect::<String>()).unwrap();
}

fn config(dir: &Path, model: &str, out: &str) -> PathBuf {
    let text = format!(
        r#"# tiny run for the tests
[model]
path = "{model}"

[prompt]
virtual_tokens = 3
init = {{ sample_vocab = {{ seed = 7 }} }}

[data]
train = "train.jsonl"
validation = "valid.jsonl"
test = "test.jsonl"
shuffle = true

[optim]
learning_rate = 0.3
weight_decay = 1e-5
warmup_steps = 2
scheduler = "linear"
batch_size = 4
max_steps = 7

[train]
eval_every = 2
output = "{out}"
max_new_tokens = 3
"#,
        model = root().join("tests/fixtures/models").join(model).display(),
        out = dir.join(out).display(),
    );
    let path = dir.join(format!("{out}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn tpv() -> Command {
    Command::cargo_bin("tpv").unwrap()
}

fn train(config: &Path, extra: &[&str]) -> std::process::Output {
    tpv().arg("train").arg(config).args(extra).output().unwrap()
}

/// Values, curves and metrics of a run file (everything but the creation time).
fn result(path: &Path) -> (Vec<u8>, Value) {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Vec<u8>)> = st.tensors().into_iter().map(|(n, t)| (n, t.data().to_vec())).collect();
    tensors.sort();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta: Value = serde_json::from_str(&header.metadata().as_ref().unwrap()["tpv"]).unwrap();
    (
        tensors
            .into_iter()
            .flat_map(|(n, d)| [n.into_bytes(), d].concat())
            .collect(),
        meta["metrics"].clone(),
    )
}

fn kill_and_resume(model: &str) {
    let dir = tempfile::tempdir().unwrap();
    write_data(dir.path());
    let full = config(dir.path(), model, "full");
    let out = train(&full, &["--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let last: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let run = PathBuf::from(last["runs"][0].as_str().unwrap());
    assert_eq!(run, dir.path().join("full/prompt.safetensors"));
    let want = result(&run);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&run).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644, "run files are readable by others, as results to share");
    }
    assert!(want.1["test_exact_match"].is_number(), "{}", want.1);

    // Killed after steps before, on and after a checkpoint (every 2 steps), then resumed.
    for kill_at in [1u64, 4, 5] {
        let name = format!("killed{kill_at}");
        let cfg = config(dir.path(), model, &name);
        let out = train(&cfg, &["--abort-after-step", &kill_at.to_string()]);
        assert!(
            !out.status.success(),
            "the run should have been killed at step {kill_at}"
        );
        assert!(!dir.path().join(&name).join("prompt.safetensors").exists());
        let ckpt = dir.path().join(&name).join("checkpoint.safetensors");
        // Checkpoints come every 2 steps: none yet after step 1.
        assert_eq!(ckpt.exists(), kill_at >= 2, "checkpoint after a kill at step {kill_at}");
        if ckpt.exists() {
            let again = train(&cfg, &[]);
            assert!(!again.status.success(), "an unfinished run is not restarted silently");
            assert!(String::from_utf8_lossy(&again.stderr).contains("--resume"));
        }
        let out = train(&cfg, &["--resume"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let got = result(&dir.path().join(&name).join("prompt.safetensors"));
        assert!(
            got.0 == want.0,
            "{model}: killed at step {kill_at}, the resumed run differs"
        );
        assert_eq!(got.1, want.1);
        assert!(!dir.path().join(&name).join("checkpoint.safetensors").exists());
    }
    // A finished run resumed is left alone.
    let out = train(&full, &["--resume"]);
    assert!(out.status.success());
    assert_eq!(result(&run).0, want.0);
}

#[test]
fn a_killed_t5_run_resumes_to_the_same_prompt() {
    // T5's dropout (0.1 in the fixture's config) is on: the generator's state is checkpointed too.
    kill_and_resume("t5_relu_tied");
}

#[test]
fn a_killed_llama_run_resumes_to_the_same_prompt() {
    kill_and_resume("llama_tied");
}

#[test]
fn a_diverging_run_stops_and_keeps_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    write_data(dir.path());
    let cfg = config(dir.path(), "llama_tied", "nan");
    let out = train(
        &cfg,
        &[
            "--set",
            "optim.learning_rate=1e38",
            "--set",
            "optim.warmup_steps=0",
            "--set",
            "train.save_every=1",
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("training stopped") && err.contains("last good checkpoint"),
        "{err}"
    );
    assert!(dir.path().join("nan/checkpoint.safetensors").exists());
    assert!(!dir.path().join("nan/prompt.safetensors").exists());
}

#[test]
fn config_mistakes_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    write_data(dir.path());
    let cfg = config(dir.path(), "llama_tied", "bad");
    let out = train(&cfg, &["--set", "optim.learnin_rate=0.1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("optim") && err.contains("learnin_rate"), "{err}");

    let out = train(
        &cfg,
        &["--set", "prompt.init={ sample_vocab = { seed = 1, belw = 3 } }"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("prompt.init") && err.contains("belw"), "{err}");

    // Both in the file is a mistake; `--set` of one replaces the other (an override).
    let both = dir.path().join("both.toml");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("max_steps = 7", "max_steps = 7\nepochs = 3");
    std::fs::write(&both, text).unwrap();
    let out = train(&both, &[]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_steps or epochs"));
    let out = tpv()
        .args(["data"])
        .arg(&cfg)
        .args(["--set", "optim.epochs=3"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    std::fs::write(dir.path().join("broken.jsonl"), "{\"input\": \"w3\"}\n").unwrap();
    let out = train(&cfg, &["--set", "data.train=broken.jsonl"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("target") && err.contains("example 1"), "{err}");
}

#[test]
fn early_stopping_ends_the_run_after_the_patience_runs_out() {
    let dir = tempfile::tempdir().unwrap();
    write_data(dir.path());
    let cfg = config(dir.path(), "llama_tied", "early");
    // With a learning rate of 0 nothing improves after the first evaluation.
    let out = train(
        &cfg,
        &[
            "--set",
            "optim.learning_rate=0.0",
            "--set",
            "train.eval_every=1",
            "--set",
            "train.early_stopping_patience=2",
            "--set",
            "train.select=\"loss\"",
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("early stopping at step 3"));
    let (_, metrics) = result(&dir.path().join("early/prompt.safetensors"));
    assert_eq!(metrics["steps"], 3.0);
    assert_eq!(metrics["best_step"], 1.0);
}
