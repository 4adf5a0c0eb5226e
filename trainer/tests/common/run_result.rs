//! Shared by `tests/train_cli.rs` and `tests/sweep_signals.rs`: what a run file holds that two
//! runs of one job must agree on.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use serde_json::Value;

/// Values, curves and metrics of a run file (everything but the creation time and energy).
pub fn result(path: &Path) -> (Vec<u8>, Value) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Vec<u8>)> = st.tensors().into_iter().map(|(n, t)| (n, t.data().to_vec())).collect();
    tensors.sort();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta: Value = serde_json::from_str(&header.metadata().as_ref().unwrap()["tpv"]).unwrap();
    (
        tensors
            .into_iter()
            .flat_map(|(n, d)| [n.into_bytes(), d].concat())
            .collect(),
        meta["metrics"].clone(),
    )
}
