//! The view's state in the URL's query string, so a link reopens exactly that view:
//! `?view=similarity&what=vectors&measure=cosine-flat&pair=sst2,mnli`, `?view=compose&origin=origin0&
//! tau=RUN_A,RUN_B&w=1,0.5&lambda=0.8&method=ties&density=0.5`, `?view=runs&sort=-score&filter=sst2`.

use std::collections::BTreeMap;

/// The query parameters of the page, in order.
pub fn read() -> BTreeMap<String, String> {
    let search = web_sys::window()
        .and_then(|w| w.location().search().ok())
        .unwrap_or_default();
    let Ok(params) = web_sys::UrlSearchParams::new_with_str(&search) else {
        return BTreeMap::new();
    };
    let mut out = BTreeMap::new();
    let iter = js_sys::try_iter(&params.entries()).ok().flatten();
    for entry in iter.into_iter().flatten().flatten() {
        let pair = js_sys::Array::from(&entry);
        if let (Some(k), Some(v)) = (pair.get(0).as_string(), pair.get(1).as_string()) {
            out.insert(k, v);
        }
    }
    out
}

/// Replaces the query string (no new history entry); empty values are left out.
pub fn write(params: &BTreeMap<String, String>) {
    let Some(window) = web_sys::window() else { return };
    let Ok(search) = web_sys::UrlSearchParams::new() else {
        return;
    };
    for (k, v) in params {
        if !v.is_empty() {
            search.append(k, v);
        }
    }
    let query: String = search.to_string().into();
    let path = window.location().pathname().unwrap_or_default();
    let url = if query.is_empty() {
        path
    } else {
        format!("{path}?{query}")
    };
    if let Ok(history) = window.history() {
        let _ = history.replace_state_with_url(&wasm_bindgen::JsValue::NULL, "", Some(&url));
    }
}
