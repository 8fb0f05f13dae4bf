//! The demo application: wire types, the reference API as server functions,
//! the live-feed hook, and the Leptos components. Compiled with `ssr` into
//! the server and with `hydrate` into the WASM front end.

#![recursion_limit = "256"]

pub mod api;
pub mod components;
pub mod error;
pub mod live;
pub mod model;

use leptos::prelude::*;
use leptos_meta::{MetaTags, Stylesheet, Title, provide_meta_context};
use leptos_router::components::{Route, Router, Routes};
use leptos_router::{SsrMode, path};

use components::*;
use live::{LiveState, use_live_state};
use model::{DashboardState, ExternalWatch};

/// Name of the site bundle: `/pkg/{OUTPUT_NAME}.js|.wasm|.css`.
pub const OUTPUT_NAME: &str = "prefetch-demo";

/// The HTML document around the app (server side).
pub fn shell(options: LeptosOptions) -> impl IntoView {
    view! {
        <!DOCTYPE html>
        <html lang="en">
            <head>
                <meta charset="utf-8"/>
                <meta name="viewport" content="width=device-width, initial-scale=1"/>
                <meta name="description" content="A Redis prefetch cache, live: Rust, Leptos, axum, redis-rs."/>
                <link rel="icon" href="/favicon.svg" type="image/svg+xml"/>
                <AutoReload options=options.clone()/>
                <HydrationScripts options/>
                <MetaTags/>
            </head>
            <body>
                <App/>
            </body>
        </html>
    }
}

/// The application root.
#[component]
pub fn App() -> impl IntoView {
    provide_meta_context();
    view! {
        <Stylesheet id="leptos" href=format!("/pkg/{OUTPUT_NAME}.css")/>
        <Title text="Redis Prefetch Cache · Rust"/>
        <Router>
            <Routes fallback=|| view! { <p>"Not found."</p> }>
                <Route path=path!("/") view=HomePage ssr=SsrMode::Async/>
                <Route path=path!("/index.html") view=HomePage ssr=SsrMode::Async/>
            </Routes>
        </Router>
    }
}

/// Loads the current state on the server (the page is complete before any
/// WASM runs), then hands it to the live dashboard.
#[component]
fn HomePage() -> impl IntoView {
    let snapshot = Resource::new_blocking(|| (), |_| api::dashboard());
    view! {
        <Suspense fallback=|| view! { <p class="loading">"Loading…"</p> }>
            {move || Suspend::new(async move {
                match snapshot.await {
                    Ok(s) => view! { <Dashboard snapshot=s/> }.into_any(),
                    Err(e) => view! {
                        <main class="page">
                            <div id="status" class="error" data-kind="error">{e.error}</div>
                        </main>
                    }.into_any(),
                }
            })}
        </Suspense>
    }
}

#[component]
fn Dashboard(snapshot: DashboardState) -> impl IntoView {
    let state = use_live_state(&snapshot);
    let status = StatusBar(RwSignal::new(None));
    provide_context(status);
    let hydrated = RwSignal::new(false);
    Effect::new(move |_| hydrated.set(true));

    view! {
        <main class="page" data-hydrated=move || hydrated.get().to_string()>
            {view! { <Header state=state/> }.into_any()}
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
                // Type-erased so the page's view type stays shallow.
                {view! { <CacheTable state=state/> }.into_any()}
                {view! { <ReadPanel state=state/> }.into_any()}
                {view! { <UpdatePanel state=state/> }.into_any()}
                {view! { <AddPanel/> }.into_any()}
                {view! { <DeletePanel state=state/> }.into_any()}
                {view! { <BreakPanel state=state/> }.into_any()}
                {view! { <StatsPanel state=state/> }.into_any()}
                {view! { <EventLog state=state/> }.into_any()}
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
                <span id="worker" class="pill" data-state=move || state.worker.get()>
                    "sync worker: " {move || state.worker.get()}
                </span>
                <span id="external" class="pill muted">{external}</span>
            </div>
            <h1>"Redis Prefetch Cache"</h1>
            <p class="lede">
                "Every category was loaded into Redis at start-up. Reads run "
                <code>"HGETALL"</code>
                " on Redis only: there is no fall-back to the primary. Each add, update or delete on the primary emits a change event that the sync worker applies to Redis within milliseconds. The safety-net TTL ("
                {move || state.ttl_seconds.get()}
                " s) is refreshed on every write and bounds memory if sync ever stops. Everything below updates live."
            </p>
        </header>
    }
}
