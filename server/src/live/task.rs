//! The hub task: follows engine events, keyspace notifications (or polls)
//! and the stats while anyone watches; resyncs clients that fell behind;
//! goes idle, doing no Redis work, when nobody watches.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::time::Duration;

use app::api::now_ms;
use app::model::{LiveEvent, SourceDto, StatsDto, expires_at};
use app::page::FULL_LIMIT;
use prefetch::{Event, ScanCursor};
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::fanout::{Follow, LiveHub};
use super::keyspace::{KeyEvent, KeyOp};
use super::views::{Mirrored, lock};

/// Keyspace notifications are checked this long after they arrive, so the
/// app's own writes (reported through the engine) are already mirrored.
const EXTERNAL_SETTLE: Duration = Duration::from_millis(30);

const STATS_INTERVAL: Duration = Duration::from_millis(250);

const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// During a long bulk change, clients get a fresh snapshot at most this
/// often.
const BULK_RESYNC_MAX: Duration = Duration::from_secs(2);

pub(super) struct Task {
    pub(super) hub: LiveHub,
    pub(super) engine_rx: broadcast::Receiver<Event>,
    pub(super) keys: Option<mpsc::Receiver<KeyEvent>>,
    follow_rx: mpsc::Receiver<Follow>,
    /// What clients were told, for the rows the hub follows.
    pub(super) mirror: BTreeMap<String, Mirrored>,
    pub(super) pending: BTreeSet<String>,
    pub(super) expired: BTreeSet<String>,
    /// Whether the hub follows every row: some client shows the whole
    /// table, and it is small (otherwise, the rows some client shows).
    pub(super) whole: bool,
    pub(super) last_stats: Option<StatsDto>,
    pub(super) last_source: Option<SourceDto>,
    /// Since when a resync is due (a bulk change arrived, or a resync
    /// failed), and when the last bulk change arrived: see [`Task::tick`].
    pub(super) resync_due: Option<Instant>,
    pub(super) last_bulk: Option<Instant>,
}

impl Task {
    pub(super) fn new(
        hub: LiveHub,
        keys: Option<mpsc::Receiver<KeyEvent>>,
        follow_rx: mpsc::Receiver<Follow>,
    ) -> Self {
        Self {
            engine_rx: hub.ctx.engine.subscribe(),
            hub,
            keys,
            follow_rx,
            mirror: BTreeMap::new(),
            pending: BTreeSet::new(),
            expired: BTreeSet::new(),
            whole: false,
            last_stats: None,
            last_source: None,
            resync_due: None,
            last_bulk: None,
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
                        // A key gone behind the engine's back comes back from
                        // the source, whoever shows it.
                        if matches!(op, KeyOp::Deleted | KeyOp::Expired | KeyOp::Evicted) {
                            self.hub.ctx.engine.key_gone(&id);
                        }
                        // Rows nobody shows are not followed: a bulk load
                        // costs the hub a lookup per key, nothing kept.
                        if self.follows(&id) {
                            if op == KeyOp::Expired {
                                self.expired.insert(id.clone());
                            }
                            self.pending.insert(id);
                            check_at.get_or_insert_with(|| Instant::now() + EXTERNAL_SETTLE);
                        }
                    }
                    Some(KeyEvent::Resync) => self.resync().await,
                    None => self.keys = None,
                },
                Some(follow) = self.follow_rx.recv() => self.on_follow(follow).await,
                _ = check => {
                    check_at = None;
                    self.check_pending().await;
                }
                _ = poll_tick.tick(), if polling => self.poll().await,
                _ = stats_tick.tick(), if self.hub.watched() => self.tick().await,
            }
        }
    }

    /// Whether the hub follows row `id`: some client shows it, or a
    /// client's snapshot is being taken (its rows are not known yet).
    pub(super) fn follows(&self, id: &str) -> bool {
        // The whole-table mirror holds the first table's rows (the cache
        // may hold several); other tables are shown a page at a time.
        if self.whole && id.starts_with(&self.hub.ctx.primary.id_prefix()) {
            return true;
        }
        let views = lock(&self.hub.views);
        views.opening() || views.on_page(id)
    }

    /// A bulk change arrived: the clients' rows are read again once the
    /// burst settles (see [`Task::tick`]).
    pub(super) fn bulk(&mut self) {
        let now = Instant::now();
        self.resync_due.get_or_insert(now);
        self.last_bulk = Some(now);
    }

    /// Every stats tick: a due resync once no bulk change came for a tick
    /// (or at the latest every [`BULK_RESYNC_MAX`] during a long one), the
    /// stats, and the mirror pruned to the rows clients show.
    async fn tick(&mut self) {
        if let Some(since) = self.resync_due {
            let quiet = self.last_bulk.is_none_or(|b| b.elapsed() >= STATS_INTERVAL);
            if quiet || since.elapsed() >= BULK_RESYNC_MAX {
                self.resync_due = None;
                self.resync().await;
            }
        }
        self.stats(false);
        self.prune();
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

    /// Re-seeds the mirror from the cache and asks every client to take a
    /// fresh snapshot of its own view (with nobody watching: goes idle
    /// instead). The mirror is read first: whatever changes after it is
    /// reported on top of each client's newer snapshot, where replaying it
    /// changes nothing.
    pub(super) async fn resync(&mut self) {
        if !self.hub.watched() {
            self.go_idle();
            return;
        }
        match self.reseed().await {
            Ok(()) => self.hub.ask_resync(),
            Err(e) => {
                tracing::warn!(error = %e, "live feed resync failed; retrying on the next tick");
                self.resync_due.get_or_insert_with(Instant::now);
            }
        }
    }

    /// The mirror becomes what the cache holds for the rows the clients
    /// show; the hub follows the cache again.
    async fn reseed(&mut self) -> prefetch::Result<()> {
        let (whole, mut ids) = {
            let views = lock(&self.hub.views);
            (views.whole(), views.ids())
        };
        let mut follows_all = false;
        if whole && let Some(all) = self.small_cache().await? {
            follows_all = true;
            ids = all;
        }
        let entries = self.hub.ctx.engine.cache().entries_of(&ids).await?;
        let now = now_ms();
        self.mirror = entries
            .into_iter()
            .map(|e| {
                (
                    e.id,
                    Mirrored {
                        expires_at_ms: expires_at(e.ttl, now),
                        fields: e.fields,
                    },
                )
            })
            .collect();
        self.whole = follows_all;
        self.hub.idle.store(false, Ordering::Release);
        Ok(())
    }

    /// Every cached id, when there are at most [`FULL_LIMIT`].
    pub(super) async fn small_cache(&self) -> prefetch::Result<Option<Vec<String>>> {
        let page = self
            .hub
            .ctx
            .engine
            .cache()
            .scan_ids(
                ScanCursor::START,
                &self.hub.ctx.primary.id_prefix(),
                FULL_LIMIT + 1,
            )
            .await?;
        Ok((page.next.is_none() && page.ids.len() <= FULL_LIMIT).then_some(page.ids))
    }

    /// A client was just told `follow.told`: the hub follows those rows
    /// from there, and re-reads them at once, so that a change made since
    /// the client's snapshot is reported to it.
    async fn on_follow(&mut self, follow: Follow) {
        if self.is_idle() {
            self.mirror.clear();
            self.whole = false;
            self.hub.idle.store(false, Ordering::Release);
        }
        let ids: Vec<String> = follow.told.iter().map(|(id, _)| id.clone()).collect();
        for (id, told) in follow.told {
            self.mirror.entry(id).or_insert(told);
        }
        if follow.whole {
            self.whole = true;
            self.poll_whole().await;
        } else {
            self.recheck(&ids).await;
        }
    }

    pub(super) fn is_idle(&self) -> bool {
        self.hub.is_idle()
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
        self.whole = false;
    }

    /// Whether to look at the cache now: false (and idle) with nobody
    /// watching. A client that arrived while the hub was going idle made
    /// its own snapshot, older than what the hub dropped: it is asked for
    /// a fresh one, after the mirror is re-seeded.
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

    /// Forgets the rows no client shows any more.
    fn prune(&mut self) {
        if self.whole {
            return;
        }
        // Rows nobody shows stop being followed: their entries would go
        // stale, and a row that comes back into view starts from what its
        // new snapshot told.
        let views = lock(&self.hub.views);
        if !views.opening() && self.mirror.len() > views.rows() {
            self.mirror.retain(|id, _| views.on_page(id));
        }
    }

    pub(super) fn stats(&mut self, force: bool) {
        let engine = &self.hub.ctx.engine;
        let stats = engine.stats();
        let source = SourceDto::from(&stats.source);
        if self.last_source.as_ref() != Some(&source) {
            self.hub.send(&LiveEvent::Source(source.clone()));
            self.last_source = Some(source);
        }
        let stats = self.hub.ctx.stats(stats);
        if force || self.last_stats.as_ref() != Some(&stats) {
            self.hub.send(&LiveEvent::Stats(stats.clone()));
            self.last_stats = Some(stats);
        }
    }
}
