//! The opened files: a card each, with the summary or the error.

use leptos::prelude::*;
use tpv_shared::{Norms, Summary};

use crate::files::Entry;

#[component]
pub fn FileList(entries: RwSignal<Vec<Entry>>) -> impl IntoView {
    view! {
        <section class="files" aria-live="polite">
            <For each=move || entries.get() key=|e| e.id let:entry>
                <FileCard entry />
            </For>
        </section>
    }
}

#[component]
fn FileCard(entry: Entry) -> impl IntoView {
    let body = match entry.outcome {
        Ok(summary) => view! { <SummaryView summary /> }.into_any(),
        Err(message) => view! {
            <p class="error" role="alert" data-testid="file-error">{message}</p>
        }
        .into_any(),
    };
    let heading = entry.name.clone();
    view! {
        <article class="file" data-testid="file-card" data-name=entry.name>
            <h2>{heading}</h2>
            {body}
        </article>
    }
}

#[component]
fn SummaryView(summary: Summary) -> impl IntoView {
    let shape = format!("{} × {}", summary.shape[0], summary.shape[1]);
    let stored = summary.stored_shape.map(|s| {
        format!(
            "{} × {} {}",
            s[0],
            s[1],
            summary.stored_dtype.clone().unwrap_or_default()
        )
    });
    let attempt = summary.attempt.as_ref().map(|a| {
        format!(
            "target prompt mixed per input with {} (attention rank {}, temperature {:.1})",
            a.sources.join(", "),
            a.rank,
            a.temperature
        )
    });
    let mut norms = vec![("values", summary.norms.clone())];
    norms.extend(summary.origin_norms.clone().map(|n| ("origin", n)));
    norms.extend(summary.vector_norms.clone().map(|n| ("vector", n)));
    let meta = metadata_rows(&summary);
    view! {
        <dl class="facts">
            <dt>"format"</dt><dd data-testid="format">{summary.format.clone()}</dd>
            <dt>"kind"</dt><dd data-testid="kind">{summary.kind.as_str()}</dd>
            <dt>"label"</dt><dd data-testid="label">{summary.label.clone()}</dd>
            <dt>"shape"</dt><dd data-testid="shape">{shape}</dd>
            {stored.map(|s| view! { <dt>"stored"</dt><dd data-testid="stored-shape">{s}</dd> })}
            {attempt.map(|a| view! { <dt>"ATTEMPT"</dt><dd data-testid="attempt">{a}</dd> })}
        </dl>
        <table class="norms">
            <caption>"Norms"</caption>
            <thead><tr><th scope="col"></th><th scope="col">"‖·‖"</th><th scope="col">"mean row"</th><th scope="col">"max |x|"</th><th scope="col">"‖token-mean‖"</th></tr></thead>
            <tbody>
                {norms.into_iter().map(|(name, n)| view! { <NormRow name n /> }).collect_view()}
            </tbody>
        </table>
        <details>
            <summary>"Metadata"</summary>
            <table class="meta" data-testid="metadata">
                <tbody>
                    {meta.into_iter().map(|(k, v)| view! { <tr><th scope="row">{k}</th><td>{v}</td></tr> }).collect_view()}
                </tbody>
            </table>
        </details>
    }
}

#[component]
fn NormRow(name: &'static str, n: Norms) -> impl IntoView {
    view! {
        <tr data-testid=format!("norms-{name}")>
            <th scope="row">{name}</th>
            <td>{format!("{:.6}", n.frobenius)}</td>
            <td>{format!("{:.6}", n.mean_row)}</td>
            <td>{format!("{:.6}", n.max_abs)}</td>
            <td>{format!("{:.6}", n.token_mean)}</td>
        </tr>
    }
}

/// The metadata as (key, text) rows, nested values as compact JSON.
fn metadata_rows(summary: &Summary) -> Vec<(String, String)> {
    match serde_json::to_value(&summary.metadata) {
        Ok(serde_json::Value::Object(map)) => map
            .into_iter()
            .map(|(k, v)| (k, v.as_str().map_or_else(|| v.to_string(), str::to_owned)))
            .collect(),
        _ => Vec::new(),
    }
}
