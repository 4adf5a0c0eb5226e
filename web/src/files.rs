//! Reading user-chosen files into summaries.

use tpv_shared::{Document, Summary, peft};
use wasm_bindgen_futures::JsFuture;

/// One opened file: its summary or the reason it could not be read.
#[derive(Debug, Clone)]
pub struct Entry {
    pub id: usize,
    pub name: String,
    pub outcome: Result<Summary, String>,
    /// The parsed file, for the other views.
    pub document: Option<Document>,
}

/// Reads the files' bytes and parses them. An `adapter_config.json` chosen together with peft
/// weights is used as their config.
pub async fn open(files: Vec<web_sys::File>, first_id: usize) -> Vec<Entry> {
    let mut read = Vec::new();
    for file in files {
        let name = file.name();
        let bytes = match JsFuture::from(file.array_buffer()).await {
            Ok(buf) => Ok(js_sys::Uint8Array::new(&buf).to_vec()),
            Err(e) => Err(format!("the browser could not read the file: {e:?}")),
        };
        read.push((name, bytes));
    }
    let config: Option<String> = read
        .iter()
        .find(|(name, _)| name == peft::CONFIG_FILE)
        .and_then(|(_, b)| b.as_ref().ok())
        .map(|b| String::from_utf8_lossy(b).into_owned());
    let has_weights = read.iter().any(|(name, _)| name != peft::CONFIG_FILE);

    read.into_iter()
        .filter(|(name, _)| name != peft::CONFIG_FILE || !has_weights)
        .enumerate()
        .map(|(i, (name, bytes))| {
            let document = if name == peft::CONFIG_FILE {
                Err(format!(
                    "{} describes an adapter; choose it together with its {}",
                    peft::CONFIG_FILE,
                    peft::WEIGHTS_FILE
                ))
            } else {
                bytes.and_then(|b| Document::read(&b, config.as_deref()).map_err(|e| e.to_string()))
            };
            Entry {
                id: first_id + i,
                name,
                outcome: document.as_ref().map(Document::summary).map_err(Clone::clone),
                document: document.ok(),
            }
        })
        .collect()
}
