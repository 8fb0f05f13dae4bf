//! `GET /events`: the live feed as `text/event-stream`.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use futures::StreamExt;
use tokio::sync::broadcast;

use crate::feed::{Frame, LiveHub};
use crate::routes::json_error;
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
            return json_error(
                http::StatusCode::SERVICE_UNAVAILABLE,
                "Redis is unavailable; the live feed will retry.",
            );
        }
    };
    let stream = frames(state.hub.clone(), rx, first)
        .map(|(frame, first)| {
            let event = Event::default().data(&*frame.0);
            Ok::<_, Infallible>(if first {
                event.retry(Duration::from_secs(1))
            } else {
                event
            })
        })
        .take_until(state.shutdown.clone().cancelled_owned());
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

fn frames(
    hub: LiveHub,
    rx: broadcast::Receiver<Frame>,
    first: Frame,
) -> impl Stream<Item = (Frame, bool)> {
    futures::stream::unfold((hub, rx, Some(first)), |(hub, mut rx, first)| async move {
        if let Some(first) = first {
            return Some(((first, true), (hub, rx, None)));
        }
        loop {
            match rx.recv().await {
                Ok(frame) => return Some(((frame, false), (hub, rx, None))),
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::debug!(missed, "slow live-feed client; resyncing it");
                    if let Ok(frame) = hub.snapshot().await {
                        return Some(((frame, false), (hub, rx, None)));
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
}
