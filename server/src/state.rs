//! The router's state.

use std::ops::Deref;
use std::sync::Arc;

use app::api::ServerContext;
use axum::extract::FromRef;
use leptos::prelude::LeptosOptions;
use tokio_util::sync::CancellationToken;

use crate::hub::LiveHub;

/// Shared by every handler. One `Arc`: leptos clones the state into the
/// context of every server-function call, so a clone must be cheap.
#[derive(Clone, Debug)]
pub struct AppState(Arc<Shared>);

/// What the state holds.
#[derive(Debug)]
pub struct Shared {
    pub leptos_options: LeptosOptions,
    /// The Prometheus registry behind `GET /metrics`.
    pub metrics: prometheus_client::registry::Registry,
    pub ctx: ServerContext,
    pub hub: LiveHub,
    /// Cancelled at shutdown; live streams end on it.
    pub shutdown: CancellationToken,
    /// When set, the mutation and admin endpoints require it.
    pub admin_token: Option<String>,
}

impl AppState {
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl FromRef<AppState> for LeptosOptions {
    fn from_ref(state: &AppState) -> Self {
        state.leptos_options.clone()
    }
}
