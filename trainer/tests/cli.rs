//! End-to-end tests of the `tpv` commands on the committed fixtures.

// Helpers outside #[test] functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use serde_json::Value;
use tpv_shared::peft::PeftAdapter;
use tpv_shared::similarity::{Measure, matrix};
use tpv_shared::{PromptKind, SoftPrompt, runfile};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

fn sample(name: &str) -> PathBuf {
    fixtures().join(format!("runs/v1/{name}.safetensors"))
}

fn tpv() -> Command {
    Command::cargo_bin("tpv").unwrap()
}

fn json_out(cmd: &mut Command) -> Value {
    let out = cmd.assert().success().get_output().stdout.clone();
    serde_json::from_slice(&out).unwrap()
}

fn read_run(path: &Path) -> SoftPrompt {
    runfile::read_run(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn inspect_reports_run_files_and_adapters() {
    let v = json_out(
        tpv()
            .arg("inspect")
            .arg(sample("sst2-origin0"))
            .arg(fixtures().join("peft/t5_seq2seq"))
            .arg("--json"),
    );
    let run = &v[0];
    assert_eq!(run["kind"], "task-prompt");
    assert_eq!(run["format"], "tpv-run v1");
    assert_eq!(run["shape"], serde_json::json!([4, 8]));
    assert_eq!(run["metadata"]["tasks"][0], "sst2");
    assert!(run["vector_norms"]["frobenius"].as_f64().unwrap() > 0.0);
    assert_eq!(run["curves"]["train_loss"], 3);
    let peft = &v[1];
    assert_eq!(peft["format"], "peft PROMPT_TUNING adapter (SEQ_2_SEQ_LM)");
    assert_eq!(peft["stored_shape"], serde_json::json!([8, 16]));
    assert_eq!(peft["shape"], serde_json::json!([4, 16]));

    // The human form names the file and the kind.
    let out = tpv()
        .arg("inspect")
        .arg(fixtures().join("peft/llama_causal/adapter_model.safetensors"))
        .assert()
        .success();
    let text = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    assert!(text.contains("CAUSAL_LM") && text.contains("task-prompt"), "{text}");
}

#[test]
fn peft_import_and_export_round_trip_bit_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let origin = tmp.path().join("origin.safetensors");
    let task = tmp.path().join("task.safetensors");
    tpv()
        .args(["peft", "import", "--as", "origin", "--origin-id", "origin0", "-o"])
        .arg(&origin)
        .arg(fixtures().join("peft/llama_causal"))
        .assert()
        .success();
    let v = json_out(
        tpv()
            .args(["peft", "import", "--task", "sst2", "--json", "-o"])
            .arg(&task)
            .arg("--origin")
            .arg(&origin)
            .arg(fixtures().join("peft/llama_causal_bf16")),
    );
    assert_eq!(v["has_origin"], true);
    let p = read_run(&task);
    assert_eq!(p.kind(), PromptKind::TaskPrompt);
    assert_eq!(p.label(), "sst2@origin0");
    assert!(p.vector_values().is_ok());

    // seq2seq: export keeps peft's [2·nvt, d] shape and the used rows bit for bit.
    let run = tmp.path().join("t5.safetensors");
    let adapter_dir = tmp.path().join("t5_adapter");
    tpv()
        .args(["peft", "import", "-o"])
        .arg(&run)
        .arg(fixtures().join("peft/t5_seq2seq/adapter_model.safetensors"))
        .assert()
        .success();
    tpv()
        .args(["peft", "export", "-o"])
        .arg(&adapter_dir)
        .arg(&run)
        .assert()
        .success();
    let load = |dir: &Path| {
        PeftAdapter::from_parts(
            Some(&std::fs::read_to_string(dir.join("adapter_config.json")).unwrap()),
            &std::fs::read(dir.join("adapter_model.safetensors")).unwrap(),
        )
        .unwrap()
    };
    let original = load(&fixtures().join("peft/t5_seq2seq"));
    let exported = load(&adapter_dir);
    assert_eq!(exported.embeddings.shape(), [8, 16]);
    let bits = |a: &PeftAdapter| {
        a.embeddings.as_slice()[..64]
            .iter()
            .map(|x| x.to_bits())
            .collect::<Vec<_>>()
    };
    assert_eq!(bits(&exported), bits(&original));
}

#[test]
fn peft_export_refuses_vectors_and_unknown_layouts() {
    let tmp = tempfile::tempdir().unwrap();
    let tau = tmp.path().join("tau.safetensors");
    tpv()
        .args(["combine", "--vector"])
        .arg(sample("sst2-origin0"))
        .arg("-o")
        .arg(&tau)
        .assert()
        .success();
    let out = tpv()
        .args(["peft", "export", "-o"])
        .arg(tmp.path().join("x"))
        .arg(&tau)
        .assert()
        .failure();
    let err = String::from_utf8(out.get_output().stderr.clone()).unwrap();
    assert!(err.contains("not a prompt"), "{err}");
}

#[test]
fn combine_sums_vectors_onto_an_origin() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("sum.safetensors");
    let v = json_out(
        tpv()
            .args(["combine", "--json", "--lambda", "0.5", "--origin"])
            .arg(sample("origin0"))
            .arg("--vector")
            .arg(sample("sst2-origin0"))
            .arg("--vector")
            .arg(sample("mnli-origin0"))
            .args(["--weight", "1", "--weight", "-0.5", "-o"])
            .arg(&out),
    );
    assert_eq!(v["kind"], "combination");
    assert_eq!(
        v["expression"],
        "origin0 + 0.5*sum(tau[sst2@origin0], -0.5*tau[mnli@origin0])"
    );
    assert_eq!(v["mixed_origins"], false);
    let result = read_run(&out);
    let (o, a, b) = (
        read_run(&sample("origin0")),
        read_run(&sample("sst2-origin0")),
        read_run(&sample("mnli-origin0")),
    );
    let (ta, tb) = (a.vector_values().unwrap(), b.vector_values().unwrap());
    for i in 0..o.values.len() {
        let want =
            f64::from(o.values.as_slice()[i]) + 0.5 * (f64::from(ta.as_slice()[i]) - 0.5 * f64::from(tb.as_slice()[i]));
        assert!((f64::from(result.values.as_slice()[i]) - want).abs() < 1e-6);
    }
    assert_eq!(result.meta.tasks, ["sst2", "mnli"]);
    assert_eq!(result.meta.expression.as_deref(), v["expression"].as_str());

    // Cross-origin: θ₀ of origin1 + τ from origin0 is allowed and flagged.
    let cross = tmp.path().join("cross.safetensors");
    let v = json_out(
        tpv()
            .args(["combine", "--json", "--origin"])
            .arg(sample("origin1"))
            .arg("--vector")
            .arg(sample("sst2-origin0"))
            .arg("-o")
            .arg(&cross),
    );
    assert_eq!(v["mixed_origins"], true);
}

#[test]
fn combine_merge_flags_are_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let base = || {
        let mut c = tpv();
        c.args(["combine", "--origin"])
            .arg(sample("origin0"))
            .arg("--vector")
            .arg(sample("sst2-origin0"))
            .arg("--vector")
            .arg(sample("mnli-origin0"));
        c
    };
    let out = tmp.path().join("ties.safetensors");
    base()
        .args(["--method", "ties", "--density", "0.3", "--sign", "count", "-o"])
        .arg(&out)
        .assert()
        .success();
    assert_eq!(
        read_run(&out).meta.expression.as_deref(),
        Some("origin0 + ties(density=0.3, sign=count)(tau[sst2@origin0], tau[mnli@origin0])")
    );
    let fails = |args: &[&str], needle: &str| {
        let o = base()
            .args(args)
            .arg("-o")
            .arg(tmp.path().join("x.safetensors"))
            .assert()
            .failure();
        let err = String::from_utf8(o.get_output().stderr.clone()).unwrap();
        assert!(err.contains(needle), "{args:?}: {err}");
    };
    fails(&["--method", "ties"], "--density is required");
    fails(&["--density", "0.5"], "--density has no effect");
    fails(&["--method", "dare", "--drop", "1.5"], "must be in [0, 1)");
    fails(&["--weight", "1"], "2 vectors");
    // An origin is not a vector.
    let o = tpv()
        .args(["combine", "--vector"])
        .arg(sample("origin0"))
        .arg("-o")
        .arg(tmp.path().join("y.safetensors"))
        .assert()
        .failure();
    assert!(
        String::from_utf8(o.get_output().stderr.clone())
            .unwrap()
            .contains("is an origin")
    );
}

#[test]
fn similarity_json_matches_the_library() {
    let files: Vec<PathBuf> = ["sst2-origin0", "sst2-origin1", "mnli-origin0"]
        .iter()
        .map(|n| sample(n))
        .collect();
    for (vectors, measure, m) in [
        (false, "cosine-mean", Measure::CosineMean),
        (true, "cosine-flat", Measure::CosineFlat),
        (true, "norm-diff", Measure::NormDiff),
    ] {
        let mut cmd = tpv();
        cmd.args(["similarity", "--json", "--measure", measure]).args(&files);
        if vectors {
            cmd.arg("--vectors");
        }
        let v = json_out(&mut cmd);
        assert_eq!(
            v["labels"],
            serde_json::json!(["sst2@origin0", "sst2@origin1", "mnli@origin0"])
        );
        let prompts: Vec<SoftPrompt> = files.iter().map(|f| read_run(f)).collect();
        let values: Vec<_> = prompts
            .iter()
            .map(|p| {
                if vectors {
                    p.vector_values().unwrap()
                } else {
                    p.values.clone()
                }
            })
            .collect();
        let want = matrix(&values.iter().collect::<Vec<_>>(), m).unwrap();
        for (i, row) in want.iter().enumerate() {
            for (j, w) in row.iter().enumerate() {
                let got = v["matrix"][i][j].as_f64().unwrap();
                assert!((got - w).abs() < 1e-12, "{measure} [{i}][{j}]");
            }
        }
    }
}

#[test]
fn similarity_across_origins() {
    let mut cmd = tpv();
    cmd.args(["similarity", "--json", "--vectors", "--across-origins"]);
    for task in ["sst2", "mnli"] {
        for o in 0..3 {
            cmd.arg(sample(&format!("{task}-origin{o}")));
        }
    }
    let v = json_out(&mut cmd);
    assert_eq!(v["tasks"], serde_json::json!(["sst2", "mnli"]));
    assert_eq!(v["origins"], serde_json::json!(["origin0", "origin1", "origin2"]));
    assert!(v["matrix"][0][0].as_f64().unwrap() > 0.9);
    assert!(v["pairs"][0][0][1][1].is_null());
    assert_eq!(v["pairs"][0][1].as_array().unwrap().len(), 3);
    // Without origin ids the view cannot be built.
    let o = tpv()
        .args(["similarity", "--across-origins"])
        .arg(fixtures().join("peft/t5_seq2seq"))
        .assert()
        .failure();
    assert!(
        String::from_utf8(o.get_output().stderr.clone())
            .unwrap()
            .contains("no origin id")
    );
}

#[test]
fn bad_files_fail_cleanly_and_outputs_stay_intact() {
    let tmp = tempfile::tempdir().unwrap();
    let corrupt = tmp.path().join("corrupt.safetensors");
    let mut bytes = std::fs::read(sample("sst2-origin0")).unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&corrupt, &bytes).unwrap();
    let o = tpv().arg("inspect").arg(&corrupt).assert().failure();
    let err = String::from_utf8(o.get_output().stderr.clone()).unwrap();
    assert!(
        err.contains("corrupt.safetensors") && err.starts_with("error:"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    // A failed combine does not touch an existing output.
    let out = tmp.path().join("out.safetensors");
    std::fs::write(&out, b"previous").unwrap();
    tpv()
        .args(["combine", "--origin"])
        .arg(sample("origin0"))
        .arg("--vector")
        .arg(&corrupt)
        .arg("-o")
        .arg(&out)
        .assert()
        .failure();
    assert_eq!(std::fs::read(&out).unwrap(), b"previous");

    let missing = tpv()
        .arg("inspect")
        .arg(tmp.path().join("nope.safetensors"))
        .assert()
        .failure();
    assert!(
        String::from_utf8(missing.get_output().stderr.clone())
            .unwrap()
            .contains("nope.safetensors")
    );
    let no_adapter = tpv().arg("inspect").arg(tmp.path()).assert().failure();
    assert!(
        String::from_utf8(no_adapter.get_output().stderr.clone())
            .unwrap()
            .contains("adapter_model.safetensors")
    );
}

/// Issue 15 (11): `inspect` printed terminal escape sequences from a file's metadata raw.
#[test]
fn inspect_shows_control_characters_escaped() {
    let tmp = tempfile::tempdir().unwrap();
    let mut p = read_run(&sample("sst2-origin0"));
    p.meta.name = Some("evil\u{1b}]0;pwned\u{7}\u{1b}[2J\nfake line".into());
    p.meta.tasks = vec!["t\u{1b}[31mred".into()];
    let file = tmp.path().join("evil.safetensors");
    std::fs::write(&file, runfile::write_run(&p).unwrap()).unwrap();
    let o = tpv().arg("inspect").arg(&file).assert().success();
    let stdout = String::from_utf8(o.get_output().stdout.clone()).unwrap();
    assert!(!stdout.contains('\u{1b}') && !stdout.contains('\u{7}'), "{stdout:?}");
    assert!(
        stdout.contains("\\u{1b}") && !stdout.contains("\nfake line"),
        "{stdout}"
    );
}

/// Issue 15 (11): the 1 GiB size guard read /dev/zero without end and hung on a FIFO; only
/// regular files are read, and never past the limit.
#[cfg(unix)]
#[test]
fn devices_and_fifos_are_refused_without_reading() {
    use std::time::{Duration, Instant};
    let tmp = tempfile::tempdir().unwrap();
    let fifo = tmp.path().join("adapter.safetensors");
    let config = tmp.path().join("fifo.toml");
    for f in [&fifo, &config] {
        assert!(std::process::Command::new("mkfifo").arg(f).status().unwrap().success());
    }
    for args in [
        vec!["inspect".to_owned(), "/dev/zero".to_owned()],
        vec!["inspect".to_owned(), fifo.display().to_string()],
        vec!["train".to_owned(), config.display().to_string()],
        vec!["sweep".to_owned(), "--list".to_owned(), config.display().to_string()],
    ] {
        let t = Instant::now();
        let o = tpv().args(&args).timeout(Duration::from_secs(30)).assert().failure();
        let err = String::from_utf8_lossy(&o.get_output().stderr).to_string();
        assert!(err.contains("not a regular file"), "{args:?}: {err}");
        assert!(t.elapsed() < Duration::from_secs(10), "{args:?} took {:?}", t.elapsed());
    }
}

#[test]
fn exports_equal_the_adapters_peft_was_checked_to_load() {
    // tests/fixtures/peft/exported_by_tpv/* were loaded by PeftModel.from_pretrained (see
    // tests/fixtures/README.md); today's export of the same input must write the same adapter.
    let tmp = tempfile::tempdir().unwrap();
    for name in ["t5_seq2seq", "llama_causal"] {
        let run = tmp.path().join(format!("{name}.safetensors"));
        let dir = tmp.path().join(name);
        tpv()
            .args(["peft", "import", "-o"])
            .arg(&run)
            .arg(fixtures().join("peft").join(name))
            .assert()
            .success();
        tpv()
            .args(["peft", "export", "-o"])
            .arg(&dir)
            .arg(&run)
            .assert()
            .success();
        let checked = fixtures().join("peft/exported_by_tpv").join(name);
        let weights = |d: &Path| std::fs::read(d.join("adapter_model.safetensors")).unwrap();
        assert_eq!(weights(&dir), weights(&checked), "{name}: weights");
        let config = |d: &Path| -> Value {
            serde_json::from_slice(&std::fs::read(d.join("adapter_config.json")).unwrap()).unwrap()
        };
        assert_eq!(config(&dir), config(&checked), "{name}: config");
    }
}

#[test]
fn a_closed_pipe_is_not_a_crash() {
    // `tpv inspect … | head -1`: stdout closes early; tpv must exit quietly, not panic.
    let bin = assert_cmd::cargo::cargo_bin("tpv");
    let mut child = std::process::Command::new(bin)
        .arg("inspect")
        .args((0..3).map(|o| sample(&format!("sst2-origin{o}"))))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(!err.contains("panicked"), "{err}");
    assert!(out.status.success(), "{err}");
}

/// Issue 35: `tpv diff` says what differs between two runs: the metadata (tasks, data), the
/// results with B − A, the curves' last values, and the prompts' and vectors' distance (the
/// same cosine `tpv similarity` gives); a run against itself differs in nothing.
#[test]
fn diff_shows_what_differs_between_two_runs() {
    let (a, b) = (sample("sst2-origin0"), sample("mnli-origin0"));
    let d = json_out(tpv().args(["--json", "diff"]).arg(&a).arg(&b));
    let keys: Vec<&str> = d["meta"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["data_fingerprint", "tasks"]);
    let metric = &d["metrics"][0];
    assert_eq!(
        (metric["key"].as_str(), metric["a"].as_f64(), metric["b"].as_f64()),
        (Some("test_accuracy"), Some(0.9), Some(0.8))
    );
    assert!((metric["b_minus_a"].as_f64().unwrap() + 0.1).abs() < 1e-12);
    let (va, vb) = (
        read_run(&a).vector_values().unwrap(),
        read_run(&b).vector_values().unwrap(),
    );
    let want = matrix(&[&va, &vb], Measure::CosineMean).unwrap()[0][1];
    assert!((d["vectors"]["cosine_mean"].as_f64().unwrap() - want).abs() < 1e-9);
    let same = json_out(tpv().args(["--json", "diff"]).arg(&a).arg(&a));
    assert!(same["meta"].as_array().unwrap().is_empty() && same["config"].as_array().unwrap().is_empty());
    assert_eq!(same["prompts"]["l2"], 0.0);
    let text = tpv()
        .arg("diff")
        .arg(&a)
        .arg(&b)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let text = String::from_utf8(text).unwrap();
    assert!(
        text.contains("test_accuracy: 0.9000 → 0.8000  (-0.1000)") && text.contains("config: the same"),
        "{text}"
    );
}
