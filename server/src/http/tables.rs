//! The tables' routes: `GET /tables`, `POST /tables/reload` and
//! `POST /tables/{name}/resnapshot` (admin).
//!
//! `GET /tables` lists each table the cache holds, with its key template,
//! value type, keys in Redis, lag, the sync worker's state and the last
//! snapshot.

use std::time::SystemTime;

use app::model::WorkerStateDto;
use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

use super::error::ApiError;
use crate::state::AppState;

/// Keys counted per table at most: a `SCAN` of bounded cost; beyond it
/// the count says it is a lower bound.
pub const ROWS_COUNTED: u64 = 100_000;

/// `GET /tables`: `[{name, key, value, rows, rows_exact, lag_ms, state,
/// last_snapshot_ms, hits, misses, applied}]`.
///
/// Every table comes through one change stream, so they share the lag and
/// the worker's state; reads and changes are counted per table.
pub async fn tables(State(state): State<AppState>) -> Response {
    match list(&state).await {
        Ok(tables) => Json(tables).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot count the tables' keys");
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("Redis: {e}")).into_response()
        }
    }
}

async fn list(state: &AppState) -> prefetch::Result<Vec<Value>> {
    let stats = state.ctx.engine.stats();
    let lag_ms = stats.behind.as_secs_f64() * 1000.0;
    let worker = WorkerStateDto::from(stats.worker).as_str();
    let last_snapshot_ms = stats.last_snapshot.and_then(|at| {
        at.duration_since(SystemTime::UNIX_EPOCH)
            .ok()
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    });
    let tables = state.tables();
    let per_table = state.ctx.engine.cache().table_stats();
    let mut out = Vec::with_capacity(tables.len());
    for t in tables.iter() {
        // One table: the cache's totals are its own.
        let counts = match per_table.iter().find(|s| s.prefix == t.prefix) {
            Some(s) => (s.hits, s.misses, s.applied),
            None if tables.len() == 1 => (
                stats.cache.hits,
                stats.cache.misses,
                stats.cache.sync_events_applied,
            ),
            None => (0, 0, 0),
        };
        let (rows, exact) = state
            .ctx
            .engine
            .cache()
            .count_keys(&t.prefix, ROWS_COUNTED)
            .await?;
        out.push(json!({
            "name": t.name,
            "key": t.key,
            "value": t.value,
            "rows": rows,
            "rows_exact": exact,
            "lag_ms": lag_ms,
            "state": worker,
            "last_snapshot_ms": last_snapshot_ms,
            "hits": counts.0,
            "misses": counts.1,
            "applied": counts.2,
        }));
    }
    Ok(out)
}

/// `POST /tables/{name}/resnapshot` (admin): the table is snapshotted
/// again while every table keeps streaming; answers `{table, loaded,
/// swept, elapsed_ms}`.
pub async fn resnapshot(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !super::security::authorized(&state, &headers) {
        return super::security::unauthorized();
    }
    let Some(table) = state.tables().into_iter().find(|t| t.name == name) else {
        return ApiError::new(StatusCode::NOT_FOUND, format!("No table '{name}' is kept."))
            .into_response();
    };
    let engine = &state.ctx.engine;
    let id_prefix = table
        .prefix
        .strip_prefix(engine.cache().prefix())
        .unwrap_or(&table.prefix);
    match engine.resnapshot(&table.name, id_prefix).await {
        Ok(report) => Json(json!({
            "table": table.name,
            "loaded": report.loaded,
            "swept": report.swept,
            "elapsed_ms": report.elapsed.as_secs_f64() * 1000.0,
        }))
        .into_response(),
        Err(e) => {
            let (status, message) = app::error::engine_status(&e);
            ApiError::new(status, message).into_response()
        }
    }
}

/// `POST /tables/reload` (admin): the tables file read again, as on
/// `SIGHUP`; answers what was added and removed.
pub async fn reload(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if !super::security::authorized(&state, &headers) {
        return super::security::unauthorized();
    }
    match crate::reload::reload(&state).await {
        Ok(answer) => Json(answer).into_response(),
        Err(e) => ApiError::new(e.status, e.message).into_response(),
    }
}
