//! `tpv train` end to end on the tiny fixture models: a killed run resumed from its checkpoint
//! ends exactly where an uninterrupted run ends; a diverging run stops with a clear message and
//! keeps its last checkpoint; config mistakes are errors naming the key.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use assert_cmd::Command;
#[path = "../../shared/tests/common/fixtures.rs"]
mod fixtures;
#[path = "common/run_result.rs"]
mod run_result;
use run_result::result;

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
    // A finished run resumed is left alone, and says so (issue 15 (11): it printed "wrote").
    let out = train(&full, &["--resume"]);
    assert!(out.status.success());
    assert_eq!(result(&run).0, want.0);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("nothing to do") && !said.contains("wrote"), "{said}");
}

/// Issue 15 (8): `--overwrite` deleted the finished result at start, so a kill (or a full disk)
/// left only a checkpoint. The old result now stays until the new one replaces it.
#[test]
fn overwrite_keeps_the_finished_result_until_its_replacement_is_written() {
    let dir = tempfile::tempdir().unwrap();
    write_data(dir.path());
    let cfg = config(dir.path(), "llama_tied", "kept");
    assert!(train(&cfg, &[]).status.success());
    let run = dir.path().join("kept/prompt.safetensors");
    let before = std::fs::read(&run).unwrap();
    let out = train(&cfg, &["--overwrite", "--abort-after-step", "3"]);
    assert!(!out.status.success(), "killed");
    // What a kill in the middle of a checkpoint write leaves; the next run removes it.
    let stale = dir.path().join("kept/.tpv-tmp-AbC123");
    std::fs::write(&stale, b"half a checkpoint").unwrap();
    assert_eq!(
        std::fs::read(&run).unwrap(),
        before,
        "the finished result survived the kill"
    );
    let out = train(&cfg, &["--overwrite", "--set", "optim.learning_rate=0.1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_ne!(std::fs::read(&run).unwrap(), before, "replaced at the end");
    assert!(!stale.exists(), "a stale temporary file stayed");
    assert!(!dir.path().join("kept/checkpoint.safetensors").exists());
}

/// Issue 15 (9): an unwritable output directory was found only at the first checkpoint or at the
/// end (with save_every ≥ max_steps, after the whole run). Now before the model loads: an output
/// under a regular file (fails for root too), and a read-only directory where the user is not root.
#[test]
fn an_unwritable_output_directory_stops_the_run_before_it_trains() {
    let dir = tempfile::tempdir().unwrap();
    write_data(dir.path());
    std::fs::write(dir.path().join("a-file"), "").unwrap();
    let cfg = config(dir.path(), "llama_tied", "unwritable");
    let under_a_file = format!("train.output={:?}", dir.path().join("a-file/run").display().to_string());
    let out = train(&cfg, &["--set", "train.save_every=100", "--set", &under_a_file]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("output directory"), "{err}");
    assert!(!err.contains("step "), "it trained first: {err}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let ro = dir.path().join("ro");
        std::fs::create_dir(&ro).unwrap();
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
        if tempfile::NamedTempFile::new_in(&ro).is_err() {
            let cfg = config(dir.path(), "llama_tied", "ro");
            let out = train(&cfg, &["--set", "train.save_every=100"]);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                !out.status.success() && err.contains("cannot write to the output directory"),
                "{err}"
            );
        }
    }
}

/// Issue 15 (10): one truncated run file in a study counted as finished, then aggregate and
/// report failed on the whole study. It is listed as damaged, and the next sweep runs it again.
#[test]
fn a_damaged_run_file_is_listed_and_run_again() {
    let dir = tempfile::tempdir().unwrap();
    write_data(dir.path());
    let cfg = config(dir.path(), "llama_tied", "single");
    assert!(train(&cfg, &[]).status.success());
    let run = dir.path().join("single/prompt.safetensors");
    let bytes = std::fs::read(&run).unwrap();
    std::fs::write(&run, &bytes[..bytes.len() / 2]).unwrap();
    let out = train(&cfg, &["--resume"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.contains("does not read"), "{err}");
    // The same prompt again (the metadata's creation time may differ).
    let first = dir.path().join("first.safetensors");
    std::fs::write(&first, &bytes).unwrap();
    assert_eq!(result(&run), result(&first));
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

/// `tpv train` on every other decoder family: trains, evaluates, and a killed run resumes to the
/// same prompt.
#[test]
fn a_killed_run_of_every_other_decoder_family_resumes_to_the_same_prompt() {
    for model in fixtures::decoders().filter(|m| !m.starts_with("llama")) {
        kill_and_resume(model);
    }
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

/// Issue 15 (6, 11): numbers that size allocations or loops are range-checked before anything is
/// loaded (batch_size = 1e11 aborted on 800 GB, virtual_tokens = i64::MAX panicked, epochs ≤ 0 or
/// NaN trained 1 step and inf forever; warmup_ratio, dropout, max_grad_norm, betas were unchecked).
/// Names have one parser each (`tpv_shared::names`): flags list the known names, configs name
/// the key, and nothing falls back to a default.
#[test]
fn unknown_names_are_refused_with_the_known_ones() {
    let dir = tempfile::tempdir().unwrap();
    write_data(dir.path());
    let cfg = config(dir.path(), "llama_tied", "names");
    for (set, needles) in [
        ("model.dtype=\"f64\"", ["model.dtype", "f32, bf16, f16"]),
        ("model.device=\"gpu\"", ["model.device", "cpu, cuda"]),
    ] {
        let out = train(&cfg, &["--set", set]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && needles.iter().all(|n| err.contains(n)),
            "{set}: {err}"
        );
    }
    for (args, needle) in [
        (
            &["combine", "--vector", "x", "-o", "y", "--method", "average"][..],
            "dare-ties",
        ),
        (&["combine", "--vector", "x", "-o", "y", "--sign", "most"][..], "count"),
        (&["similarity", "x", "--measure", "cosine"][..], "cosine-flat"),
        (
            &["eval", "--model", "m", "--data", "d", "--scoring", "best"][..],
            "rank",
        ),
        (
            &["peft", "export", "x", "-o", "y", "--task-type", "SEQ_2_SEQ_LM"][..],
            "seq2seq",
        ),
    ] {
        let out = assert_cmd::Command::cargo_bin("tpv")
            .unwrap()
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(needle), "{args:?}: {err}");
    }
}

#[test]
fn out_of_range_numbers_are_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    write_data(dir.path());
    let cfg = config(dir.path(), "llama_tied", "range");
    for (set, key) in [
        ("optim.batch_size=100000000000", "optim.batch_size"),
        ("prompt.virtual_tokens=9223372036854775807", "prompt.virtual_tokens"),
        ("prompt.virtual_tokens=100000", "prompt.virtual_tokens"),
        ("train.eval_batch_size=0", "train.eval_batch_size"),
        ("train.max_new_tokens=1000000000", "train.max_new_tokens"),
        ("optim.gradient_accumulation=100000000", "optim.gradient_accumulation"),
        ("data.max_source_tokens=0", "data.max_source_tokens"),
        ("optim.epochs=0", "optim.epochs"),
        ("optim.epochs=-1", "optim.epochs"),
        ("optim.epochs=nan", "optim.epochs"),
        ("optim.epochs=inf", "optim.epochs"),
        ("optim.max_steps=0", "optim.max_steps"),
        ("optim.warmup_ratio=1.5", "optim.warmup_ratio"),
        ("optim.warmup_ratio=nan", "optim.warmup_ratio"),
        ("train.dropout=1.0", "train.dropout"),
        ("train.dropout=-0.1", "train.dropout"),
        ("optim.max_grad_norm=0", "optim.max_grad_norm"),
        ("optim.max_grad_norm=nan", "optim.max_grad_norm"),
        ("optim.beta1=1.0", "optim.beta1"),
        ("optim.beta2=nan", "optim.beta2"),
        ("optim.eps=0", "optim.eps"),
        ("optim.weight_decay=-1", "optim.weight_decay"),
    ] {
        let out = train(&cfg, &["--set", set]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(key), "{set}: {err}");
        assert!(
            !err.contains("panicked") && !err.contains("memory allocation"),
            "{set}: {err}"
        );
    }
    assert!(!dir.path().join("range").exists(), "nothing was written");
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

/// Issue 17 (energy): a run records its device hours and energy — measured from the CPU
/// packages' RAPL counters where they read (a fake powercap tree here, its counter advancing and
/// wrapping while the run trains), estimated otherwise and said so — and `tpv aggregate` would
/// sum them into the study's statement.
#[test]
fn a_run_records_its_energy_from_rapl_or_says_it_is_an_estimate() {
    let dir = tempfile::tempdir().unwrap();
    write_data(dir.path());
    let powercap = dir.path().join("powercap");
    let package = powercap.join("intel-rapl:0");
    std::fs::create_dir_all(&package).unwrap();
    std::fs::create_dir_all(powercap.join("intel-rapl:0:0")).unwrap();
    let range: u64 = 1_000_000_000;
    std::fs::write(package.join("max_energy_range_uj"), range.to_string()).unwrap();
    std::fs::write(package.join("energy_uj"), (range - 5_000_000).to_string()).unwrap();
    let cfg = config(dir.path(), "llama_tied", "energy");
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("tpv"))
        .arg("train")
        .arg(&cfg)
        .env("TPV_POWERCAP", &powercap)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The counter advances 1 J every 2 ms, wrapping past its range.
    let mut uj = range - 5_000_000;
    while child.try_wait().unwrap().is_none() {
        uj = (uj + 1_000_000) % range;
        // Replaced whole, as sysfs reads are: never an empty file to the reader.
        std::fs::write(package.join("energy_uj.new"), uj.to_string()).unwrap();
        std::fs::rename(package.join("energy_uj.new"), package.join("energy_uj")).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    assert!(child.wait().unwrap().success());
    let meta = |name: &str| -> Value {
        let bytes = std::fs::read(dir.path().join(name).join("prompt.safetensors")).unwrap();
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        serde_json::from_str(&header.metadata().as_ref().unwrap()["tpv"]).unwrap()
    };
    let energy = &meta("energy")["config"]["energy"];
    assert!(
        energy["method"].as_str().unwrap().starts_with("rapl (1 CPU package)"),
        "{energy}"
    );
    assert!(
        energy["kwh"].as_f64().unwrap() > 0.0 && energy["device_hours"].as_f64().unwrap() > 0.0,
        "{energy}"
    );
    // No readable counters: an estimate, and the assumption named.
    let cfg = config(dir.path(), "llama_tied", "estimated");
    let out = tpv()
        .arg("train")
        .arg(&cfg)
        .env("TPV_POWERCAP", dir.path().join("none"))
        .env("TPV_CPU_WATTS", "20")
        .output()
        .unwrap();
    assert!(out.status.success());
    let energy = &meta("estimated")["config"]["energy"];
    let method = energy["method"].as_str().unwrap();
    assert!(method.starts_with("estimate:") && method.contains("× 20 W"), "{energy}");
}

/// Issue 17 (live curves): training streams its curves to a TensorBoard event file in the run's
/// directory; TensorBoard's own reader (tests/tensorboard/read_events.py, in the venv
/// scripts/setup.sh makes) gets back every point of the run file's curves, and the gradient norm
/// of every step.
#[test]
fn live_curves_are_tensorboard_event_files_tensorboard_reads() {
    let dir = tempfile::tempdir().unwrap();
    write_data(dir.path());
    let cfg = config(dir.path(), "llama_tied", "curves");
    assert!(train(&cfg, &[]).status.success());
    let run = dir.path().join("curves");
    let events: Vec<_> = std::fs::read_dir(&run)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("events.out.tfevents."))
        .collect();
    assert_eq!(events.len(), 1);
    let cache = std::env::var_os("TPV_CACHE").map_or_else(
        || Path::new(&std::env::var_os("HOME").unwrap()).join(".cache/tpv"),
        PathBuf::from,
    );
    let python = cache.join("tbenv/bin/python");
    assert!(python.exists(), "{} is missing: run scripts/setup.sh", python.display());
    let out = std::process::Command::new(&python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/tensorboard/read_events.py"))
        .arg(&run)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let read: Value = serde_json::from_slice(&out.stdout).unwrap();
    let bytes = std::fs::read(run.join("prompt.safetensors")).unwrap();
    let prompt = tpv_shared::runfile::read_run(&bytes).unwrap();
    assert!(prompt.curves.len() >= 3, "{:?}", prompt.curves.keys());
    for (name, curve) in &prompt.curves {
        let points = read[name].as_array().unwrap_or_else(|| panic!("no {name} in {read}"));
        assert_eq!(points.len(), curve.steps.len(), "{name}");
        for (p, (s, v)) in points.iter().zip(curve.steps.iter().zip(&curve.values)) {
            assert_eq!(p[0].as_f64().unwrap() as f32, *s, "{name} step");
            assert_eq!(p[1].as_f64().unwrap() as f32, *v, "{name} at step {s}");
        }
    }
    assert_eq!(
        read["grad_norm"].as_array().unwrap().len(),
        prompt.curves["train_loss"].steps.len()
    );
}

/// Issue 17: `train.gradient_checkpointing` (each layer recomputed in the backward pass) trains
/// the same prompt as the plain backward pass, and a run may switch it on when it resumes; T5,
/// where it is not implemented, is refused before training with a message naming the setting.
#[test]
fn gradient_checkpointing_trains_the_same_prompt() {
    let dir = tempfile::tempdir().unwrap();
    write_data(dir.path());
    let mut runs = Vec::new();
    for (name, extra) in [
        ("plain", &[][..]),
        ("ckpt", &["--set", "train.gradient_checkpointing=true"][..]),
    ] {
        let cfg = config(dir.path(), "llama_tied", name);
        let out = train(&cfg, extra);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        runs.push(result(&dir.path().join(name).join("prompt.safetensors")));
    }
    assert!(runs[0].0 == runs[1].0, "the checkpointed run's prompt differs");
    assert_eq!(runs[0].1, runs[1].1);
    // A run killed without it resumes with it (as after running out of memory): the same prompt.
    let cfg = config(dir.path(), "llama_tied", "switched");
    assert!(!train(&cfg, &["--abort-after-step", "4"]).status.success());
    let out = train(&cfg, &["--resume", "--set", "train.gradient_checkpointing=true"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(result(&dir.path().join("switched/prompt.safetensors")).0 == runs[0].0);

    let cfg = config(dir.path(), "t5_relu_tied", "t5ckpt");
    let out = train(&cfg, &["--set", "train.gradient_checkpointing=true"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("train.gradient_checkpointing") && err.contains("T5"),
        "{err}"
    );
    assert!(!dir.path().join("t5ckpt/checkpoint.safetensors").exists());
}

/// Issue 18: ATTEMPT (`[attempt] sources = […]`): the target prompt and attention module train
/// and lower the loss, the run file (kind `attempt`) scores again with `tpv eval` as training
/// scored it, gradient checkpointing and a killed run's resume give the same file, and
/// arithmetic refuses it.
#[test]
fn attempt_trains_scores_again_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    write_data(dir.path());
    let model = "llama_tied";
    // Two source prompts from the same origin: one trained on the task, one on the first steps.
    let mut sources = Vec::new();
    for (name, steps) in [("src_a", "7"), ("src_b", "2")] {
        let cfg = config(dir.path(), model, name);
        let out = train(&cfg, &["--set", &format!("optim.max_steps={steps}")]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        sources.push(dir.path().join(name).join("prompt.safetensors"));
    }
    let attempt_config = |name: &str| {
        let cfg = config(dir.path(), model, name);
        let mut text = std::fs::read_to_string(&cfg).unwrap();
        text.push_str(&format!(
            "\n[attempt]\nsources = [{:?}, {:?}]\n",
            sources[0].display().to_string(),
            sources[1].display().to_string()
        ));
        std::fs::write(&cfg, text).unwrap();
        cfg
    };
    let cfg = attempt_config("attempt");
    let out = train(&cfg, &["--set", "optim.max_steps=12"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let run = dir.path().join("attempt/prompt.safetensors");
    let bytes = std::fs::read(&run).unwrap();
    let p = tpv_shared::runfile::read_run(&bytes).unwrap();
    assert_eq!(p.kind(), tpv_shared::PromptKind::Attempt);
    let module = p.attempt.as_deref().unwrap();
    assert_eq!(module.source_labels.len(), 2);
    // The sources are stored as they were, frozen.
    let a = tpv_shared::runfile::read_run(&std::fs::read(&sources[0]).unwrap()).unwrap();
    assert_eq!(&module.sources.as_slice()[..a.values.len()], a.values.as_slice());
    // Training lowered the loss: the last steps' mean below the first's.
    let loss = &p.curves["train_loss"].values;
    let (first, last) = (loss[0], loss[loss.len() - 3..].iter().sum::<f32>() / 3.0);
    assert!(last < 0.9 * first, "train loss {first} → {last}: {loss:?}");
    let attention = &p.meta.config.as_ref().unwrap()["attempt"]["test_attention"];
    assert_eq!(attention.as_object().unwrap().len(), 3, "{attention}");

    // `tpv eval` scores the file as the run scored its test split.
    let eval = tpv()
        .args(["eval", "--json", "--max-new-tokens", "3", "--model"])
        .arg(root().join("tests/fixtures/models").join(model))
        .arg("--prompt")
        .arg(&run)
        .arg("--data")
        .arg(dir.path().join("test.jsonl"))
        .output()
        .unwrap();
    assert!(eval.status.success(), "{}", String::from_utf8_lossy(&eval.stderr));
    let report: Value = serde_json::from_slice(&eval.stdout).unwrap();
    let m = &p.meta.metrics;
    assert!(
        (report["loss"].as_f64().unwrap() - m["test_loss"]).abs() < 1e-4,
        "{report} vs {m:?}"
    );
    assert_eq!(report["exact_match"].as_f64().unwrap(), m["test_exact_match"]);
    let mean: f64 = report["attempt_attention"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_f64().unwrap())
        .sum();
    assert!((mean - 1.0).abs() < 1e-5, "{report}");

    // With gradient checkpointing (the mixed prompts' gradient through the recomputed layers):
    // the same file.
    let cfg = attempt_config("attempt_ckpt");
    let out = train(
        &cfg,
        &[
            "--set",
            "optim.max_steps=12",
            "--set",
            "train.gradient_checkpointing=true",
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(result(&dir.path().join("attempt_ckpt/prompt.safetensors")).0 == result(&run).0);

    // Killed after its checkpoint at step 4, resumed: the same file.
    let cfg = attempt_config("attempt_killed");
    assert!(
        !train(&cfg, &["--set", "optim.max_steps=12", "--abort-after-step", "5"])
            .status
            .success()
    );
    let out = train(&cfg, &["--set", "optim.max_steps=12", "--resume"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(result(&dir.path().join("attempt_killed/prompt.safetensors")).0 == result(&run).0);
    assert_eq!(
        result(&dir.path().join("attempt_killed/prompt.safetensors")).1,
        result(&run).1
    );

    // Arithmetic refuses it, naming what to do instead.
    let out = tpv()
        .args(["combine", "--origin"])
        .arg(&sources[0])
        .arg("--vector")
        .arg(&run)
        .arg("--output")
        .arg(dir.path().join("bad.safetensors"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ATTEMPT") && err.contains("tpv eval"), "{err}");
}

/// Issue 32 (9): `tpv train` on its own stops at a checkpoint on SIGTERM (a scheduler's time
/// limit) and exits 143; `--resume` then ends where an uninterrupted run ends.
#[test]
fn sigterm_stops_training_at_a_checkpoint_and_resume_finishes_it() {
    let dir = tempfile::tempdir().unwrap();
    write_data(dir.path());
    let sets = ["--set", "optim.max_steps=1500", "--set", "train.eval_every=25"];
    let full = config(dir.path(), "llama_tied", "full");
    assert!(train(&full, &sets).status.success());
    let want = result(&dir.path().join("full/prompt.safetensors"));

    let cfg = config(dir.path(), "llama_tied", "stopped");
    let ckpt = dir.path().join("stopped/checkpoint.safetensors");
    let log = dir.path().join("stopped.log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tpv"))
        .arg("train")
        .arg(&cfg)
        .args(sets)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while !ckpt.exists() {
        assert!(start.elapsed().as_secs() < 180, "no checkpoint within 180 s");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    tpv_trainer::train::stop::send(child.id(), tpv_trainer::train::stop::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    let err = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(143), "{err}");
    assert!(
        err.contains("interrupted by SIGTERM") && err.contains("--resume"),
        "{err}"
    );
    assert!(
        !dir.path().join("stopped/prompt.safetensors").exists(),
        "stopped before the end"
    );
    let out = train(&cfg, &[&["--resume"][..], &sets[..]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got = result(&dir.path().join("stopped/prompt.safetensors"));
    assert!(got.0 == want.0, "the resumed run differs from the uninterrupted one");
    assert_eq!(got.1, want.1);
}
