//! `GET /events`: the live feed as `text/event-stream`.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use http::StatusCode;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

use super::error::ApiError;
use crate::state::AppState;

/// Streams a snapshot, then every live event. A client that falls behind is
/// sent a fresh snapshot instead of the events it missed; the stream ends
/// when the server shuts down.
pub async fn events(State(state): State<AppState>) -> Response {
    // Subscribe before the snapshot, so nothing between them is missed
    // (events already in the snapshot are idempotent when replayed).
    let rx = state.hub.subscribe();
    let first = match state.hub.snapshot().await {
        Ok(frame) => frame,
        Err(e) => {
            tracing::warn!(error = %e, "cannot build live-feed snapshot");
            return ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "Redis is unavailable; the live feed will retry.",
            )
            .into_response();
        }
    };
    let hub = state.hub.clone();
    let rest = BroadcastStream::new(rx).filter_map(move |item| {
        let hub = hub.clone();
        async move {
            match item {
                Ok(frame) => Some(frame),
                Err(BroadcastStreamRecvError::Lagged(missed)) => {
                    tracing::debug!(missed, "slow live-feed client; resyncing it");
                    hub.snapshot().await.ok()
                }
            }
        }
    });
    let opening = Event::default()
        .data(&*first.0)
        .retry(Duration::from_secs(1));
    let stream = futures::stream::once(async move { opening })
        .chain(rest.map(|frame| Event::default().data(&*frame.0)))
        .map(Ok::<_, Infallible>)
        .take_until(state.shutdown.clone().cancelled_owned());
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}
