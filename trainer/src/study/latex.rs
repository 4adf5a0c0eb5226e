//! The study's tables as LaTeX (`tables.tex`), ready for a paper: one `table` per section with
//! booktabs rules (`\usepackage{booktabs}`), scores in percent as mean $\pm$ std over origins,
//! and the significance of a comparison marked $^{*}$ where its Bonferroni-corrected p is below
//! 0.05 (the p-values in the cells, as the Markdown tables give them). Names are escaped so that
//! any task name compiles.

use std::fmt::Write as _;

use super::aggregate::{Aggregate, Summary, Test};

/// Text as LaTeX reads it literally: its ten special characters escaped, control characters
/// as spaces.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\textbackslash{}"),
            '~' => out.push_str("\\textasciitilde{}"),
            '^' => out.push_str("\\textasciicircum{}"),
            '&' | '%' | '$' | '#' | '_' | '{' | '}' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// A score cell: `71.2 $\pm$ 0.4` (percent), one value alone, `--` for none.
fn score(s: &Summary) -> String {
    match s.n {
        0 => "--".into(),
        1 => format!("{:.1}", 100.0 * s.mean),
        _ => format!("{:.1} $\\pm$ {:.1}", 100.0 * s.mean, 100.0 * s.std),
    }
}

/// A test's cell: p (Bonferroni p) and the mark.
fn p_value(t: &Test) -> String {
    if !t.test.p.is_finite() {
        return "--".into();
    }
    let mark = if t.p_bonferroni < 0.05 { "$^{*}$" } else { "" };
    format!("{:.3} ({:.3}){mark}", t.test.p, t.p_bonferroni)
}

/// One table: caption, column alignment, header cells, rows.
fn table(out: &mut String, caption: &str, label: &str, header: &[&str], rows: &[Vec<String>]) {
    let columns: String = header
        .iter()
        .enumerate()
        .map(|(i, _)| if i < 2 { 'l' } else { 'r' })
        .collect();
    let _ = writeln!(
        out,
        "\\begin{{table}}[t]\n\\centering\n\\caption{{{caption}}}\n\\label{{tab:{label}}}\n\\begin{{tabular}}{{{columns}}}\n\\toprule"
    );
    let _ = writeln!(out, "{} \\\\\n\\midrule", header.join(" & "));
    for row in rows {
        let _ = writeln!(out, "{} \\\\", row.join(" & "));
    }
    let _ = writeln!(out, "\\bottomrule\n\\end{{tabular}}\n\\end{{table}}\n");
}

impl Aggregate {
    /// The tables as LaTeX (booktabs), one per section that has rows.
    pub fn latex(&self) -> String {
        let mut out = format!(
            "% Study {}: {} of {} runs finished; origins {:?}. Written by tpv aggregate.\n% Scores in percent, mean $\\pm$ std over origins (numpy's ddof 0); $^{{*}}$: Bonferroni-corrected p < 0.05 ({}).\n% Needs \\usepackage{{booktabs}}.\n\n",
            self.name.replace(['\n', '\r'], " "),
            self.finished,
            self.jobs,
            self.origins,
            self.test.title()
        );
        if !self.prompt_tuning.is_empty() {
            let rows: Vec<Vec<String>> = self
                .prompt_tuning
                .iter()
                .map(|r| {
                    vec![
                        escape(&r.task),
                        escape(&r.metric),
                        score(&r.test),
                        score(&r.origin),
                        score(&r.validation),
                        r.test.n.to_string(),
                    ]
                })
                .collect();
            let header = [
                "Task",
                "Metric",
                "Tuned prompt",
                "Untrained origin",
                "Validation",
                "Origins",
            ];
            table(&mut out, "Prompt tuning (test).", "prompt-tuning", &header, &rows);
        }
        if !self.addition.is_empty() {
            let rows: Vec<Vec<String>> = self
                .addition
                .iter()
                .map(|r| {
                    let relative = if r.relative.is_finite() {
                        format!("{:.1}\\%", r.relative)
                    } else {
                        "--".into()
                    };
                    let tasks: Vec<String> = r.tasks.iter().map(|t| escape(t)).collect();
                    vec![
                        tasks.join(" + "),
                        escape(&r.task),
                        score(&r.single),
                        score(&r.combined),
                        relative,
                    ]
                })
                .collect();
            let header = ["Tasks", "Task", "Single-task", "Combined", "Relative"];
            table(
                &mut out,
                "Addition of task prompt vectors (test; $\\lambda$ chosen on validation).",
                "addition",
                &header,
                &rows,
            );
        }
        if !self.cross_origin.is_empty() {
            let rows: Vec<Vec<String>> = self
                .cross_origin
                .iter()
                .map(|r| {
                    vec![
                        escape(&r.task),
                        escape(&r.metric),
                        score(&r.original),
                        score(&r.cross),
                        p_value(&r.test),
                    ]
                })
                .collect();
            let header = ["Task", "Metric", "Original", "Cross-origin", "p (Bonferroni)"];
            let caption = "Cross-origin: $\\theta_0$ of one origin plus $\\tau$ of another (test).";
            table(&mut out, caption, "cross-origin", &header, &rows);
        }
        if !self.transfer.is_empty() {
            let rows: Vec<Vec<String>> = self
                .transfer
                .iter()
                .map(|r| {
                    vec![
                        escape(&r.target),
                        escape(&r.init),
                        r.shots.to_string(),
                        score(&r.score),
                        r.vs_tpv_sum.as_ref().map_or("--".into(), p_value),
                    ]
                })
                .collect();
            let header = ["Target", "Init", "Shots", "Score", "TPV-sum vs this: p (Bonferroni)"];
            table(&mut out, "Transfer to target tasks (test).", "transfer", &header, &rows);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_special_character_is_escaped() {
        assert_eq!(
            escape("a_b&c%d$e#f{g}h~i^j\\k\nl"),
            "a\\_b\\&c\\%d\\$e\\#f\\{g\\}h\\textasciitilde{}i\\textasciicircum{}j\\textbackslash{}k l"
        );
        assert_eq!(escape("sst2"), "sst2");
    }

    #[test]
    fn a_table_has_booktabs_rules_and_one_line_per_row() {
        let mut out = String::new();
        table(
            &mut out,
            "C.",
            "x",
            &["A", "B", "C"],
            &[vec!["a".into(), "b".into(), "1.0".into()]],
        );
        assert!(
            out.contains("\\begin{tabular}{llr}\n\\toprule\nA & B & C \\\\\n\\midrule\na & b & 1.0 \\\\\n\\bottomrule")
        );
    }
}
