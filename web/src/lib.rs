//! The tpv web app (Leptos, client-side only). Files are parsed in the browser by `tpv-shared`,
//! the same code the `tpv` CLI runs.

mod components;
mod files;

use leptos::prelude::*;

use components::file_list::FileList;
use components::file_picker::FilePicker;
use files::Entry;

/// The page: a file picker / drop zone and the list of opened files.
#[component]
pub fn App() -> impl IntoView {
    let entries = RwSignal::new(Vec::<Entry>::new());
    view! {
        <header>
            <h1>"tpv"</h1>
            <p class="tagline">"Task prompt vectors: open run files and peft adapters. Nothing leaves your browser."</p>
        </header>
        <main>
            <FilePicker entries />
            <FileList entries />
        </main>
    }
}
