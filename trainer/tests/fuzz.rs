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
