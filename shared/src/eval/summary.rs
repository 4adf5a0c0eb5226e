//! An evaluation's summary (token-weighted loss, the task's metrics) and its confusion matrix.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::set::ExampleResult;
use crate::metrics;
use crate::tasks::TaskSpec;

/// Summary of an evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Mean NLL over all target tokens (token-weighted, as the training curves).
    pub loss: f64,
    /// Mean of the per-example losses.
    pub mean_example_loss: f64,
    /// exact_match and the task's metrics.
    pub metrics: BTreeMap<String, f64>,
}

/// Loss and metrics of finished results against their references.
pub fn summarize(task: &TaskSpec, results: &[ExampleResult], refs: &[String]) -> Summary {
    let (mut nll, mut count) = (0f64, 0usize);
    for r in results.iter().filter(|r| r.tokens > 0 && r.loss.is_finite()) {
        nll += f64::from(r.loss) * r.tokens as f64;
        count += r.tokens;
    }
    let n = results.len().max(1) as f64;
    let preds: Vec<String> = results.iter().map(|r| r.prediction.clone()).collect();
    Summary {
        loss: if count == 0 { f64::NAN } else { nll / count as f64 },
        mean_example_loss: results.iter().map(|r| f64::from(r.loss)).sum::<f64>() / n,
        metrics: metrics::compute(&task.metrics, &preds, refs, &task.labels),
    }
}

/// Counts of (reference, prediction) pairs: rows are references, columns the same classes plus
/// `other` for predictions outside them. Classes are the task's label words, or the distinct
/// references (sorted) when it has none; strings compare after [`metrics::normalize_label`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Confusion {
    pub classes: Vec<String>,
    /// `counts[reference][prediction]`, `classes.len()` rows of `classes.len() + 1` columns.
    pub counts: Vec<Vec<usize>>,
    /// The number of classes when it is over [`CONFUSION_MAX_CLASSES`]: no matrix then
    /// (`classes` and `counts` empty); a generative task's distinct targets are no label set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub omitted: Option<usize>,
}

/// The most classes a confusion matrix is made for (the paper's tasks have at most 14 labels). A
/// matrix grows with the square of its classes: 16,000 distinct targets took 2.0 GB.
pub const CONFUSION_MAX_CLASSES: usize = 100;

impl Confusion {
    pub fn new(labels: &[String], preds: &[String], refs: &[String]) -> Self {
        let classes: Vec<String> = if labels.is_empty() {
            let mut c: Vec<String> = refs.iter().map(|r| metrics::normalize_label(r)).collect();
            c.sort();
            c.dedup();
            c
        } else {
            labels.iter().map(|l| metrics::normalize_label(l)).collect()
        };
        let k = classes.len();
        if k > CONFUSION_MAX_CLASSES {
            return Self {
                classes: Vec::new(),
                counts: Vec::new(),
                omitted: Some(k),
            };
        }
        let index = |s: &str| {
            let s = metrics::normalize_label(s);
            classes.iter().position(|c| *c == s)
        };
        let mut counts = vec![vec![0; k + 1]; k];
        for (p, r) in preds.iter().zip(refs) {
            if let Some(row) = index(r) {
                counts[row][index(p).unwrap_or(k)] += 1;
            }
        }
        Self {
            classes,
            counts,
            omitted: None,
        }
    }
}
