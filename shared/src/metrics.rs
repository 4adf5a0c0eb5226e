//! Task metrics, computed on generated strings as the paper does (generative evaluation: a
//! prediction that is not one of the labels is simply wrong).
//!
//! Definitions follow scikit-learn / scipy / the official SQuAD v2 script, and the tests compare
//! with their values (`shared/tests/metrics.rs`):
//! - F1 is binary F1 of the positive label (the label at index 1, as `f1_score(pos_label=…)`);
//! - macro-F1 averages over the task's label set (`f1_score(average="macro", labels=LABELS)`), so
//!   invalid predictions lower recall but are no class of their own; a label that is neither
//!   predicted nor present scores 0 (sklearn's `zero_division=0`);
//! - MCC is sklearn's multiclass `matthews_corrcoef` over every string seen;
//! - Pearson and Spearman (average ranks for ties) on predictions parsed as numbers, an unparsable
//!   prediction counting as 0 (reported separately in `invalid`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The metrics a task reports, besides exact match which every task reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    ExactMatch,
    F1,
    MacroF1,
    Mcc,
    Pearson,
    Spearman,
    SquadEm,
    SquadF1,
    MathEm,
}

impl Metric {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ExactMatch => "exact_match",
            Self::F1 => "f1",
            Self::MacroF1 => "macro_f1",
            Self::Mcc => "mcc",
            Self::Pearson => "pearson",
            Self::Spearman => "spearman",
            Self::SquadEm => "squad_em",
            Self::SquadF1 => "squad_f1",
            Self::MathEm => "math_em",
        }
    }
}

/// Normalization for label comparison: trimmed, lower-case (docs/method.md §4: case-insensitive match).
pub fn normalize_label(s: &str) -> String {
    s.trim().to_lowercase()
}

/// Fraction of predictions equal to their reference after [`normalize_label`] (whole strings).
pub fn exact_match(preds: &[String], refs: &[String]) -> f64 {
    if preds.is_empty() {
        return 0.0;
    }
    let hits = preds
        .iter()
        .zip(refs)
        .filter(|(p, r)| normalize_label(p) == normalize_label(r))
        .count();
    hits as f64 / preds.len() as f64
}

fn f1_of(tp: usize, fp: usize, fn_: usize) -> f64 {
    let denom = 2 * tp + fp + fn_;
    if denom == 0 {
        0.0
    } else {
        2.0 * tp as f64 / denom as f64
    }
}

fn counts(preds: &[String], refs: &[String], label: &str) -> (usize, usize, usize) {
    let label = normalize_label(label);
    let (mut tp, mut fp, mut fn_) = (0, 0, 0);
    for (p, r) in preds.iter().zip(refs) {
        let (p, r) = (normalize_label(p) == label, normalize_label(r) == label);
        match (p, r) {
            (true, true) => tp += 1,
            (true, false) => fp += 1,
            (false, true) => fn_ += 1,
            _ => {}
        }
    }
    (tp, fp, fn_)
}

/// Binary F1 of `positive`.
pub fn f1(preds: &[String], refs: &[String], positive: &str) -> f64 {
    let (tp, fp, fn_) = counts(preds, refs, positive);
    f1_of(tp, fp, fn_)
}

/// Mean F1 over `labels`.
pub fn macro_f1(preds: &[String], refs: &[String], labels: &[String]) -> f64 {
    if labels.is_empty() {
        return 0.0;
    }
    labels
        .iter()
        .map(|l| {
            let (tp, fp, fn_) = counts(preds, refs, l);
            f1_of(tp, fp, fn_)
        })
        .sum::<f64>()
        / labels.len() as f64
}

/// Matthews correlation coefficient (multiclass, as sklearn: over every class seen).
pub fn mcc(preds: &[String], refs: &[String]) -> f64 {
    let mut classes: Vec<String> = preds.iter().chain(refs).map(|s| normalize_label(s)).collect();
    classes.sort();
    classes.dedup();
    let k = classes.len();
    let index = |s: &str| classes.binary_search(&normalize_label(s)).unwrap_or(0);
    let mut c = vec![0f64; k * k];
    for (p, r) in preds.iter().zip(refs) {
        c[index(r) * k + index(p)] += 1.0;
    }
    let t_sum: Vec<f64> = (0..k).map(|i| (0..k).map(|j| c[i * k + j]).sum()).collect();
    let p_sum: Vec<f64> = (0..k).map(|j| (0..k).map(|i| c[i * k + j]).sum()).collect();
    let correct: f64 = (0..k).map(|i| c[i * k + i]).sum();
    let n: f64 = t_sum.iter().sum();
    let cov_ytyp = correct * n - t_sum.iter().zip(&p_sum).map(|(t, p)| t * p).sum::<f64>();
    let cov_ypyp = n * n - p_sum.iter().map(|p| p * p).sum::<f64>();
    let cov_ytyt = n * n - t_sum.iter().map(|t| t * t).sum::<f64>();
    if cov_ypyp * cov_ytyt == 0.0 {
        return 0.0;
    }
    cov_ytyp / (cov_ytyt * cov_ypyp).sqrt()
}

/// Pearson's r (NaN when either side is constant, as scipy).
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len().min(y.len());
    if n < 2 {
        return f64::NAN;
    }
    let mx = x[..n].iter().sum::<f64>() / n as f64;
    let my = y[..n].iter().sum::<f64>() / n as f64;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x[..n].iter().zip(&y[..n]) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    sxy / (sxx * syy).sqrt()
}

/// Ranks from 1, ties sharing their average rank (scipy's `rankdata(method="average")`).
pub fn average_ranks(x: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..x.len()).collect();
    order.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut ranks = vec![0.0; x.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && x[order[j + 1]] == x[order[i]] {
            j += 1;
        }
        let rank = (i + j) as f64 / 2.0 + 1.0;
        for &o in &order[i..=j] {
            ranks[o] = rank;
        }
        i = j + 1;
    }
    ranks
}

/// Spearman's ρ: Pearson's r of the average ranks.
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    pearson(&average_ranks(x), &average_ranks(y))
}

/// The official SQuAD normalization: lower case, no punctuation, no articles, single spaces.
pub fn squad_normalize(s: &str) -> String {
    let lower = s.to_lowercase();
    let no_punct: String = lower.chars().filter(|c| !c.is_ascii_punctuation()).collect();
    no_punct
        .split_whitespace()
        .filter(|w| !matches!(*w, "a" | "an" | "the"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn squad_f1_one(pred: &str, gold: &str) -> f64 {
    let p: Vec<String> = squad_normalize(pred).split_whitespace().map(str::to_owned).collect();
    let g: Vec<String> = squad_normalize(gold).split_whitespace().map(str::to_owned).collect();
    if p.is_empty() || g.is_empty() {
        // No-answer: 1 when both are empty, else 0.
        return f64::from(u8::from(p == g));
    }
    let mut gold_counts: BTreeMap<&str, usize> = BTreeMap::new();
    for w in &g {
        *gold_counts.entry(w).or_default() += 1;
    }
    let mut common = 0;
    for w in &p {
        if let Some(c) = gold_counts.get_mut(w.as_str())
            && *c > 0
        {
            *c -= 1;
            common += 1;
        }
    }
    if common == 0 {
        return 0.0;
    }
    let precision = common as f64 / p.len() as f64;
    let recall = common as f64 / g.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

/// SQuAD v2 exact match and F1 (in [0, 1]) of predictions against their lists of gold answers
/// (an empty list: unanswerable, matched only by an empty prediction); best over the golds.
pub fn squad_v2(preds: &[String], golds: &[Vec<String>]) -> (f64, f64) {
    if preds.is_empty() {
        return (0.0, 0.0);
    }
    let (mut em, mut f1) = (0.0, 0.0);
    for (p, g) in preds.iter().zip(golds) {
        let golds: Vec<&str> = if g.is_empty() {
            vec![""]
        } else {
            g.iter().map(String::as_str).collect()
        };
        em += golds
            .iter()
            .map(|gold| f64::from(u8::from(squad_normalize(p) == squad_normalize(gold))))
            .fold(0.0, f64::max);
        f1 += golds.iter().map(|gold| squad_f1_one(p, gold)).fold(0.0, f64::max);
    }
    (em / preds.len() as f64, f1 / preds.len() as f64)
}

/// The content of the last `\boxed{…}` (or `\fbox{…}`) of a solution, braces matched.
pub fn last_boxed(s: &str) -> Option<String> {
    let start = s.rfind("\\boxed").or_else(|| s.rfind("\\fbox"))?;
    let rest = &s[start..];
    let open = rest.find('{')?;
    let mut depth = 0usize;
    for (i, c) in rest[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(rest[open + 1..open + i].to_owned());
                }
            }
            _ => {}
        }
    }
    None
}

/// Normalization of a final answer for comparison: no spaces, `\left`/`\right`/`\!`/`$` removed,
/// `\dfrac`/`\tfrac` as `\frac`, a trailing period dropped, `\text{…}` unwrapped.
pub fn normalize_answer(s: &str) -> String {
    let mut t = s.trim().to_owned();
    for (from, to) in [
        ("\\left", ""),
        ("\\right", ""),
        ("\\!", ""),
        ("\\,", ""),
        ("\\dfrac", "\\frac"),
        ("\\tfrac", "\\frac"),
        ("$", ""),
    ] {
        t = t.replace(from, to);
    }
    while let Some(i) = t.find("\\text{") {
        let inner_start = i + "\\text{".len();
        let Some(close) = t[inner_start..].find('}') else { break };
        t = format!(
            "{}{}{}",
            &t[..i],
            &t[inner_start..inner_start + close],
            &t[inner_start + close + 1..]
        );
    }
    let t: String = t.chars().filter(|c| !c.is_whitespace()).collect();
    t.trim_end_matches('.').to_owned()
}

/// Final-answer exact match for MATH: the last boxed answer of the generated solution against the
/// reference's (or the reference itself when it has none), after [`normalize_answer`].
pub fn math_em(preds: &[String], refs: &[String]) -> f64 {
    if preds.is_empty() {
        return 0.0;
    }
    let hits = preds
        .iter()
        .zip(refs)
        .filter(|(p, r)| {
            let want = last_boxed(r).unwrap_or_else(|| (*r).clone());
            last_boxed(p).is_some_and(|got| normalize_answer(&got) == normalize_answer(&want))
        })
        .count();
    hits as f64 / preds.len() as f64
}

/// Parses a generated number (an STS-B score); `None` when it is not one.
pub fn parse_number(s: &str) -> Option<f64> {
    s.trim().parse::<f64>().ok().filter(|x| x.is_finite())
}

/// Every metric of `metrics` (plus exact match) for predictions against references. `labels` is
/// the task's label set (index order; the positive class of binary F1 is `labels[1]`).
pub fn compute(metrics: &[Metric], preds: &[String], refs: &[String], labels: &[String]) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    out.insert("exact_match".to_owned(), exact_match(preds, refs));
    for &m in metrics {
        let value = match m {
            Metric::ExactMatch => continue,
            Metric::F1 => match labels.get(1) {
                Some(pos) => f1(preds, refs, pos),
                None => continue,
            },
            Metric::MacroF1 => macro_f1(preds, refs, labels),
            Metric::Mcc => mcc(preds, refs),
            Metric::Pearson | Metric::Spearman => {
                let x: Vec<f64> = preds.iter().map(|p| parse_number(p).unwrap_or(0.0)).collect();
                let y: Vec<f64> = refs.iter().map(|r| parse_number(r).unwrap_or(0.0)).collect();
                if m == Metric::Pearson {
                    pearson(&x, &y)
                } else {
                    spearman(&x, &y)
                }
            }
            Metric::SquadEm | Metric::SquadF1 => {
                let golds: Vec<Vec<String>> = refs
                    .iter()
                    .map(|r| {
                        r.split("|||")
                            .map(str::trim)
                            .filter(|s| !s.is_empty())
                            .map(str::to_owned)
                            .collect()
                    })
                    .collect();
                let (em, f1) = squad_v2(preds, &golds);
                if m == Metric::SquadEm { em } else { f1 }
            }
            Metric::MathEm => math_em(preds, refs),
        };
        out.insert(m.as_str().to_owned(), value);
    }
    out
}
