//! Replays the committed corpus of crafted files (tests/fixtures/hostile, made by
//! tests/reference/hostile_corpus.py) through the command a user would run on each: every file
//! is refused with an error — exit status 1 and `error:` on stderr — never a panic, an abort, a
//! hang, or success. New crafted inputs go into the corpus, not into ad-hoc tests.

// Helpers outside #[test] functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use assert_cmd::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn corpus(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("tests/fixtures/hostile").join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no corpus files in {dir}");
    files
}

#[track_caller]
fn refused(args: &[&std::ffi::OsStr], file: &Path) -> String {
    let out = Command::cargo_bin("tpv")
        .unwrap()
        .args(args)
        .timeout(Duration::from_secs(60))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}: expected a clean error, got {:?}:\n{err}",
        file.display(),
        out.status
    );
    assert!(
        err.starts_with("error:") && !err.contains("panicked"),
        "{}:\n{err}",
        file.display()
    );
    err.into_owned()
}

#[test]
fn every_crafted_file_is_refused_with_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let llama = root().join("tests/fixtures/models/llama_tied");
    let one = root().join("tests/fixtures/hostile/one.jsonl");
    let mut n = 0;
    for f in corpus("runfile").iter().chain(&corpus("peft")) {
        refused(&["inspect".as_ref(), f.as_os_str()], f);
        n += 1;
    }
    for f in corpus("evalset") {
        refused(
            &[
                "eval".as_ref(),
                "--model".as_ref(),
                llama.as_os_str(),
                "--data".as_ref(),
                f.as_os_str(),
            ],
            &f,
        );
        n += 1;
    }
    // Parquet, as a hub dataset or `--data` file (tests/fixtures/hostile/parquet/README.md).
    for f in corpus("parquet")
        .into_iter()
        .filter(|f| f.extension().is_some_and(|e| e == "parquet"))
    {
        refused(
            &[
                "eval".as_ref(),
                "--model".as_ref(),
                llama.as_os_str(),
                "--data".as_ref(),
                f.as_os_str(),
            ],
            &f,
        );
        n += 1;
    }
    for f in corpus("study") {
        let out = tmp.path().join(f.file_stem().unwrap());
        refused(
            &[
                "sweep".as_ref(),
                f.as_os_str(),
                "--emit".as_ref(),
                "slurm".as_ref(),
                "-o".as_ref(),
                out.as_os_str(),
            ],
            &f,
        );
        assert!(!out.join("submit.sh").exists(), "{}: scripts written", f.display());
        n += 1;
    }
    for f in corpus("gguf") {
        refused(
            &[
                "eval".as_ref(),
                "--model".as_ref(),
                f.as_os_str(),
                "--data".as_ref(),
                one.as_os_str(),
            ],
            &f,
        );
        n += 1;
    }
    for f in corpus("manifest") {
        let bytes = std::fs::read(&f).unwrap();
        assert!(
            tpv_shared::report::Manifest::from_json(&bytes).is_err(),
            "{}",
            f.display()
        );
        n += 1;
    }
    assert!(n >= 35, "{n} files replayed");
}

/// The fixture model `fixture`'s files in a new folder under `tmp`, with `crafted` as its `file`.
fn model_with(tmp: &Path, fixture: &str, file: &str, crafted: &Path) -> PathBuf {
    let source = root().join("tests/fixtures/models").join(fixture);
    let model = tmp.join(crafted.file_name().unwrap());
    std::fs::create_dir_all(&model).unwrap();
    for name in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        if name != file {
            std::fs::copy(source.join(name), model.join(name)).unwrap();
        }
    }
    std::fs::copy(crafted, model.join(file)).unwrap();
    model
}

/// Model folders with one crafted file: a config.json that describes no model
/// (`config/FIXTURE.FIELD=VALUE.json`, with FIXTURE's other files) or a tokenizer_config.json
/// whose chat template runs past its limits (`template/`, beside the tiny LLaMA's weights).
#[test]
fn every_crafted_model_folder_is_refused_with_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let one = root().join("tests/fixtures/hostile/one.jsonl");
    let eval = |model: &Path, f: &Path| {
        refused(
            &[
                "eval".as_ref(),
                "--model".as_ref(),
                model.as_os_str(),
                "--data".as_ref(),
                one.as_os_str(),
            ],
            f,
        )
    };
    // Refused for the reason the file was made for: the field it sets, the template's limits.
    for f in corpus("config") {
        let name = f.file_name().unwrap().to_str().unwrap();
        let (fixture, rest) = name.split_once('.').unwrap();
        let field = rest.split('=').next().unwrap().rsplit('.').next().unwrap();
        let err = eval(&model_with(tmp.path(), fixture, "config.json", &f), &f);
        assert!(err.contains(field), "{name}: the error does not name {field}:\n{err}");
    }
    for f in corpus("template")
        .into_iter()
        .filter(|f| f.extension().is_some_and(|e| e == "json"))
    {
        let err = eval(&model_with(tmp.path(), "llama_tied", "tokenizer_config.json", &f), &f);
        assert!(err.contains("chat template"), "{}:\n{err}", f.display());
    }
}
