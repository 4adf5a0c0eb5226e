//! Metrics against scikit-learn / scipy / the official SQuAD v2 script. The reference values come
//! from `tests/reference/metrics.py` (sklearn 1.9.1, scipy 1.17.1); its lines are quoted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use tpv_shared::metrics::{self, Metric};

fn s(xs: &[&str]) -> Vec<String> {
    xs.iter().map(|x| (*x).to_owned()).collect()
}

fn close(a: f64, b: f64) {
    assert!((a - b).abs() < 1e-12, "{a} vs {b}");
}

#[test]
fn classification_metrics_match_sklearn() {
    let refs = s(&[
        "positive", "negative", "positive", "positive", "negative", "negative", "positive", "negative",
    ]);
    let preds = s(&[
        "positive",
        "positive",
        "maybe",
        "positive",
        "negative",
        "Negative ",
        "negative",
        "negative",
    ]);
    // f1_score(norm(refs), norm(preds), labels=["positive"], average="macro") -> 0.5714285714285714
    close(metrics::f1(&preds, &refs, "positive"), 0.5714285714285714);
    // matthews_corrcoef(norm(refs), norm(preds)) -> 0.3441236008058426
    close(metrics::mcc(&preds, &refs), 0.3441236008058426);
    close(metrics::exact_match(&preds, &refs), 5.0 / 8.0);

    let refs3 = s(&[
        "entailment",
        "neutral",
        "contradiction",
        "neutral",
        "entailment",
        "contradiction",
        "neutral",
    ]);
    let preds3 = s(&[
        "entailment",
        "contradiction",
        "contradiction",
        "neutral",
        "neutral",
        "junk",
        "neutral",
    ]);
    let labels = s(&["entailment", "neutral", "contradiction"]);
    // f1_score(refs3, preds3, average="macro", labels=[...], zero_division=0) -> 0.611111111111111
    close(metrics::macro_f1(&preds3, &refs3, &labels), 0.611111111111111);
    // matthews_corrcoef(refs3, preds3) -> 0.3941203906840411
    close(metrics::mcc(&preds3, &refs3), 0.3941203906840411);

    let all = metrics::compute(&[Metric::F1, Metric::Mcc], &preds, &refs, &s(&["negative", "positive"]));
    close(all["f1"], 0.5714285714285714);
    close(all["exact_match"], 0.625);
}

#[test]
fn correlations_match_scipy() {
    let x = [3.2, 1.0, 4.4, 4.4, 0.2, 2.6, 5.0, 2.6];
    let y = [3.0, 1.4, 4.0, 3.8, 0.0, 3.0, 4.6, 2.0];
    // pearsonr(x, y).statistic -> 0.974809102039452
    close(metrics::pearson(&x, &y), 0.974809102039452);
    // spearmanr(x, y).statistic -> 0.9757754965005869 (ties share their average rank)
    close(metrics::spearman(&x, &y), 0.9757754965005869);
    assert!(
        metrics::pearson(&[1.0, 1.0], &[1.0, 2.0]).is_nan(),
        "constant input, as scipy"
    );
}

#[test]
fn squad_v2_matches_the_official_script() {
    let golds = vec![
        s(&["Denver Broncos", "The Denver Broncos"]),
        vec![],
        s(&["in the 10th century", "10th century"]),
        s(&["Paris"]),
    ];
    let preds = s(&["the Denver Broncos!", "", "10th and 11th centuries", "Lyon"]);
    // official compute_exact / compute_f1, max over golds, mean -> em 0.5, f1 0.5833333333333334
    let (em, f1) = metrics::squad_v2(&preds, &golds);
    close(em, 0.5);
    close(f1, 0.5833333333333334);
}

#[test]
fn math_final_answers() {
    assert_eq!(
        metrics::last_boxed("so $x = \\boxed{\\frac{1}{2}}$.").as_deref(),
        Some("\\frac{1}{2}")
    );
    assert_eq!(metrics::last_boxed("\\boxed{1} then \\boxed{2}").as_deref(), Some("2"));
    assert_eq!(metrics::last_boxed("no answer"), None);
    let refs = s(&[
        "The answer is $\\boxed{\\dfrac{1}{2}}$.",
        "$\\boxed{10\\text{ cm}}$",
        "\\boxed{3}",
    ]);
    let preds = s(&["Thus \\boxed{\\frac{1}{2}}.", "\\boxed{10 cm}", "3"]);
    // unboxed generations are wrong: 2 of 3
    close(metrics::math_em(&preds, &refs), 2.0 / 3.0);
}
