//! The router's state.

use std::ops::Deref;
use std::sync::Arc;

use app::api::ServerContext;
use axum::extract::FromRef;
use leptos::prelude::LeptosOptions;
use tokio_util::sync::CancellationToken;

use crate::live::LiveHub;

/// Shared by every handler of one event loop: what all loops share, plus
/// the context whose engine reads on that loop's own connection. Cheap to
/// clone (two `Arc`s and the context's handles).
#[derive(Clone, Debug)]
pub struct AppState {
    shared: Arc<Shared>,
    /// The engine and settings the server functions run with.
    pub ctx: ServerContext,
}

/// What the state holds.
#[derive(Debug)]
pub struct Shared {
    pub leptos_options: LeptosOptions,
    /// The Prometheus registry behind `GET /metrics`.
    pub metrics: prometheus_client::registry::Registry,
    pub hub: LiveHub,
    /// Cancelled at shutdown; live streams end on it.
    pub shutdown: CancellationToken,
    /// When set, the mutation and admin endpoints require it.
    pub admin_token: Option<String>,
    /// How long a client may take to send a request body (`--client-timeout-secs`).
    pub client_timeout: std::time::Duration,
    /// The tables the cache holds (`GET /tables`).
    pub tables: Vec<TableEntry>,
}

/// One table as the server was configured to hold it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableEntry {
    /// `schema.table`, the mock's `categories`, or the stream's key.
    pub name: String,
    /// The key template (`product:{sku}`, `cache:category:{id}`).
    pub key: String,
    /// What every key of the table starts with.
    pub prefix: String,
}

impl AppState {
    pub fn new(shared: Shared, ctx: ServerContext) -> Self {
        Self {
            shared: Arc::new(shared),
            ctx,
        }
    }

    /// The same state for another event loop, whose engine reads on `conn`.
    pub fn with_reader(&self, conn: prefetch::Redis) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            ctx: ServerContext {
                engine: self
                    .ctx
                    .engine
                    .with_reader(prefetch::FaultyConnection::clean(conn)),
                ..self.ctx.clone()
            },
        }
    }
}

impl Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.shared
    }
}

impl FromRef<AppState> for LeptosOptions {
    fn from_ref(state: &AppState) -> Self {
        state.leptos_options.clone()
    }
}
