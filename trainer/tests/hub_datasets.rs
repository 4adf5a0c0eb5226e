//! Registry tasks' datasets from the hub (issue 17), against a local HTTP server that speaks the
//! hub's protocol and misbehaves on purpose: a dataset in its own parquet shards (one cut
//! mid-file, one answered 429 first), one only in its parquet conversion, a gated one, a missing
//! one, one whose file always arrives truncated, and offline mode. The parquet files are the
//! committed fixtures of tests/fixtures/hub (written by tests/reference/parquet_fixtures.py).

#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(
    clippy::disallowed_methods,
    reason = "native test: reads fixtures and writes configs"
)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use assert_cmd::Command;
use sha2::{Digest, Sha256};

#[path = "common/hub_server.rs"]
mod hub_server;
use hub_server::{Fault, File, Repos, add, serve_repos};

const GLUE: &str = "1111111111111111111111111111111111111111";
const SNLI_CONVERTED: &str = "2222222222222222222222222222222222222222";
const SNLI_MAIN: &str = "3333333333333333333333333333333333333333";

fn fixture(repo: &str, file: &str) -> Vec<u8> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/hub");
    let snap = root
        .join(format!("datasets--{}", repo.replace('/', "--")))
        .join("snapshots/0123456789abcdef0123456789abcdef01234567");
    std::fs::read(snap.join(file)).unwrap()
}

fn repos() -> Repos {
    let glue_train = fixture("nyu-mll/glue", "sst2/train-00000-of-00001.parquet");
    let mut glue = BTreeMap::new();
    for (name, bytes, fault) in [
        ("sst2/train-00000-of-00002.parquet", glue_train.clone(), Fault::CutOnce),
        ("sst2/train-00001-of-00002.parquet", glue_train, Fault::RateLimitedOnce),
        (
            "sst2/validation-00000-of-00001.parquet",
            fixture("nyu-mll/glue", "sst2/validation-00000-of-00001.parquet"),
            Fault::None,
        ),
        ("qqp/train-00000-of-00001.parquet", b"not needed".to_vec(), Fault::None),
        ("README.md", b"# glue".to_vec(), Fault::None),
    ] {
        glue.insert(name.to_owned(), File { bytes, fault });
    }
    let mut snli_main = BTreeMap::new();
    snli_main.insert(
        "snli.py".to_owned(),
        File {
            bytes: b"# a loading script".to_vec(),
            fault: Fault::None,
        },
    );
    let mut snli_conv = BTreeMap::new();
    for (name, src) in [
        (
            "plain_text/train/0000.parquet",
            "plain_text/train-00000-of-00001.parquet",
        ),
        (
            "plain_text/validation/0000.parquet",
            "plain_text/validation-00000-of-00001.parquet",
        ),
    ] {
        snli_conv.insert(
            name.to_owned(),
            File {
                bytes: fixture("stanfordnlp/snli", src),
                fault: Fault::None,
            },
        );
    }
    let mut broken = BTreeMap::new();
    broken.insert(
        "data/test-00000-of-00001.parquet".to_owned(),
        File {
            bytes: fixture("nyu-mll/glue", "sst2/test-00000-of-00001.parquet"),
            fault: Fault::None,
        },
    );
    broken.insert(
        "data/train-00000-of-00001.parquet".to_owned(),
        File {
            bytes: fixture("nyu-mll/glue", "sst2/train-00000-of-00001.parquet"),
            fault: Fault::AlwaysTruncated,
        },
    );
    let mut r: Repos = BTreeMap::new();
    add(&mut r, "datasets/nyu-mll/glue", "main", GLUE, glue);
    add(&mut r, "datasets/stanfordnlp/snli", "main", SNLI_MAIN, snli_main);
    add(
        &mut r,
        "datasets/stanfordnlp/snli",
        CONVERTED,
        SNLI_CONVERTED,
        snli_conv,
    );
    add(&mut r, "datasets/fancyzhx/ag_news", "main", GLUE, broken);
    r
}

/// The revision name of the hub's parquet conversion, as the client puts it in a URL.
const CONVERTED: &str = "refs%2Fconvert%2Fparquet";

/// Serves `repos()`; logs each request as `PATH RANGE`.
fn serve() -> (String, Arc<Mutex<Vec<String>>>) {
    serve_repos(repos)
}

fn tpv(cache: &Path, endpoint: &str, args: &[&str]) -> std::process::Output {
    Command::cargo_bin("tpv")
        .unwrap()
        .args(args)
        .env("HF_HUB_CACHE", cache)
        .env("HF_ENDPOINT", endpoint)
        .env_remove("HF_HOME")
        .env_remove("HF_HUB_OFFLINE")
        .output()
        .unwrap()
}

fn snapshot_file(cache: &Path, repo: &str, sha: &str, file: &str) -> PathBuf {
    cache
        .join(format!("datasets--{}", repo.replace('/', "--")))
        .join("snapshots")
        .join(sha)
        .join(file)
}

#[test]
fn registry_datasets_download_into_the_hub_cache_and_train_reads_them() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("hub");
    let (endpoint, log) = serve();
    let out = tpv(&cache, &endpoint, &["fetch", "sst2", "snli"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // glue's own parquet shards of the sst2 config (train and the held-out validation), whole;
    // not the other config's, not the README.
    let train = fixture("nyu-mll/glue", "sst2/train-00000-of-00001.parquet");
    for shard in ["sst2/train-00000-of-00002.parquet", "sst2/train-00001-of-00002.parquet"] {
        assert_eq!(
            std::fs::read(snapshot_file(&cache, "nyu-mll/glue", GLUE, shard)).unwrap(),
            train,
            "{shard}"
        );
    }
    assert!(snapshot_file(&cache, "nyu-mll/glue", GLUE, "sst2/validation-00000-of-00001.parquet").exists());
    assert!(!snapshot_file(&cache, "nyu-mll/glue", GLUE, "qqp/train-00000-of-00001.parquet").exists());
    assert!(!snapshot_file(&cache, "nyu-mll/glue", GLUE, "README.md").exists());
    let glue_refs = cache.join("datasets--nyu-mll--glue/refs/main");
    assert_eq!(std::fs::read_to_string(glue_refs).unwrap(), GLUE);
    // snli has no parquet of its own: the hub's conversion, under its own ref.
    assert!(
        snapshot_file(
            &cache,
            "stanfordnlp/snli",
            SNLI_CONVERTED,
            "plain_text/train/0000.parquet"
        )
        .exists()
    );
    // The conversion's ref where huggingface_hub keeps it (refs/ + the revision's name).
    let conv_ref = cache.join("datasets--stanfordnlp--snli/refs/refs/convert/parquet");
    assert_eq!(std::fs::read_to_string(conv_ref).unwrap(), SNLI_CONVERTED);

    // The cut shard was resumed where it broke (a Range request from its half), the rate-limited
    // one asked again.
    let requests = log.lock().unwrap().clone();
    let cut =
        "/datasets/nyu-mll/glue/resolve/1111111111111111111111111111111111111111/sst2/train-00000-of-00002.parquet";
    assert!(
        requests.iter().any(|r| r == &format!("{cut} {}", train.len() / 2)),
        "{requests:#?}"
    );
    let limited = "sst2/train-00001-of-00002.parquet 0";
    assert_eq!(
        requests.iter().filter(|r| r.ends_with(limited)).count(),
        2,
        "{requests:#?}"
    );

    // Offline now: the task reads from the cache (two shards: twice the fixture's 30 records).
    let config = dir.path().join("c.toml");
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models/llama_tied");
    std::fs::write(
        &config,
        format!(
            "# test\n[model]\npath = {:?}\n[prompt]\nvirtual_tokens = 2\ninit = {{ sample_vocab = {{ seed = 7 }} }}\n[data]\ntrain = \"sst2\"\n[optim]\nmax_steps = 1\n[train]\noutput = \"out\"\n",
            model.display().to_string()
        ),
    )
    .unwrap();
    let out = Command::cargo_bin("tpv")
        .unwrap()
        .args(["--json", "data"])
        .arg(&config)
        .env("HF_HUB_CACHE", &cache)
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("HF_HOME")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let n = v["train"].as_u64().unwrap() + v["validation"].as_u64().unwrap() + v["test"].as_u64().unwrap();
    assert_eq!(n, 60 + 8, "{v}");
}

#[test]
fn dataset_failures_say_which_and_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("hub");
    let (endpoint, _) = serve();
    let err = |args: &[&str], env: &[(&str, &str)]| {
        let mut cmd = Command::cargo_bin("tpv").unwrap();
        cmd.args(args)
            .env("HF_HUB_CACHE", &cache)
            .env("HF_ENDPOINT", &endpoint)
            .env_remove("HF_HOME");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        assert!(
            !out.status.success(),
            "{args:?} succeeded: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // A file that always arrives short is never used.
    let e = err(&["fetch", "ag_news"], &[]);
    assert!(e.contains("the hub lists") && e.contains("attempts"), "{e}");
    assert!(!snapshot_file(&cache, "fancyzhx/ag_news", GLUE, "data/train-00000-of-00001.parquet").exists());
    // A config the hub does not have (glue is served without qnli; its sst2 files are in the
    // cache now and must not stand in for it), and offline with an empty cache.
    let out = tpv(&cache, &endpoint, &["fetch", "sst2"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let e = err(&["fetch", "qnli"], &[]);
    assert!(e.contains("404") && e.contains("check the name"), "{e}");
    let e = err(&["fetch", "mnli"], &[("HF_HUB_OFFLINE", "1")]);
    assert!(e.contains("HF_HUB_OFFLINE") && e.contains("nyu-mll/glue"), "{e}");
    // A gated repo (a model here: the same client) says so and what to do.
    let data = dir.path().join("d.jsonl");
    std::fs::write(&data, "{\"input\": \"a\", \"target\": \"b\"}\n").unwrap();
    let e = err(
        &["eval", "--model", "gated/repo", "--data", data.to_str().unwrap()],
        &[],
    );
    assert!(e.contains("gated") && e.contains("HF_TOKEN"), "{e}");
}

/// The files under `dir`, by their path relative to it (`/`-separated).
fn files_under(dir: &Path) -> BTreeMap<String, File> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(dir).unwrap().to_string_lossy().replace('\\', "/");
                out.insert(
                    rel,
                    File {
                        bytes: std::fs::read(&path).unwrap(),
                        fault: Fault::None,
                    },
                );
            }
        }
    }
    out
}

/// The models of `configs/paper/*.toml`, as tiny fixtures of their families under their real
/// names.
const PAPER_MODELS: [(&str, &str); 3] = [
    ("google-t5/t5-base", "t5_relu_tied"),
    ("meta-llama/Llama-3.1-8B-Instruct", "llama_gqa_rope3"),
    ("deepseek-ai/deepseek-llm-7b-chat", "llama_tied"),
];

/// Every hub dataset of the registry in the hub's own layout (tests/fixtures/hub_layouts, written
/// by tests/reference/hub_layouts.py after the registry's `layout` and each card's features:
/// `main` is the repo's branch, `convert` its parquet conversion), and the paper's models.
fn layout_repos() -> Repos {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let commit = |key: &str| format!("{:x}", Sha256::digest(key.as_bytes()))[..40].to_owned();
    let mut r = Repos::new();
    for entry in std::fs::read_dir(root.join("tests/fixtures/hub_layouts")).unwrap() {
        let repo_dir = entry.unwrap().path();
        let repo = repo_dir.file_name().unwrap().to_string_lossy().replacen("--", "/", 1);
        for (sub, rev) in [("main", "main"), ("convert", CONVERTED)] {
            if repo_dir.join(sub).is_dir() {
                let key = format!("datasets/{repo}");
                add(
                    &mut r,
                    &key,
                    rev,
                    &commit(&format!("{key}@{rev}")),
                    files_under(&repo_dir.join(sub)),
                );
            }
        }
    }
    for (repo, fixture) in PAPER_MODELS {
        let mut files = files_under(&root.join("tests/fixtures/models").join(fixture));
        files.remove("expected.json");
        let key = format!("models/{repo}");
        add(&mut r, &key, "main", &commit(&key), files);
    }
    r
}

/// Issue 17: every config in configs/paper passes `tpv sweep --check` on a fresh cache against a
/// hub that keeps each dataset where the real hub does (the registry's `layout`), with its real
/// columns and split names: datasets and models download, only the configs and splits needed;
/// then the same checks pass offline from the cache, and `tpv fetch` gets the registry's other
/// hub tasks.
#[test]
fn the_paper_configs_pass_the_preflight_against_the_hubs_real_layouts() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("hub");
    let (endpoint, log) = serve_repos(layout_repos);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut configs: Vec<PathBuf> = std::fs::read_dir(root.join("configs/paper"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    configs.sort();
    assert_eq!(configs.len(), 12);
    let check = |config: &Path, offline: bool| {
        let name = config.file_stem().unwrap().to_string_lossy().into_owned();
        let output = dir.path().join("runs").join(&name);
        let mut cmd = Command::cargo_bin("tpv").unwrap();
        cmd.args(["--json", "sweep"])
            .arg(config)
            .args(["--check", "--set", "model.device=cpu", "--set"])
            .arg(format!("study.output={}", output.display()))
            .env("HF_HUB_CACHE", &cache)
            .env("HF_ENDPOINT", &endpoint)
            .env_remove("HF_HOME")
            .env_remove("HF_HUB_OFFLINE");
        if offline {
            cmd.env("HF_HUB_OFFLINE", "1");
        }
        let out = cmd.output().unwrap();
        let table = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{name} (offline {offline}): {table}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let checks: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let rows = checks.as_array().unwrap();
        assert!(rows.iter().all(|c| c["ok"] == true), "{name}: {checks:#}");
        rows.iter()
            .filter(|c| c["what"].as_str().unwrap().starts_with("data "))
            .map(|c| c["detail"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    let mut data = Vec::new();
    for config in &configs {
        data.extend(check(config, false));
    }
    // Every task's train and held-out records arrived (the counts are the fixtures' labelled
    // rows: snli drops its rows without a gold label, scitail reads its string labels).
    let all = data.join("; ");
    for want in [
        "mnli ",
        "qqp ",
        "stsb ",
        "trec ",
        "dbpedia ",
        "yelp_polarity ",
        "scitail ",
        "snli ",
        "sst5 ",
        "imdb ",
        "ag_news ",
        "yahoo ",
    ] {
        assert!(all.contains(want), "no {want}in {all}");
    }
    // Only the needed configs and splits: no test split of glue (unlabelled), no other config of
    // scitail, no unsupervised imdb, no README or loading script.
    let requests = log.lock().unwrap().clone();
    let files: Vec<&String> = requests.iter().filter(|r| r.contains("/resolve/")).collect();
    for never in [
        "tsv_format",
        "unsupervised",
        "validation_mismatched",
        "README.md",
        "trec.py",
        ".jsonl",
    ] {
        assert!(!files.iter().any(|f| f.contains(never)), "{never}: {files:#?}");
    }
    assert!(
        !files.iter().any(|f| f.contains("glue/resolve/") && f.contains("/test")),
        "{files:#?}"
    );
    // Offline now, from the cache alone: the same answers, and nothing asked of the hub.
    let asked = log.lock().unwrap().len();
    for config in &configs {
        check(config, true);
    }
    assert_eq!(log.lock().unwrap().len(), asked);
    // The registry's other hub tasks: MATH's default config (data/, not the subjects beside it).
    let out = tpv(&cache, &endpoint, &["fetch", "squad_v2", "math"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let requests = log.lock().unwrap().clone();
    assert!(
        requests
            .iter()
            .any(|r| r.contains("MATH-lighteval/resolve/") && r.contains("/data/train-"))
    );
    assert!(!requests.iter().any(|r| r.contains("/algebra/")), "{requests:#?}");
}

/// A sweep of a tiny study of registry tasks on a fresh cache against the hub of the real
/// layouts: one dataset from the repo's own parquet (scitail, string labels), one from the
/// conversion only (trec); it downloads them and finishes (prompt tuning and their addition).
#[test]
fn a_sweep_of_registry_tasks_downloads_them_and_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let (endpoint, _) = serve_repos(layout_repos);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let fresh = dir.path().join("fresh-hub");
    let study = dir.path().join("study.toml");
    std::fs::write(
        &study,
        format!(
            r#"# a tiny study of registry tasks
[study]
name = "hub"
output = {out:?}
origins = [0]
tasks = ["scitail", "trec"]
[study.addition]
lambdas = [1.0]
[model]
path = {model:?}
[prompt]
virtual_tokens = 2
init = {{ sample_vocab = {{ seed = 7 }} }}
[optim]
batch_size = 4
max_steps = 2
[train]
output = "unused"
eval_every = 2
max_new_tokens = 2
"#,
            out = dir.path().join("hub-study").display().to_string(),
            model = root.join("tests/fixtures/models/llama_tied").display().to_string(),
        ),
    )
    .unwrap();
    let out = tpv(&fresh, &endpoint, &["--json", "sweep", study.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(summary["failed"].as_array().unwrap().is_empty(), "{summary}");
    assert_eq!(summary["ran"], 3, "{summary}");
    assert!(
        fresh
            .join("datasets--CogComp--trec/refs/refs/convert/parquet")
            .is_file()
    );
    assert!(fresh.join("datasets--allenai--scitail/refs/main").is_file());
}
