//! Welch's t-test and the incomplete beta against scipy 1.17.1 (tests/reference/stats.py):
//!
//!     r = scipy.stats.ttest_ind(a, b, equal_var=False)   # r.statistic, r.pvalue, r.df
//!     scipy.special.betainc(a, b, x)

#![allow(clippy::unwrap_used)]

use tpv_shared::stats::{bonferroni, incomplete_beta, mean, std, student_t_test, welch_t_test};

fn close(a: f64, b: f64, tol: f64) {
    assert!((a - b).abs() <= tol * b.abs().max(1.0), "{a} vs {b}");
}

/// (a, b, t, p, df)
type Case<'a> = (&'a [f64], &'a [f64], f64, f64, f64);

#[test]
fn welch_matches_scipy() {
    let cases: [Case<'_>; 4] = [
        (
            &[85.4, 85.3, 85.5],
            &[83.0, 79.1, 86.9],
            1.0655272056678728,
            0.39811738192358465,
            2.0026298476469266,
        ),
        (
            &[0.91, 0.88, 0.95, 0.90],
            &[0.71, 0.80],
            3.2737550487107456,
            0.15152233459692863,
            1.2207813387469555,
        ),
        (
            &[75.6, 74.1, 77.0],
            &[88.1, 88.3, 87.9],
            -14.82799252643182,
            0.0038686879195360124,
            2.076042228945152,
        ),
        (&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0], 0.0, 1.0, 4.0),
    ];
    for (a, b, t, p, df) in cases {
        let r = welch_t_test(a, b);
        close(r.t, t, 1e-9);
        close(r.p, p, 1e-9);
        close(r.df, df, 1e-9);
    }
}

#[test]
fn std_both_conventions() {
    let a = [85.4, 85.3, 85.5];
    close(std(&a, 0), 0.08164965809277376, 1e-9);
    close(std(&a, 1), 0.10000000000000142, 1e-9);
    close(mean(&a), 85.4, 1e-12);
    assert!(std(&[1.0], 1).is_nan());
    assert!(mean(&[]).is_nan());
}

#[test]
fn incomplete_beta_matches_scipy() {
    for (a, b, x, want) in [
        (0.5, 0.5, 0.3, 0.36901011956554536),
        (2.0, 3.0, 0.4, 0.5247999999999999),
        (10.0, 0.5, 0.9, 0.15164090963470994),
        (1.5, 20.0, 0.05, 0.44342120168569027),
        (100.0, 0.5, 0.99, 0.1567758654244408),
    ] {
        close(incomplete_beta(a, b, x), want, 1e-10);
    }
}

#[test]
fn degenerate_inputs_are_nan_not_panics() {
    assert!(welch_t_test(&[1.0], &[2.0, 3.0]).p.is_nan());
    assert!(welch_t_test(&[1.0, 1.0], &[2.0, 2.0]).p.is_nan());
    assert_eq!(bonferroni(0.02, 10), 0.2);
    assert_eq!(bonferroni(0.3, 10), 1.0);
}

/// Student's equal-variance test, the paper's (scipy 1.17.1):
/// ```python
/// for a, b in cases.values():
///     r = stats.ttest_ind(a, b, equal_var=True)            # t, p, df
///     s = stats.ttest_ind_from_stats(np.mean(a), np.std(a, ddof=1), len(a),
///                                    np.mean(b), np.std(b, ddof=1), len(b), equal_var=True)
///     # s.pvalue == r.pvalue (to the last digit or one ulp)
/// ```
#[test]
fn student_matches_scipy() {
    let cases: [(&[f64], &[f64], f64, f64); 4] = [
        (
            &[85.4, 85.3, 85.5],
            &[83.0, 79.1, 86.9],
            1.065527205667873,
            0.34668163239429184,
        ),
        (
            &[0.91, 0.88, 0.95, 0.90],
            &[0.71, 0.80],
            4.38955241750969,
            0.011786726955296126,
        ),
        (
            &[75.6, 74.1, 77.0],
            &[88.1, 88.3, 87.9],
            -14.82799252643182,
            0.00012043896148936905,
        ),
        (&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0], 0.0, 1.0),
    ];
    for (a, b, t, p) in cases {
        let r = student_t_test(a, b);
        close(r.t, t, 1e-9);
        close(r.p, p, 1e-9);
        close(r.df, (a.len() + b.len() - 2) as f64, 0.0);
    }
    assert!(student_t_test(&[1.0], &[2.0, 3.0]).p.is_nan());
}
