//! Records from JSON text — a file's or pasted into the web app: one parser and one rule for
//! values that are not strings, so a record means the same in `tpv` and in the browser.
//!
//! JSON values become text: strings as they are, `null` as "", lists (of strings) joined with
//! `|||`, an object by its `text` field (SQuAD's `answers`), anything else as its JSON.

use crate::error::{Error, Result};
use crate::tasks::Record;

/// A JSON value as a record's text.
pub fn json_text(v: &serde_json::Value) -> String {
    use serde_json::Value;
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        Value::Array(xs) => xs.iter().map(json_text).collect::<Vec<_>>().join("|||"),
        Value::Object(m) => match m.get("text") {
            Some(t) => json_text(t),
            None => v.to_string(),
        },
        other => other.to_string(),
    }
}

fn record(obj: &serde_json::Map<String, serde_json::Value>) -> Record {
    obj.iter().map(|(k, v)| (k.clone(), json_text(v))).collect()
}

/// JSON lines: one object per line, blank lines skipped. Errors name the 1-based line.
pub fn parse_jsonl(text: &str) -> Result<Vec<Record>> {
    parse_jsonl_requiring(text, &[])
}

/// [`parse_jsonl`], every record having each of `columns` (e.g. `input` and `target` for plain
/// examples); a missing one names its line.
pub fn parse_jsonl_requiring(text: &str, columns: &[&str]) -> Result<Vec<Record>> {
    let mut out = Vec::new();
    // A UTF-8 byte order mark (Windows editors write one) is not part of the first line.
    for (i, line) in text.strip_prefix('\u{feff}').unwrap_or(text).lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |reason: String| Error::BadRecords {
            line: Some(i + 1),
            reason,
        };
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| bad(format!("not JSON ({e})")))?;
        let obj = v.as_object().ok_or_else(|| bad("expected a JSON object".to_owned()))?;
        if let Some(c) = columns.iter().find(|c| !obj.contains_key(**c)) {
            return Err(bad(format!("no {c:?}")));
        }
        out.push(record(obj));
    }
    Ok(out)
}

/// A JSON array of objects, or JSON lines (as `datasets.Dataset.to_json` writes under a `.json`
/// name): whichever the text starts with.
pub fn parse_json(text: &str) -> Result<Vec<Record>> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if !text.trim_start().starts_with('[') {
        return parse_jsonl(text);
    }
    let v: Vec<serde_json::Map<String, serde_json::Value>> =
        serde_json::from_str(text).map_err(|e| Error::BadRecords {
            line: None,
            reason: format!("expected a JSON array of objects ({e})"),
        })?;
    Ok(v.iter().map(record).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 32 (14): a JSONL file with a UTF-8 BOM was refused (CSV and TSV with one worked).
    #[test]
    fn a_byte_order_mark_is_not_part_of_the_first_record() {
        let recs = parse_jsonl("\u{feff}{\"input\": \"a\", \"target\": \"b\"}\n{\"input\": \"c\"}\n").unwrap();
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0]["input"], "a");
        let recs = parse_json("\u{feff}[{\"input\": \"a\"}]").unwrap();
        assert_eq!(recs[0]["input"], "a");
    }

    #[test]
    fn values_become_text_by_one_rule() {
        let recs = parse_jsonl(
            "{\"input\": \"a\", \"n\": 3, \"l\": [\"x\", \"y\"], \"z\": null, \"answers\": {\"text\": [\"p\", \"q\"]}}\n\n",
        )
        .unwrap();
        assert_eq!(recs.len(), 1);
        let r = &recs[0];
        assert_eq!(
            (r["input"].as_str(), r["n"].as_str(), r["l"].as_str()),
            ("a", "3", "x|||y")
        );
        assert_eq!((r["z"].as_str(), r["answers"].as_str()), ("", "p|||q"));
        assert_eq!(parse_json("[{\"input\": \"a\"}]").unwrap()[0]["input"], "a");
        assert_eq!(parse_json("{\"input\": \"a\"}\n{\"input\": \"b\"}").unwrap().len(), 2);
    }

    #[test]
    fn errors_name_the_line() {
        let e = parse_jsonl("{\"a\": \"1\"}\n\nnot json").unwrap_err().to_string();
        assert!(e.contains("line 3") && e.contains("not JSON"), "{e}");
        let e = parse_jsonl("[1]").unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("JSON object"), "{e}");
        // The line as pasted, blank lines counted.
        let e = parse_jsonl_requiring(
            "\n{\"input\": \"a\", \"target\": \"b\"}\n\n{\"input\": \"a\"}",
            &["input", "target"],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("line 4") && e.contains("\"target\""), "{e}");
    }
}
