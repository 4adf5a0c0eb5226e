//! Reading and writing float matrices in safetensors, defensively: every header field is checked
//! by the safetensors crate (header size bound, offsets in range, shapes that fit the buffer) and
//! here (dtype, rank, finite values). Nothing panics on hostile input, and nothing is allocated
//! beyond what the buffer's own size justifies.

use std::collections::{BTreeMap, HashMap};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::error::{Error, Result};
use crate::prompt::check_finite;
use crate::tensor::PromptTensor;

/// The largest safetensors header a prompt file (run file, adapter, checkpoint) may have.
pub const MAX_HEADER_BYTES: u64 = 4 << 20;
/// The most tensors a prompt file may hold (a run file has the prompt, its origin and its curves).
pub const MAX_TENSORS: usize = 4096;

/// A parsed safetensors buffer and its `__metadata__`.
pub struct Loaded<'a> {
    pub tensors: SafeTensors<'a>,
    pub metadata: HashMap<String, String>,
}

impl<'a> Loaded<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<Self> {
        // A prompt file's header is a few KB: a huge one (1.45 M empty tensors in 99 MB took 31 s
        // and 1.5 GB to parse) is refused before the JSON is read.
        if let Some(len) = bytes.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes)
            && len > MAX_HEADER_BYTES
        {
            return Err(Error::BadMetadata(format!(
                "a safetensors header of {len} bytes; prompt files have headers of a few KB (limit {MAX_HEADER_BYTES})"
            )));
        }
        let (_, header) = SafeTensors::read_metadata(bytes)?;
        let metadata = header.metadata().clone().unwrap_or_default();
        let tensors = SafeTensors::deserialize(bytes)?;
        if tensors.len() > MAX_TENSORS {
            return Err(Error::BadMetadata(format!(
                "{} tensors; prompt files have a few (limit {MAX_TENSORS})",
                tensors.len()
            )));
        }
        Ok(Self { tensors, metadata })
    }

    pub fn has(&self, name: &str) -> bool {
        self.tensors.names().contains(&name)
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.tensors.names().into_iter().map(str::to_owned).collect();
        names.sort();
        names
    }

    /// A 2-D float tensor as f32, with its stored dtype; NaN/inf values are an error.
    pub fn matrix(&self, name: &str) -> Result<(PromptTensor, Dtype)> {
        let view = self
            .tensors
            .tensor(name)
            .map_err(|_| Error::MissingTensor(name.to_owned()))?;
        let (rows, dim) = match view.shape() {
            [r, d] => (*r, *d),
            other => {
                return Err(Error::WrongShape {
                    tensor: name.to_owned(),
                    shape: other.to_vec(),
                    expected: "2 dimensions",
                });
            }
        };
        let data = to_f32(name, &view)?;
        let t = PromptTensor::new(rows, dim, data)?;
        check_finite(name, &t)?;
        Ok((t, view.dtype()))
    }
}

fn to_f32(name: &str, view: &TensorView<'_>) -> Result<Vec<f32>> {
    let bytes = view.data();
    Ok(match view.dtype() {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::F64 => bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
            .collect(),
        other => {
            return Err(Error::WrongDtype {
                tensor: name.to_owned(),
                dtype: format!("{other:?}"),
            });
        }
    })
}

/// Serializes f32 matrices (name, tensor) with `__metadata__`, byte-for-byte deterministic:
/// header keys sorted, data in name order, header padded with spaces to 8 bytes (as the
/// safetensors crate pads). The safetensors crate's own writer emits `__metadata__` in HashMap
/// order, so the same prompt would give different files from run to run.
pub fn write(tensors: &[(String, &PromptTensor)], metadata: BTreeMap<String, String>) -> Result<Vec<u8>> {
    let mut sorted: Vec<&(String, &PromptTensor)> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        header.insert(
            "__metadata__".into(),
            serde_json::to_value(&metadata).map_err(bad_header)?,
        );
    }
    let mut offset = 0usize;
    for (name, t) in &sorted {
        let len = t.len() * 4;
        header.insert(
            name.clone(),
            serde_json::json!({ "dtype": "F32", "shape": t.shape(), "data_offsets": [offset, offset + len] }),
        );
        offset += len;
    }
    // Keys are inserted in sorted order, so the output is sorted whether serde_json's Map keeps
    // insertion order (feature preserve_order) or sorts.
    let mut json = serde_json::to_vec(&header).map_err(bad_header)?;
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + json.len() + offset);
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    for (_, t) in sorted {
        out.extend(t.as_slice().iter().flat_map(|x| x.to_le_bytes()));
    }
    Ok(out)
}

fn bad_header(e: serde_json::Error) -> Error {
    Error::BadMetadata(e.to_string())
}
