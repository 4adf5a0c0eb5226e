//! Compose: θ₀ + λ·merge(w₁τ₁, …) from an origin and chosen vectors, with any merge of the core —
//! `tpv_shared::arith::combine`, the function behind `tpv combine`, so the result is the same
//! file. Shows the result's norms and its cosine to each source; downloads it as a run file and as
//! a peft adapter.

use leptos::prelude::*;
use tpv_shared::peft::{self, PeftAdapter};
use tpv_shared::similarity::{Measure, similarity};
use tpv_shared::{
    MergeKind, MergeMethod, MergeParams, Named, Norms, OriginRef, PromptTensor, SignElection, SoftPrompt, arith,
    runfile,
};

use crate::study::Run;
use crate::{Query, param, set_param};

/// The origins the pool offers: origin files and the stored origins of task prompts, by id.
fn origins(runs: &[Run]) -> Vec<(String, SoftPrompt)> {
    let mut out: Vec<(String, SoftPrompt)> = Vec::new();
    for r in runs {
        let p = &r.prompt;
        let Some(values) = p.origin_values() else { continue };
        let id = p.origin_id().map_or_else(|| r.id.clone(), str::to_owned);
        if out.iter().any(|(i, _)| *i == id) {
            continue;
        }
        let origin = if p.kind() == tpv_shared::PromptKind::Origin {
            p.clone()
        } else {
            let mut o = SoftPrompt::origin(
                values.clone(),
                p.meta.origin.clone().unwrap_or(OriginRef {
                    id: id.clone(),
                    seed: None,
                    index: None,
                    sampling: None,
                }),
            );
            o.meta.model.clone_from(&p.meta.model);
            o.meta.layout = p.meta.layout;
            o
        };
        out.push((id, origin));
    }
    out
}

/// The prompts whose vector can be taken: task prompts, vectors, combinations with an origin.
fn vectors(runs: &[Run]) -> Vec<&Run> {
    runs.iter()
        .filter(|r| r.prompt.kind() != tpv_shared::PromptKind::Origin && r.prompt.vector_values().is_ok())
        .collect()
}

/// The merge the query asks for, by the shared rules (`MergeMethod::build`): an unknown
/// `method=` or `sign=` is an error shown in the view, never a silent sum. The inputs' defaults
/// (density and drop 0.5) are passed only to the methods that take them.
fn method_of(q: Query) -> Result<MergeMethod, String> {
    let kind: MergeKind = param(q, "method", "sum")
        .parse()
        .map_err(|e: tpv_shared::Error| e.to_string())?;
    let num = |key: &str| -> Result<f64, String> {
        param(q, key, "0.5")
            .parse::<f64>()
            .map_err(|_| format!("{key} must be a number"))
    };
    let params = MergeParams {
        density: kind.takes_density().then(|| num("density")).transpose()?,
        drop: kind.takes_drop().then(|| num("drop")).transpose()?,
        seed: kind
            .takes_drop()
            .then(|| param(q, "seed", "0").parse::<u64>())
            .transpose()
            .map_err(|_| "seed must be a whole number".to_owned())?,
        sign: kind
            .takes_sign()
            .then(|| param(q, "sign", "mass").parse::<SignElection>())
            .transpose()
            .map_err(|e| e.to_string())?,
    };
    MergeMethod::build(kind, &params).map_err(|e| e.to_string())
}

fn chosen_ids(query: Query) -> Vec<String> {
    param(query, "tau", "")
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The composition the query describes (`origin`, `tau`, `w`, `lambda`, `method`, …) with the
/// runs it takes vectors from; `None` until an origin and a vector are chosen. The Evaluate view
/// evaluates it as `prompt=@compose`.
pub fn composition(runs: &[Run], query: Query) -> Result<Option<(SoftPrompt, Vec<&Run>)>, String> {
    let origins = origins(runs);
    let origin_id = param(query, "origin", "");
    let Some((_, origin)) = origins.iter().find(|(id, _)| *id == origin_id) else {
        return Ok(None);
    };
    let ids = chosen_ids(query);
    let picked: Vec<&Run> = ids.iter().filter_map(|id| runs.iter().find(|r| &r.id == id)).collect();
    if picked.is_empty() {
        return Ok(None);
    }
    let ws: Vec<f64> = param(query, "w", "")
        .split(',')
        .take(picked.len())
        .map(|w| {
            if w.is_empty() {
                Ok(1.0)
            } else {
                w.parse::<f64>().map_err(|_| format!("weight {w:?} is not a number"))
            }
        })
        .collect::<Result<_, _>>()?;
    let ws = if ws.iter().all(|w| *w == 1.0) && ws.len() <= picked.len() {
        Vec::new()
    } else {
        let mut ws = ws;
        ws.resize(picked.len(), 1.0);
        ws
    };
    let lambda = param(query, "lambda", "1")
        .parse::<f64>()
        .map_err(|_| "λ must be a number".to_owned())?;
    let method = method_of(query)?;
    let refs: Vec<&SoftPrompt> = picked.iter().map(|r| &r.prompt).collect();
    let mut result = arith::combine(origin, &refs, &ws, lambda, &method).map_err(|e| e.to_string())?;
    let name = param(query, "name", "");
    if !name.is_empty() {
        result.meta.name = Some(name);
    }
    Ok(Some((result, picked)))
}

#[derive(Clone, PartialEq)]
struct Outcome {
    result: SoftPrompt,
    sources: Vec<(String, Option<f64>)>,
}

/// The composition the query asks for, and the cosine of its vector to each source's.
fn outcome_of(runs: &[Run], query: Query) -> Result<Option<Outcome>, String> {
    let Some((result, picked)) = composition(runs, query)? else {
        return Ok(None);
    };
    let tau: Option<PromptTensor> = result.vector_values().ok();
    let sources = picked
        .iter()
        .map(|r| {
            let cos = match (&tau, r.prompt.vector_values()) {
                (Some(t), Ok(s)) => similarity(t, &s, Measure::CosineMean).ok(),
                _ => None,
            };
            (r.prompt.label(), cos)
        })
        .collect();
    Ok(Some(Outcome { result, sources }))
}

/// The chosen vectors and their weights in the query (`tau=a,b`, `w=1,0.5`) after ticking or
/// unticking `id`.
fn toggled(query: Query, id: String, on: bool) {
    let mut ids = chosen_ids(query);
    let mut ws = weights_of(query);
    ws.resize(ids.len(), String::new());
    if on && !ids.contains(&id) {
        ids.push(id);
        ws.push(String::new());
    } else if !on && let Some(i) = ids.iter().position(|x| *x == id) {
        ids.remove(i);
        ws.remove(i);
    }
    set_param(query, "tau", ids.join(","));
    let ws = ws.join(",");
    set_param(
        query,
        "w",
        if ws.chars().all(|c| c == ',') {
            String::new()
        } else {
            ws
        },
    );
}

fn weights_of(query: Query) -> Vec<String> {
    param(query, "w", "").split(',').map(str::to_owned).collect()
}

/// A composition: its expression, norms, similarity to its sources, downloads and "Evaluate it".
#[component]
fn ComposeResult(o: Outcome, query: Query, message: RwSignal<Option<String>>) -> impl IntoView {
    let result = StoredValue::new(o.result.clone());
    let save_run = move |_| {
        let r = runfile::write_run(&result.read_value())
            .map_err(|e| e.to_string())
            .and_then(|b| crate::download::bytes("composed.safetensors", &b, "application/octet-stream"));
        message.set(r.err());
    };
    let save_peft = move |_| {
        let r = PeftAdapter::from_prompt(&result.read_value())
            .and_then(|a| a.to_files())
            .map_err(|e| e.to_string())
            .and_then(|(config, weights)| {
                crate::download::bytes(peft::WEIGHTS_FILE, &weights, "application/octet-stream")?;
                crate::download::bytes(peft::CONFIG_FILE, config.as_bytes(), "application/json")
            });
        message.set(r.err());
    };

    let n = Norms::of(&o.result.values);
    let vn = o.result.vector_values().ok().map(|t| Norms::of(&t));
    view! {
        <div class="result" data-testid="compose-result">
            <p><strong>"Result: "</strong><code data-testid="compose-expression">{o.result.meta.expression.clone().unwrap_or_default()}</code></p>
            <p data-testid="compose-norms">{format!("‖θ‖ = {:.6}, ‖token-mean θ‖ = {:.6}", n.frobenius, n.token_mean)}
                {vn.map(|v| format!("; ‖τ‖ = {:.6}", v.frobenius))}</p>
            <Show when={let m = o.result.meta.mixed_origins; move || m}>
                <p class="hint">"Note: the vectors come from different origins (cross-origin)."</p>
            </Show>
            <table>
                <caption>"Cosine (token-mean) of the result's vector to each source's"</caption>
                <tbody>
                    {o.sources.iter().map(|(l, c)| view! {
                        <tr data-testid="compose-source"><th scope="row">{l.clone()}</th>
                        <td data-value=c.map(|c| c.to_string()).unwrap_or_default()>{c.map_or("–".into(), |c| format!("{c:.4}"))}</td></tr>
                    }).collect_view()}
                </tbody>
            </table>
            <button type="button" data-testid="download-run" on:click=save_run>"Download run file"</button>
            " "
            <button type="button" data-testid="download-peft" on:click=save_peft>"Download peft adapter"</button>
            " "
            <button type="button" data-testid="evaluate-composed" on:click=move |_| {
                set_param(query, "prompt", "@compose");
                set_param(query, "view", "evaluate");
            }>"Evaluate it"</button>
        </div>
    }
}

/// A number input bound to the query's `key`, created once, so typing never loses focus.
fn number_input(
    query: Query,
    key: &'static str,
    default: &'static str,
    label: &'static str,
    testid: &'static str,
    step: &'static str,
) -> impl IntoView {
    view! {
        <label>{label}
            <input type="number" step=step data-testid=testid
                prop:value=move || param(query, key, default)
                on:input=move |ev| set_param(query, key, event_target_value(&ev)) />
        </label>
    }
}

#[component]
pub fn Compose(runs: Memo<Vec<Run>>, query: Query) -> impl IntoView {
    let chosen = move || chosen_ids(query);
    let weights = move || weights_of(query);
    let outcome = Memo::new(move |_| runs.with(|rs| outcome_of(rs, query)));
    let message = RwSignal::new(None::<String>);
    let toggle = move |id: String, on: bool| toggled(query, id, on);
    let set_weight = move |id: String, value: String| {
        let ids = chosen();
        let mut ws = weights();
        ws.resize(ids.len(), String::new());
        if let Some(i) = ids.iter().position(|x| *x == id) {
            ws[i] = value;
        }
        set_param(query, "w", ws.join(","));
    };

    let origin_list = Memo::new(move |_| runs.with(|r| origins(r).into_iter().map(|(id, _)| id).collect::<Vec<_>>()));
    let vector_list = Memo::new(move |_| {
        runs.with(|r| {
            vectors(r)
                .into_iter()
                .map(|r| (r.id.clone(), r.option_label(), r.kind.clone()))
                .collect::<Vec<_>>()
        })
    });
    let weight_of = move |id: &str| -> Option<String> {
        let ids = chosen();
        let pos = ids.iter().position(|x| x == id)?;
        Some(
            weights()
                .get(pos)
                .cloned()
                .filter(|w| !w.is_empty())
                .unwrap_or_else(|| "1".into()),
        )
    };
    view! {
        <section class="compose">
            <h2>"Compose"</h2>
            <Show when=move || !runs.with(Vec::is_empty) fallback=|| view! { <p>"Load a study or open run files first."</p> }>
                <div class="controls">
                    <label>"Origin θ₀ "
                        <select data-testid="compose-origin" on:change=move |ev| set_param(query, "origin", event_target_value(&ev))>
                            <option value="">"choose…"</option>
                            {move || origin_list.get().into_iter().map(|id| {
                                let (value, shown, key) = (id.clone(), id.clone(), id);
                                view! { <option value=value selected=move || param(query, "origin", "") == key>{shown}</option> }
                            }).collect_view()}
                        </select>
                    </label>
                    {number_input(query, "lambda", "1", " λ ", "compose-lambda", "0.05")}
                    <label>" merge "
                        <select data-testid="compose-method" on:change=move |ev| set_param(query, "method", event_target_value(&ev))>
                            {MergeKind::NAMES.iter().copied().map(|m| {
                                view! { <option value=m selected=move || param(query, "method", "sum") == m>{m}</option> }
                            }).collect_view()}
                        </select>
                    </label>
                    {number_input(query, "density", "0.5", " density ", "compose-density", "0.05")}
                    {number_input(query, "drop", "0.5", " drop ", "compose-drop", "0.05")}
                    {number_input(query, "seed", "0", " seed ", "compose-seed", "1")}
                </div>
                <table class="vectors">
                    <caption>"Vectors (τ of each prompt) and weights"</caption>
                    <thead><tr><th scope="col">"prompt"</th><th scope="col">"kind"</th><th scope="col">"weight"</th></tr></thead>
                    <tbody>
                        {move || vector_list.get().into_iter().map(|(id, label, kind)| {
                            let (a, b, c, d, e) = (id.clone(), id.clone(), id.clone(), id.clone(), id.clone());
                            view! {
                                <tr data-testid="compose-vector" data-id=id>
                                    <td><label><input type="checkbox" prop:checked=move || weight_of(&a).is_some()
                                        on:change=move |ev| toggle(b.clone(), event_target_checked(&ev)) />
                                        " " {label.clone()}</label></td>
                                    <td>{kind}</td>
                                    <td><input type="number" step="0.05" aria-label=format!("weight of {label}")
                                        prop:value=move || weight_of(&c).unwrap_or_else(|| "1".into())
                                        disabled=move || weight_of(&d).is_none()
                                        on:input=move |ev| set_weight(e.clone(), event_target_value(&ev)) /></td>
                                </tr>
                            }
                        }).collect_view()}
                    </tbody>
                </table>
            </Show>
            {move || match outcome.get() {
                Err(e) => view! { <p class="error" role="alert" data-testid="compose-error">{e}</p> }.into_any(),
                Ok(None) => view! { <p class="hint">"Choose an origin and at least one vector."</p> }.into_any(),
                Ok(Some(o)) => view! { <ComposeResult o query message /> }.into_any(),
            }}
            {move || message.get().map(|m| view! { <p class="error" role="alert">{m}</p> })}
        </section>
    }
}
