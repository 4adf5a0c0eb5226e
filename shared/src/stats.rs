//! Summary statistics of a study: mean ± standard deviation over origins and Welch's two-sample
//! t-test (two-sided), with the Bonferroni correction for families of comparisons. Checked against
//! scipy (tests/reference/stats.py → shared/tests/stats.rs).

use serde::{Deserialize, Serialize};

/// Arithmetic mean; NaN for no values.
pub fn mean(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    xs.iter().sum::<f64>() / xs.len() as f64
}

/// Standard deviation with `ddof` delta degrees of freedom (0: numpy's default, the population
/// formula; 1: the sample formula); NaN when there are not more than `ddof` values.
pub fn std(xs: &[f64], ddof: usize) -> f64 {
    if xs.len() <= ddof {
        return f64::NAN;
    }
    let m = mean(xs);
    (xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (xs.len() - ddof) as f64).sqrt()
}

/// The result of a two-sample t-test.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TTest {
    pub t: f64,
    /// Degrees of freedom (Welch–Satterthwaite's, or n_a + n_b − 2 for Student's).
    pub df: f64,
    /// Two-sided p-value.
    pub p: f64,
}

const NAN_TEST: TTest = TTest {
    t: f64::NAN,
    df: f64::NAN,
    p: f64::NAN,
};

/// The test of mean(a) − mean(b) with squared standard error `se2` and `df` degrees of freedom:
/// NaN fields when the error is 0 or not a number.
fn two_sided(a: &[f64], b: &[f64], se2: f64, df: f64) -> TTest {
    if se2 <= 0.0 || !se2.is_finite() {
        return NAN_TEST;
    }
    let t = (mean(a) - mean(b)) / se2.sqrt();
    let p = incomplete_beta(df / 2.0, 0.5, df / (df + t * t));
    TTest { t, df, p }
}

/// Welch's unequal-variances t-test of `a` against `b` (as `scipy.stats.ttest_ind(a, b,
/// equal_var=False)`). NaN fields when a side has fewer than two values or both variances are 0.
pub fn welch_t_test(a: &[f64], b: &[f64]) -> TTest {
    if a.len() < 2 || b.len() < 2 {
        return NAN_TEST;
    }
    let (na, nb) = (a.len() as f64, b.len() as f64);
    let (va, vb) = (std(a, 1).powi(2) / na, std(b, 1).powi(2) / nb);
    let se2 = va + vb;
    let df = se2 * se2 / (va * va / (na - 1.0) + vb * vb / (nb - 1.0));
    two_sided(a, b, se2, df)
}

/// Student's t-test with pooled, equal variances (as `scipy.stats.ttest_ind(a, b,
/// equal_var=True)` and `ttest_ind_from_stats(…, equal_var=True)`, the paper's significance
/// script); `df` = n_a + n_b − 2. NaN fields when a side has fewer than two values or both
/// variances are 0.
pub fn student_t_test(a: &[f64], b: &[f64]) -> TTest {
    if a.len() < 2 || b.len() < 2 {
        return NAN_TEST;
    }
    let (na, nb) = (a.len() as f64, b.len() as f64);
    let df = na + nb - 2.0;
    let pooled = ((na - 1.0) * std(a, 1).powi(2) + (nb - 1.0) * std(b, 1).powi(2)) / df;
    two_sided(a, b, pooled * (1.0 / na + 1.0 / nb), df)
}

/// Which two-sample t-test the tables use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TestKind {
    /// Unequal variances (tpv's default: three origins rarely have equal spreads).
    #[default]
    Welch,
    /// Equal variances, as the paper's significance script.
    Student,
}

crate::named!(TestKind, "t-test", { Welch => "welch", Student => "student" });

impl TestKind {
    pub fn run(self, a: &[f64], b: &[f64]) -> TTest {
        match self {
            Self::Welch => welch_t_test(a, b),
            Self::Student => student_t_test(a, b),
        }
    }

    /// The test's name in table headers.
    pub fn title(self) -> &'static str {
        match self {
            Self::Welch => "Welch",
            Self::Student => "Student",
        }
    }
}

/// Bonferroni-corrected p-value for a family of `m` comparisons.
pub fn bonferroni(p: f64, m: usize) -> f64 {
    (p * m as f64).min(1.0)
}

/// ln Γ(x) for x > 0 (Lanczos, g = 7, n = 9; relative error below 1e-13).
fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Γ(x)Γ(1−x) = π / sin(πx).
        return (std::f64::consts::PI / (std::f64::consts::PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = C[0];
    let t = x + G + 0.5;
    for (i, c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// The regularized incomplete beta function I_x(a, b) (continued fraction, modified Lentz).
pub fn incomplete_beta(a: f64, b: f64, x: f64) -> f64 {
    if !(0.0..=1.0).contains(&x) || a <= 0.0 || b <= 0.0 {
        return f64::NAN;
    }
    if x == 0.0 || x == 1.0 {
        return x;
    }
    let front = (ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln()).exp();
    // The continued fraction converges fast for x < (a+1)/(a+b+2); use the symmetry otherwise.
    if x < (a + 1.0) / (a + b + 2.0) {
        front * beta_fraction(a, b, x) / a
    } else {
        1.0 - front * beta_fraction(b, a, 1.0 - x) / b
    }
}

fn beta_fraction(a: f64, b: f64, x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    const EPS: f64 = 1e-15;
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..=300 {
        let m = f64::from(m);
        let m2 = 2.0 * m;
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        h *= d * c;
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        let del = d * c;
        h *= del;
        if (del - 1.0).abs() < EPS {
            break;
        }
    }
    h
}
