//! Similarity: the paper's across-origins view of task prompts or task prompt vectors — for each
//! pair of tasks an origins × origins heatmap (identical pairs omitted), averaged into one cell of
//! a tasks × tasks matrix — with the token-mean or the flattened cosine. Computed in the browser by
//! `tpv_shared::similarity::across_origins`, the function behind `tpv similarity --across-origins`.

use leptos::prelude::*;
use tpv_shared::PromptTensor;
use tpv_shared::figures::{self, colour};
use tpv_shared::similarity::{self, AcrossOrigins, Labelled, Measure};

use crate::study::Run;
use crate::{Query, param, set_param};

/// The tuned prompts of the pool (one per task and origin; the first one wins).
fn items(runs: &[Run], vectors: bool) -> Vec<(String, String, PromptTensor)> {
    let mut out: Vec<(String, String, PromptTensor)> = Vec::new();
    for r in runs {
        if r.kind != "task-prompt" && !(vectors && r.kind == "task-prompt-vector") {
            continue;
        }
        if r.experiment != "prompt_tuning" && r.experiment != "file" {
            continue;
        }
        let Some(origin) = r
            .prompt
            .origin_id()
            .map(str::to_owned)
            .or(r.origin.map(|o| format!("origin{o}")))
        else {
            continue;
        };
        let task = r.tasks.join("+");
        if out.iter().any(|(t, o, _)| *t == task && *o == origin) {
            continue;
        }
        let values = if vectors {
            match r.prompt.vector_values() {
                Ok(v) => v,
                Err(_) => continue,
            }
        } else if r.kind == "task-prompt" {
            r.prompt.values.clone()
        } else {
            continue;
        };
        out.push((task, origin, values));
    }
    out
}

/// A heatmap: rows × cols of optional values; cells carry their labels and value for tests and
/// hover; `on_pick` makes cells buttons.
#[component]
pub fn Heatmap(
    caption: String,
    rows: Vec<String>,
    cols: Vec<String>,
    values: Vec<Vec<Option<f64>>>,
    #[prop(optional)] testid: Option<&'static str>,
    #[prop(optional)] on_pick: Option<Callback<(usize, usize)>>,
) -> impl IntoView {
    let testid = testid.unwrap_or("heatmap-cell");
    let header = cols
        .iter()
        .map(|c| view! { <th scope="col">{c.clone()}</th> })
        .collect_view();
    let body = values
        .into_iter()
        .enumerate()
        .map(|(i, row)| {
            let label = rows[i].clone();
            let cells = row
                .into_iter()
                .enumerate()
                .map(|(j, v)| {
                    let (r, c) = (rows[i].clone(), cols[j].clone());
                    let text = v.map_or("–".to_owned(), |v| format!("{v:.3}"));
                    let title = match v {
                        Some(v) => format!("{r} × {c}: {v:.6}"),
                        None => format!("{r} × {c}: omitted"),
                    };
                    let style = v.map(|v| format!("background:{}", colour(v))).unwrap_or_default();
                    let value = v.map(|v| format!("{v}")).unwrap_or_default();
                    let inner = match on_pick {
                        Some(cb) => view! {
                            <button type="button" class="cell-button" aria-label=title.clone() on:click=move |_| cb.run((i, j))>{text}</button>
                        }
                        .into_any(),
                        None => view! { <span>{text}</span> }.into_any(),
                    };
                    view! {
                        <td data-testid=testid data-row=r data-col=c data-value=value title=title style=style>
                            {inner}
                        </td>
                    }
                })
                .collect_view();
            view! { <tr><th scope="row">{label}</th>{cells}</tr> }
        })
        .collect_view();
    view! {
        <table class="heatmap">
            <caption>{caption}</caption>
            <thead><tr><th></th>{header}</tr></thead>
            <tbody>{body}</tbody>
        </table>
    }
}

/// The colour legend: −1 … 0 … +1.
#[component]
pub fn Legend() -> impl IntoView {
    let stops = [-1.0, -0.5, 0.0, 0.5, 1.0];
    view! {
        <div class="legend" aria-label="colour scale from −1 (blue) through 0 (white) to +1 (red)">
            {stops.iter().map(|&v| view! {
                <span style=format!("background:{}", colour(v))>{format!("{v:+.1}")}</span>
            }).collect_view()}
        </div>
    }
}

#[component]
pub fn Similarity(runs: Memo<Vec<Run>>, query: Query) -> impl IntoView {
    let vectors = move || param(query, "what", "vectors") == "vectors";
    // An unknown `measure=` is an error shown in the view, not a silent cosine.
    let measure = move || param(query, "measure", "cosine-mean").parse::<Measure>();
    let analysis = Memo::new(move |_| -> Result<Option<AcrossOrigins>, String> {
        let items = runs.with(|r| items(r, vectors()));
        if items.is_empty() {
            return Ok(None);
        }
        let labelled: Vec<Labelled<'_>> = items
            .iter()
            .map(|(t, o, v)| Labelled {
                task: t.clone(),
                origin: o.clone(),
                values: v,
            })
            .collect();
        similarity::across_origins(&labelled, measure().map_err(|e| e.to_string())?)
            .map(Some)
            .map_err(|e| e.to_string())
    });
    let pick = Callback::new(move |(i, j): (usize, usize)| {
        if let Ok(Some(a)) = analysis.get_untracked() {
            set_param(query, "pair", format!("{},{}", a.tasks[i], a.tasks[j]));
        }
    });
    let what = move || {
        if vectors() {
            "task prompt vectors"
        } else {
            "task prompts"
        }
    };
    view! {
        <section class="similarity">
            <h2>"Similarity across origins"</h2>
            <fieldset class="controls">
                <legend>"Compare"</legend>
                <label><input type="radio" name="what" data-testid="sim-vectors" prop:checked=vectors
                    on:change=move |_| set_param(query, "what", "vectors") />" task prompt vectors (τ = θ − θ₀)"</label>
                <label><input type="radio" name="what" data-testid="sim-prompts" prop:checked=move || !vectors()
                    on:change=move |_| set_param(query, "what", "prompts") />" task prompts (θ)"</label>
                <label>" measure "
                    <select data-testid="sim-measure" on:change=move |ev| set_param(query, "measure", event_target_value(&ev))
                        prop:value=move || measure().map(Measure::as_str).unwrap_or_default().to_owned()>
                        <option value="cosine-mean">"cosine of token-means (the paper's)"</option>
                        <option value="cosine-flat">"cosine, flattened R·d"</option>
                    </select>
                </label>
            </fieldset>
            {move || match analysis.get() {
                Err(e) => view! { <p class="error" role="alert">{e}</p> }.into_any(),
                Ok(None) => view! { <p>"No task prompts with a known origin yet: load a study or open run files."</p> }.into_any(),
                Ok(Some(a)) => {
                    let pair = param(query, "pair", "");
                    let detail = pair.split_once(',').and_then(|(x, y)| {
                        let i = a.tasks.iter().position(|t| t == x)?;
                        let j = a.tasks.iter().position(|t| t == y)?;
                        Some((i, j))
                    });
                    let (tasks, matrix) = (a.tasks.clone(), a.matrix.clone());
                    let detail = detail.map(|(i, j)| {
                        let rows: Vec<String> = a.origins.iter().map(|o| format!("{}@{o}", a.tasks[i])).collect();
                        let cols: Vec<String> = a.origins.iter().map(|o| format!("{}@{o}", a.tasks[j])).collect();
                        view! {
                            <Heatmap caption=format!("{} × {}: origins × origins ({})", a.tasks[i], a.tasks[j], what())
                                rows cols values=a.pairs[i][j].clone() testid="pair-cell" />
                        }
                    });
                    let (m, w) = (a.measure.as_str(), what());
                    let figure = move |pairs: bool, png: bool| {
                        let svg = if pairs {
                            figures::pairs_svg(&a, &format!("{m} of {w}, origins × origins for each task pair"))
                        } else {
                            figures::tasks_svg(&a, &format!("{m} of {w}, tasks × tasks (mean over origin pairs)"))
                        };
                        let name = format!("similarity_{}{}", w.replace(' ', "_"), if pairs { "_pairs" } else { "" });
                        if let Err(e) = crate::download::figure(&svg, &name, png) {
                            web_sys::console::error_1(&e.into());
                        }
                    };
                    view! {
                        <Heatmap caption=format!("Tasks × tasks: {m} of {w}, mean over origin pairs (identical pairs omitted); choose a cell for its origins × origins map")
                            rows=tasks.clone() cols=tasks values=matrix on_pick=pick />
                        <Legend />
                        <p class="downloads">
                            "Download this map as "
                            <button type="button" data-testid="svg-tasks" on:click={let f = figure.clone(); move |_| f(false, false)}>"SVG"</button>
                            " "
                            <button type="button" data-testid="png-tasks" on:click={let f = figure.clone(); move |_| f(false, true)}>"PNG"</button>
                            "; every task pair's origins × origins map as "
                            <button type="button" data-testid="svg-pairs" on:click={let f = figure.clone(); move |_| f(true, false)}>"SVG"</button>
                            " "
                            <button type="button" data-testid="png-pairs" on:click=move |_| figure(true, true)>"PNG"</button>
                        </p>
                        {detail}
                    }.into_any()
                }
            }}
        </section>
    }
}
