//! Studies end to end on the tiny fixture LLaMA: the job list, a partial study's aggregation
//! (missing runs listed), a sweep killed halfway and re-run (finished runs are not redone), the
//! Slurm scripts (array sizes, one resumable command per index), the tables and the report folder.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use serde_json::Value;

fn root() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .canonicalize()
        .unwrap()
}

/// Three small tasks over the fixture vocabulary (tokens w3 … w63), two labels each.
fn write_task(dir: &Path, name: &str, offset: usize) {
    let line = |i: usize| {
        let target = if i.is_multiple_of(2) { "w10" } else { "w11" };
        format!(
            "{{\"input\": \"w{} w{} w{}\", \"target\": \"{target}\"}}\n",
            20 + (i + offset) % 7,
            30 + (i * 3 + offset) % 11,
            45 + i % 2
        )
    };
    for (split, range) in [("train", 0..12), ("valid", 12..16), ("test", 16..20)] {
        std::fs::write(
            dir.join(format!("{name}-{split}.jsonl")),
            range.map(line).collect::<String>(),
        )
        .unwrap();
    }
}

/// The tiny study's config: tasks a, b, c (jsonl files in `dir`), its `[study]` tables as
/// given, and the base run sections; written to `dir/study.toml`.
fn study_toml(dir: &Path, study: &str) -> PathBuf {
    for (i, t) in ["a", "b", "c"].iter().enumerate() {
        write_task(dir, t, i * 5);
    }
    let data: String = ["a", "b", "c"]
        .iter()
        .map(|t| {
            format!(
                "[study.data.{t}]\ntrain = \"{t}-train.jsonl\"\nvalidation = \"{t}-valid.jsonl\"\ntest = \"{t}-test.jsonl\"\n"
            )
        })
        .collect();
    let text = format!(
        r#"# a tiny study for the tests
{study}
{data}
[model]
path = "{model}"

[prompt]
virtual_tokens = 3
init = {{ sample_vocab = {{ seed = 7 }} }}

[data]
shuffle = true

[optim]
learning_rate = 0.3
warmup_steps = 1
scheduler = "linear"
batch_size = 4
max_steps = 4

[train]
eval_every = 2
output = "unused"
max_new_tokens = 3
"#,
        model = root().join("tests/fixtures/models/llama_tied").display(),
    );
    let path = dir.join("study.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn study_config(dir: &Path) -> PathBuf {
    let study = format!(
        r#"[study]
name = "tiny"
output = "{out}"
origins = [0, 1]
tasks = ["a", "b"]

[study.set]
optim.max_steps = 4

[study.addition]
lambdas = [0.5, 1.0]

[study.cross_origin]

[study.transfer]
sources = ["a", "b"]
targets = ["c"]
shots = [0, 4]
inits = ["random", "spot", "tpv_sum"]
paper_recipe = false

[study.transfer.set]
optim.max_steps = 3
optim.batch_size = 2
"#,
        out = dir.join("study").display(),
    );
    study_toml(dir, &study)
}

fn tpv() -> Command {
    Command::cargo_bin("tpv").unwrap()
}

fn json_of(out: &std::process::Output) -> Value {
    assert!(
        out.status.success(),
        "tpv failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn run_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n == "prompt.safetensors") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

// 2 tasks × 2 origins of prompt tuning; 1 addition pair × 2 origins; 2 tasks × 2 ordered origin
// pairs of cross-origin; 1 target × (random, 2 SPoT sources, TPV sum) × 2 shot counts × 2 origins.
const JOBS: usize = 4 + 2 + 4 + 16;
// Stage 1: the jobs without dependencies (prompt tuning, random-init transfer).
const STAGE1: usize = 4 + 4;

#[test]
#[allow(
    clippy::too_many_lines,
    reason = "one study's whole life, each step on what the previous left"
)]
fn study_runs_resumes_aggregates_and_reports() {
    let tmp = tempfile::tempdir().unwrap();
    let config = study_config(tmp.path());
    let study = tmp.path().join("study");

    // The job list.
    let list = json_of(&tpv().args(["sweep", "--list", "--json"]).arg(&config).output().unwrap());
    let jobs = list["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), JOBS);
    assert_eq!(jobs.iter().filter(|j| j["stage"] == 1).count(), STAGE1);

    // A partial study: 3 jobs, then the aggregation lists the rest as missing.
    let out = json_of(
        &tpv()
            .args(["sweep", "--max-jobs", "3", "--json"])
            .arg(&config)
            .output()
            .unwrap(),
    );
    assert_eq!(out["ran"], 3);
    let agg = json_of(&tpv().args(["aggregate", "--json"]).arg(&study).output().unwrap());
    assert_eq!(agg["finished"], 3);
    assert_eq!(agg["missing"].as_array().unwrap().len(), JOBS - 3);
    assert!(
        std::fs::read_to_string(study.join("tables.md"))
            .unwrap()
            .contains("Missing runs (23)")
    );

    // A sweep killed in the middle of its first job (prompt tuning of b from origin1, at step 3,
    // after the checkpoint of step 2), then run again: finished runs are skipped and untouched,
    // the cut run resumes from its checkpoint.
    let before = run_files(&study);
    assert_eq!(before.len(), 3);
    let bytes_before: Vec<Vec<u8>> = before.iter().map(|p| std::fs::read(p).unwrap()).collect();
    let out = tpv()
        .args(["sweep", "--abort-in-job", "1:3"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success(), "the sweep was not killed");
    let mid = run_files(&study);
    assert_eq!(mid, before);
    let cut = study.join("prompt_tuning/b/origin1");
    assert!(
        cut.join("checkpoint.safetensors").exists(),
        "no checkpoint after the kill"
    );
    assert!(!cut.join("prompt.safetensors").exists());
    let bytes_mid: Vec<(PathBuf, Vec<u8>)> = mid.iter().map(|p| (p.clone(), std::fs::read(p).unwrap())).collect();

    let out = json_of(&tpv().args(["sweep", "--json"]).arg(&config).output().unwrap());
    assert_eq!(
        out["skipped"].as_u64().unwrap() as usize,
        mid.len(),
        "finished runs were redone"
    );
    assert_eq!(out["ran"].as_u64().unwrap() as usize, JOBS - mid.len());
    assert!(out["failed"].as_array().unwrap().is_empty());
    for (p, b) in before.iter().zip(&bytes_before) {
        assert_eq!(&std::fs::read(p).unwrap(), b, "{} changed", p.display());
    }
    for (p, b) in &bytes_mid {
        assert_eq!(&std::fs::read(p).unwrap(), b, "{} changed", p.display());
    }
    assert_eq!(run_files(&study).len(), JOBS);
    assert!(
        !run_files(&study)
            .iter()
            .any(|p| p.with_file_name("checkpoint.safetensors").exists()),
        "a checkpoint was left behind"
    );

    // The tables.
    let agg = json_of(&tpv().args(["aggregate", "--json"]).arg(&study).output().unwrap());
    assert_eq!(agg["finished"].as_u64().unwrap() as usize, JOBS);
    assert!(agg["missing"].as_array().unwrap().is_empty());
    let pt = agg["prompt_tuning"].as_array().unwrap();
    assert_eq!(pt.len(), 2);
    assert!(pt.iter().all(|r| r["test"]["n"] == 2));
    let transfer = agg["transfer"].as_array().unwrap();
    // (random, spot_a, spot_b, tpv_sum) × 2 shot counts.
    assert_eq!(transfer.len(), 8);
    let compared: Vec<&Value> = transfer.iter().filter(|r| !r["vs_tpv_sum"].is_null()).collect();
    assert_eq!(compared.len(), 6);
    // The impact statement: every training run (4 prompt tuning, 8 few-shot) recorded its
    // energy, measured or estimated.
    let energy = &agg["energy"];
    let runs = energy["measured_runs"].as_u64().unwrap() + energy["estimated_runs"].as_u64().unwrap();
    assert_eq!(runs, 4 + 8, "{energy}");
    assert!(
        energy["kwh"].as_f64().unwrap() >= 0.0 && energy["grid_intensity"] == 0.432,
        "{energy}"
    );
    // The paper's test (Student's, equal variances) on request: the tables name it and its p
    // values are the shared function's of the same values.
    assert_eq!(agg["test"], "welch");
    let student_dir = tmp.path().join("agg-student");
    let out = tpv()
        .args(["aggregate", "--test", "student", "-o"])
        .arg(&student_dir)
        .arg(&study)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("TPV-sum vs this: Student p (Bonferroni)"));
    assert!(String::from_utf8_lossy(&out.stdout).contains("## Energy"));
    let st: Value = serde_json::from_str(&std::fs::read_to_string(student_dir.join("tables.json")).unwrap()).unwrap();
    assert_eq!(st["test"], "student");
    let vals = |v: &Value| -> Vec<f64> {
        v["values"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_f64)
            .collect()
    };
    for r in st["cross_origin"].as_array().unwrap() {
        let want = tpv_shared::stats::student_t_test(&vals(&r["original"]), &vals(&r["cross"])).p;
        let got = r["test"]["p"].as_f64().unwrap_or(f64::NAN);
        assert!(got == want || (got.is_nan() && want.is_nan()), "{got} vs {want}");
    }
    assert!(
        std::fs::read_to_string(student_dir.join("tables.csv"))
            .unwrap()
            .contains("student_p")
    );
    // The report takes the same choice (its tables are the aggregate's), and the grid intensity.
    let site = tmp.path().join("site-student");
    let out = tpv()
        .args(["report", "--test", "student", "--grid-intensity", "0.25", "-o"])
        .arg(&site)
        .arg(&study)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let tables = std::fs::read_to_string(site.join("tables.md")).unwrap();
    assert!(
        tables.contains("Student p (Bonferroni)") && !tables.contains("Welch p"),
        "{tables}"
    );
    let site_json: Value = serde_json::from_str(&std::fs::read_to_string(site.join("tables.json")).unwrap()).unwrap();
    assert_eq!(site_json["energy"]["grid_intensity"], 0.25);
    let add = agg["addition"].as_array().unwrap();
    assert_eq!(add.len(), 2);
    assert!(add.iter().all(|r| r["combined"]["n"] == 2));
    assert!(
        add[0]["lambdas"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| [0.5, 1.0].contains(&l[0].as_f64().unwrap()))
    );
    let sim = &agg["similarity"]["vectors"];
    assert_eq!(sim["tasks"], serde_json::json!(["a", "b"]));
    // The figures (issue 18): each cell of the tasks × tasks SVG is the table's value.
    let svg = std::fs::read_to_string(study.join("figures/similarity_vectors.svg")).unwrap();
    let values: Vec<f64> = svg
        .split("data-value=\"")
        .skip(1)
        .map(|v| v[..v.find('"').unwrap()].parse().unwrap())
        .collect();
    let want: Vec<f64> = sim["matrix"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter().filter_map(Value::as_f64))
        .collect();
    assert_eq!(values, want);
    assert!(study.join("figures/similarity_prompts_pairs.svg").is_file());
    // The few-shot figure of c: one series per init, each point a row's mean.
    let svg = std::fs::read_to_string(study.join("figures/transfer_c.svg")).unwrap();
    assert_eq!(svg.matches(r#"data-testid="series""#).count(), 4, "{svg}");
    let mut points: Vec<f64> = svg
        .split("data-value=\"")
        .skip(1)
        .map(|v| v[..v.find('"').unwrap()].parse().unwrap())
        .collect();
    let metric = transfer[0]["metric"].clone();
    let mut means: Vec<f64> = transfer
        .iter()
        .filter(|r| r["metric"] == metric)
        .filter_map(|r| r["score"]["mean"].as_f64())
        .collect();
    points.sort_by(f64::total_cmp);
    means.sort_by(f64::total_cmp);
    assert_eq!(points, means);
    assert_eq!(sim["origins"], serde_json::json!(["origin0", "origin1"]));
    let csv = std::fs::read_to_string(study.join("tables.csv")).unwrap();
    assert!(csv.starts_with("table,task,metric,shots,method,statistic,value"));
    assert!(csv.contains("transfer,c,exact_match,4,tpv_sum,mean,"));

    // Issue 15 (10): a truncated run file (an evaluation job's and a training job's) is listed as
    // damaged, not fatal to aggregate and report; the next sweep runs exactly those two again.
    let damaged = [
        study.join("addition/a+b/origin1/prompt.safetensors"),
        study.join("prompt_tuning/a/origin1/prompt.safetensors"),
    ];
    let good: Vec<Vec<u8>> = damaged.iter().map(|p| std::fs::read(p).unwrap()).collect();
    for (p, b) in damaged.iter().zip(&good) {
        std::fs::write(p, &b[..b.len() / 3]).unwrap();
    }
    let agg = json_of(&tpv().args(["aggregate", "--json"]).arg(&study).output().unwrap());
    assert_eq!(agg["damaged"].as_array().unwrap().len(), 2, "{}", agg["damaged"]);
    assert_eq!(agg["finished"].as_u64().unwrap() as usize, JOBS - 2);
    let site = tmp.path().join("site-damaged");
    // `--json` is global: before the command, as every command takes it.
    let rep = json_of(
        &tpv()
            .args(["--json", "report"])
            .arg(&study)
            .arg("-o")
            .arg(&site)
            .output()
            .unwrap(),
    );
    assert_eq!(rep["runs"].as_u64(), Some(JOBS as u64 - 2), "{rep}");
    assert!(
        rep["site"].as_str().is_some_and(|s| s.ends_with("site-damaged")),
        "{rep}"
    );
    assert!(
        std::fs::read_to_string(site.join("tables.md"))
            .unwrap()
            .contains("Damaged run files (2")
    );
    let out = json_of(&tpv().args(["sweep", "--json"]).arg(&config).output().unwrap());
    assert_eq!(out["ran"], 2, "{out}");
    // The same tensors again (the metadata's creation time may differ).
    let tensors = |b: &[u8]| {
        let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
        b[8 + n..].to_vec()
    };
    for (p, b) in damaged.iter().zip(&good) {
        assert_eq!(
            tensors(&std::fs::read(p).unwrap()),
            tensors(b),
            "{} was not restored",
            p.display()
        );
    }

    // A finished job's addition picks λ on validation and stores the search.
    let add_run = study.join("addition/a+b/origin0/prompt.safetensors");
    let insp = json_of(&tpv().args(["inspect", "--json"]).arg(&add_run).output().unwrap());
    let text = insp.to_string();
    assert!(text.contains("lambda_search"), "{text}");

    // Slurm: one array per stage, one resumable command per index.
    let slurm = tmp.path().join("slurm");
    let out = tpv()
        .args(["sweep", "--emit", "slurm", "--sbatch=--gres=gpu:1", "-o"])
        .arg(&slurm)
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s1 = std::fs::read_to_string(slurm.join("stage1.sbatch")).unwrap();
    let s2 = std::fs::read_to_string(slurm.join("stage2.sbatch")).unwrap();
    assert!(s1.contains(&format!("#SBATCH --array=0-{}\n", STAGE1 - 1)), "{s1}");
    assert!(
        s2.contains(&format!("#SBATCH --array=0-{}\n", JOBS - STAGE1 - 1)),
        "{s2}"
    );
    assert!(s1.contains("#SBATCH --gres=gpu:1"));
    for (s, stage) in [(&s1, 1), (&s2, 2)] {
        let cmds: Vec<&str> = s.lines().filter(|l| l.starts_with("exec ")).collect();
        assert_eq!(cmds.len(), 1);
        assert!(cmds[0].contains(&format!(
            "sweep {} --stage {stage} --index \"$SLURM_ARRAY_TASK_ID\"",
            config.display()
        )));
    }
    let submit = std::fs::read_to_string(slurm.join("submit.sh")).unwrap();
    assert!(submit.contains("--dependency=afterany:"), "{submit}");
    // Every stage-1 job finished here: nothing to re-submit.
    for stage in ["1", "2"] {
        let out = tpv().args(["sweep", "--todo", stage]).arg(&config).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "", "stage {stage}");
    }
    // What an array task runs: a finished job is skipped, its file untouched.
    let first = study.join("prompt_tuning/a/origin0/prompt.safetensors");
    let bytes = std::fs::read(&first).unwrap();
    let out = tpv()
        .args(["sweep", "--stage", "1", "--index", "0"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(&first).unwrap(), bytes);
    let out = tpv()
        .args(["sweep", "--stage", "2", "--index", "99"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("stage 2 has 18 jobs"));

    // The report folder.
    let site = tmp.path().join("site");
    let out = tpv()
        .args(["report"])
        .arg(&study)
        .arg("-o")
        .arg(&site)
        .env("TPV_WEB_DIST", tmp.path().join("no-web-app"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // An explicit --web without a built app is an error, never a silent tables-only report.
    let bad = tpv()
        .args(["report"])
        .arg(&study)
        .arg("-o")
        .arg(tmp.path().join("site-bad"))
        .arg("--web")
        .arg(tmp.path().join("no-web-app"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && err.contains("no index.html"), "{err}");
    let manifest: Value = serde_json::from_slice(&std::fs::read(site.join("manifest.json")).unwrap()).unwrap();
    let runs = manifest["runs"].as_array().unwrap();
    assert_eq!(runs.len(), JOBS);
    for r in runs {
        assert!(site.join(r["file"].as_str().unwrap()).is_file());
        assert!(r["experiment"].is_string() && r["metrics"].is_object());
    }
    for f in ["tables.md", "tables.csv", "tables.json", "results.html", "index.html"] {
        assert!(site.join(f).is_file(), "{f} missing");
    }
    let html = std::fs::read_to_string(site.join("results.html")).unwrap();
    assert!(html.contains("<table>") && html.contains("Transfer to target tasks"));

    // The eval sets bundled with the report: each task's test split, scored by `tpv eval` (the
    // Evaluate view's code) exactly as the study scored its runs.
    let sets: Vec<&str> = manifest["examples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["task"].as_str().unwrap())
        .collect();
    assert_eq!(sets, ["a", "b", "c"]);
    for (task, origin) in [("a", 0), ("b", 1)] {
        let run = study.join(format!("prompt_tuning/{task}/origin{origin}/prompt.safetensors"));
        let meta = json_of(&tpv().args(["inspect", "--json"]).arg(&run).output().unwrap());
        let metrics = &meta[0]["metadata"]["metrics"];
        let out = tpv()
            .args(["eval", "--json", "--model"])
            .arg(root().join("tests/fixtures/models/llama_tied"))
            .arg("--prompt")
            .arg(&run)
            .arg("--data")
            .arg(site.join(format!("examples/{task}.json")))
            .output()
            .unwrap();
        let ev = json_of(&out);
        assert_eq!(ev["examples"].as_array().unwrap().len(), 4);
        let (loss, want) = (ev["loss"].as_f64().unwrap(), metrics["test_loss"].as_f64().unwrap());
        assert!(
            (loss - want).abs() < 1e-6,
            "{task}: tpv eval loss {loss}, the run's test_loss {want}"
        );
        assert_eq!(ev["exact_match"], metrics["test_exact_match"], "{task}");
    }
}

#[test]
fn study_config_errors_name_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let config = study_config(tmp.path());
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("origins = [0, 1]", "origins = [0, 1]\norigns = 3");
    std::fs::write(&config, text).unwrap();
    let out = tpv().args(["sweep", "--list"]).arg(&config).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("origns"), "{err}");
    // A training key misspelled in the study's overrides is reported with its job.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("origns = 3\n", "")
        .replace("optim.max_steps = 4", "optim.max_stepz = 4");
    std::fs::write(&config, text).unwrap();
    let out = tpv().args(["sweep", "--list"]).arg(&config).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("max_stepz"), "{err}");
}

/// Issue 15 (4, 11): task names are path components (a task `../../x` wrote run files and eval
/// sets outside the study); duplicate origins ran every job twice; a NaN λ failed only after stage 1.
#[test]
fn hostile_study_configs_are_refused_before_anything_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let config = study_config(tmp.path());
    let original = std::fs::read_to_string(&config).unwrap();
    for (from, to, expect) in [
        ("tasks = [\"a\", \"b\"]", "tasks = [\"a\", \"../../x\"]", "task name"),
        ("tasks = [\"a\", \"b\"]", "tasks = [\"a\", \"/tmp/x\"]", "task name"),
        ("tasks = [\"a\", \"b\"]", "tasks = [\"a\", \"b/c\"]", "task name"),
        ("tasks = [\"a\", \"b\"]", "tasks = [\"a\", \"a\"]", "twice"),
        ("origins = [0, 1]", "origins = [0, 1, 1]", "twice"),
        ("lambdas = [0.5, 1.0]", "lambdas = [0.5, nan]", "finite"),
    ] {
        assert!(original.contains(from), "{from}");
        std::fs::write(&config, original.replace(from, to)).unwrap();
        let out = tpv().args(["sweep"]).arg(&config).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(expect), "{to}: {err}");
    }
    // The merges of configs/README.md parse as written (sign and seed were required).
    for merge in [
        "{ method = \"ties\", density = 0.5 }",
        "{ method = \"dare\", drop = 0.3 }",
        "{ method = \"dare-ties\", drop = 0.3 }",
    ] {
        std::fs::write(
            &config,
            original.replace(
                "lambdas = [0.5, 1.0]",
                &format!("lambdas = [0.5, 1.0]\nmerge = {merge}"),
            ),
        )
        .unwrap();
        let out = tpv().args(["sweep", "--list"]).arg(&config).output().unwrap();
        assert!(
            out.status.success(),
            "{merge}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::write(&config, &original).unwrap();
    // Nothing was written anywhere, inside the study or outside it.
    let entries: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        entries
            .iter()
            .all(|e| e.to_string_lossy().ends_with(".toml") || e.to_string_lossy().ends_with(".jsonl")),
        "{entries:?}"
    );
}

/// Issue 15 (3): a newline in `study.name` put a command line into stage1.sbatch; `$(...)` in
/// `study.output` ran inside submit.sh's echo. Names on #SBATCH lines are refused, the rest is
/// quoted: submit.sh and resubmit.sh run here against a stand-in `sbatch` and run nothing else.
#[test]
fn slurm_scripts_quote_or_refuse_what_they_carry() {
    let tmp = tempfile::tempdir().unwrap();
    let config = study_config(tmp.path());
    let original = std::fs::read_to_string(&config).unwrap();
    let slurm = tmp.path().join("slurm");
    let emit = |text: String| {
        std::fs::write(&config, text).unwrap();
        tpv()
            .args(["sweep", "--emit", "slurm", "-o"])
            .arg(&slurm)
            .arg(&config)
            .output()
            .unwrap()
    };
    let out = emit(original.replace("name = \"tiny\"", "name = \"tiny\\n#SBATCH --wrap=touch /tmp/pwned\""));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("study.name"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let marker = tmp.path().join("pwned");
    let hostile = format!(
        "{}/study $(touch {}) `touch {}` ' \\",
        tmp.path().display(),
        marker.display(),
        marker.display()
    );
    let text = original.replace(
        &format!("output = \"{}\"", tmp.path().join("study").display()),
        &format!("output = {}", toml::Value::String(hostile.clone())),
    );
    assert_ne!(text, original);
    let out = emit(text);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // A stand-in sbatch: prints a job id, records its arguments.
    let bin = tmp.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let calls = tmp.path().join("sbatch-calls");
    std::fs::write(
        bin.join("sbatch"),
        format!("#!/bin/sh\necho \"$@\" >> '{}'\necho 4242\n", calls.display()),
    )
    .unwrap();
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(bin.join("sbatch"))
        .status()
        .unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    for script in ["submit.sh", "resubmit.sh"] {
        let run = std::process::Command::new("bash")
            .arg(slurm.join(script))
            .env("PATH", &path)
            .output()
            .unwrap();
        assert!(
            run.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        let stdout = String::from_utf8_lossy(&run.stdout);
        if script == "submit.sh" {
            // The study directory is printed as it is, not run.
            assert!(stdout.contains("$(touch"), "{stdout}");
        } else {
            // Nothing ran yet: every job of both stages is re-submitted, stage 2 after stage 1.
            assert!(stdout.contains("stage 1: 4242 (indexes 0,1,"), "{stdout}");
            assert!(stdout.contains("stage 2: 4242"), "{stdout}");
        }
    }
    assert!(!marker.exists(), "a command in study.output ran");
    let calls = std::fs::read_to_string(&calls).unwrap();
    assert!(calls.contains("--dependency=afterany:4242 stage2.sbatch"), "{calls}");
    assert!(calls.contains("--dependency=afterany:4242 --array=0,"), "{calls}");
}

/// Issue 17: nothing told the user, before a long sweep started, that a dataset or a model would
/// not be there. The preflight resolves them all first; a study whose second task's data is
/// missing stops before its first job, naming it.
#[test]
fn the_preflight_stops_a_study_whose_second_tasks_data_is_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let config = study_config(tmp.path());
    let ok = tpv()
        .args(["--json", "sweep", "--check"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let checks: Value = serde_json::from_slice(&ok.stdout).unwrap();
    let whats: Vec<&str> = checks
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["what"].as_str().unwrap())
        .collect();
    for prefix in ["data ", "model ", "device cpu", "memory ", "disk "] {
        assert!(whats.iter().any(|w| w.starts_with(prefix)), "{prefix}: {whats:?}");
    }
    std::fs::remove_file(tmp.path().join("b-train.jsonl")).unwrap();
    for args in [&["sweep", "--check"][..], &["sweep"][..]] {
        let out = tpv().args(args).arg(&config).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{err}");
        assert!(
            err.contains("MISSING data b-train.jsonl") && err.contains("nothing was started"),
            "{err}"
        );
    }
    let emit = tpv()
        .args(["sweep", "--emit", "slurm", "-o"])
        .arg(tmp.path().join("slurm"))
        .arg(&config)
        .output()
        .unwrap();
    assert!(!emit.status.success());
    assert!(
        !tmp.path().join("slurm/submit.sh").exists(),
        "no scripts for a study that cannot run"
    );
    assert!(!tmp.path().join("study/prompt_tuning").exists(), "no job ran");
}

/// Issue 17: `-j N` on a server with several GPUs put every child on the configured device. The
/// slots now take a GPU each (round robin), given to their children as CUDA_VISIBLE_DEVICES; on
/// a CUDA study every visible GPU by default. Tested on the CPU with fake device lists.
#[test]
fn sweep_slots_are_spread_over_the_gpus() {
    let tmp = tempfile::tempdir().unwrap();
    let config = study_config(tmp.path());
    let out = tpv()
        .args(["sweep", "-j", "2", "--gpus", "5,7", "--max-jobs", "4"])
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains(" on GPU 5") && err.contains(" on GPU 7"), "{err}");
    // A CUDA study takes the visible GPUs by default (this build has no CUDA: the preflight then
    // stops it, after naming the slots' GPUs).
    let out = tpv()
        .args(["sweep", "-j", "2", "--max-jobs", "2", "--set", "model.device=\"cuda\""])
        .arg(&config)
        .env("CUDA_VISIBLE_DEVICES", "3,4")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("job slots on GPUs 3, 4"), "{err}");
    assert!(!out.status.success() && err.contains("MISSING device cuda"), "{err}");
    let bad = tpv().args(["sweep", "--gpus", "0,,1"]).arg(&config).output().unwrap();
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("--gpus"));
}

/// resubmit.sh lists the unfinished jobs from the directory the array tasks run in: a study
/// output relative to it is found wherever the script is started from (run from elsewhere, it
/// used to see no finished run and submit every job again).
#[test]
fn resubmit_finds_a_relative_study_output_from_any_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let config = study_config(tmp.path());
    let text = std::fs::read_to_string(&config).unwrap().replace(
        &format!("output = \"{}\"", tmp.path().join("study").display()),
        "output = \"study\"",
    );
    assert!(text.contains("output = \"study\""));
    std::fs::write(&config, text).unwrap();
    let slurm = tmp.path().join("slurm");
    let out = tpv()
        .current_dir(tmp.path())
        .args(["sweep", "--emit", "slurm", "-o", "slurm", "study.toml"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = tpv()
        .current_dir(tmp.path())
        .args(["sweep", "--max-jobs", "2", "study.toml"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let bin = tmp.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::write(bin.join("sbatch"), "#!/bin/sh\necho 4242\n").unwrap();
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(bin.join("sbatch"))
        .status()
        .unwrap();
    let run = std::process::Command::new("bash")
        .arg(slurm.join("resubmit.sh"))
        .current_dir("/")
        .env("PATH", format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()))
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let stdout = String::from_utf8_lossy(&run.stdout);
    // The two finished runs (stage 1's first two) are not submitted again; the rest are.
    assert!(stdout.contains("stage 1: 4242 (indexes 2,3,4,5,6,7)"), "{stdout}");
}

#[test]
fn every_shipped_config_parses() {
    let mut checked = 0;
    for dir in ["configs/demo", "configs/paper"] {
        for entry in std::fs::read_dir(root().join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "toml") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(text.starts_with('#'), "{} has no comment header", path.display());
            assert!(text.contains("tpv "), "{}'s header gives no command", path.display());
            if text.contains("[study]") {
                let out = tpv().args(["sweep", "--list"]).arg(&path).output().unwrap();
                assert!(
                    out.status.success(),
                    "{}: {}",
                    path.display(),
                    String::from_utf8_lossy(&out.stderr)
                );
            } else {
                tpv_trainer::config::load(&path, &[]).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
            }
            checked += 1;
        }
    }
    assert!(checked >= 14, "{checked} configs");
}

/// GET `path` from 127.0.0.1:`port`: (status line, body).
fn get(port: u16, path: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (head.lines().next().unwrap_or("").to_owned(), body.to_owned())
}

#[test]
fn report_is_served_on_localhost() {
    use std::io::BufRead;
    let tmp = tempfile::tempdir().unwrap();
    let config = study_config(tmp.path());
    let out = tpv().args(["sweep", "--max-jobs", "2"]).arg(&config).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let site = tmp.path().join("site");
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("tpv"))
        .arg("report")
        .arg(tmp.path().join("study"))
        .arg("-o")
        .arg(&site)
        .args(["--serve", "--port", "0"])
        .env("TPV_WEB_DIST", tmp.path().join("none"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = std::io::BufReader::new(stdout).lines();
    let url_line = lines
        .by_ref()
        .map(Result::unwrap)
        .find(|l| l.starts_with("serving"))
        .unwrap();
    let after = url_line.split("http://127.0.0.1:").nth(1).unwrap();
    let port: u16 = after
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap();
    // The front page: the web app when a build is found beside this tpv, else the tables.
    let (status, body) = get(port, "/");
    assert!(status.contains("200") && body.contains("<html"), "{status}");
    let (status, body) = get(port, "/results.html");
    assert!(status.contains("200") && body.contains("Study tiny"), "{status}");
    let (status, body) = get(port, "/manifest.json");
    assert!(status.contains("200") && body.contains("tpv-report"));
    // Nothing outside the site is served.
    let (status, _) = get(port, "/../study.toml");
    assert!(status.contains("400") || status.contains("404"), "{status}");
    let (status, _) = get(port, "/missing.html");
    assert!(status.contains("404"), "{status}");
    hostile_clients_are_refused(port, &site, child.id());
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Issue 15 (7), with a raw-socket client: the server read the joined path before checking it
/// (`/../…/dev/zero` read /dev/zero until memory ran out), buffered request heads without limit
/// (300 MiB → 349 MB resident), never timed out idle connections, and did not percent-decode
/// (files with spaces or non-ASCII names were 404 to a browser).
fn hostile_clients_are_refused(port: u16, site: &Path, pid: u32) {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};
    // Names a browser percent-encodes.
    std::fs::write(site.join("a b.txt"), "spaced").unwrap();
    std::fs::write(site.join("été.json"), "{}").unwrap();
    let (status, body) = get(port, "/a%20b.txt");
    assert!(status.contains("200") && body == "spaced", "{status} {body}");
    let (status, _) = get(port, "/%C3%A9t%C3%A9.json");
    assert!(status.contains("200"), "{status}");
    // A page on another site whose name was rebound to 127.0.0.1 sends its own Host: refused.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET /manifest.json HTTP/1.1\r\nHost: rebound.example:{port}\r\n\r\n").unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    // Traversal, plain and encoded, to a device that never ends: refused before it is opened.
    for target in [
        "/../../../../../../dev/zero",
        "/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/dev/zero",
        "/..%2f..%2f..%2f..%2fdev%2fzero",
        "/runs/../../../../../../../etc/passwd",
    ] {
        let t = Instant::now();
        let (status, _) = get(port, target);
        assert!(status.contains("400") || status.contains("404"), "{target}: {status}");
        assert!(t.elapsed() < Duration::from_secs(5), "{target} took {:?}", t.elapsed());
    }
    // Only regular files inside the site: a symlink out of it and a FIFO are not served.
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink("/etc/hostname", site.join("out-link")).unwrap();
        let (status, _) = get(port, "/out-link");
        assert!(status.contains("404"), "{status}");
        std::os::unix::fs::symlink("/dev/zero", site.join("zero")).unwrap();
        let (status, _) = get(port, "/zero");
        assert!(status.contains("404"), "{status}");
        let fifo = site.join("fifo");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        let t = Instant::now();
        let (status, _) = get(port, "/fifo");
        assert!(
            status.contains("404") && t.elapsed() < Duration::from_secs(5),
            "{status}"
        );
    }
    // A 300 MiB request line: cut off at the head limit, answered 431; memory stays small.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /").unwrap();
    let chunk = vec![b'a'; 1 << 20];
    for _ in 0..300 {
        if s.write_all(&chunk).is_err() {
            break; // the server closed the connection: it stopped reading
        }
    }
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "{}",
        &answer[..answer.len().min(80)]
    );
    #[cfg(target_os = "linux")]
    {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let rss_kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        assert!(rss_kb < 100 * 1024, "the server peaked at {rss_kb} kB");
    }
    let _ = pid;
    // An idle connection is dropped after the server's timeout; others are served meanwhile.
    let mut idle = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let (status, _) = get(port, "/manifest.json");
    assert!(status.contains("200"), "{status}");
    let t = Instant::now();
    let mut buf = Vec::new();
    let _ = idle.read_to_end(&mut buf);
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "the idle connection stayed open {:?}",
        t.elapsed()
    );
}

/// `tpv demo --quick`, the README's main job, end to end on the fixture LLaMA: the demo study's
/// every experiment (its own config, embedded in the binary) with the fixture tasks in place of
/// the offline datasets (so nothing is fetched), the tables, and the report with the model bundled.
#[test]
fn demo_pipeline_runs_on_the_fixture_model() {
    let tmp = tempfile::tempdir().unwrap();
    let names = ["a", "b", "c", "d", "e", "f"];
    for (i, t) in names.iter().enumerate() {
        write_task(tmp.path(), t, i * 5);
    }
    let model = root().join("tests/fixtures/models/llama_tied");
    let mut sets = vec![
        format!("model.path={:?}", model.display().to_string()),
        "study.tasks=[\"a\", \"b\", \"c\", \"d\"]".to_owned(),
        "study.addition.sets=[[\"a\", \"b\"], [\"a\", \"c\"]]".to_owned(),
        "study.cross_origin.tasks=[\"a\"]".to_owned(),
        "study.transfer.sources=[\"a\", \"b\"]".to_owned(),
        "study.transfer.targets=[\"e\", \"f\"]".to_owned(),
        "study.overrides={}".to_owned(),
        // The fixture's 64-token vocabulary: origins from all of it.
        "prompt.init={ sample_vocab = { seed = 7 } }".to_owned(),
    ];
    for t in names {
        let file = |split: &str| {
            format!(
                "{:?}",
                tmp.path().join(format!("{t}-{split}.jsonl")).display().to_string()
            )
        };
        sets.push(format!("study.data.{t}.train={}", file("train")));
        sets.push(format!("study.data.{t}.validation={}", file("valid")));
        sets.push(format!("study.data.{t}.test={}", file("test")));
        // Rank scoring needs the label set: a task table over the fixture's `input`/`target` files.
        sets.push(format!(
            "study.data.{t}.task={{ name = \"{t}\", template = \"{{input}}\", fields = [[\"input\", \"input\"]], label_column = \"target\", labels = [\"w10\", \"w11\"] }}"
        ));
    }
    let out_dir = tmp.path().join("demo");
    let mut cmd = tpv();
    cmd.args(["demo", "--quick", "--no-serve", "--bundle-model", "always", "--out"])
        .arg(&out_dir)
        .env("TPV_WEB_DIST", tmp.path().join("none"));
    for s in &sets {
        cmd.arg("--set").arg(s);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "tpv demo failed:\n{stdout}\n{stderr}");
    // Every experiment's table, with the baselines and the scoring named.
    for table in [
        "## Prompt tuning",
        "## Addition",
        "## Cross-origin",
        "## Transfer",
        "zero-shot",
        "untrained origin",
    ] {
        assert!(stdout.contains(table), "no {table:?} in the demo's tables:\n{stdout}");
    }
    assert!(
        stdout.contains("rank"),
        "the tables do not say the demo scores by rank:\n{stdout}"
    );
    assert!(
        stderr.contains("jobs,") && stderr.contains("left"),
        "no study progress line:\n{stderr}"
    );
    // Every job finished, and the report carries the model.
    let study: Value = serde_json::from_slice(&std::fs::read(out_dir.join("study-quick/study.json")).unwrap()).unwrap();
    let jobs = study["jobs"].as_array().unwrap();
    assert!(jobs.len() >= 40, "{} jobs", jobs.len());
    for kind in [
        "prompt_tuning/",
        "multi_task/",
        "addition/",
        "cross_origin/",
        "transfer/e/multi/",
    ] {
        assert!(
            jobs.iter().any(|j| j["id"].as_str().unwrap().starts_with(kind)),
            "no {kind} job"
        );
    }
    // Multi-task SPoT over two tasks given by files (`[study.data.TASK]`): one run on both.
    let multi = out_dir.join("study-quick/multi_task/a+b/origin0/prompt.safetensors");
    let inspect = tpv().arg("inspect").arg("--json").arg(&multi).output().unwrap();
    assert!(inspect.status.success(), "{}", String::from_utf8_lossy(&inspect.stderr));
    let info: Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(info[0]["metadata"]["tasks"], serde_json::json!(["a", "b"]), "{info}");
    let site = out_dir.join("site");
    assert!(site.join("index.html").exists());
    let bundled = std::fs::read(site.join("model/model.safetensors")).unwrap();
    assert_eq!(bundled, std::fs::read(model.join("model.safetensors")).unwrap());
    let manifest: Value = serde_json::from_slice(&std::fs::read(site.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["model"]["bundled"], true, "{manifest}");
    assert_eq!(manifest["model"]["url"], "model/", "{manifest}");
    // Issue 15 (11): the published manifest names the model, not this machine's path to it.
    assert_eq!(manifest["model"]["name"], "llama_tied", "{manifest}");
    let text = manifest.to_string();
    assert!(!text.contains(&root().display().to_string()), "a local path in {text}");
}

/// A study of sources a, b and target c with the TPV-sum, learned-combination and ATTEMPT inits
/// at 0 and 4 shots, one origin.
fn learned_study_config(dir: &Path) -> PathBuf {
    let study = format!(
        r#"[study]
name = "learned"
output = "{out}"
origins = [0]
tasks = ["a", "b"]
[study.transfer]
sources = ["a", "b"]
targets = ["c"]
shots = [0, 4]
inits = ["tpv_sum", "learned_combination", "attempt"]
paper_recipe = false
combination_steps = 6
[study.transfer.set]
optim.max_steps = 2
optim.batch_size = 2
"#,
        out = dir.join("study").display(),
    );
    study_toml(dir, &study)
}

/// Issue 18: the `attempt` init's runs, at 0 shots (the untrained module) and 4 (trained): ATTEMPT
/// run files over the study's own source prompts, scored on the target's test split.
fn check_attempt_runs(study: &Path) {
    let read = |rel: String| tpv_shared::runfile::read_run(&std::fs::read(study.join(rel)).unwrap()).unwrap();
    let a = read("prompt_tuning/a/origin0/prompt.safetensors".into());
    let b = read("prompt_tuning/b/origin0/prompt.safetensors".into());
    let mut modules = Vec::new();
    for shots in [0, 4] {
        let run = read(format!("transfer/c/attempt/{shots}shot/origin0/prompt.safetensors"));
        assert_eq!(run.kind(), tpv_shared::PromptKind::Attempt);
        assert!(
            run.meta.metrics.contains_key("test_exact_match"),
            "{:?}",
            run.meta.metrics
        );
        let m = run.attempt.clone().unwrap();
        assert_eq!(m.source_labels, ["a@origin0", "b@origin0"]);
        assert_eq!(
            m.sources.as_slice(),
            [a.values.as_slice(), b.values.as_slice()].concat()
        );
        // The target prompt starts from the sources' origin.
        assert_eq!(run.origin.as_ref(), a.origin.as_ref());
        if shots == 0 {
            assert_eq!(run.values, *a.origin.as_ref().unwrap());
        }
        modules.push(m);
    }
    assert_ne!(modules[0].w_down, modules[1].w_down, "the 4-shot module was trained");
}

/// Issue 18: the `learned_combination` transfer init learns the weights of θ₀ + Σ wᵢτᵢ on the
/// target's shots (the same sample the job then trains on) from the TPV sum, lowering their loss;
/// at 0 shots it is the TPV sum; the transfer table compares it with the TPV sum. Then `tpv
/// recommend` ranks the study's vectors for the target.
#[test]
fn the_learned_combination_init_learns_on_the_shots() {
    let tmp = tempfile::tempdir().unwrap();
    let config = learned_study_config(tmp.path());
    let out = json_of(&tpv().args(["sweep", "--json"]).arg(&config).output().unwrap());
    assert!(out["failed"].as_array().unwrap().is_empty(), "{out}");
    let study = tmp.path().join("study");
    let init = tpv_shared::runfile::read_run(
        &std::fs::read(study.join("transfer/c/learned_combination/4shot/origin0/init.safetensors")).unwrap(),
    )
    .unwrap();
    let learned = &init.meta.config.as_ref().unwrap()["learned_combination"];
    assert_eq!(learned["examples"], 4, "{learned}");
    assert_eq!(learned["steps"], 6, "{learned}");
    let losses: Vec<f64> = learned["losses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    let best = losses[learned["best_step"].as_u64().unwrap() as usize];
    assert!(best < losses[0], "{losses:?}");
    assert_eq!(learned["weights"].as_array().unwrap().len(), 2);
    // At 0 shots: the TPV sum's prompt and score.
    let zero = |init: &str| {
        tpv_shared::runfile::read_run(
            &std::fs::read(study.join(format!("transfer/c/{init}/0shot/origin0/prompt.safetensors"))).unwrap(),
        )
        .unwrap()
    };
    assert_eq!(zero("learned_combination").values, zero("tpv_sum").values);
    let agg = json_of(&tpv().args(["aggregate", "--json"]).arg(&study).output().unwrap());
    let rows = agg["transfer"].as_array().unwrap();
    for init in ["learned_combination", "attempt"] {
        assert!(
            rows.iter()
                .any(|r| r["init"] == init && r["shots"] == 4 && !r["vs_tpv_sum"].is_null()),
            "{init}: {rows:#?}"
        );
    }
    check_attempt_runs(&study);

    // tpv recommend on the library of this study for c's examples: a, b and a+b, ranked; a
    // single task's loss is its tuned prompt's (θ₀ + τ = θ) as tpv eval scores it.
    let few = tmp.path().join("c-train.jsonl");
    let rec = json_of(
        &tpv()
            .args(["recommend", "--json", "--tune-steps", "3", "--library"])
            .arg(&study)
            .arg("--data")
            .arg(&few)
            .output()
            .unwrap(),
    );
    let cands = rec["candidates"].as_array().unwrap();
    let names: Vec<&str> = cands.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names.len(), 3, "{rec}");
    assert!(names.contains(&"a") && names.contains(&"b") && names.contains(&"a+b"));
    assert!(cands.windows(2).all(|w| w[0]["loss"].as_f64() <= w[1]["loss"].as_f64()));
    let mut ranks: Vec<u64> = cands.iter().map(|c| c["cosine_rank"].as_u64().unwrap()).collect();
    ranks.sort_unstable();
    assert_eq!(ranks, [1, 2, 3]);
    let a = cands.iter().find(|c| c["name"] == "a").unwrap();
    let eval = json_of(
        &tpv()
            .args(["eval", "--json", "--max-new-tokens", "1", "--model"])
            .arg(root().join("tests/fixtures/models/llama_tied"))
            .arg("--prompt")
            .arg(study.join("prompt_tuning/a/origin0/prompt.safetensors"))
            .arg("--data")
            .arg(&few)
            .output()
            .unwrap(),
    );
    let (got, want) = (a["loss"].as_f64().unwrap(), eval["loss"].as_f64().unwrap());
    assert!((got - want).abs() < 1e-4, "recommend {got} vs eval {want}");
}
