//! The router's state.

use std::ops::Deref;
use std::sync::Arc;

use app::api::ServerContext;
use axum::extract::FromRef;
use leptos::prelude::LeptosOptions;
use tokio_util::sync::CancellationToken;

use prefetch_pg::PgSource;

use crate::live::LiveHub;
use crate::settings::{PrimaryKind, Settings};

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
    /// The tables the cache holds (`GET /tables`); changed by a reload.
    pub tables: std::sync::RwLock<Vec<TableEntry>>,
    /// What reads the tables file again (`None`: no `--config`, or a
    /// pipeline of replicas, whose publisher's source is not this one).
    pub reloader: Option<Reloader>,
}

/// The tables file and the source that reads it again.
#[derive(Debug)]
pub struct Reloader {
    /// The PostgreSQL source.
    pub pg: Arc<PgSource>,
    /// The tables file (`--config`).
    pub path: String,
    /// One reload at a time.
    pub lock: tokio::sync::Mutex<()>,
}

impl Shared {
    /// The tables the cache holds now.
    pub fn tables(&self) -> Vec<TableEntry> {
        self.tables
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// The tables of this server: a PostgreSQL source's (declared or not), a
/// stream's declared ones, or the one table of the mock or a stream.
pub fn describe(settings: &Settings, pg: Option<&PgSource>) -> Vec<TableEntry> {
    let prefix = settings.engine.cache.prefix.clone();
    match pg {
        Some(pg) => describe_pg(pg, &prefix),
        None if !settings.pg.specs.is_empty() => settings
            .pg
            .specs
            .iter()
            .map(|spec| {
                let (schema, name) = spec.schema_and_name();
                let prefix = spec.key_prefix();
                TableEntry {
                    name: format!("{schema}.{name}"),
                    key: spec
                        .key
                        .as_ref()
                        .map_or_else(|| format!("{prefix}{{key}}"), |k| k.as_str().to_owned()),
                    prefix,
                    value: value_name(spec.value == prefetch_pg::tables::ValueKind::Json),
                }
            })
            .collect(),
        None => {
            let name = match &settings.primary {
                PrimaryKind::Stream(key) => key.clone(),
                _ => "categories".to_owned(),
            };
            vec![TableEntry {
                name,
                key: format!("{prefix}{{id}}"),
                prefix,
                value: value_name(false),
            }]
        }
    }
}

/// The tables a PostgreSQL source keeps now, under the cache's `prefix`.
pub fn describe_pg(pg: &PgSource, prefix: &str) -> Vec<TableEntry> {
    pg.tables()
        .iter()
        .map(|t| match &t.mapping {
            Some(m) => TableEntry {
                name: t.label(),
                key: m.template.as_str().to_owned(),
                prefix: m.template.prefix().to_owned(),
                value: value_name(m.json),
            },
            None => TableEntry {
                name: t.label(),
                key: format!("{prefix}{{{}}}", t.key.join("}:{")),
                prefix: prefix.to_owned(),
                value: value_name(false),
            },
        })
        .collect()
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
    /// How a row is stored: `hash` or `json`.
    pub value: &'static str,
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

/// `json` or `hash`.
fn value_name(json: bool) -> &'static str {
    if json { "json" } else { "hash" }
}
