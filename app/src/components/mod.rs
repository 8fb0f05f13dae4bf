//! The dashboard's parts, one group per file.

mod cache_table;
mod event_log;
mod mutate_panels;
mod operations;
mod read_panel;
mod stats;

pub use cache_table::CacheTable;
pub use event_log::EventLog;
pub use mutate_panels::{AddPanel, BreakPanel, DeletePanel, UpdatePanel};
pub use operations::{ChartPanel, DriftPanel, FaultPanel};
pub use read_panel::ReadPanel;
pub use stats::StatsPanel;

use leptos::form::FromFormData;
use leptos::prelude::*;
use leptos::server_fn::ServerFn;

use crate::error::AppError;

/// The status bar's message.
#[derive(Clone, Debug, PartialEq)]
pub struct StatusMsg {
    pub ok: bool,
    pub text: String,
}

/// The status bar, shared through context.
#[derive(Clone, Copy)]
pub struct StatusBar(pub RwSignal<Option<StatusMsg>>);

impl StatusBar {
    pub fn ok(self, text: impl Into<String>) {
        self.0.set(Some(StatusMsg {
            ok: true,
            text: text.into(),
        }));
    }

    pub fn error(self, text: impl Into<String>) {
        self.0.set(Some(StatusMsg {
            ok: false,
            text: text.into(),
        }));
    }
}

/// Puts the outcome of every run of `action` into the status bar.
pub fn report<S>(action: ServerAction<S>, describe: impl Fn(&S::Output) -> String + 'static)
where
    S: ServerFn<Error = AppError> + Clone + Send + Sync + 'static,
    S::Output: Clone + Send + Sync + 'static,
{
    let status = expect_context::<StatusBar>();
    Effect::new(move |_| {
        action.value().with(|outcome| match outcome {
            Some(Ok(out)) => status.ok(describe(out)),
            Some(Err(e)) => status.error(e.error.clone()),
            None => {}
        });
    });
}

/// The submit handler of a form that posts to the server function `S`.
///
/// With WASM it decodes the form and dispatches `action` (the page stays);
/// without, the browser posts the form to `S::url()` and the server redirects
/// back. What `ActionForm` does, minus its boxed `Children`, which cost
/// noticeable WASM per form.
pub fn on_submit<S>(action: ServerAction<S>) -> impl Fn(leptos::ev::SubmitEvent) + 'static
where
    S: ServerFn<Error = AppError> + serde::de::DeserializeOwned + Clone + Send + Sync + 'static,
    S::Output: Clone + Send + Sync + 'static,
{
    move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        match S::from_event(&ev) {
            Ok(args) => {
                action.dispatch(args);
            }
            Err(e) => expect_context::<StatusBar>().error(format!("Unreadable form: {e}")),
        }
    }
}

/// `<option>`s for a list of ids, keyed so a selection survives updates.
pub fn id_options(ids: impl Fn() -> Vec<String> + Send + Sync + 'static) -> impl IntoView {
    view! {
        <For each=ids key=|id| id.clone() let:id>
            <option value=id.clone()>{id.clone()}</option>
        </For>
    }
}
