//! What differs between two runs (`tpv diff RUN_A RUN_B`): their resolved configurations key by
//! key, their metadata (kind, model, tasks, origin, data), their results (every metric, with
//! B − A), their training curves' last values, and how far apart their prompts are (and their
//! task prompt vectors, where both have an origin). Plain data: the CLI prints it, the browser
//! can show it.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use crate::SoftPrompt;
use crate::similarity::{Measure, similarity};

/// One key whose value differs (`None`: absent on that side).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    pub key: String,
    pub a: Option<Value>,
    pub b: Option<Value>,
}

/// A number on both sides (or one), and B − A where both have it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Delta {
    pub key: String,
    pub a: Option<f64>,
    pub b: Option<f64>,
    pub b_minus_a: Option<f64>,
}

/// How far apart two prompts of one shape are.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Distance {
    /// Cosine of the token-means (the paper's measure) and of the flattened values.
    pub cosine_mean: f64,
    pub cosine_flat: f64,
    /// ‖A − B‖ over all values.
    pub l2: f64,
}

/// What differs between runs A and B.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunDiff {
    /// Keys of the resolved configurations (dotted paths) whose values differ.
    pub config: Vec<Change>,
    /// Metadata that differs: kind, model, tasks, origin, data fingerprint, shape, tool version.
    pub meta: Vec<Change>,
    /// Every metric of either run.
    pub metrics: Vec<Delta>,
    /// The last value of every curve of either run.
    pub curves: Vec<Delta>,
    /// The prompts' distance (same shape only).
    pub prompts: Option<Distance>,
    /// The task prompt vectors' (both with an origin, same shape).
    pub vectors: Option<Distance>,
}

/// Every leaf of `value` by its dotted path (arrays whole: a list is one setting).
fn flatten(prefix: &str, value: &Value, out: &mut BTreeMap<String, Value>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        other => {
            out.insert(prefix.to_owned(), other.clone());
        }
    }
}

/// The keys of two JSON documents whose values differ, sorted by key.
pub fn json_changes(a: &Value, b: &Value) -> Vec<Change> {
    let (mut fa, mut fb) = (BTreeMap::new(), BTreeMap::new());
    flatten("", a, &mut fa);
    flatten("", b, &mut fb);
    let mut keys: Vec<&String> = fa.keys().chain(fb.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| fa.get(*k) != fb.get(*k))
        .map(|k| Change {
            key: k.clone(),
            a: fa.get(k).cloned(),
            b: fb.get(k).cloned(),
        })
        .collect()
}

fn deltas(a: &BTreeMap<String, f64>, b: &BTreeMap<String, f64>) -> Vec<Delta> {
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .map(|k| {
            let (x, y) = (a.get(k).copied(), b.get(k).copied());
            Delta {
                key: k.clone(),
                a: x,
                b: y,
                b_minus_a: x.zip(y).map(|(x, y)| y - x),
            }
        })
        .collect()
}

fn distance(a: &crate::PromptTensor, b: &crate::PromptTensor) -> Option<Distance> {
    let l2 = a
        .as_slice()
        .iter()
        .zip(b.as_slice())
        .map(|(x, y)| f64::from(x - y).powi(2))
        .sum::<f64>()
        .sqrt();
    Some(Distance {
        cosine_mean: similarity(a, b, Measure::CosineMean).ok()?,
        cosine_flat: similarity(a, b, Measure::CosineFlat).ok()?,
        l2,
    })
}

/// What differs between runs `a` and `b`.
pub fn diff_runs(a: &SoftPrompt, b: &SoftPrompt) -> RunDiff {
    let null = Value::Null;
    let config = json_changes(
        a.meta.config.as_ref().unwrap_or(&null),
        b.meta.config.as_ref().unwrap_or(&null),
    );
    let summary = |p: &SoftPrompt| {
        serde_json::json!({
            "kind": p.kind().as_str(),
            "model": p.meta.model.as_ref().map(|m| m.id.clone()),
            "tasks": p.meta.tasks,
            "origin": p.origin_id(),
            "data_fingerprint": p.meta.data_fingerprint,
            "shape": p.shape(),
            "tool_version": p.meta.tool_version,
        })
    };
    let last = |p: &SoftPrompt| -> BTreeMap<String, f64> {
        p.curves
            .iter()
            .filter_map(|(k, c)| Some((k.clone(), f64::from(*c.values.last()?))))
            .collect()
    };
    let same_shape = a.shape() == b.shape();
    let vectors = match (same_shape, a.vector_values(), b.vector_values()) {
        (true, Ok(x), Ok(y)) if a.origin_values().is_some() && b.origin_values().is_some() => distance(&x, &y),
        _ => None,
    };
    RunDiff {
        config,
        meta: json_changes(&summary(a), &summary(b)),
        metrics: deltas(&a.meta.metrics, &b.meta.metrics),
        curves: deltas(&last(a), &last(b)),
        prompts: if same_shape {
            distance(&a.values, &b.values)
        } else {
            None
        },
        vectors,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn nested_keys_are_compared_leaf_by_leaf() {
        let a = json!({ "optim": { "learning_rate": 0.3, "batch_size": 8 }, "seed": 1, "tasks": ["a"] });
        let b = json!({ "optim": { "learning_rate": 0.1, "batch_size": 8 }, "tasks": ["a", "b"], "new": true });
        let keys: Vec<String> = json_changes(&a, &b).into_iter().map(|c| c.key).collect();
        assert_eq!(keys, ["new", "optim.learning_rate", "seed", "tasks"]);
        let c = &json_changes(&a, &b)[1];
        assert_eq!((c.a.clone(), c.b.clone()), (Some(json!(0.3)), Some(json!(0.1))));
        assert!(json_changes(&a, &a).is_empty());
    }
}
