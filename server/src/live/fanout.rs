//! [`LiveHub`]: every client's frames through one lossy broadcast, each
//! event serialised once; snapshots of each client's own view.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use app::api::ServerContext;
use app::model::{DashboardState, LiveEvent, ViewDto};
use tokio::sync::{broadcast, mpsc};

use super::views::{ClientView, Frame, Mirrored, Opening, Views, Watching};

/// Frames buffered per SSE client before it is resynchronised.
const CLIENT_BUFFER: usize = 1024;

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

/// What a client was just told, for the hub task to follow from: its view
/// and the cached rows its snapshot showed.
#[derive(Debug)]
pub(super) struct Follow {
    pub(super) whole: bool,
    pub(super) told: Vec<(String, Mirrored)>,
}

/// Handle to the hub. Cheap to clone.
#[derive(Clone, Debug)]
pub struct LiveHub {
    tx: broadcast::Sender<Frame>,
    pub(super) ctx: ServerContext,
    /// What each new snapshot told its client, for the hub task.
    follow: mpsc::Sender<Follow>,
    /// Set while the hub has stopped following the cache for lack of
    /// clients (its mirror is stale until a client's snapshot re-seeds it).
    pub(super) idle: Arc<AtomicBool>,
    /// What the connected clients show.
    pub(super) views: Arc<Mutex<Views>>,
}

impl LiveHub {
    /// A hub, and the receiving end of what snapshots told their clients.
    pub(super) fn new(ctx: ServerContext) -> (Self, mpsc::Receiver<Follow>) {
        let (tx, _) = broadcast::channel(CLIENT_BUFFER);
        let (follow, follow_rx) = mpsc::channel(64);
        let hub = Self {
            tx,
            ctx,
            follow,
            idle: Arc::new(AtomicBool::new(false)),
            views: Arc::default(),
        };
        (hub, follow_rx)
    }

    /// A new client's frames, from now on. Subscribe before taking the
    /// client's snapshot, so that nothing between them is missed (events
    /// already in the snapshot are idempotent when replayed).
    pub fn subscribe(&self) -> broadcast::Receiver<Frame> {
        self.tx.subscribe()
    }

    /// A new client's snapshot of `view`, and its place among the views
    /// the hub follows (for as long as the [`Watching`] lives).
    pub async fn open(&self, view: &ViewDto) -> Result<(Frame, Watching), SnapshotError> {
        let _opening = Opening::new(&self.views);
        let (frame, client) = self.snapshot(view).await?;
        Ok((frame, Watching::new(&self.views, client)))
    }

    /// A fresh snapshot of `view` for a client that fell behind or was
    /// asked to resync; its rows are followed from now on.
    pub async fn refresh(
        &self,
        view: &ViewDto,
        watching: &mut Watching,
    ) -> Result<Frame, SnapshotError> {
        let _opening = Opening::new(&self.views);
        let (frame, client) = self.snapshot(view).await?;
        watching.replace(client);
        Ok(frame)
    }

    /// The snapshot frame of `view`; the hub task is told what it showed,
    /// to follow those rows from exactly there.
    async fn snapshot(&self, view: &ViewDto) -> Result<(Frame, ClientView), SnapshotError> {
        let state = app::page::dashboard_state(&self.ctx, view).await?;
        let client = ClientView::of(&state, &self.ctx.primary.id_prefix());
        let follow = Follow {
            whole: matches!(client, ClientView::Whole(_)),
            told: told(&state),
        };
        let frame = Frame::of(&LiveEvent::Snapshot(Box::new(state)))?;
        // A hub task that has stopped (shutdown) follows nothing.
        let _ = self.follow.send(follow).await;
        Ok((frame, client))
    }

    /// What the connected clients show.
    pub fn views(&self) -> &Arc<Mutex<Views>> {
        &self.views
    }

    /// Asks every client to take a fresh snapshot of its own view.
    pub(super) fn ask_resync(&self) {
        if self.watched() {
            let _ = self.tx.send(Frame::resync());
        }
    }

    /// Whether any client is watching.
    pub(super) fn watched(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    /// Whether the hub is idle (nobody was watching).
    pub(super) fn is_idle(&self) -> bool {
        self.idle.load(Ordering::Acquire)
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

/// The cached rows `state` shows, as the mirror holds them.
fn told(state: &DashboardState) -> Vec<(String, Mirrored)> {
    state
        .cache
        .iter()
        .map(|e| {
            (
                e.id.clone(),
                Mirrored {
                    fields: e.fields.clone(),
                    expires_at_ms: e.expires_at_ms,
                },
            )
        })
        .collect()
}
