//! The tables file read again while the server runs (`SIGHUP`, or
//! `POST /tables/reload`).
//!
//! A table added is published, held by the key
//! space and snapshotted through the version guard; a table removed stops
//! streaming and its keys go. Every other table streams on throughout. A
//! file that fails its checks changes nothing and says why.

use std::sync::Arc;

use http::StatusCode;
use prefetch_pg::tables::{TableSpec, TablesFile, ValueKind};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::state::{AppState, Reloader, describe_pg};

/// Why a reload changed nothing (or stopped half-way, said so).
#[derive(Debug)]
pub struct ReloadError {
    /// The HTTP status that fits.
    pub status: StatusCode,
    /// What to tell the operator.
    pub message: String,
}

impl ReloadError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

/// Reads the tables file again and applies what changed; answers
/// `{added: [{table, loaded}], removed: [{table, deleted}], tables: [...]}`.
pub async fn reload(state: &AppState) -> Result<Value, ReloadError> {
    let Some(r) = &state.reloader else {
        return Err(ReloadError::new(
            StatusCode::CONFLICT,
            "Nothing to reload: this server was started without a tables file (--config), or runs as one of several replicas (restart each).",
        ));
    };
    let _one = r.lock.lock().await;
    let file = TablesFile::read(&r.path)
        .map_err(|e| ReloadError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    let engine = &state.ctx.engine;
    let cache = engine.cache();
    let keys = cache.key_space();
    let taken = hold_new_tables(keys, &file)?;
    // A new table's TTL and encoding hold from its first change on; the
    // running tables' change only once the file is accepted.
    let is_new = |spec: &&TableSpec| taken.contains(&spec.key_prefix());
    file.tables
        .iter()
        .filter(is_new)
        .for_each(|s| plan(cache, s));
    let change = match r.pg.reload(&file.tables).await {
        Ok(change) => change,
        Err(e) => {
            release(keys, &taken);
            for prefix in &taken {
                cache.set_table_ttl(prefix, None);
                cache.set_table_json(prefix, false);
            }
            return Err(ReloadError::new(StatusCode::BAD_REQUEST, e.to_string()));
        }
    };
    file.tables.iter().for_each(|s| plan(cache, s));
    let id_prefix = |t: &prefetch_pg::table::TableInfo| {
        let key = t.mapping.as_ref().map_or("", |m| m.template.prefix());
        key.strip_prefix(cache.prefix()).unwrap_or(key).to_owned()
    };
    let failed = |e: prefetch::Error, what: String| {
        let (status, message) = app::error::engine_status(&e);
        tracing::error!(error = %e, "{what}");
        ReloadError::new(status, format!("{what}: {message}"))
    };
    let mut removed = Vec::new();
    for t in &change.removed {
        let deleted = engine
            .remove_table(&id_prefix(t), change.settled)
            .await
            .map_err(|e| {
                failed(
                    e,
                    format!(
                        "{} no longer streams, but its keys could not be deleted",
                        t.label()
                    ),
                )
            })?;
        removed.push(json!({"table": t.label(), "deleted": deleted}));
    }
    let mut added = Vec::new();
    for t in &change.added {
        let report = engine
            .resnapshot(&t.label(), &id_prefix(t))
            .await
            .map_err(|e| failed(e, format!("{} streams, but its snapshot failed (POST /tables/{}/resnapshot to try again)", t.label(), t.label())))?;
        added.push(json!({"table": t.label(), "loaded": report.loaded}));
    }
    let tables = describe_pg(&r.pg, cache.prefix());
    let names: Vec<String> = tables.iter().map(|t| t.name.clone()).collect();
    *state.tables.write().unwrap_or_else(|p| p.into_inner()) = tables;
    if change.is_empty() {
        tracing::info!(file = %r.path, "tables file read again: no table added or removed");
    } else {
        tracing::info!(file = %r.path, added = ?added, removed = ?removed, "tables file read again");
    }
    Ok(json!({"added": added, "removed": removed, "tables": names}))
}

/// Makes the key space hold the key prefixes of the file's new tables
/// (checked against the running ones); returns them, or holds none.
fn hold_new_tables(
    keys: &prefetch::KeySpace,
    file: &TablesFile,
) -> Result<Vec<String>, ReloadError> {
    let held = keys.tables();
    let mut taken = Vec::new();
    for spec in &file.tables {
        let prefix = spec.key_prefix();
        if held.contains(&prefix) {
            continue;
        }
        if let Err(e) = keys.add_table(&prefix) {
            release(keys, &taken);
            return Err(ReloadError::new(
                StatusCode::BAD_REQUEST,
                spec.error(e).to_string(),
            ));
        }
        taken.push(prefix);
    }
    Ok(taken)
}

/// The table's TTL (the running default when it asks none) and encoding,
/// from its next write or renewal on.
fn plan<C: prefetch::Connection>(cache: &prefetch::PrefetchCache<C>, spec: &TableSpec) {
    let prefix = spec.key_prefix();
    cache.set_table_ttl(&prefix, spec.ttl_secs.map(std::time::Duration::from_secs));
    cache.set_table_json(&prefix, spec.value == ValueKind::Json);
}

fn release(keys: &prefetch::KeySpace, taken: &[String]) {
    for prefix in taken {
        keys.remove_table(prefix);
    }
}

/// Reads the tables file again on every `SIGHUP`, until `shutdown`.
pub fn on_sighup(state: AppState, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let mut hup = match signal(SignalKind::hangup()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGHUP; POST /tables/reload still reads the tables file again");
                    return;
                }
            };
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    got = hup.recv() => if got.is_none() { return },
                }
                tracing::info!("SIGHUP: reading the tables file again");
                if let Err(e) = reload(&state).await {
                    tracing::error!("the tables file was not applied: {}", e.message);
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = (state, shutdown);
        }
    })
}

/// The reloader for `pg` and the tables file at `path`.
pub fn reloader(pg: Arc<prefetch_pg::PgSource>, path: String) -> Reloader {
    Reloader {
        pg,
        path,
        lock: tokio::sync::Mutex::new(()),
    }
}
