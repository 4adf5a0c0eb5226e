//! Data loading: parquet as the HF hub stores it (tests/fixtures/hub, written by
//! tests/reference/parquet_fixtures.py with pyarrow), CSV/TSV/JSONL, the registry's templates, the
//! paper's split rule, k-shot sets and fingerprints.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use tpv_shared::tasks::{Style, TaskSpec};
use tpv_trainer::config::DataSection;
use tpv_trainer::data;

const REV: &str = "0123456789abcdef0123456789abcdef01234567";

fn hub() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/hub")).to_owned()
}

fn snapshot(repo: &str) -> PathBuf {
    hub()
        .join(format!("datasets--{}", repo.replace('/', "--")))
        .join("snapshots")
        .join(REV)
}

fn section(toml_text: &str) -> DataSection {
    toml::from_str(toml_text).unwrap()
}

#[test]
fn glue_sst2_from_parquet_with_the_paper_split() {
    let dir = snapshot("nyu-mll/glue");
    let cfg = section(&format!(
        "train = \"sst2\"\ndataset_dir = {:?}",
        dir.display().to_string()
    ));
    let s = data::load(&cfg).unwrap();
    // 30 training examples (< 10,000): kept; the 8 validation examples are halved.
    assert_eq!((s.train.len(), s.validation.len(), s.test.len()), (30, 4, 4));
    let first = &s.train[0];
    assert_eq!(
        s.task.input(first, Style::T5).unwrap(),
        "sst2 sentence: sentence number 0 is awful"
    );
    assert_eq!(s.task.target(first).unwrap(), "negative");
    assert_eq!(
        s.task.input(first, Style::Chat).unwrap(),
        "Classify the sentence into labels: negative, positive. Reply only the corresponding label.\nsentence: sentence number 0 is awful\nlabel: "
    );
    // Same seed, same split; the fingerprint names it.
    let again = data::load(&cfg).unwrap();
    assert_eq!(s.fingerprint, again.fingerprint);
    assert_eq!(s.validation, again.validation);
    let other = data::load(&section(&format!(
        "train = \"sst2\"\nsplit_seed = 1\ndataset_dir = {:?}",
        dir.display().to_string()
    )))
    .unwrap();
    assert_ne!(s.fingerprint, other.fingerprint);

    // k-shot: stratified, the same for every method and origin (it depends on the split seed only).
    let shots = section(&format!(
        "train = \"sst2\"\nshots = 6\ndataset_dir = {:?}",
        dir.display().to_string()
    ));
    let k = data::load(&shots).unwrap();
    assert_eq!(k.train.len(), 6);
    assert_eq!(
        k.train.iter().filter(|r| r["label"] == "0").count(),
        2,
        "a third of sst2 here is negative"
    );
    assert_eq!(k.train, data::load(&shots).unwrap().train);
}

#[test]
fn snli_drops_examples_without_a_gold_label() {
    let cfg = section(&format!(
        "train = \"snli\"\ndataset_dir = {:?}",
        snapshot("stanfordnlp/snli").display().to_string()
    ));
    let s = data::load(&cfg).unwrap();
    assert_eq!(s.train.len(), 3);
    assert_eq!(s.validation.len() + s.test.len(), 3);
    assert!(s.train.iter().all(|r| r["label"] != "-1"));
}

#[test]
fn squad_answers_are_flattened() {
    let recs =
        data::read_records(&snapshot("rajpurkar/squad_v2").join("squad_v2/validation-00000-of-00001.parquet")).unwrap();
    assert_eq!(recs.len(), 2);
    assert_eq!(recs[0]["answers"], "Denver Broncos|||The Denver Broncos");
    assert_eq!(recs[1]["answers"], "");
    assert_eq!(recs[0]["question"], "Who won?");
}

#[test]
fn the_hub_cache_layout_is_found() {
    let files = data::split_files(&snapshot("nyu-mll/glue"), Some("sst2")).unwrap();
    assert_eq!(files.keys().collect::<Vec<_>>(), ["test", "train", "validation"]);
}

#[test]
fn csv_tsv_and_custom_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let rows: String = (0..12)
        .map(|i| format!("\"review {i}, with a comma\",{}\n", i % 2))
        .collect();
    std::fs::write(dir.path().join("train.csv"), format!("text,stars\n{rows}")).unwrap();
    let tsv: String = (0..4).map(|i| format!("review {i}\t{}\n", i % 2)).collect();
    std::fs::write(dir.path().join("valid.tsv"), format!("text\tstars\n{tsv}")).unwrap();
    let cfg = section(&format!(
        r#"train = {:?}
validation = {:?}
[task]
name = "reviews"
template = "review: {{text}}"
instruction = "Is the review good or bad?"
fields = [["review", "text"]]
label_column = "stars"
labels = ["bad", "good"]
metrics = ["f1"]
"#,
        dir.path().join("train.csv").display().to_string(),
        dir.path().join("valid.tsv").display().to_string()
    ));
    let s = data::load(&cfg).unwrap();
    assert_eq!((s.train.len(), s.validation.len(), s.test.len()), (12, 2, 2));
    let task: &TaskSpec = &s.task;
    assert_eq!(
        task.input(&s.train[1], Style::T5).unwrap(),
        "review: review 1, with a comma"
    );
    assert_eq!(task.target(&s.train[1]).unwrap(), "good");
    assert_eq!(
        task.input(&s.train[1], Style::Chat).unwrap(),
        "Is the review good or bad?\nreview: review 1, with a comma\nlabel: "
    );

    // A record without the label column is an error naming the column and the example.
    std::fs::write(dir.path().join("bad.jsonl"), "{\"text\": \"x\"}\n").unwrap();
    let bad = section(&format!(
        "train = {:?}\ntask = \"sst2\"",
        dir.path().join("bad.jsonl").display().to_string()
    ));
    let err = format!("{:#}", data::load(&bad).unwrap_err());
    assert!(err.contains("sentence") && err.contains("example 1"), "{err}");
}

#[test]
fn json_arrays_and_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let array = dir.path().join("a.json");
    std::fs::write(&array, r#"[{"text": "good", "class": 1}, {"text": "", "class": null}]"#).unwrap();
    let recs = data::read_records(&array).unwrap();
    assert_eq!(recs.len(), 2);
    assert_eq!(recs[0]["class"], "1");
    assert_eq!(recs[1]["class"], "");
    let lines = dir.path().join("l.json");
    std::fs::write(
        &lines,
        "{\"input\": \"a\", \"target\": \"b\"}\n{\"input\": \"c\", \"target\": 2}\n",
    )
    .unwrap();
    let recs = data::read_records(&lines).unwrap();
    assert_eq!(recs[1]["target"], "2");
}
