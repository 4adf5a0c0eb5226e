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
fn refused(args: &[&std::ffi::OsStr], file: &Path) {
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
