//! The hub task: follows engine events, keyspace notifications (or polls)
//! and the stats while anyone watches; resyncs clients that fell behind;
//! goes idle, doing no Redis work, when nobody watches.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::time::Duration;

use app::api::dashboard_state;
use app::model::{Fields, LiveEvent, SourceDto, StatsDto};
use prefetch::Event;
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::fanout::{Frame, LiveHub, SnapshotRequest};
use super::keyspace::{KeyEvent, KeyOp};

/// Keyspace notifications are checked this long after they arrive, so the
/// app's own writes (reported through the engine) are already mirrored.
const EXTERNAL_SETTLE: Duration = Duration::from_millis(30);

const STATS_INTERVAL: Duration = Duration::from_millis(250);

const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// What the clients were last told about one key.
#[derive(Debug, PartialEq)]
pub(super) struct Mirrored {
    pub(super) fields: Fields,
    pub(super) expires_at_ms: Option<i64>,
}

pub(super) struct Task {
    pub(super) hub: LiveHub,
    pub(super) engine_rx: broadcast::Receiver<Event>,
    pub(super) keys: Option<mpsc::Receiver<KeyEvent>>,
    pub(super) requests: mpsc::Receiver<SnapshotRequest>,
    pub(super) mirror: BTreeMap<String, Mirrored>,
    pub(super) pending: BTreeSet<String>,
    pub(super) expired: BTreeSet<String>,
    pub(super) last_stats: Option<StatsDto>,
    pub(super) last_source: Option<SourceDto>,
}

impl Task {
    pub(super) fn new(
        hub: LiveHub,
        keys: Option<mpsc::Receiver<KeyEvent>>,
        requests: mpsc::Receiver<SnapshotRequest>,
    ) -> Self {
        Self {
            engine_rx: hub.ctx.engine.subscribe(),
            hub,
            keys,
            requests,
            mirror: BTreeMap::new(),
            pending: BTreeSet::new(),
            expired: BTreeSet::new(),
            last_stats: None,
            last_source: None,
        }
    }
}

impl Task {
    pub(super) async fn run(mut self, shutdown: CancellationToken) {
        self.resync().await;
        let mut stats_tick = tokio::time::interval(STATS_INTERVAL);
        // Not polled while nobody watches: no burst of ticks afterwards.
        stats_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut poll_tick = tokio::time::interval(POLL_INTERVAL);
        let polling = self.keys.is_none();
        let mut check_at: Option<Instant> = None;
        loop {
            let check = async {
                match check_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let key_event = async {
                match self.keys.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                event = self.engine_rx.recv() => match event {
                    Ok(event) => self.on_engine(event).await,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::debug!(missed = n, "live hub lagged behind the engine; resyncing");
                        self.resync().await;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                key = key_event => match key {
                    Some(KeyEvent::Key { id, op }) => {
                        if op == KeyOp::Expired {
                            self.expired.insert(id.clone());
                        }
                        self.pending.insert(id);
                        check_at.get_or_insert_with(|| Instant::now() + EXTERNAL_SETTLE);
                    }
                    Some(KeyEvent::Resync) => self.resync().await,
                    None => self.keys = None,
                },
                Some(reply) = self.requests.recv() => self.snapshot_for(reply).await,
                _ = check => {
                    check_at = None;
                    self.check_pending().await;
                }
                _ = poll_tick.tick(), if polling => self.poll().await,
                _ = stats_tick.tick(), if self.hub.watched() => self.stats(false),
            }
        }
    }

    /// Applies every engine event already queued for the hub.
    pub(super) async fn drain_engine_events(&mut self) {
        loop {
            match self.engine_rx.try_recv() {
                Ok(event) => self.on_engine(event).await,
                Err(broadcast::error::TryRecvError::Lagged(_)) => {
                    self.resync().await;
                    return;
                }
                Err(_) => return,
            }
        }
    }

    /// Sends everyone a fresh snapshot and re-seeds the mirror from it
    /// (with nobody watching: goes idle instead).
    pub(super) async fn resync(&mut self) {
        if !self.hub.watched() {
            self.go_idle();
            return;
        }
        match dashboard_state(&self.hub.ctx).await {
            Ok(state) => {
                self.seed(&state);
                self.hub.send(&LiveEvent::Snapshot(Box::new(state)));
            }
            Err(e) => tracing::warn!(error = %e, "live feed resync failed"),
        }
    }

    /// The mirror becomes exactly what `state` shows; the hub follows the
    /// cache again.
    fn seed(&mut self, state: &app::model::DashboardState) {
        self.mirror = state
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
            .collect();
        self.last_stats = Some(state.stats.clone());
        self.last_source = Some(state.source.clone());
        self.hub.idle.store(false, Ordering::Release);
    }

    pub(super) fn is_idle(&self) -> bool {
        self.hub.idle.load(Ordering::Acquire)
    }

    /// Nobody watches: stop following the cache (the mirror goes stale).
    fn go_idle(&mut self) {
        if !self.is_idle() {
            tracing::debug!("no live-feed client; the hub stops following the cache");
        }
        self.hub.idle.store(true, Ordering::Release);
        self.mirror.clear();
        self.pending.clear();
        self.expired.clear();
    }

    /// Whether to look at the cache now: false (and idle) with nobody
    /// watching. A client that arrived while the hub was going idle made
    /// its own snapshot, older than what the hub dropped: it gets a fresh
    /// one, and the mirror is re-seeded from it.
    pub(super) async fn following(&mut self) -> bool {
        if !self.hub.watched() {
            self.go_idle();
            return false;
        }
        if self.is_idle() {
            self.resync().await;
            return false;
        }
        true
    }

    /// A snapshot for a client arriving while the hub is idle, made here so
    /// that the mirror is re-seeded from exactly what that client is told,
    /// before any later change is compared with it.
    async fn snapshot_for(&mut self, reply: SnapshotRequest) {
        // Engine events already queued describe writes the snapshot will
        // include: take them first.
        self.drain_engine_events().await;
        let answer = match dashboard_state(&self.hub.ctx).await {
            Ok(state) => {
                if self.is_idle() {
                    self.seed(&state);
                }
                Frame::snapshot(state)
            }
            Err(e) => Err(e.into()),
        };
        let _ = reply.send(answer);
    }

    pub(super) fn stats(&mut self, force: bool) {
        let engine = &self.hub.ctx.engine;
        let stats = engine.stats();
        let source = SourceDto::from(&stats.source);
        if self.last_source.as_ref() != Some(&source) {
            self.hub.send(&LiveEvent::Source(source.clone()));
            self.last_source = Some(source);
        }
        let primary = &self.hub.ctx.primary;
        let stats = StatsDto::new(stats, primary.reads(), primary.read_latency());
        if force || self.last_stats.as_ref() != Some(&stats) {
            self.hub.send(&LiveEvent::Stats(stats.clone()));
            self.last_stats = Some(stats);
        }
    }
}
