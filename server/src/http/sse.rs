//! `GET /events` (`?cursor=&q=` or `?after=`, as the page's view): the live
//! feed as `text/event-stream`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use app::model::ViewDto;
use axum::extract::{Request, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use http::StatusCode;
use tokio::sync::broadcast;

use super::error::ApiError;
use super::security::query_values;
use crate::live::{Frame, LiveHub, SnapshotError, Watching};
use crate::state::AppState;

/// Streams a snapshot of the client's view, then every live event about
/// it: global events, and row events for the rows it shows. A client that
/// falls behind, or that the hub asks to resync, is sent a fresh snapshot
/// of its view instead of the events it missed; the stream ends when the
/// server shuts down.
pub async fn events(State(state): State<AppState>, req: Request) -> Response {
    let view = view_of(req.uri().query());
    // Subscribe before the snapshot, so nothing between them is missed
    // (events already in the snapshot are idempotent when replayed).
    let rx = state.hub.subscribe();
    let (first, watching) = match state.hub.open(&view).await {
        Ok(opened) => opened,
        Err(e) => return snapshot_error(&e),
    };
    let client = Client {
        rx,
        hub: state.hub.clone(),
        view,
        watching,
    };
    let rest = futures::stream::unfold(client, |mut client| async move {
        let data = client.next().await?;
        Some((Event::default().data(&*data), client))
    });
    let opening = Event::default()
        .data(&*first.data)
        .retry(Duration::from_secs(1));
    let stream = futures::stream::once(async move { opening })
        .chain(rest)
        .map(Ok::<_, Infallible>)
        .take_until(state.shutdown.clone().cancelled_owned());
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

/// The view a page or feed URL asks for.
pub fn view_of(query: Option<&str>) -> ViewDto {
    let value = |name| query_values(query, name).next().filter(|v| !v.is_empty());
    ViewDto {
        cursor: value("cursor"),
        query: value("q"),
        after: value("after"),
        table: value("table"),
    }
}

/// A view the client asked for that cannot be (a cursor that is not one,
/// an `after` that is not a key of the table): 400.
pub fn bad_view(e: &prefetch::Error) -> Option<Response> {
    match e {
        prefetch::Error::InvalidId(m) | prefetch::Error::InvalidField(m) => Some(
            ApiError::new(StatusCode::BAD_REQUEST, format!("Invalid page: {m}.")).into_response(),
        ),
        _ => None,
    }
}

/// A snapshot that could not be made: a bad view is the client's error
/// (400); anything else, Redis or the primary being unreachable (503).
fn snapshot_error(e: &SnapshotError) -> Response {
    if let SnapshotError::Engine(e) = e
        && let Some(res) = bad_view(e)
    {
        return res;
    }
    tracing::warn!(error = %e, "cannot build live-feed snapshot");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "Redis is unavailable; the live feed will retry.",
    )
    .into_response()
}

/// One SSE client: its frames, and the rows it shows.
struct Client {
    rx: broadcast::Receiver<Frame>,
    hub: LiveHub,
    view: ViewDto,
    watching: Watching,
}

impl Client {
    /// The next frame for this client (`None`: the hub has stopped).
    async fn next(&mut self) -> Option<Arc<str>> {
        loop {
            match self.rx.recv().await {
                Ok(frame) if frame.resync => {
                    if let Some(data) = self.refresh().await {
                        return Some(data);
                    }
                }
                Ok(frame) => {
                    if self.watching.view().shows(&frame) {
                        return Some(frame.data);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::debug!(missed, "slow live-feed client; resyncing it");
                    if let Some(data) = self.refresh().await {
                        return Some(data);
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// A fresh snapshot of the client's view (`None` if it cannot be read
    /// now: the client keeps what it has, and the next resync retries).
    async fn refresh(&mut self) -> Option<Arc<str>> {
        match self.hub.refresh(&self.view, &mut self.watching).await {
            Ok(frame) => Some(frame.data),
            Err(e) => {
                tracing::debug!(error = %e, "cannot resync a live-feed client");
                None
            }
        }
    }
}
