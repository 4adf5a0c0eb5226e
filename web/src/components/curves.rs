//! Curves: a run's training curves (loss, learning rate, validation metrics, as stored in its run
//! file), and the study's few-shot curves — test score against shots, mean ± std over origins, one
//! line and band per init method.

use std::collections::BTreeMap;

use leptos::prelude::*;

use crate::study::Run;
use crate::{Query, param, set_param};

const W: f64 = 520.0;
const H: f64 = 220.0;
const PAD: f64 = 40.0;
const PALETTE: [&str; 6] = ["#1a73e8", "#d93025", "#188038", "#f29900", "#a142f4", "#12b5cb"];

struct Series {
    name: String,
    points: Vec<(f64, f64)>,
    /// ± band (std) per point.
    band: Option<Vec<f64>>,
}

fn bounds(series: &[Series]) -> (f64, f64, f64, f64) {
    let (mut x0, mut x1, mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY);
    for s in series {
        for (i, &(x, y)) in s.points.iter().enumerate() {
            let b = s.band.as_ref().map_or(0.0, |b| b[i]);
            x0 = x0.min(x);
            x1 = x1.max(x);
            y0 = y0.min(y - b);
            y1 = y1.max(y + b);
        }
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if y1 <= y0 {
        y1 = y0 + 1.0;
    }
    (x0, x1, y0, y1)
}

/// An SVG line chart with axes' end labels and a legend.
#[component]
fn Chart(title: String, series: Vec<Series>, #[prop(optional)] x_label: Option<&'static str>) -> impl IntoView {
    let (x0, x1, y0, y1) = bounds(&series);
    let sx = move |x: f64| PAD + (x - x0) / (x1 - x0) * (W - 2.0 * PAD);
    let sy = move |y: f64| H - PAD + -(y - y0) / (y1 - y0) * (H - 2.0 * PAD);
    let lines = series
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let colour = PALETTE[i % PALETTE.len()];
            let path: String = s
                .points
                .iter()
                .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
                .collect::<Vec<_>>()
                .join(" ");
            let band = s.band.as_ref().map(|b| {
                let upper = s.points.iter().zip(b).map(|(&(x, y), d)| format!("{:.1},{:.1}", sx(x), sy(y + d)));
                let lower = s.points.iter().zip(b).rev().map(|(&(x, y), d)| format!("{:.1},{:.1}", sx(x), sy(y - d)));
                let pts: Vec<String> = upper.chain(lower).collect();
                view! { <polygon points=pts.join(" ") fill=colour fill-opacity="0.15" stroke="none" /> }
            });
            let dots = s
                .points
                .iter()
                .map(|&(x, y)| {
                    view! { <circle cx=format!("{:.1}", sx(x)) cy=format!("{:.1}", sy(y)) r="2.5" fill=colour>
                        <title>{format!("{}: {x} → {y:.4}", s.name)}</title></circle> }
                })
                .collect_view();
            view! { <g data-testid="series" data-name=s.name.clone()>{band}<polyline points=path fill="none" stroke=colour stroke-width="1.8" />{dots}</g> }
        })
        .collect_view();
    let legend = series
        .iter()
        .enumerate()
        .map(|(i, s)| view! { <li><span class="swatch" style=format!("background:{}", PALETTE[i % PALETTE.len()])></span>{s.name.clone()}</li> })
        .collect_view();
    view! {
        <figure class="chart">
            <figcaption>{title.clone()}</figcaption>
            <svg viewBox=format!("0 0 {W} {H}") width=W height=H role="img" aria-label=title>
                <line x1=PAD y1=H - PAD x2=W - PAD y2=H - PAD stroke="#888" />
                <line x1=PAD y1=PAD x2=PAD y2=H - PAD stroke="#888" />
                <text x=PAD y=H - PAD + 14.0 font-size="11">{format!("{x0}")}</text>
                <text x=W - PAD y=H - PAD + 14.0 font-size="11" text-anchor="end">{format!("{x1}")}</text>
                <text x=W / 2.0 y=H - 6.0 font-size="11" text-anchor="middle">{x_label.unwrap_or("step")}</text>
                <text x=PAD - 4.0 y=H - PAD font-size="11" text-anchor="end">{format!("{y0:.3}")}</text>
                <text x=PAD - 4.0 y=PAD + 4.0 font-size="11" text-anchor="end">{format!("{y1:.3}")}</text>
                {lines}
            </svg>
            <ul class="chart-legend">{legend}</ul>
        </figure>
    }
}

/// Few-shot curves per target: (init → (shots → scores over origins)).
fn few_shot(runs: &[Run]) -> BTreeMap<String, BTreeMap<String, BTreeMap<usize, Vec<f64>>>> {
    let mut out: BTreeMap<String, BTreeMap<String, BTreeMap<usize, Vec<f64>>>> = BTreeMap::new();
    for r in runs.iter().filter(|r| r.experiment == "transfer") {
        let (Some(shots), Some(init), Some((_, score))) = (r.shots, r.init.clone(), r.score()) else {
            continue;
        };
        out.entry(r.tasks.join("+"))
            .or_default()
            .entry(init)
            .or_default()
            .entry(shots)
            .or_default()
            .push(score);
    }
    out
}

#[component]
pub fn Curves(runs: Memo<Vec<Run>>, query: Query) -> impl IntoView {
    let with_curves = move || -> Vec<Run> { runs.get().into_iter().filter(|r| !r.prompt.curves.is_empty()).collect() };
    view! {
        <section class="curves">
            <h2>"Curves"</h2>
            {move || {
                let fs = runs.with(|r| few_shot(r));
                if fs.is_empty() {
                    return None;
                }
                Some(view! {
                    <h3>"Few-shot transfer: test score vs shots (mean ± std over origins)"</h3>
                    <div class="charts">
                        {fs.into_iter().map(|(target, inits)| {
                            let series = inits.into_iter().map(|(init, by_shots)| {
                                let pts: Vec<(f64, f64, f64)> = by_shots.into_iter().map(|(k, v)| {
                                    (k as f64, tpv_shared::stats::mean(&v), tpv_shared::stats::std(&v, 0))
                                }).collect();
                                Series {
                                    name: init,
                                    points: pts.iter().map(|p| (p.0, p.1)).collect(),
                                    band: Some(pts.iter().map(|p| if p.2.is_finite() { p.2 } else { 0.0 }).collect()),
                                }
                            }).collect();
                            view! { <Chart title=format!("{target}") series x_label="shots" /> }
                        }).collect_view()}
                    </div>
                })
            }}
            <h3>"Training curves"</h3>
            {move || {
                let list = with_curves();
                if list.is_empty() {
                    return view! { <p>"No run with curves: load a study or open run files."</p> }.into_any();
                }
                let chosen = param(query, "run", &list[0].id);
                let options = list.iter().map(|r| {
                    let selected = r.id == chosen;
                    view! { <option value=r.id.clone() selected=selected>{r.id.clone()}</option> }
                }).collect_view();
                let run = list.iter().find(|r| r.id == chosen).unwrap_or(&list[0]).clone();
                let curves = run.prompt.curves.clone();
                let to_series = |names: &[&str]| -> Vec<Series> {
                    names.iter().filter_map(|n| curves.get(*n).map(|c| Series {
                        name: (*n).to_owned(),
                        points: c.steps.iter().zip(&c.values).map(|(s, v)| (f64::from(*s), f64::from(*v))).collect(),
                        band: None,
                    })).collect()
                };
                let metrics: Vec<String> = curves.keys().filter(|k| k.starts_with("valid_") && *k != "valid_loss").cloned().collect();
                let metric_refs: Vec<&str> = metrics.iter().map(String::as_str).collect();
                view! {
                    <label>"Run "
                        <select data-testid="curves-run" on:change=move |ev| set_param(query, "run", event_target_value(&ev))>{options}</select>
                    </label>
                    <div class="charts">
                        <Chart title="loss".into() series=to_series(&["train_loss", "valid_loss"]) />
                        {(!metric_refs.is_empty()).then(|| view! { <Chart title="validation metrics".into() series=to_series(&metric_refs) /> })}
                        {curves.contains_key("lr").then(|| view! { <Chart title="learning rate".into() series=to_series(&["lr"]) /> })}
                    </div>
                }.into_any()
            }}
        </section>
    }
}
