//! Read-your-writes over HTTP.
//!
//! Every answer carries `Prefetch-Position`: the position up to which every change is in Redis, in the source's own
//! notation (the mock's sequence number, a PostgreSQL LSN). A request with
//! `Prefetch-Min-Position: P` (or `min_position=P` in the query) is served
//! once that position reaches `P`, waiting at most `Prefetch-Wait-Ms`
//! (default 1000, at most 10000); past it, 504 with both positions.

use std::time::Duration;

use axum::Json;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode};

use super::error::ApiError;
use crate::state::AppState;

/// The answer's applied position (or, on a write, its own commit's).
pub const POSITION: &str = "prefetch-position";
/// The position a request waits for.
pub const MIN_POSITION: &str = "prefetch-min-position";
/// How long it may wait, in milliseconds.
pub const WAIT_MS: &str = "prefetch-wait-ms";
/// `Prefetch-Wait-Ms` when none is given.
pub const DEFAULT_WAIT: Duration = Duration::from_millis(1000);
/// The longest wait a request may ask for.
pub const MAX_WAIT: Duration = Duration::from_millis(10_000);

/// A position to wait for, as the request wrote it, and for how long.
pub struct Fence {
    wanted: String,
    wait: Duration,
}

/// What the request asks to wait for (`None`: nothing), or its 400.
pub fn fence(req: &Request) -> Result<Option<Fence>, ApiError> {
    let from_header = req.headers().get(MIN_POSITION).map(|v| v.to_str());
    let wanted = match from_header {
        Some(Ok(v)) => Some(v.to_owned()),
        Some(Err(_)) => return Err(bad("Prefetch-Min-Position is not text.")),
        None => req.uri().query().and_then(min_position_in),
    };
    let Some(wanted) = wanted else {
        return Ok(None);
    };
    let wait = match req.headers().get(WAIT_MS) {
        None => DEFAULT_WAIT,
        Some(v) => match v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()) {
            Some(ms) if Duration::from_millis(ms) <= MAX_WAIT => Duration::from_millis(ms),
            _ => {
                return Err(bad(format!(
                    "Prefetch-Wait-Ms must be a number of milliseconds up to {}.",
                    MAX_WAIT.as_millis()
                )));
            }
        },
    };
    Ok(Some(Fence { wanted, wait }))
}

/// `min_position` in a query string.
fn min_position_in(query: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == "min_position").then(|| {
            percent_encoding::percent_decode_str(&v.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

/// Waits until the fence's position is applied; its 400 (a position the
/// source cannot read) or 504 (not reached in time) otherwise.
pub async fn wait(state: &AppState, fence: Fence) -> Result<(), Box<Response>> {
    let engine = &state.ctx.engine;
    let Some(position) = engine.source().parse_position(&fence.wanted) else {
        return Err(Box::new(
            bad(format!(
                "Prefetch-Min-Position '{}' is not a position of this source (for example '{}').",
                fence.wanted,
                engine
                    .source()
                    .position_text(engine.sync().applied().unwrap_or_default())
            ))
            .into_response(),
        ));
    };
    match engine.wait_applied(position, fence.wait).await {
        Ok(()) => Ok(()),
        Err(_) => {
            let applied = applied_text(state).unwrap_or_default();
            let body = serde_json::json!({
                "error": format!(
                    "The cache had applied up to {applied}, not {}, after {} ms.",
                    fence.wanted,
                    fence.wait.as_millis()
                ),
                "applied": applied,
                "wanted": fence.wanted,
            });
            Err(Box::new(
                (StatusCode::GATEWAY_TIMEOUT, Json(body)).into_response(),
            ))
        }
    }
}

/// The applied position in the source's notation (`None` before any).
fn applied_text(state: &AppState) -> Option<String> {
    let engine = &state.ctx.engine;
    let applied = engine.sync().applied()?;
    Some(engine.source().position_text(applied))
}

/// Puts the applied position on an answer that does not carry one yet (a
/// write puts its own commit's).
pub fn stamp(state: &AppState, headers: &mut HeaderMap) {
    if headers.contains_key(POSITION) {
        return;
    }
    if let Some(value) = applied_text(state).and_then(|t| HeaderValue::from_str(&t).ok()) {
        headers.insert(POSITION, value);
    }
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::bad_request(message)
}
