//! The family registry: every fixture's config.json picks its family by `model_type`, and what
//! the family computes from the config alone (parameters, dimensions) agrees with the weights.
#![allow(
    clippy::disallowed_methods,
    reason = "native code: tests read the fixtures (the library does not)"
)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use tpv_shared::model::families::{self, FAMILIES};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models")
}

/// Each fixture folder with the model_type its config names.
fn every_fixture() -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = std::fs::read_dir(fixtures())
        .unwrap()
        .map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            let config: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(fixtures().join(&name).join("config.json")).unwrap())
                    .unwrap();
            (name, config["model_type"].as_str().unwrap().to_owned())
        })
        .collect();
    out.sort();
    out
}

#[path = "common/fixtures.rs"]
mod fixtures;

#[test]
fn every_family_has_a_fixture_and_every_model_type_one_family() {
    let fixtures = every_fixture();
    let mut listed: Vec<&str> = fixtures::MODELS.to_vec();
    listed.sort_unstable();
    let on_disk: Vec<&str> = fixtures.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(listed, on_disk, "common/fixtures.rs's list is the fixtures folder");
    for f in FAMILIES {
        assert_eq!(FAMILIES.iter().filter(|g| g.model_type == f.model_type).count(), 1);
        assert!(
            fixtures.iter().any(|(_, t)| t == f.model_type),
            "no fixture of {}",
            f.model_type
        );
    }
}

#[test]
fn parameters_from_the_config_are_the_weights_count() {
    for (name, model_type) in every_fixture() {
        let dir = fixtures().join(&name);
        let spec = families::parse(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
        assert_eq!(spec.model_type(), model_type);
        let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let stored: u64 = header
            .tensors()
            .values()
            .map(|info| info.shape.iter().product::<usize>() as u64)
            .sum();
        assert_eq!(spec.parameters(), stored, "{name}");
        let dims = spec.dims();
        assert!(
            dims.hidden > 0 && dims.layers > 0 && dims.heads > 0 && dims.vocab > 0,
            "{name}"
        );
    }
}

#[test]
fn an_unknown_model_type_names_the_supported_ones() {
    let err = families::parse(r#"{"model_type": "mamba"}"#).unwrap_err().to_string();
    assert!(err.contains("\"mamba\""), "{err}");
    for f in FAMILIES {
        assert!(err.contains(f.model_type), "{err}");
    }
    let err = families::parse(r#"{"hidden_size": 8}"#).unwrap_err().to_string();
    assert!(err.contains("model_type"), "{err}");
}
