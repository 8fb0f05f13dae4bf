//! The live-feed hub: turns engine events, keyspace notifications and stats
//! into [`LiveEvent`]s, serialises each once, and fans them out to every SSE
//! client through one broadcast channel.
//!
//! Nothing here can block the engine or another client: the hub reads a
//! lossy broadcast of engine events, and clients read a lossy broadcast of
//! frames. Whoever falls behind (the hub or a client) is resynchronised with
//! a fresh snapshot instead of being waited for.
//!
//! With nobody watching, the hub does no Redis work: it drops the keys that
//! keyspace notifications name instead of re-reading each, and skips the
//! full re-reads (resyncs, polls) that only serve clients. The first client
//! to come back gets its snapshot from the hub task itself, which re-seeds
//! its mirror from that same snapshot before handling anything else, so
//! every later change is compared with exactly what that client was told.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use app::api::{ServerContext, dashboard_state, now_ms};
use app::model::{
    ExternalWatch, Fields, LiveEvent, ReconcileResponse, SourceDto, StatsDto, WriteOrigin,
    epoch_ms, expires_at, millis,
};
use prefetch::{Event, WriteOutcome};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::keyspace::{KeyEvent, KeyOp};

/// Frames buffered per SSE client before it is resynchronised.
const CLIENT_BUFFER: usize = 1024;
/// Keyspace notifications are checked this long after they arrive, so the
/// app's own writes (reported through the engine) are already mirrored.
const EXTERNAL_SETTLE: Duration = Duration::from_millis(30);
/// More keys than this pending at once: resync instead of checking each.
const MAX_PENDING: usize = 512;
/// Expiry differences below this are clock noise, not an external EXPIRE.
const EXPIRY_TOLERANCE_MS: i64 = 2000;
const STATS_INTERVAL: Duration = Duration::from_millis(250);
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// One serialised [`LiveEvent`], shared by every client.
#[derive(Clone, Debug)]
pub struct Frame(pub Arc<str>);

impl Frame {
    /// The event as one JSON frame.
    pub fn of(event: &LiveEvent) -> Result<Self, serde_json::Error> {
        Ok(Self(serde_json::to_string(event)?.into()))
    }

    /// `state` as a snapshot frame.
    fn snapshot(state: app::model::DashboardState) -> Result<Self, SnapshotError> {
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
type SnapshotRequest = oneshot::Sender<Result<Frame, SnapshotError>>;

/// Handle to the hub. Cheap to clone.
#[derive(Clone, Debug)]
pub struct LiveHub {
    tx: broadcast::Sender<Frame>,
    ctx: ServerContext,
    /// Snapshots made by the hub task (for a client arriving while idle).
    requests: mpsc::Sender<SnapshotRequest>,
    /// Set while the hub has stopped following the cache for lack of
    /// clients (its mirror is stale until a client's snapshot re-seeds it).
    idle: Arc<AtomicBool>,
}

impl LiveHub {
    /// Starts the hub task. `keys` carries keyspace notifications (`None`:
    /// poll the cache every second instead).
    pub fn start(
        ctx: ServerContext,
        keys: Option<mpsc::Receiver<KeyEvent>>,
        shutdown: CancellationToken,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, _) = broadcast::channel(CLIENT_BUFFER);
        let (requests, requests_rx) = mpsc::channel(16);
        let hub = Self {
            tx,
            ctx,
            requests,
            idle: Arc::new(AtomicBool::new(false)),
        };
        let task = Task {
            hub: hub.clone(),
            engine_rx: hub.ctx.engine.subscribe(),
            keys,
            requests: requests_rx,
            mirror: BTreeMap::new(),
            pending: BTreeSet::new(),
            expired: BTreeSet::new(),
            last_stats: None,
            last_source: None,
        };
        let join = tokio::spawn(
            task.run(shutdown)
                .instrument(tracing::info_span!("live_hub")),
        );
        (hub, join)
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
    fn watched(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    fn send(&self, event: &LiveEvent) {
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

/// What the clients were last told about one key.
#[derive(Debug, PartialEq)]
struct Mirrored {
    fields: Fields,
    expires_at_ms: Option<i64>,
}

struct Task {
    hub: LiveHub,
    engine_rx: broadcast::Receiver<Event>,
    keys: Option<mpsc::Receiver<KeyEvent>>,
    requests: mpsc::Receiver<SnapshotRequest>,
    mirror: BTreeMap<String, Mirrored>,
    pending: BTreeSet<String>,
    expired: BTreeSet<String>,
    last_stats: Option<StatsDto>,
    last_source: Option<SourceDto>,
}

impl Task {
    async fn run(mut self, shutdown: CancellationToken) {
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

    async fn on_engine(&mut self, event: Event) {
        match event {
            Event::Primary(tx) => {
                let at_ms = epoch_ms(tx.committed_at);
                for change in &tx.changes {
                    self.hub.send(&LiveEvent::Primary {
                        version: change.version.to_string(),
                        op: change.op().into(),
                        id: change.id.clone(),
                        fields: change.kind.fields().map(|f| (**f).clone()),
                        at_ms,
                    });
                }
            }
            Event::SyncApplied { writes, .. } => {
                let ttl = self.hub.ctx.engine.cache().ttl_config();
                let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2);
                if self.is_idle() {
                    return; // nobody to tell; the next client re-seeds the mirror
                }
                for w in writes.iter().filter(|w| w.outcome == WriteOutcome::Applied) {
                    let fields = w.fields.as_ref().map(|f| (**f).clone());
                    let expires = fields
                        .as_ref()
                        .map(|_| epoch_ms(w.at).saturating_add(ttl_ms));
                    self.set_mirror(&w.id, fields.clone(), expires);
                    self.hub.send(&LiveEvent::Cache {
                        id: w.id.clone(),
                        fields,
                        expires_at_ms: expires,
                        source: WriteOrigin::Sync,
                        lag_ms: Some(millis(w.lag)),
                    });
                }
            }
            Event::Invalidated { id, existed: true } => {
                self.set_mirror(&id, None, None);
                self.hub.send(&LiveEvent::Cache {
                    id,
                    fields: None,
                    expires_at_ms: None,
                    source: WriteOrigin::Admin,
                    lag_ms: None,
                });
            }
            Event::Cleared { deleted } => {
                self.mirror.clear();
                self.hub.send(&LiveEvent::Cleared { deleted });
            }
            Event::StateLost { reason } => {
                self.hub.send(&LiveEvent::StateLost { reason });
            }
            Event::Prefetched {
                loaded,
                swept,
                elapsed,
                reason,
            } => {
                self.hub.send(&LiveEvent::Prefetched {
                    loaded,
                    swept,
                    elapsed_ms: millis(elapsed),
                    reason: reason.into(),
                });
                self.resync().await;
            }
            Event::Reconciled(report) => {
                self.hub.send(&LiveEvent::Reconciled(ReconcileResponse::new(
                    &report,
                    std::time::SystemTime::now(),
                )));
            }
            Event::Fault {
                kind, id, outcome, ..
            } => self.hub.send(&LiveEvent::Fault {
                kind: kind.as_str().to_owned(),
                id,
                outcome: outcome.map(|o| {
                    match o {
                        WriteOutcome::Applied => "applied",
                        WriteOutcome::Stale => "stale",
                    }
                    .to_owned()
                }),
            }),
            Event::Worker(state) => self.hub.send(&LiveEvent::Worker {
                state: state.into(),
            }),
            Event::StatsReset => self.stats(true),
            _ => {}
        }
    }

    fn set_mirror(&mut self, id: &str, fields: Option<Fields>, expires_at_ms: Option<i64>) {
        match fields {
            Some(fields) => {
                self.mirror.insert(
                    id.to_owned(),
                    Mirrored {
                        fields,
                        expires_at_ms,
                    },
                );
            }
            None => {
                self.mirror.remove(id);
            }
        }
    }

    /// Applies every engine event already queued for the hub.
    async fn drain_engine_events(&mut self) {
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

    /// Re-reads keys that keyspace notifications named and reports those
    /// that differ from what clients were told: changes from outside.
    async fn check_pending(&mut self) {
        let ids = std::mem::take(&mut self.pending);
        let expired = std::mem::take(&mut self.expired);
        if !self.following().await {
            return;
        }
        if ids.len() > MAX_PENDING {
            self.resync().await;
            return;
        }
        let now = now_ms();
        for id in ids {
            let entry = self.hub.ctx.engine.cache().peek(&id).await;
            self.drain_engine_events().await;
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    tracing::debug!(error = %e, "cannot re-read key after notification");
                    continue;
                }
            };
            // New fields that hash to what an applier wrote, with its
            // version, or a delete that left a tombstone: another replica
            // of the pipeline applied them (the app's own writes were
            // drained above).
            let replicated = self.hub.ctx.replicated();
            let applied_elsewhere = replicated
                && match &entry {
                    Some(e) => {
                        e.version.is_some()
                            && e.intact
                            && self.mirror.get(&id).is_none_or(|m| m.fields != e.fields)
                    }
                    None => self.mirror.contains_key(&id) && self.tombstoned(&id).await,
                };
            let actual = entry.map(|e| Mirrored {
                expires_at_ms: expires_at(e.ttl, now),
                fields: e.fields,
            });
            let source = if expired.contains(&id) {
                WriteOrigin::Expired
            } else if applied_elsewhere {
                WriteOrigin::Sync
            } else {
                WriteOrigin::External
            };
            self.report_if_changed(&id, actual, source);
        }
    }

    /// Whether the record `id` has a tombstone (a versioned delete).
    async fn tombstoned(&self, id: &str) -> bool {
        let cache = self.hub.ctx.engine.cache();
        let data = cache.key(id);
        let mut conn = cache.connection();
        let found: redis::RedisResult<bool> = match cache.key_space().tombstone(&data) {
            prefetch::Tombstone::Key(key) => {
                redis::cmd("EXISTS").arg(key).query_async(&mut conn).await
            }
            prefetch::Tombstone::InHash => {
                redis::cmd("HEXISTS")
                    .arg(&data)
                    .arg("__del")
                    .query_async(&mut conn)
                    .await
            }
        };
        found.unwrap_or_else(|e| {
            tracing::debug!(error = %e, "cannot check a tombstone");
            false
        })
    }

    fn report_if_changed(&mut self, id: &str, actual: Option<Mirrored>, source: WriteOrigin) {
        let known = self.mirror.get(id);
        let same = match (known, &actual) {
            (None, None) => true,
            (Some(k), Some(a)) => {
                k.fields == a.fields
                    && match (k.expires_at_ms, a.expires_at_ms) {
                        (Some(x), Some(y)) => (x - y).abs() <= EXPIRY_TOLERANCE_MS,
                        (x, y) => x == y,
                    }
            }
            _ => false,
        };
        if same {
            return;
        }
        let (fields, expires) = match actual {
            Some(a) => (Some(a.fields), a.expires_at_ms),
            None => (None, None),
        };
        self.set_mirror(id, fields.clone(), expires);
        self.hub.send(&LiveEvent::Cache {
            id: id.to_owned(),
            fields,
            expires_at_ms: expires,
            source,
            lag_ms: None,
        });
    }

    /// Polling fallback: diff the whole cache against the mirror.
    async fn poll(&mut self) {
        if !self.following().await {
            return;
        }
        let entries = match self.hub.ctx.engine.cache().entries().await {
            Ok(entries) => entries,
            Err(e) => {
                tracing::debug!(error = %e, "cache poll failed");
                return;
            }
        };
        // The app's own writes that landed before the read may still be
        // queued for us: mirror them first, or they would look external.
        self.drain_engine_events().await;
        let now = now_ms();
        let mut seen = BTreeSet::new();
        for e in entries {
            seen.insert(e.id.clone());
            let actual = Mirrored {
                expires_at_ms: expires_at(e.ttl, now),
                fields: e.fields,
            };
            self.report_if_changed(&e.id, Some(actual), WriteOrigin::External);
        }
        let gone: Vec<String> = self
            .mirror
            .keys()
            .filter(|id| !seen.contains(*id))
            .cloned()
            .collect();
        for id in gone {
            self.report_if_changed(&id, None, WriteOrigin::External);
        }
    }

    /// Sends everyone a fresh snapshot and re-seeds the mirror from it
    /// (with nobody watching: goes idle instead).
    async fn resync(&mut self) {
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

    fn is_idle(&self) -> bool {
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
    async fn following(&mut self) -> bool {
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

    fn stats(&mut self, force: bool) {
        let engine = &self.hub.ctx.engine;
        let stats = engine.stats();
        let source = SourceDto::from(&stats.source);
        if self.last_source.as_ref() != Some(&source) {
            self.hub.send(&LiveEvent::Source(source.clone()));
            self.last_source = Some(source);
        }
        let primary = engine.source();
        let stats = StatsDto::new(stats, primary.reads(), primary.read_latency());
        if force || self.last_stats.as_ref() != Some(&stats) {
            self.hub.send(&LiveEvent::Stats(stats.clone()));
            self.last_stats = Some(stats);
        }
    }
}

/// How outside changes are watched, for the dashboard.
pub fn watch_mode(keyspace: bool) -> ExternalWatch {
    if keyspace {
        ExternalWatch::Keyspace
    } else {
        ExternalWatch::Polling
    }
}
