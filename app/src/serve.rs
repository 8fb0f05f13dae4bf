//! How the server runs a server function for an HTTP request: the one
//! implementation of each endpoint (the `#[server]` functions in
//! [`crate::api`]) behind a lean dispatch.
//!
//! Leptos's generic handler makes a reactive owner, clones the request's
//! parts into it, allocates response options and boxes a service from a
//! locked registry on every call: about a fifth of the CPU a `GET /read`
//! costs (docs/benchmarks.md). The server functions need none of that; they
//! need the [`ServerContext`] and a way to set the response status. Both
//! live in a task-local for the length of one call, and [`dispatch`] runs
//! the function's own server entry point, which decodes the arguments with
//! the function's codec, runs its body, encodes the reply and redirects a
//! form posted without JavaScript, exactly as before.
//!
//! The same functions keep working inside a Leptos render (SSR), where the
//! context comes from the reactive owner: [`context`] and [`set_status`]
//! look there when no dispatch is running.

use std::cell::Cell;

use axum::body::Body;
use http::{Request, Response, StatusCode};
use leptos::prelude::use_context;
use leptos::server_fn::ServerFn;
use leptos::server_fn::axum::AxumServerFnBackend;
use leptos_axum::ResponseOptions;

use crate::model::{ExternalWatch, StatsDto, TableStatsDto};

/// The connection the demo's engine runs on: one Redis node or a cluster,
/// its writer behind the fault plan of `/fault` (reads never are).
pub type Conn = prefetch::FaultyConnection<prefetch::Redis>;

/// The demo's engine: over whichever source the server was given.
pub type DemoEngine = prefetch::Engine<dyn prefetch::Source, Conn>;

/// What the server hands to every server function and SSR render.
#[derive(Clone)]
pub struct ServerContext {
    /// The running engine, over whichever source the server was given.
    pub engine: DemoEngine,
    /// The demo's view of the source, and its editor where it can be
    /// edited from here; beside the engine, never used by it.
    pub primary: std::sync::Arc<dyn prefetch::Primary>,
    /// How changes made outside the app are noticed.
    pub external: ExternalWatch,
    /// The fault plan `/fault` adds to (`None`: fault injection is off).
    pub faults: Option<prefetch::Faults>,
    /// The pause `/worker` holds, if any.
    pub paused: std::sync::Arc<std::sync::Mutex<Option<prefetch::PauseGuard>>>,
    /// The change feed's dead letters, when the server is a replica of a
    /// pipeline (`--pipeline`).
    pub dead_letters: Option<std::sync::Arc<dyn DeadLetters>>,
}

impl ServerContext {
    /// The counters a client sees: the engine's, the primary's reads, and
    /// each table's (the reference API, the page and the live feed alike).
    pub fn stats(&self, engine: prefetch::EngineStats) -> StatsDto {
        let p = &self.primary;
        let mut stats = StatsDto::new(engine, p.reads(), p.read_latency());
        stats.tables = self.table_stats();
        stats
    }

    /// Each table's reads and changes, named, when the cache holds several
    /// (empty for one: the totals are its own).
    pub fn table_stats(&self) -> Vec<TableStatsDto> {
        let names = self.primary.tables();
        if names.is_empty() {
            return Vec::new();
        }
        let cache = self.engine.cache();
        let counted = cache.table_stats();
        names
            .into_iter()
            .filter_map(|name| {
                let prefix = cache.key(&self.primary.view_of(&name)?.id_prefix());
                let s = counted.iter().find(|s| s.prefix == prefix);
                Some(TableStatsDto {
                    hits: s.map_or(0, |s| s.hits),
                    misses: s.map_or(0, |s| s.misses),
                    applied: s.map_or(0, |s| s.applied),
                    name,
                })
            })
            .collect()
    }
}

impl std::fmt::Debug for ServerContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerContext")
            .field("engine", &self.engine)
            .field("external", &self.external)
            .field("faults", &self.faults.is_some())
            .finish_non_exhaustive()
    }
}

impl ServerContext {
    /// Whether this server is one replica of a pipeline (`--pipeline`):
    /// other processes apply to the same cache.
    pub fn replicated(&self) -> bool {
        self.dead_letters.is_some()
    }
}

/// The dead-letter stream of a change feed: entries that could not be
/// applied, kept with their reason until someone replays them.
pub trait DeadLetters: Send + Sync + std::fmt::Debug {
    /// Up to `max` of them, oldest first: entry id and reason.
    fn list(&self, max: usize) -> prefetch::BoxFuture<'_, prefetch::Result<Vec<(String, String)>>>;
    /// How many there are.
    fn count(&self) -> prefetch::BoxFuture<'_, prefetch::Result<u64>>;
    /// Puts up to `max` back into the feed; returns how many.
    fn replay(&self, max: usize) -> prefetch::BoxFuture<'_, prefetch::Result<usize>>;
}

/// One server-function call in progress.
struct Call {
    ctx: ServerContext,
    status: Cell<Option<StatusCode>>,
    headers: std::cell::RefCell<Vec<(http::HeaderName, http::HeaderValue)>>,
}

tokio::task_local! {
    static CALL: Call;
}

/// The context of the server function running on this task: the one
/// [`dispatch`] set, else the one provided to the Leptos render.
pub fn context() -> Option<ServerContext> {
    CALL.try_with(|call| call.ctx.clone())
        .ok()
        .or_else(use_context::<ServerContext>)
}

/// Sets the HTTP status of the current server-function response.
pub fn set_status(status: StatusCode) {
    if CALL.try_with(|call| call.status.set(Some(status))).is_ok() {
        return;
    }
    if let Some(opts) = use_context::<ResponseOptions>() {
        opts.set_status(status);
    }
}

/// Adds a header to the current server-function response (inside a
/// dispatch; a render ignores it).
pub fn add_header(name: http::HeaderName, value: http::HeaderValue) {
    let _ = CALL.try_with(|call| call.headers.borrow_mut().push((name, value)));
}

/// Runs server function `S` for `req` with `ctx`.
///
/// Decodes its arguments (query or form, per its codec), runs its body,
/// encodes the reply (JSON), and sends a browser's plain form post back to
/// the page it came from (all of that is the function's own
/// `run_on_server`, with server_fn's `form-redirects`), then applies the
/// status the body set.
pub async fn dispatch<S>(ctx: ServerContext, req: Request<Body>) -> Response<Body>
where
    S: ServerFn<Server = AxumServerFnBackend>,
{
    let call = Call {
        ctx,
        status: Cell::new(None),
        headers: Default::default(),
    };
    let (mut res, status, headers) = CALL
        .scope(call, async {
            let res = S::run_on_server(req).await;
            CALL.with(|call| (res, call.status.get(), call.headers.take()))
        })
        .await;
    if let Some(status) = status {
        *res.status_mut() = status;
    }
    res.headers_mut().extend(headers);
    res
}
