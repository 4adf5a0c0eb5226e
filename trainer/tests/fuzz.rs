//! Fuzzing the study config and training config parsers (TOML, then serde, then validation) as
//! part of the normal test run, on stable Rust: the tiny fixture study with values swapped for
//! hostile ones (sizes that overflow or allocate, NaN and infinities, traversal, control
//! characters, wrong types) and with arbitrary byte corruption. Property: an error or a study,
//! never a panic; and every study that loads has only plain task names and sane sizes.

// Helpers outside #[test] functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use tpv_trainer::study::Study;

fn study_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/study/study.toml")
}

/// Hostile TOML values.
const VALUES: &[&str] = &[
    "-1",
    "0",
    "9223372036854775807",
    "100000000000",
    "1e308",
    "nan",
    "inf",
    "-inf",
    "\"../../../x\"",
    "\"a\\nb\"",
    "\"$(touch /tmp/x)\"",
    "\"\\u001b[2J\"",
    "[]",
    "[[]]",
    "{}",
    "true",
    "\"\"",
    "[\"a\", \"a\"]",
    "[0, 0]",
];

/// Dotted keys of the study config to set.
const KEYS: &[&str] = &[
    "study.name",
    "study.output",
    "study.origins",
    "study.tasks",
    "study.set.optim.max_steps",
    "study.addition.lambdas",
    "study.addition.sets",
    "study.addition.merge",
    "study.cross_origin.tasks",
    "study.transfer.sources",
    "study.transfer.targets",
    "study.transfer.shots",
    "study.transfer.inits",
    "study.transfer.set.optim.batch_size",
    "study.data.a.train",
    "study.overrides.a",
    "prompt.virtual_tokens",
    "prompt.init",
    "data.max_source_tokens",
    "data.shots",
    "data.max_test",
    "optim.learning_rate",
    "optim.batch_size",
    "optim.epochs",
    "optim.max_steps",
    "optim.warmup_ratio",
    "optim.beta2",
    "optim.max_grad_norm",
    "train.eval_every",
    "train.eval_batch_size",
    "train.max_new_tokens",
    "train.dropout",
    "model.path",
];

fn check(study: &Study) {
    // What a loaded study promises: task names are single plain path components.
    for job in study.jobs() {
        assert!(!job.id.split('/').any(|p| p == ".." || p.is_empty()), "{}", job.id);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn study_configs_with_hostile_values(edits in prop::collection::vec((0..KEYS.len(), 0..VALUES.len()), 1..4)) {
        let sets: Vec<String> = edits.iter().map(|&(k, v)| format!("{}={}", KEYS[k], VALUES[v])).collect();
        if let Ok(study) = Study::load(&study_path(), &sets) {
            check(&study);
        }
    }

    #[test]
    fn study_configs_with_corrupted_bytes(flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..10)) {
        let mut bytes = std::fs::read(study_path()).unwrap();
        for (i, b) in flips {
            let i = i.index(bytes.len());
            bytes[i] = b;
        }
        if let Ok(text) = String::from_utf8(bytes)
            && let Ok(study) = Study::from_str(&text, &study_path(), &[])
        {
            check(&study);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Parquet (`tpv_trainer::parquet_guard`): the committed pyarrow files (snappy, dictionaries,
// a struct of lists) with bytes flipped, cut short, or Thrift integers rewritten to huge or
// negative varints. Property: `read_records` returns records or an error naming the file; no
// panic, abort or unbounded allocation (each file may decode to 64 MiB at most). Corrupt level
// or dictionary-index data inside a page still makes the parquet crate panic now and then (about
// 1 in 400 of these edits: levels past the column's maximum, indices past the dictionary); the
// guard turns that into an error naming the file, which is what this checks.

fn parquet_seeds() -> Vec<Vec<u8>> {
    let hub = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/hub");
    let snap = "snapshots/0123456789abcdef0123456789abcdef01234567";
    [
        format!("datasets--nyu-mll--glue/{snap}/sst2/validation-00000-of-00001.parquet"),
        format!("datasets--rajpurkar--squad_v2/{snap}/squad_v2/validation-00000-of-00001.parquet"),
    ]
    .iter()
    .map(|p| std::fs::read(hub.join(p)).unwrap())
    .collect()
}

/// Huge, negative and boundary varints (zig-zag encoded as Thrift writes i32/i64 fields).
const VARINTS: &[&[u8]] = &[
    &[0xff, 0xff, 0xff, 0xff, 0x0f],                               // i32: -2^31
    &[0xfe, 0xff, 0xff, 0xff, 0x0f],                               // i32: 2^31 - 1
    &[0x01],                                                       // -1
    &[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01], // i64: 2^62
    &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01], // i64: -2^63
];

fn parquet_read(bytes: &[u8]) -> Result<usize, String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fuzz.parquet");
    std::fs::write(&path, bytes).unwrap();
    match tpv_trainer::data::read_records(&path) {
        Ok(records) => Ok(records.len()),
        Err(e) => {
            let text = format!("{e:#}");
            assert!(text.contains(&path.display().to_string()), "{text}");
            Err(text)
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn parquet_with_corrupted_bytes(
        seed in 0..2usize,
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0..3u8), 1..6),
        cut in prop::option::weighted(0.2, any::<prop::sample::Index>()),
    ) {
        let mut bytes = parquet_seeds().swap_remove(seed);
        // Two kinds of edit in three land in the last fifth (the footer), the rest anywhere.
        for (i, b, kind) in edits {
            let at = if kind == 0 { i.index(bytes.len()) } else { bytes.len() - 1 - i.index(bytes.len() / 5) };
            match kind {
                2 => {
                    let v = VARINTS[usize::from(b) % VARINTS.len()];
                    let end = (at + v.len()).min(bytes.len());
                    bytes.splice(at..end, v.iter().copied());
                }
                _ => bytes[at] ^= b.max(1),
            }
        }
        if let Some(cut) = cut {
            bytes.truncate(cut.index(bytes.len()));
        }
        // Ok or an error naming the file (parquet_read checks that); a panic that escaped the
        // guard or an abort fails the test by itself.
        let _ = parquet_read(&bytes);
    }
}
