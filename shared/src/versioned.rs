//! Versioned JSON files (`{"format": …, "version": N, …}`): the report manifest and the study
//! file read through one check (run files carry theirs in safetensors metadata, `runfile`).

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// Parses `bytes` as a `what` file: `format` must be `expected`, and its version at least 1 and
/// at most `supported` (a newer one is refused naming both versions).
pub(crate) fn from_json<T: DeserializeOwned>(
    bytes: &[u8],
    expected: &str,
    supported: u32,
    what: &'static str,
) -> Result<T> {
    #[derive(Deserialize)]
    struct Head {
        format: Option<String>,
        version: Option<u32>,
    }
    let bad = |m: String| Error::BadMetadata(format!("{what}: {m}"));
    let head: Head = serde_json::from_slice(bytes).map_err(|e| bad(format!("not a {what} ({e})")))?;
    if head.format.as_deref() != Some(expected) {
        return Err(bad(format!("`format` is {:?}, expected {expected:?}", head.format)));
    }
    match head.version {
        Some(v) if v > supported => {
            return Err(Error::NewerFormat {
                what,
                file: v,
                supported,
            });
        }
        Some(0) | None => return Err(bad("no `version` (≥ 1)".into())),
        Some(_) => {}
    }
    serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))
}
