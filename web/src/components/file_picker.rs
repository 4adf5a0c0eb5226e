//! Choosing files: a labelled file input and a drop zone.

use leptos::prelude::*;
use leptos::task::spawn_local;
use web_sys::{DragEvent, HtmlInputElement};

use crate::files::{self, Entry};

#[component]
pub fn FilePicker(entries: RwSignal<Vec<Entry>>) -> impl IntoView {
    let dragging = RwSignal::new(false);
    let busy = RwSignal::new(false);
    let next_id = StoredValue::new(0usize);

    let open = move |files: Vec<web_sys::File>| {
        if files.is_empty() {
            return;
        }
        let first = next_id.get_value();
        next_id.set_value(first + files.len());
        busy.set(true);
        spawn_local(async move {
            let opened = files::open(files, first).await;
            entries.update(|e| e.extend(opened));
            busy.set(false);
        });
    };

    let on_change = move |ev: leptos::ev::Event| {
        let input: HtmlInputElement = event_target(&ev);
        if let Some(list) = input.files() {
            open((0..list.length()).filter_map(|i| list.get(i)).collect());
        }
        // Choosing the same file again must fire `change` again.
        input.set_value("");
    };
    let on_drop = move |ev: DragEvent| {
        ev.prevent_default();
        dragging.set(false);
        if let Some(list) = ev.data_transfer().and_then(|dt| dt.files()) {
            open((0..list.length()).filter_map(|i| list.get(i)).collect());
        }
    };

    view! {
        <section
            class="drop-zone"
            class:dragging=move || dragging.get()
            data-testid="drop-zone"
            on:dragover=move |ev: DragEvent| {
                ev.prevent_default();
                dragging.set(true);
            }
            on:dragleave=move |_| dragging.set(false)
            on:drop=on_drop
        >
            <label for="file-input">"Open run files (.safetensors) or a peft adapter (adapter_model.safetensors + adapter_config.json)"</label>
            <input id="file-input" data-testid="file-input" type="file" multiple accept=".safetensors,.json" on:change=on_change />
            <p class="hint">"…or drop them here."</p>
            <Show when=move || busy.get()>
                <p role="status">"Reading…"</p>
            </Show>
            <Show when=move || !entries.with(Vec::is_empty)>
                <button type="button" on:click=move |_| entries.set(Vec::new())>"Clear"</button>
            </Show>
        </section>
    }
}
