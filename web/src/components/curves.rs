//! Curves: a run's training curves (loss, learning rate, validation metrics, as stored in its run
//! file), and the study's few-shot curves — test score against shots, mean ± std over origins, one
//! line and band per init method.

use std::collections::BTreeMap;

use leptos::prelude::*;
use tpv_shared::figures::{self, Series};

use crate::study::Run;
use crate::{Query, param, set_param};

/// A chart: the shared figure (`tpv_shared::figures::line_chart_svg`, the SVG `tpv aggregate`
/// writes), and a button that downloads it.
#[component]
fn Chart(title: String, series: Vec<Series>, #[prop(optional)] x_label: Option<&'static str>) -> impl IntoView {
    let svg = figures::line_chart_svg(&title, x_label.unwrap_or("step"), &series);
    let file: String = title
        .chars()
        .map(|c| if c.is_alphanumeric() { c } else { '_' })
        .collect();
    let (svg2, file2) = (svg.clone(), file.clone());
    let save = move |png: bool, svg: &str, file: &str| {
        if let Err(e) = crate::download::figure(svg, file, png) {
            web_sys::console::error_1(&e.into());
        }
    };
    view! {
        <figure class="chart" aria-label=title>
            <div class="chart-svg" inner_html=svg.clone()></div>
            <button type="button" class="chart-download" data-testid="chart-svg" on:click=move |_| save(false, &svg2, &file2)>"SVG"</button>
            <button type="button" class="chart-download" data-testid="chart-png" on:click=move |_| save(true, &svg, &file)>"PNG"</button>
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
