//! The dashboard's parts, one group per file.

mod cache_table;
mod event_log;
mod mutate_panels;
mod operations;
mod post;
mod read_panel;
mod stats;

pub use cache_table::CacheTable;
pub use event_log::EventLog;
pub use mutate_panels::{AddPanel, BreakPanel, DeletePanel, UpdatePanel};
pub use operations::{ChartPanel, DeadLetterPanel, DriftPanel, FaultPanel};
pub use post::FormPost;
pub use read_panel::ReadPanel;
pub use stats::StatsPanel;

use leptos::prelude::*;
use leptos::server_fn::ServerFn;

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

/// Puts the outcome of every post of `form` into the status bar.
pub fn report<S>(form: FormPost<S>, describe: impl Fn(&S::Output) -> String + 'static)
where
    S: ServerFn + 'static,
    S::Output: Send + Sync + 'static,
{
    let status = expect_context::<StatusBar>();
    Effect::new(move |_| {
        form.value().with(|outcome| match outcome {
            Some(Ok(out)) => status.ok(describe(out)),
            Some(Err(e)) => status.error(e.error.clone()),
            None => {}
        });
    });
}

/// The submit handler of a form that posts to the server function `S`
/// (see [`FormPost`]).
pub fn on_submit<S>(form: FormPost<S>) -> impl Fn(leptos::ev::SubmitEvent) + 'static
where
    S: ServerFn + 'static,
    S::Output: serde::de::DeserializeOwned + Send + Sync + 'static,
{
    form.on_submit()
}

/// `<option>`s for a list of ids, keyed so a selection survives updates.
pub fn id_options(ids: impl Fn() -> Vec<String> + Send + Sync + 'static) -> impl IntoView {
    view! {
        <For each=ids key=|id| id.clone() let:id>
            <option value=id.clone()>{id.clone()}</option>
        </For>
    }
}
