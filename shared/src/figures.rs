//! Figures for papers: the similarity heatmaps as standalone SVG in the paper's layouts — the
//! tasks × tasks averages (its Figures 3–4) and, for every task pair, the origins × origins map
//! (its appendix, Figures 1–2) — with axis labels, a colour bar, the measure and the study named.
//! One definition for the files `tpv aggregate` writes and the web app's downloads. Every cell is
//! a `<rect class="cell">` carrying `data-row`, `data-col` and `data-value` (the exact value), so
//! a figure can be checked against the matrix it shows. Line charts (training curves, few-shot
//! score against shots with a ± std band) likewise: every point a `<circle data-x data-value>`
//! in its series' `<g data-testid="series" data-name>`; the web app shows these same SVGs.

use std::fmt::Write;

use crate::similarity::AcrossOrigins;

/// Diverging colour map centred at 0: blue (−1) … white (0) … red (+1).
pub fn colour(v: f64) -> String {
    let v = v.clamp(-1.0, 1.0);
    let (r, g, b) = if v >= 0.0 {
        (255.0, 255.0 * (1.0 - v) + 60.0 * v, 255.0 * (1.0 - v) + 60.0 * v)
    } else {
        let w = -v;
        (255.0 * (1.0 - w) + 40.0 * w, 255.0 * (1.0 - w) + 90.0 * w, 255.0)
    };
    format!("rgb({r:.0},{g:.0},{b:.0})")
}

/// Text for SVG (XML-escaped).
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// One heatmap's cells at (`x`, `y`), `cell` pixels each; labels on the left and on top (rotated)
/// when given; values printed in the cells when `print`.
struct Panel<'a> {
    rows: &'a [String],
    cols: &'a [String],
    values: &'a [Vec<Option<f64>>],
    cell: f64,
    print: bool,
}

impl Panel<'_> {
    fn draw(&self, svg: &mut String, x: f64, y: f64, labels: bool) {
        for (i, row) in self.values.iter().enumerate() {
            for (j, v) in row.iter().enumerate() {
                let (cx, cy) = (x + j as f64 * self.cell, y + i as f64 * self.cell);
                let (r, c) = (esc(&self.rows[i]), esc(&self.cols[j]));
                match v {
                    Some(v) => {
                        let _ = write!(
                            svg,
                            r#"<rect class="cell" x="{cx}" y="{cy}" width="{w}" height="{w}" fill="{fill}" data-row="{r}" data-col="{c}" data-value="{v}"><title>{r} × {c}: {v:.6}</title></rect>"#,
                            w = self.cell,
                            fill = colour(*v),
                        );
                        if self.print {
                            let _ = write!(
                                svg,
                                r#"<text x="{tx}" y="{ty}" font-size="{fs}" text-anchor="middle" dominant-baseline="central">{v:.2}</text>"#,
                                tx = cx + self.cell / 2.0,
                                ty = cy + self.cell / 2.0,
                                fs = self.cell / 3.6,
                            );
                        }
                    }
                    None => {
                        let _ = write!(
                            svg,
                            r##"<rect class="omitted" x="{cx}" y="{cy}" width="{w}" height="{w}" fill="#eee" data-row="{r}" data-col="{c}"><title>{r} × {c}: omitted</title></rect>"##,
                            w = self.cell,
                        );
                    }
                }
            }
        }
        if !labels {
            return;
        }
        for (i, r) in self.rows.iter().enumerate() {
            let _ = write!(
                svg,
                r#"<text x="{lx}" y="{ly}" font-size="12" text-anchor="end" dominant-baseline="central">{}</text>"#,
                esc(r),
                lx = x - 6.0,
                ly = y + (i as f64 + 0.5) * self.cell,
            );
        }
        for (j, c) in self.cols.iter().enumerate() {
            let (lx, ly) = (x + (j as f64 + 0.5) * self.cell, y - 6.0);
            let _ = write!(
                svg,
                r#"<text x="{lx}" y="{ly}" font-size="12" transform="rotate(-45 {lx} {ly})">{}</text>"#,
                esc(c)
            );
        }
    }
}

/// The colour bar: −1 (blue) … 0 (white) … +1 (red), `h` pixels tall at (`x`, `y`), ticks named.
fn colour_bar(svg: &mut String, x: f64, y: f64, h: f64, measure: &str) {
    let _ = write!(
        svg,
        r##"<defs><linearGradient id="tpv-scale" x1="0" y1="1" x2="0" y2="0"><stop offset="0" stop-color="{}"/><stop offset="0.5" stop-color="{}"/><stop offset="1" stop-color="{}"/></linearGradient></defs><rect x="{x}" y="{y}" width="14" height="{h}" fill="url(#tpv-scale)" stroke="#888"/>"##,
        colour(-1.0),
        colour(0.0),
        colour(1.0),
    );
    for t in [-1.0, -0.5, 0.0, 0.5, 1.0] {
        let ty = y + h * (1.0 - (t + 1.0) / 2.0);
        let _ = write!(
            svg,
            r#"<text x="{tx}" y="{ty}" font-size="11" dominant-baseline="central">{t:+.1}</text>"#,
            tx = x + 18.0
        );
    }
    let _ = write!(
        svg,
        r#"<text x="{tx}" y="{ty}" font-size="11" transform="rotate(90 {tx} {ty})" text-anchor="middle">{}</text>"#,
        esc(measure),
        tx = x + 50.0,
        ty = y + h / 2.0,
    );
}

/// Starts a figure of at least `w` × `h` pixels (wider if its title needs it); returns the width.
fn open(svg: &mut String, w: f64, h: f64, title: &str) -> f64 {
    let w = w.max(title.chars().count() as f64 * 8.5 + 20.0);
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif"><rect width="{w}" height="{h}" fill="white"/><text x="10" y="20" font-size="14" font-weight="bold">{}</text>"#,
        esc(title)
    );
    w
}

/// The longest label's width in pixels at 12 px (an estimate: 7 px a character).
fn label_width(labels: &[String]) -> f64 {
    labels.iter().map(|l| l.chars().count()).max().unwrap_or(0) as f64 * 7.0
}

/// The tasks × tasks map: each cell the mean over origin pairs (identical pairs omitted).
pub fn tasks_svg(a: &AcrossOrigins, title: &str) -> String {
    let cell = 48.0;
    let n = a.tasks.len() as f64;
    let left = label_width(&a.tasks) + 20.0;
    let top = 40.0 + label_width(&a.tasks) * 0.75 + 10.0;
    let (w, h) = (left + n * cell + 90.0, top + n * cell + 20.0);
    let mut svg = String::new();
    let _ = open(&mut svg, w, h, title);
    Panel {
        rows: &a.tasks,
        cols: &a.tasks,
        values: &a.matrix,
        cell,
        print: true,
    }
    .draw(&mut svg, left, top, true);
    colour_bar(
        &mut svg,
        left + n * cell + 16.0,
        top,
        (n * cell).max(120.0),
        a.measure.as_str(),
    );
    svg.push_str("</svg>");
    svg
}

/// The grid of origins × origins maps, one panel per task pair (i ≤ j), in the upper triangle of
/// a tasks × tasks layout; rows are task i's origins, columns task j's.
pub fn pairs_svg(a: &AcrossOrigins, title: &str) -> String {
    let o = a.origins.len() as f64;
    let cell = if a.origins.len() > 6 { 10.0 } else { 18.0 };
    let n = a.tasks.len();
    // Each panel as wide as its title (11 px text, ≈ 6.2 px a character) or its cells.
    let longest = a.tasks.iter().map(|t| t.chars().count()).max().unwrap_or(0) as f64;
    let panel = (o * cell).max((2.0 * longest + 3.0) * 6.2) + 24.0;
    let panel_h = o * cell + 36.0;
    let (left, top) = (20.0, 64.0);
    let (w, h) = (left + n as f64 * panel + 90.0, top + n as f64 * panel_h + 10.0);
    let mut svg = String::new();
    let w = open(&mut svg, w, h, title);
    for i in 0..n {
        for j in i..n {
            let (x, y) = (left + j as f64 * panel, top + i as f64 * panel_h + 20.0);
            let rows: Vec<String> = a.origins.iter().map(|or| format!("{}@{or}", a.tasks[i])).collect();
            let cols: Vec<String> = a.origins.iter().map(|or| format!("{}@{or}", a.tasks[j])).collect();
            let _ = write!(
                svg,
                r#"<g class="pair" data-pair="{p}"><text x="{x}" y="{ty}" font-size="11">{p}</text>"#,
                p = esc(&format!("{} × {}", a.tasks[i], a.tasks[j])),
                ty = y - 6.0,
            );
            Panel {
                rows: &rows,
                cols: &cols,
                values: &a.pairs[i][j],
                cell,
                print: false,
            }
            .draw(&mut svg, x, y, false);
            svg.push_str("</g>");
        }
    }
    let _ = write!(
        svg,
        r#"<text x="{left}" y="{ty}" font-size="11">rows: the first task's origins {}; columns: the second's</text>"#,
        esc(&a.origins.join(", ")),
        ty = 42.0,
    );
    colour_bar(&mut svg, w - 80.0, top + 20.0, 160.0, a.measure.as_str());
    svg.push_str("</svg>");
    svg
}

/// One line of a chart: points (x, y), and a ± band (e.g. std over origins) per point.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub band: Option<Vec<f64>>,
}

/// Line colours, in series order.
pub const PALETTE: [&str; 6] = ["#1a73e8", "#d93025", "#188038", "#f29900", "#a142f4", "#12b5cb"];

/// The x and y ranges of the series (bands included), never empty.
fn bounds(series: &[Series]) -> (f64, f64, f64, f64) {
    let (mut x0, mut x1, mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY);
    for s in series {
        for (i, &(x, y)) in s.points.iter().enumerate() {
            let b = s.band.as_ref().and_then(|b| b.get(i)).copied().unwrap_or(0.0);
            let b = if b.is_finite() { b } else { 0.0 };
            (x0, x1) = (x0.min(x), x1.max(x));
            (y0, y1) = (y0.min(y - b), y1.max(y + b));
        }
    }
    // An empty or flat range: one unit from its start (0 when there is none).
    let widen = |lo: f64, hi: f64| {
        if hi > lo {
            (lo, hi)
        } else if lo.is_finite() {
            (lo, lo + 1.0)
        } else {
            (0.0, 1.0)
        }
    };
    let ((x0, x1), (y0, y1)) = (widen(x0, x1), widen(y0, y1));
    (x0, x1, y0, y1)
}

/// A line chart as standalone SVG (520 × 220 plot, legend beside it): axes with their end values,
/// the x label, each series a line with dots and its band.
pub fn line_chart_svg(title: &str, x_label: &str, series: &[Series]) -> String {
    const W: f64 = 520.0;
    const H: f64 = 220.0;
    const PAD: f64 = 40.0;
    let (x0, x1, y0, y1) = bounds(series);
    let sx = |x: f64| PAD + (x - x0) / (x1 - x0) * (W - 2.0 * PAD);
    let sy = |y: f64| H - PAD - (y - y0) / (y1 - y0) * (H - 2.0 * PAD);
    let legend_w = 20.0 + series.iter().map(|s| s.name.chars().count()).max().unwrap_or(0) as f64 * 7.0;
    let mut svg = String::new();
    let top = 24.0;
    let w = open(&mut svg, W + legend_w, H + top, title);
    let _ = write!(
        svg,
        r##"<g transform="translate(0 {top})"><line x1="{PAD}" y1="{b}" x2="{r}" y2="{b}" stroke="#888"/><line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{b}" stroke="#888"/><text x="{PAD}" y="{lb}" font-size="11">{x0}</text><text x="{r}" y="{lb}" font-size="11" text-anchor="end">{x1}</text><text x="{mid}" y="{xl}" font-size="11" text-anchor="middle">{xlabel}</text><text x="{yl}" y="{b}" font-size="11" text-anchor="end">{y0:.3}</text><text x="{yl}" y="{yt}" font-size="11" text-anchor="end">{y1:.3}</text>"##,
        b = H - PAD,
        r = W - PAD,
        lb = H - PAD + 14.0,
        mid = W / 2.0,
        xl = H - 6.0,
        xlabel = esc(x_label),
        yl = PAD - 4.0,
        yt = PAD + 4.0,
    );
    for (i, s) in series.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        let name = esc(&s.name);
        let _ = write!(svg, r#"<g data-testid="series" data-name="{name}">"#);
        if let Some(band) = &s.band {
            let upper = s
                .points
                .iter()
                .zip(band)
                .map(|(&(x, y), d)| format!("{:.1},{:.1}", sx(x), sy(y + d)));
            let lower = s
                .points
                .iter()
                .zip(band)
                .rev()
                .map(|(&(x, y), d)| format!("{:.1},{:.1}", sx(x), sy(y - d)));
            let pts: Vec<String> = upper.chain(lower).collect();
            let _ = write!(
                svg,
                r#"<polygon points="{}" fill="{colour}" fill-opacity="0.15" stroke="none"/>"#,
                pts.join(" ")
            );
        }
        let line: Vec<String> = s
            .points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        let _ = write!(
            svg,
            r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="1.8"/>"#,
            line.join(" ")
        );
        for (k, &(x, y)) in s.points.iter().enumerate() {
            let band = s
                .band
                .as_ref()
                .and_then(|b| b.get(k))
                .map_or(String::new(), |d| format!(" ± {d:.4}"));
            let _ = write!(
                svg,
                r#"<circle class="point" cx="{:.1}" cy="{:.1}" r="2.5" fill="{colour}" data-x="{x}" data-value="{y}"><title>{name}: {x} → {y:.4}{band}</title></circle>"#,
                sx(x),
                sy(y)
            );
        }
        svg.push_str("</g>");
        let ly = PAD + i as f64 * 16.0;
        let _ = write!(
            svg,
            r#"<rect x="{lx}" y="{ry}" width="10" height="10" fill="{colour}"/><text x="{tx}" y="{ly}" font-size="11" dominant-baseline="central">{name}</text>"#,
            lx = W,
            ry = ly - 5.0,
            tx = W + 14.0,
        );
    }
    let _ = w;
    svg.push_str("</g></svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::similarity::Measure;

    fn analysis() -> AcrossOrigins {
        AcrossOrigins {
            measure: Measure::CosineMean,
            tasks: vec!["a".into(), "b<&>".into()],
            origins: vec!["o0".into(), "o1".into()],
            matrix: vec![vec![Some(0.5), Some(-0.25)], vec![Some(-0.25), None]],
            pairs: vec![
                vec![
                    vec![vec![None, Some(0.5)], vec![Some(0.5), None]],
                    vec![vec![Some(-0.25), Some(-0.2)], vec![Some(-0.3), Some(-0.25)]],
                ],
                vec![
                    vec![vec![Some(-0.25), Some(-0.3)], vec![Some(-0.2), Some(-0.25)]],
                    vec![vec![None, None], vec![None, None]],
                ],
            ],
        }
    }

    /// (row, col, value) of every cell with a value.
    fn cells(svg: &str) -> Vec<(String, String, f64)> {
        svg.split("<rect class=\"cell\"")
            .skip(1)
            .map(|c| {
                let attr = |k: &str| {
                    let start = c.find(&format!("{k}=\"")).unwrap() + k.len() + 2;
                    c[start..start + c[start..].find('"').unwrap()].to_owned()
                };
                (attr("data-row"), attr("data-col"), attr("data-value").parse().unwrap())
            })
            .collect()
    }

    #[test]
    fn the_figures_cells_are_the_matrix() {
        let a = analysis();
        let svg = tasks_svg(&a, "study x: cosine of τ");
        let got = cells(&svg);
        assert_eq!(got.len(), 3);
        for (r, c, v) in &got {
            let i = a.tasks.iter().position(|t| esc(t) == *r).unwrap();
            let j = a.tasks.iter().position(|t| esc(t) == *c).unwrap();
            assert_eq!(Some(*v), a.matrix[i][j]);
        }
        assert!(svg.contains("b&lt;&amp;&gt;") && !svg.contains("b<&>"));
        assert!(svg.contains("cosine-mean") && svg.contains("study x"));
        // The grid: a × a (2 values), a × b (4), b × b (none): the upper triangle only.
        let grid = pairs_svg(&a, "grid");
        assert_eq!(cells(&grid).len(), 6);
        assert_eq!(grid.matches("class=\"pair\"").count(), 3);
        assert!((cells(&grid).iter().map(|c| c.2).sum::<f64>() - (1.0 - 0.25 - 0.2 - 0.3 - 0.25)).abs() < 1e-12);
    }

    #[test]
    fn a_charts_points_are_the_series() {
        let series = vec![
            Series {
                name: "tpv_sum".into(),
                points: vec![(0.0, 0.5), (16.0, 0.75)],
                band: Some(vec![0.1, f64::NAN]),
            },
            Series {
                name: "random".into(),
                points: vec![(0.0, 0.25)],
                band: None,
            },
        ];
        let svg = line_chart_svg("c <few-shot>", "shots", &series);
        assert_eq!(svg.matches(r#"data-testid="series""#).count(), 2);
        let values: Vec<f64> = svg
            .split("data-value=\"")
            .skip(1)
            .map(|v| v[..v.find('"').unwrap()].parse().unwrap())
            .collect();
        assert_eq!(values, [0.5, 0.75, 0.25]);
        assert!(svg.contains("c &lt;few-shot&gt;") && svg.contains(">shots<"));
        assert_eq!(bounds(&series), (0.0, 16.0, 0.25, 0.75));
        assert_eq!(bounds(&[]), (0.0, 1.0, 0.0, 1.0));
    }

    #[test]
    fn the_colour_scale_is_diverging() {
        assert_eq!(colour(0.0), "rgb(255,255,255)");
        assert_eq!(colour(1.0), "rgb(255,60,60)");
        assert_eq!(colour(-1.0), "rgb(40,90,255)");
        assert_eq!(colour(7.0), colour(1.0));
    }
}
