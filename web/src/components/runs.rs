//! Runs: one row per run (experiment, tasks, origin, init, shots, kind, main score), sortable by
//! any column, filtered by a text that must occur in the row.

use leptos::prelude::*;

use crate::study::Run;
use crate::{Query, param, set_param};

const COLUMNS: [(&str, &str); 8] = [
    ("experiment", "experiment"),
    ("tasks", "task(s)"),
    ("origin", "origin"),
    ("init", "init"),
    ("shots", "shots"),
    ("kind", "kind"),
    ("metric", "metric"),
    ("score", "score"),
];

fn cell(run: &Run, column: &str) -> String {
    match column {
        "experiment" => run.experiment.clone(),
        "tasks" => run.tasks.join(" + "),
        "origin" => run.origin.map(|o| format!("origin{o}")).unwrap_or_default(),
        "init" => run.init.clone().unwrap_or_default(),
        "shots" => run.shots.map(|s| s.to_string()).unwrap_or_default(),
        "kind" => run.kind.clone(),
        "metric" => run.score().map(|(k, _)| k).unwrap_or_default(),
        "score" => run.score().map(|(_, v)| format!("{v:.4}")).unwrap_or_default(),
        _ => String::new(),
    }
}

/// Numbers sort as numbers, text as text, empty cells last.
fn compare(a: &str, b: &str) -> std::cmp::Ordering {
    let num = |s: &str| s.trim_start_matches("origin").parse::<f64>().ok();
    match (a.is_empty(), b.is_empty()) {
        (true, false) => return std::cmp::Ordering::Greater,
        (false, true) => return std::cmp::Ordering::Less,
        _ => {}
    }
    match (num(a), num(b)) {
        (Some(x), Some(y)) => x.total_cmp(&y),
        _ => a.cmp(b),
    }
}

#[component]
pub fn Runs(runs: Memo<Vec<Run>>, query: Query) -> impl IntoView {
    let sort = move || param(query, "sort", "");
    let filter = move || param(query, "filter", "");
    let rows = move || {
        let (key, desc) = match sort().strip_prefix('-') {
            Some(k) => (k.to_owned(), true),
            None => (sort(), false),
        };
        let needle = filter().to_lowercase();
        let mut rows: Vec<Vec<String>> = runs
            .get()
            .iter()
            .map(|r| {
                let mut cells: Vec<String> = COLUMNS.iter().map(|(c, _)| cell(r, c)).collect();
                cells.push(r.id.clone());
                cells
            })
            .filter(|cells| needle.is_empty() || cells.iter().any(|c| c.to_lowercase().contains(&needle)))
            .collect();
        if let Some(i) = COLUMNS.iter().position(|(c, _)| *c == key) {
            rows.sort_by(|a, b| {
                let o = compare(&a[i], &b[i]);
                // Empty cells stay last in both directions.
                if desc && !a[i].is_empty() && !b[i].is_empty() {
                    o.reverse()
                } else {
                    o
                }
            });
        }
        rows
    };
    let headers = COLUMNS
        .iter()
        .map(|&(key, label)| {
            let state = move || match sort().as_str() {
                s if s == key => "ascending",
                s if s.strip_prefix('-') == Some(key) => "descending",
                _ => "none",
            };
            view! {
                <th scope="col" aria-sort=state>
                    <button
                        type="button"
                        class="sort"
                        data-testid=format!("sort-{key}")
                        on:click=move |_| {
                            let next = if sort() == key { format!("-{key}") } else { key.to_owned() };
                            set_param(query, "sort", next);
                        }
                    >
                        {label}
                        {move || match state() {
                            "ascending" => " ▲",
                            "descending" => " ▼",
                            _ => "",
                        }}
                    </button>
                </th>
            }
        })
        .collect_view();
    view! {
        <section class="runs">
            <h2>"Runs"</h2>
            <Show when=move || !runs.with(Vec::is_empty) fallback=|| view! {
                <p>"No runs yet: open a report folder's page (tpv report), pass ?manifest=URL, or open run files in the Files view."</p>
            }>
                <label class="inline">"Filter "
                    <input
                        type="search"
                        data-testid="runs-filter"
                        prop:value=filter
                        on:input=move |ev| set_param(query, "filter", event_target_value(&ev))
                    />
                </label>
                <p class="hint" data-testid="runs-count">{move || format!("{} of {} runs", rows().len(), runs.with(Vec::len))}</p>
                <div class="scroll">
                    <table class="runs-table" data-testid="runs-table">
                        <thead><tr>{headers.clone()}</tr></thead>
                        <tbody>
                            {move || rows().into_iter().map(|cells| {
                                let id = cells[COLUMNS.len()].clone();
                                view! {
                                    <tr data-testid="run-row" data-id=id.clone() title=id>
                                        {cells[..COLUMNS.len()].iter().map(|c| view! { <td>{c.clone()}</td> }).collect_view()}
                                    </tr>
                                }
                            }).collect_view()}
                        </tbody>
                    </table>
                </div>
            </Show>
        </section>
    }
}
