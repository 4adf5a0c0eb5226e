//! Which sites the app may fetch from. A link names studies and models by URL
//! (`?manifest=URL`, `?view=evaluate&model=URL`), and a manifest names its run files, examples
//! and model; all of them are fetched by [`crate::study::fetch_bytes`], which fetches only from
//! the page's own origin and from origins the user confirmed (for the page's lifetime). A URL
//! on another site is shown with its origin and loaded only after a click ([`Confirm`]); a URL
//! the user typed into the app's own field is consent. Only http and https are fetched:
//! `javascript:`, `data:`, `file:`, `blob:` and the like are refused.
//!
//! [`classify`] is the one place that decides; the model's bytes reach the workers from the page
//! (`worker::load_model`), so a worker never fetches on its own.

use std::cell::RefCell;
use std::collections::BTreeSet;

use leptos::prelude::*;

thread_local! {
    /// The origins the user confirmed on this page.
    static CONFIRMED: RefCell<BTreeSet<String>> = const { RefCell::new(BTreeSet::new()) };
}

/// Where a URL points, resolved against the page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// The page's own origin, or one the user confirmed: fetch `href` (absolute).
    Allowed { href: String },
    /// Another site, not confirmed yet: fetch nothing from it before the user says so.
    Foreign { href: String, origin: String },
}

/// A URL for messages: its start, when it is long (a `data:` URL may be the whole file).
fn shown(url: &str) -> String {
    const MAX: usize = 80;
    match url.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &url[..cut]),
        None => url.to_owned(),
    }
}

/// Classifies `url` (absolute, or relative to the page): the page's own origin or a confirmed
/// one, another site's, or an error (unparsable, or not http/https) saying why it is refused.
/// Origins are compared as the browser's URL parser writes them (scheme, host in ASCII/punycode,
/// port).
pub fn classify(url: &str) -> Result<Place, String> {
    let window = web_sys::window().ok_or("no window")?;
    let page = window.location().href().map_err(|_| "the page has no URL")?;
    let parsed = web_sys::Url::new_with_base(url.trim(), &page).map_err(|_| format!("{}: not a URL", shown(url)))?;
    let scheme = parsed.protocol();
    if scheme != "http:" && scheme != "https:" {
        return Err(format!(
            "{}: refused: only http and https URLs are loaded, not {scheme}",
            shown(url)
        ));
    }
    let href = parsed.href();
    let origin = parsed.origin();
    let own = web_sys::Url::new(&page).map(|p| p.origin()).unwrap_or_default();
    if origin == own || CONFIRMED.with(|c| c.borrow().contains(&origin)) {
        Ok(Place::Allowed { href })
    } else {
        Ok(Place::Foreign { href, origin })
    }
}

/// Records the user's consent to fetch from `origin` for the rest of the page's life.
pub fn confirm(origin: &str) {
    CONFIRMED.with(|c| c.borrow_mut().insert(origin.to_owned()));
}

/// A URL on another site waiting for the user's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ask {
    /// The URL as given (what the caller loads once confirmed).
    pub url: String,
    /// Its origin, as the browser normalises it.
    pub origin: String,
    /// Who asks: "This link", "The study".
    pub by: &'static str,
    /// What it loads: "a study", "a model".
    pub what: &'static str,
}

impl Ask {
    /// What a [`Place::Foreign`] needs asked (None: allowed).
    pub fn of(url: &str, place: Place, by: &'static str, what: &'static str) -> Option<Self> {
        match place {
            Place::Allowed { .. } => None,
            Place::Foreign { origin, .. } => Some(Self {
                url: url.to_owned(),
                origin,
                by,
                what,
            }),
        }
    }
}

/// The question, inline: the origin shown prominently, Load (confirms the origin, then calls
/// `on_load` with the URL) or Cancel.
#[component]
pub fn Confirm(ask: Ask, on_load: Callback<String>, on_cancel: Callback<()>) -> impl IntoView {
    let Ask { url, origin, by, what } = ask;
    let label = format!("Load from {origin}");
    let confirmed = origin.clone();
    let attr = origin.clone();
    view! {
        <div class="confirm" role="alertdialog" aria-live="assertive" data-testid="origin-confirm" data-origin=attr>
            <p>
                {format!("{by} asks to load {what} from ")}
                <strong class="origin" data-testid="origin-name">{origin}</strong>
                " — a site other than this report's. Load it?"
            </p>
            <p class="hint"><code>{shown(&url)}</code></p>
            <button type="button" data-testid="origin-load" on:click=move |_| {
                confirm(&confirmed);
                on_load.run(url.clone());
            }>{label}</button>
            " "
            <button type="button" data-testid="origin-cancel" on:click=move |_| on_cancel.run(())>"Cancel"</button>
        </div>
    }
}
