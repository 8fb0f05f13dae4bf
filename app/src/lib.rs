//! The demo application: wire types, the reference API as server functions,
//! the live-feed hook, and the Leptos components. Compiled with `ssr` into
//! the server and with `hydrate` into the WASM front end.
//!
//! # Layout
//!
//! | module | what |
//! |---|---|
//! | `model` | wire types: the JSON API's answers, the live feed's events |
//! | `serve` | how the server runs a server function (feature `ssr`) |
//! | `error` | the one error answer, and engine errors mapped to statuses |
//! | `page` | what a view shows: the whole table when small, a page when large (feature `ssr`) |
//! | `api` | the reference API, written once as server functions |
//! | `live` | the live feed's client state and its `EventSource` hook |
//! | `components` | the dashboard's panels |
//!
//! Each module uses only the ones above it.

#![recursion_limit = "256"]

pub mod model;
#[cfg(feature = "ssr")]
pub mod serve;

pub mod error;

#[cfg(feature = "ssr")]
pub mod page;

pub mod api;
pub mod live;

pub mod components;

use leptos::either::Either;
use leptos::prelude::*;

use components::*;
use live::{LiveState, use_live_state};
use model::{DashboardState, ExternalWatch, fixed};

/// Name of the site bundle: `/pkg/{OUTPUT_NAME}.js|.wasm|.css`, as
/// cargo-leptos (or `.cargo/config.toml`) set it at compile time.
pub const OUTPUT_NAME: &str = env!("LEPTOS_OUTPUT_NAME");

#[cfg(all(feature = "ssr", feature = "hydrate"))]
compile_error!(
    "`ssr` and `hydrate` are exclusive: the server enables one, the WASM build the other"
);

/// The HTML document around the app (server side).
///
/// The dashboard's initial state travels inside the page as JSON in
/// `<head>` (outside the hydrated tree), so the browser hydrates from exactly
/// what the server rendered, synchronously, without asking again.
pub fn shell(options: LeptosOptions) -> impl IntoView {
    #[cfg(feature = "ssr")]
    set_content_security_policy();
    let state_json = use_context::<DashboardState>().map(|s| embed_json(&s));
    let form_error_json = use_context::<FormError>().map(|e| embed_json(&e.0));
    view! {
        <!DOCTYPE html>
        <html lang="en">
            <head>
                <meta charset="utf-8"/>
                <meta name="viewport" content="width=device-width, initial-scale=1"/>
                <meta name="description" content="A Redis prefetch cache, live: Rust, Leptos, axum, redis-rs."/>
                <link rel="icon" href="/favicon.svg" type="image/svg+xml"/>
                // Static tags live in the server-only shell, so no head
                // management code ships to the browser. The id lets
                // `cargo leptos watch` hot-swap the stylesheet.
                <link id="leptos" rel="stylesheet" href=format!("/pkg/{OUTPUT_NAME}.css")/>
                <title>"Redis Prefetch Cache · Rust"</title>
                {state_json.map(|json| view! {
                    <script id=STATE_ELEMENT_ID type="application/json" inner_html=json></script>
                })}
                {form_error_json.map(|json| view! {
                    <script id=FORM_ERROR_ELEMENT_ID type="application/json" inner_html=json></script>
                })}
                <AutoReload options=options.clone()/>
                <HydrationScripts options/>
            </head>
            <body>
                <App/>
            </body>
        </html>
    }
}

/// The page's Content-Security-Policy: scripts only from this origin plus
/// the one inline hydration script (by its per-render nonce), WebAssembly
/// compilation, styles and connections to this origin only. `cargo leptos
/// watch` adds its live-reload WebSocket.
#[cfg(feature = "ssr")]
fn set_content_security_policy() {
    let Some(options) = use_context::<leptos_axum::ResponseOptions>() else {
        return;
    };
    let nonce = leptos::nonce::use_nonce()
        .map(|n| format!(" 'nonce-{}'", &*n))
        .unwrap_or_default();
    let reload = if std::env::var_os("LEPTOS_WATCH").is_some() {
        " ws: wss:"
    } else {
        ""
    };
    let policy = format!(
        "default-src 'self'; script-src 'self'{nonce} 'wasm-unsafe-eval'; style-src 'self'; \
         img-src 'self' data:; connect-src 'self'{reload}; object-src 'none'; base-uri 'none'; \
         form-action 'self'; frame-ancestors 'none'"
    );
    if let Ok(value) = http::HeaderValue::from_str(&policy) {
        options.insert_header(http::header::CONTENT_SECURITY_POLICY, value);
    }
}

/// Id of the `<script type="application/json">` holding the initial state.
pub const STATE_ELEMENT_ID: &str = "dashboard-state";

/// Id of the `<script type="application/json">` holding a form error.
pub const FORM_ERROR_ELEMENT_ID: &str = "form-error";

/// The error of a form posted without JavaScript: the server function
/// redirected back with it in the URL, and the server renders it into the
/// status bar (server-side context).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FormError(pub String);

/// JSON safe inside `<script>`: `<` only occurs inside JSON strings, where
/// `\u003c` means the same, so no value can close the element early.
pub fn embed_json(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value)
        .unwrap_or_else(|_| "null".into())
        .replace('<', "\\u003c")
}

/// Parses the JSON the server embedded in the `<script>` with `id`.
#[cfg(feature = "hydrate")]
fn embedded<T: serde::de::DeserializeOwned>(id: &str) -> Option<T> {
    let text = leptos::prelude::document()
        .get_element_by_id(id)?
        .text_content()?;
    serde_json::from_slice(text.as_bytes()).ok()
}

/// The state the page was rendered with: the server's context during SSR,
/// the embedded JSON in the browser.
fn initial_state() -> Option<DashboardState> {
    #[cfg(feature = "hydrate")]
    {
        embedded(STATE_ELEMENT_ID)
    }
    #[cfg(not(feature = "hydrate"))]
    {
        use_context::<DashboardState>()
    }
}

/// The form error the page was rendered with, the same way.
fn initial_form_error() -> Option<String> {
    #[cfg(feature = "hydrate")]
    {
        embedded(FORM_ERROR_ELEMENT_ID)
    }
    #[cfg(not(feature = "hydrate"))]
    {
        use_context::<FormError>().map(|e| e.0)
    }
}

/// The application root: one page, served at `/` and `/index.html`.
///
/// There is deliberately no client-side router and no async resource: both
/// would only add weight to the WASM. The server fetches the state before it
/// renders (see `server::routes`).
#[component]
pub fn App() -> impl IntoView {
    match initial_state() {
        Some(snapshot) => Either::Left(view! { <Dashboard snapshot=snapshot/> }),
        None => Either::Right(view! {
            <main class="page">
                <div id="status" class="error" data-kind="error">
                    "Redis is unavailable, so there is no state to show. Reload to try again."
                </div>
            </main>
        }),
    }
}

#[component]
fn Dashboard(snapshot: DashboardState) -> impl IntoView {
    let state = use_live_state(&snapshot);
    let status = StatusBar(RwSignal::new(
        initial_form_error().map(|text| StatusMsg { ok: false, text }),
    ));
    provide_context(status);
    let hydrated = RwSignal::new(false);
    Effect::new(move |_| hydrated.set(true));

    view! {
        <main class="page" data-hydrated=move || hydrated.get().to_string()>
            <Header state=state/>
            <div
                id="status"
                role="status"
                aria-live="polite"
                data-kind=move || status.0.get().map(|m| if m.ok { "ok" } else { "error" }).unwrap_or("none")
                class=move || status.0.get().map(|m| if m.ok { "ok" } else { "error" }).unwrap_or("idle")
            >
                {move || status.0.get().map(|m| m.text).unwrap_or_else(|| "Ready.".into())}
            </div>
            <div class="grid">
                <CacheTable state=state/>
                <ReadPanel state=state/>
                <UpdatePanel state=state/>
                <AddPanel/>
                <DeletePanel state=state/>
                <BreakPanel state=state/>
                <FaultPanel state=state/>
                <DriftPanel state=state/>
                <DeadLetterPanel state=state/>
                <StatsPanel state=state/>
                <ChartPanel state=state/>
                <EventLog state=state/>
            </div>
        </main>
    }
}

#[component]
fn Header(state: LiveState) -> impl IntoView {
    let external = move || match state.external.get() {
        ExternalWatch::Keyspace => "outside changes: keyspace notifications",
        ExternalWatch::Polling => {
            "outside changes: polled every second (keyspace notifications unavailable)"
        }
    };
    view! {
        <header>
            <div class="pills">
                <span class="pill">"Rust · Leptos · axum · redis-rs"</span>
                <span id="conn" class="pill conn" data-state=move || state.connection.get().as_str()>
                    <span class="dot"></span>
                    {move || match state.connection.get() {
                        live::Connection::Live => "live",
                        live::Connection::Connecting => "connecting…",
                        live::Connection::Reconnecting => "disconnected, retrying…",
                    }}
                </span>
                <span id="worker" class="pill" data-state=move || state.worker.get().as_str()>
                    "sync worker: " {move || state.worker.get().as_str()}
                </span>
                <span id="source" class="pill" data-kind=move || state.source.with(|s| s.kind.clone())
                    data-connected=move || state.source.with(|s| s.connected.to_string())>
                    "primary: " {move || state.source.with(|s| {
                        let mut text = s.kind.clone();
                        for (k, v) in &s.details {
                            text.push_str(" · ");
                            text.push_str(k);
                            text.push(' ');
                            text.push_str(v);
                        }
                        text
                    })}
                    " · lag " {move || state.stats.with(|s| fixed(s.source_behind_ms, 1))} " ms"
                </span>
                <span id="external" class="pill muted">{external}</span>
            </div>
            <h1>"Redis Prefetch Cache"</h1>
            <p class="lede">
                {move || state.columns.with(|c| {
                    if c.iter().map(String::as_str).eq(model::CATEGORY_FIELDS[1..].iter().copied()) {
                        "Every category"
                    } else {
                        "Every row"
                    }
                })}
                " was loaded into Redis at start-up. Reads run "
                <code>"HGETALL"</code>
                " on Redis only: there is no fall-back to the primary. Each add, update or delete on the primary emits a change event that the sync worker applies to Redis within milliseconds. The safety-net TTL ("
                {move || state.ttl_seconds.get()}
                " s) is refreshed on every write and bounds memory if sync ever stops. Everything below updates live."
            </p>
        </header>
    }
}
