//! [`LiveHub`]: every client's frames through one lossy broadcast, each
//! event serialised once; snapshots for arriving clients.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use app::api::{ServerContext, dashboard_state};
use app::model::LiveEvent;
use tokio::sync::{broadcast, mpsc, oneshot};

/// Frames buffered per SSE client before it is resynchronised.
const CLIENT_BUFFER: usize = 1024;

/// One serialised [`LiveEvent`], shared by every client.
#[derive(Clone, Debug)]
pub struct Frame(pub Arc<str>);

impl Frame {
    /// The event as one JSON frame.
    pub fn of(event: &LiveEvent) -> Result<Self, serde_json::Error> {
        Ok(Self(serde_json::to_string(event)?.into()))
    }

    /// `state` as a snapshot frame.
    pub(super) fn snapshot(state: app::model::DashboardState) -> Result<Self, SnapshotError> {
        Ok(Self::of(&LiveEvent::Snapshot(Box::new(state)))?)
    }
}

/// Why a snapshot frame could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Redis or the primary could not be read.
    #[error(transparent)]
    Engine(#[from] prefetch::Error),
    /// The state could not be serialised (a bug).
    #[error("cannot serialise the snapshot: {0}")]
    Serialise(#[from] serde_json::Error),
}

/// A snapshot asked of the hub task, and where its answer goes.
pub(super) type SnapshotRequest = oneshot::Sender<Result<Frame, SnapshotError>>;

/// Handle to the hub. Cheap to clone.
#[derive(Clone, Debug)]
pub struct LiveHub {
    tx: broadcast::Sender<Frame>,
    pub(super) ctx: ServerContext,
    /// Snapshots made by the hub task (for a client arriving while idle).
    requests: mpsc::Sender<SnapshotRequest>,
    /// Set while the hub has stopped following the cache for lack of
    /// clients (its mirror is stale until a client's snapshot re-seeds it).
    pub(super) idle: Arc<AtomicBool>,
}

impl LiveHub {
    /// A hub, and the receiving end of the snapshots asked of its task.
    pub(super) fn new(ctx: ServerContext) -> (Self, mpsc::Receiver<SnapshotRequest>) {
        let (tx, _) = broadcast::channel(CLIENT_BUFFER);
        let (requests, requests_rx) = mpsc::channel(16);
        let hub = Self {
            tx,
            ctx,
            requests,
            idle: Arc::new(AtomicBool::new(false)),
        };
        (hub, requests_rx)
    }

    /// A new client's frames, from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Frame> {
        self.tx.subscribe()
    }

    /// A snapshot frame of the current state. While the hub is idle (no
    /// client was watching), the hub task makes it and re-seeds its mirror
    /// from it; otherwise it is read here.
    pub async fn snapshot(&self) -> Result<Frame, SnapshotError> {
        if self.idle.load(Ordering::Acquire) {
            let (reply, answer) = oneshot::channel();
            if self.requests.send(reply).await.is_ok()
                && let Ok(frame) = answer.await
            {
                return frame;
            }
            // The hub task has stopped (shutdown): read it here.
        }
        Frame::snapshot(dashboard_state(&self.ctx).await?)
    }

    /// Whether any client is watching.
    pub(super) fn watched(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    pub(super) fn send(&self, event: &LiveEvent) {
        if !self.watched() {
            return;
        }
        match Frame::of(event) {
            Ok(frame) => {
                let _ = self.tx.send(frame);
            }
            Err(e) => tracing::error!(error = %e, "cannot serialise live event"),
        }
    }
}
