//! [`Engine`]: the cache, a source and the sync worker as one service, plus
//! the operations that coordinate them (re-prefetch, self-healing).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use tokio::sync::{Notify, broadcast};
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::cache::{CacheConfig, CacheState, CachedEntry, Lookup, PrefetchCache, Ttl};
use crate::error::Result;
use crate::events::{Event, EventBus, PrefetchReason};
use crate::model::{ReconcileReport, Version, WorkerState, validate_id};
use crate::source::{Source, SourceStatus};
use crate::stats::Stats;
use crate::sync::{SyncConfig, SyncHandle, behind};

/// How long a snapshot window stays open without being renewed (a loader
/// that died lets it lapse after this); its renewer runs every third of it.
const WINDOW_LEASE: Duration = Duration::from_secs(30);

/// Everything [`Engine::start`] needs besides the Redis connection and the
/// source.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Key prefix and TTLs.
    pub cache: CacheConfig,
    /// Sync worker tuning.
    pub sync: SyncConfig,
    /// How long admin operations wait for the sync worker to park.
    pub pause_timeout: Duration,
    /// How often the engine checks, without any request, that Redis still
    /// holds its state (a write finds out at once anyway).
    pub heal_interval: Duration,
    /// What a (re-)prefetch does when the working set would not fit in
    /// Redis's memory budget.
    pub memory_check: MemoryCheck,
    /// The share of `maxmemory` kept free (0.1: the budget is 90 %).
    pub memory_headroom: f64,
    /// Other engines may write this cache while this one loads (replicas of
    /// one change feed): the first load goes through the version guard too,
    /// never through plain pipelines with the worker paused.
    pub shared_writers: bool,
}

/// What a (re-)prefetch does when the working set would not fit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MemoryCheck {
    /// Refuse, writing nothing ([`Error::MemoryBudget`](crate::Error::MemoryBudget)).
    #[default]
    Refuse,
    /// Log a warning and load anyway.
    Warn,
}

/// Redis memory against the cache's budget.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemoryStatus {
    /// Bytes Redis uses now.
    pub used: u64,
    /// Bytes the cache may let Redis reach (`maxmemory` less the headroom;
    /// 0: no limit).
    pub budget: u64,
    /// The eviction policy.
    pub policy: String,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            cache: CacheConfig::default(),
            sync: SyncConfig::default(),
            pause_timeout: Duration::from_secs(2),
            heal_interval: Duration::from_millis(500),
            memory_check: MemoryCheck::Refuse,
            memory_headroom: 0.1,
            shared_writers: false,
        }
    }
}

/// The outcome of a (re-)prefetch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefetchReport {
    /// Records written to Redis.
    pub loaded: usize,
    /// Keys removed because the snapshot no longer had them.
    pub swept: usize,
    /// Snapshot read + write + sweep.
    pub elapsed: Duration,
    /// The snapshot's version (`None`: the engine resumed from the position
    /// Redis held and loaded nothing).
    pub version: Option<Version>,
}

/// A read through the cache, with the key's TTL from the same round trip.
#[derive(Clone, Debug, PartialEq)]
pub struct ReadResult {
    /// The id that was read (trimmed).
    pub id: String,
    /// Record and Redis latency.
    pub lookup: Lookup,
    /// Remaining TTL ([`Ttl::Missing`] on a miss).
    pub ttl: Ttl,
}

/// Cache counters plus the worker's and the source's state.
#[derive(Clone, Debug, PartialEq)]
pub struct EngineStats {
    /// The cache's counters.
    pub cache: Stats,
    /// The sync worker's state.
    pub worker: WorkerState,
    /// Changes the source produced that are not yet durable in Redis.
    pub backlog: usize,
    /// How far Redis is behind the source (zero when nothing waits).
    pub behind: Duration,
    /// Position of the newest transaction durable in Redis.
    pub applied: Option<Version>,
    /// The source's own status.
    pub source: SourceStatus,
    /// Redis memory against the budget, as last checked.
    pub memory: Option<MemoryStatus>,
}

/// A running prefetch cache: [`PrefetchCache`], a [`Source`] and the sync
/// worker wired together, plus the admin operations that must coordinate
/// them. Cheap to clone; clones share everything.
///
/// Every surface of the product (HTTP API, server functions, tests, benches)
/// goes through these methods, so each behaviour exists once. `S` may be a
/// concrete source or `dyn Source` / `dyn Primary` chosen at run time.
pub struct Engine<S: ?Sized = dyn Source, C = crate::Redis> {
    inner: Arc<Inner<S, C>>,
    /// This handle's view of the cache: the engine's own, or one that reads
    /// on another connection ([`Engine::with_reader`]).
    reads: PrefetchCache<C>,
}

struct Inner<S: ?Sized, C> {
    cache: PrefetchCache<C>,
    sync: SyncHandle,
    events: EventBus,
    /// Serialises clear, re-prefetch and self-healing.
    admin: tokio::sync::Mutex<()>,
    pause_timeout: Duration,
    healer: Mutex<Option<JoinHandle<()>>>,
    last_reconcile: Mutex<Option<(SystemTime, ReconcileReport)>>,
    memory: Mutex<Option<MemoryStatus>>,
    /// Records the last load wrote (what a re-prefetch overwrites).
    last_loaded: std::sync::atomic::AtomicU64,
    memory_check: MemoryCheck,
    memory_headroom: f64,
    source: Arc<S>,
}

impl<S: ?Sized, C: Clone> Clone for Engine<S, C> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
            reads: self.reads.clone(),
        }
    }
}

impl<S: ?Sized, C> std::fmt::Debug for Engine<S, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("cache", &self.inner.cache)
            .field("sync", &self.inner.sync)
            .finish_non_exhaustive()
    }
}

/// How a load writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LoadMode {
    /// Nothing else writes yet: plain pipelines.
    Fresh,
    /// The worker may be writing: through the version guard, then a sweep.
    Guarded,
}

impl<S, C> Engine<S, C>
where
    S: Source + ?Sized,
    C: crate::Connection,
{
    /// Starts the engine: resumes from the position Redis holds for this
    /// source when the source can deliver everything after it; otherwise
    /// loads a snapshot (starting afresh when Redis holds nothing of this
    /// source, or another source's state). Then starts the sync worker and
    /// the self-healing check. `events` should be the bus the source
    /// publishes to.
    pub async fn start(
        conn: C,
        source: Arc<S>,
        events: EventBus,
        config: EngineConfig,
    ) -> Result<(Self, PrefetchReport)> {
        Self::start_with_writer(conn.clone(), conn, source, events, config).await
    }

    /// [`start`](Self::start) with a connection of its own for writes
    /// (loads, applies, sweeps, reconciliation), so that a user's read
    /// never queues behind a batch of writes: see
    /// [`PrefetchCache::with_writer`].
    pub async fn start_with_writer(
        reads: C,
        writes: C,
        source: Arc<S>,
        events: EventBus,
        config: EngineConfig,
    ) -> Result<(Self, PrefetchReport)> {
        let keys = crate::keys::KeySpace::new(config.cache.prefix.clone());
        keys.validate()?;
        let cache = PrefetchCache::new(reads, config.cache, source.id()).with_writer(writes);
        cache.load_library().await?;
        let memory = cache.memory().await?;
        if memory.may_evict() {
            tracing::warn!(
                policy = %memory.policy,
                "Redis's maxmemory-policy may evict cache keys, and an evicted key is a silent miss until the next re-prefetch; use noeviction (writes then wait and retry when memory is full)"
            );
        }
        let state = cache.state().await?;
        let ours = state.source.as_deref() == Some(cache.source_id());
        let resumed = ours
            && state.loading.is_none()
            && state.position.is_some()
            && source.open(state.position).await?;
        let lost = Arc::new(Notify::new());
        let sync = SyncHandle::spawn(
            cache.clone(),
            Arc::clone(&source),
            config.sync,
            events.clone(),
            Arc::clone(&lost),
        );
        let shared_writers = config.shared_writers;
        let engine = Self {
            reads: cache.clone(),
            inner: Arc::new(Inner {
                cache,
                sync,
                events,
                admin: tokio::sync::Mutex::new(()),
                pause_timeout: config.pause_timeout,
                healer: Mutex::new(None),
                last_reconcile: Mutex::new(None),
                memory: Mutex::new(None),
                last_loaded: std::sync::atomic::AtomicU64::new(0),
                memory_check: config.memory_check,
                memory_headroom: config.memory_headroom.clamp(0.0, 0.9),
                source,
            }),
        };
        // Requests for a fresh snapshot the source makes from here on are
        // not covered by what Redis holds or is about to load.
        let mut resyncs_covered = engine.inner.source.status().resync_requests;
        let report = if resumed {
            let position = state.position.unwrap_or_default();
            engine.inner.sync.mark_applied(position);
            tracing::info!(%position, "resuming from the position Redis holds");
            PrefetchReport {
                loaded: 0,
                swept: 0,
                elapsed: Duration::ZERO,
                version: None,
            }
        } else {
            let _admin = engine.inner.admin.lock().await;
            engine.inner.source.open(None).await?;
            resyncs_covered = engine.inner.source.status().resync_requests;
            let mode = if ours || (shared_writers && state.source.is_none()) {
                LoadMode::Guarded
            } else {
                if state.source.is_some() {
                    tracing::info!(
                        "Redis holds the cache of another source under this prefix; replacing it"
                    );
                }
                engine.inner.cache.reset().await?;
                if shared_writers {
                    LoadMode::Guarded
                } else {
                    LoadMode::Fresh
                }
            };
            // Plain pipelines are not guarded: keep the worker out meanwhile.
            let pause = match mode {
                LoadMode::Fresh => Some(engine.inner.sync.pause(engine.inner.pause_timeout).await?),
                LoadMode::Guarded => None,
            };
            let report = engine.load(mode, PrefetchReason::Start).await?;
            drop(pause);
            report
        };
        let healer = tokio::spawn(
            heal_loop(
                Arc::downgrade(&engine.inner),
                lost,
                config.heal_interval,
                resyncs_covered,
            )
            .instrument(tracing::info_span!("self_heal")),
        );
        *engine
            .inner
            .healer
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(healer);
        Ok((engine, report))
    }

    /// The cache, as this handle reads it.
    pub fn cache(&self) -> &PrefetchCache<C> {
        &self.reads
    }

    /// A handle on the same engine whose reads ([`read`](Self::read),
    /// [`ids`](Self::ids), [`entries`](Self::entries) and
    /// [`cache`](Self::cache)) go on `conn`; everything else is shared.
    /// A server that runs several event loops gives each one a connection
    /// of its own, so a read never wakes another thread.
    pub fn with_reader(&self, conn: C) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
            reads: self.reads.with_reader(conn),
        }
    }

    /// The source.
    pub fn source(&self) -> &Arc<S> {
        &self.inner.source
    }

    /// The sync worker's handle.
    pub fn sync(&self) -> &SyncHandle {
        &self.inner.sync
    }

    /// A new subscriber to the engine's event feed.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.inner.events.subscribe()
    }

    /// The engine's event feed.
    pub fn events(&self) -> &EventBus {
        &self.inner.events
    }

    /// Reads `id` through the cache (`HGETALL` + `TTL`, one round trip).
    /// Never touches the source.
    pub async fn read(&self, id: &str) -> Result<ReadResult> {
        let id = validate_id(id)?;
        let (lookup, ttl) = self.reads.get_with_ttl(id).await?;
        Ok(ReadResult {
            id: id.to_owned(),
            lookup,
            ttl,
        })
    }

    /// Deletes one cache key (simulates a lost sync event). Returns the
    /// trimmed id and whether the key existed.
    pub async fn invalidate(&self, id: &str) -> Result<(String, bool)> {
        let id = validate_id(id)?.to_owned();
        let existed = self.inner.cache.invalidate(&id).await?;
        self.inner.events.publish(|| Event::Invalidated {
            id: id.clone(),
            existed,
        });
        Ok((id, existed))
    }

    /// Deletes every cache key (simulates losing the cache), with the sync
    /// worker paused so it cannot recreate a key between `SCAN` and `DEL`.
    /// The cache's state stays, so this is not mistaken for a Redis that
    /// lost its data: the keys stay missing until a re-prefetch.
    pub async fn clear(&self) -> Result<usize> {
        let _admin = self.inner.admin.lock().await;
        let pause = self.inner.sync.pause(self.inner.pause_timeout).await?;
        let deleted = self.inner.cache.clear().await;
        pause.resume();
        let deleted = deleted?;
        self.inner.events.publish(|| Event::Cleared { deleted });
        Ok(deleted)
    }

    /// Rebuilds the cache from a fresh snapshot of the source while the
    /// sync worker keeps applying: every record is written through the
    /// version guard (a key a newer change already reached is left alone),
    /// then every key older than the snapshot is removed (records the source
    /// no longer has, orphans). Readers never miss a key that exists
    /// throughout.
    pub async fn reprefetch(&self) -> Result<PrefetchReport> {
        let _admin = self.inner.admin.lock().await;
        self.load(LoadMode::Guarded, PrefetchReason::Requested)
            .await
    }

    async fn load(&self, mode: LoadMode, reason: PrefetchReason) -> Result<PrefetchReport> {
        let started = Instant::now();
        let cache = &self.inner.cache;
        // Opened before the snapshot is taken: every change newer than the
        // snapshot is then applied inside the window and logged, so no
        // snapshot write can land on a key such a change reached and
        // something removed since.
        let window = match mode {
            LoadMode::Fresh => None,
            LoadMode::Guarded => Some(cache.open_window(WINDOW_LEASE).await?),
        };
        let report = self.load_in(mode, reason, started).await;
        if let Some(window) = window {
            let closed = window.close().await;
            if let (Err(e), Ok(_)) = (&closed, &report) {
                tracing::warn!(error = %e, "cannot close the snapshot window; it lapses by itself");
            }
        }
        report
    }

    async fn load_in(
        &self,
        mode: LoadMode,
        reason: PrefetchReason,
        started: Instant,
    ) -> Result<PrefetchReport> {
        let cache = &self.inner.cache;
        let snapshot = self.inner.source.snapshot().await?;
        let version = snapshot.version;
        let mut chunks = snapshot.chunks;
        // The first chunk tells what a record weighs: check the budget
        // before writing anything.
        let first = chunks.next().await.transpose()?;
        if let Some(first) = &first {
            let rows = snapshot.rows.unwrap_or(first.len() as u64);
            self.check_memory(first, rows, mode).await?;
        }
        cache.begin_load(version).await?;
        // Every slot's state is there again: a loss reported before now is
        // covered by this load.
        cache.take_state_lost();
        let mut loaded = 0;
        let mut pending = first;
        loop {
            let chunk = match pending.take() {
                Some(chunk) => chunk,
                None => match chunks.next().await {
                    Some(chunk) => chunk?,
                    None => break,
                },
            };
            loaded += match mode {
                LoadMode::Fresh => cache.bulk_load(&chunk, version).await?,
                LoadMode::Guarded => cache.write_snapshot(&chunk, version).await?,
            };
        }
        let swept = match mode {
            LoadMode::Fresh => 0,
            LoadMode::Guarded => cache.sweep(version).await?,
        };
        cache.finish_load(version).await?;
        self.inner
            .last_loaded
            .store(loaded as u64, std::sync::atomic::Ordering::Relaxed);
        if let Err(e) = self.inner.source.ack(version).await {
            tracing::warn!(error = %e, "cannot acknowledge the snapshot to the source");
        }
        self.inner.sync.mark_applied(version);
        if reason != PrefetchReason::Start {
            cache.counters().reprefetches.fetch_add(1, Relaxed);
        }
        let report = PrefetchReport {
            loaded,
            swept,
            elapsed: started.elapsed(),
            version: Some(version),
        };
        self.inner.events.publish(|| Event::Prefetched {
            loaded,
            swept,
            elapsed: report.elapsed,
            reason,
        });
        Ok(report)
    }

    /// Refuses (or warns) when writing `rows` records like `sample` would
    /// take Redis past its budget.
    async fn check_memory(
        &self,
        sample: &[crate::model::Record],
        rows: u64,
        mode: LoadMode,
    ) -> Result<()> {
        let info = self.inner.cache.memory().await?;
        if info.max == 0 || sample.is_empty() {
            return Ok(());
        }
        // Field bytes, the key, the version and hash fields, and Redis's
        // own overhead per small hash with a TTL (about 100 bytes on 7.0).
        let prefix = self.inner.cache.prefix().len() as u64;
        let bytes: u64 = sample
            .iter()
            .map(|r| {
                r.fields()
                    .iter()
                    .map(|(k, v)| (k.len() + v.len()) as u64)
                    .sum::<u64>()
                    + r.id().map_or(0, |id| id.len() as u64)
                    + prefix
                    + 150
            })
            .sum();
        let per_record = bytes / sample.len() as u64;
        let overwritten = match mode {
            LoadMode::Fresh => 0,
            LoadMode::Guarded => self
                .inner
                .last_loaded
                .load(std::sync::atomic::Ordering::Relaxed),
        };
        let needed = info.used + rows.saturating_sub(overwritten) * per_record;
        let headroom = self.inner.memory_headroom;
        let budget = (info.max as f64 * (1.0 - headroom)) as u64;
        if needed <= budget {
            return Ok(());
        }
        let err = crate::Error::MemoryBudget {
            needed,
            budget,
            max: info.max,
            headroom_pct: (headroom * 100.0).round() as u64,
        };
        match self.inner.memory_check {
            MemoryCheck::Refuse => Err(err),
            MemoryCheck::Warn => {
                tracing::warn!(error = %err, "loading anyway (--memory-check warn)");
                Ok(())
            }
        }
    }

    /// Redis memory against the budget, as last checked (every heal tick).
    pub fn memory(&self) -> Option<MemoryStatus> {
        self.inner
            .memory
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    async fn refresh_memory(&self) {
        if let Ok(info) = self.inner.cache.memory().await {
            let budget = (info.max as f64 * (1.0 - self.inner.memory_headroom)) as u64;
            *self.inner.memory.lock().unwrap_or_else(|p| p.into_inner()) = Some(MemoryStatus {
                used: info.used,
                budget,
                policy: info.policy,
            });
        }
    }

    /// Checks that Redis still holds this cache's state, and refills it when
    /// not. Returns what was wrong, if anything. Runs by itself every
    /// [`EngineConfig::heal_interval`] and whenever a write finds the state
    /// gone.
    pub async fn heal(&self) -> Result<Option<String>> {
        let Ok(_admin) = self.inner.admin.try_lock() else {
            return Ok(None); // a load is under way
        };
        // Read what the worker made durable before asking Redis: Redis must
        // hold at least that much.
        let applied = self.inner.sync.applied();
        let state = self.inner.cache.state().await?;
        let slot_lost = self.inner.cache.take_state_lost();
        let reason = lost_reason(&state, self.inner.cache.source_id(), applied).or_else(|| {
            slot_lost.then(|| {
                "a write found the cache's state gone in its slot (a cluster node lost its data)"
                    .to_owned()
            })
        });
        let Some(reason) = reason else {
            return Ok(None);
        };
        tracing::warn!(%reason, "Redis lost the cache's state; re-prefetching");
        self.inner.cache.counters().self_heals.fetch_add(1, Relaxed);
        self.inner.events.publish(|| Event::StateLost {
            reason: reason.clone(),
        });
        if state.source.is_some() && state.source.as_deref() != Some(self.inner.cache.source_id()) {
            self.inner.cache.reset().await?;
        }
        let report = self
            .load(LoadMode::Guarded, PrefetchReason::SelfHeal)
            .await?;
        tracing::info!(
            loaded = report.loaded,
            swept = report.swept,
            elapsed_ms = report.elapsed.as_secs_f64() * 1000.0,
            "cache refilled"
        );
        Ok(Some(reason))
    }

    /// Compares a fresh snapshot of the source with Redis and classifies
    /// every difference; with `repair`, writes the fixes through the version
    /// guard (safe while the worker runs). Keys found correct get their TTL
    /// refreshed. See [`ReconcileReport`].
    pub async fn reconcile(&self, repair: bool) -> Result<ReconcileReport> {
        let sync = self.inner.sync.clone();
        let source = self.inner.source.clone();
        let report = crate::reconcile::reconcile(
            &self.inner.cache,
            self.inner.source.as_ref(),
            repair,
            WINDOW_LEASE,
            |at| async move {
                // Changes the source had already sent get up to 5 s to land:
                // everything up to the snapshot's version, or up to the
                // newest sent if that is older (a source's positions need not
                // reach its snapshot versions). A paused worker lands nothing.
                let Some(head) = source.status().head else {
                    return;
                };
                if sync.state() == WorkerState::Paused {
                    return;
                }
                let _ = sync
                    .wait_applied(at.min(head), Duration::from_secs(5))
                    .await;
            },
        )
        .await?;
        *self
            .inner
            .last_reconcile
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some((SystemTime::now(), report.clone()));
        self.inner
            .events
            .publish(|| Event::Reconciled(Arc::new(report.clone())));
        Ok(report)
    }

    /// The last reconciliation's report, and when it finished.
    pub fn last_reconcile(&self) -> Option<(SystemTime, ReconcileReport)> {
        self.inner
            .last_reconcile
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Cached ids, sorted.
    pub async fn ids(&self) -> Result<Vec<String>> {
        self.reads.ids().await
    }

    /// Every cached record with its TTL, sorted by id.
    pub async fn entries(&self) -> Result<Vec<CachedEntry>> {
        self.reads.entries().await
    }

    /// What Redis holds about the cache's state.
    pub async fn state(&self) -> Result<CacheState> {
        self.inner.cache.state().await
    }

    /// Counters of the cache, the worker and the source.
    pub fn stats(&self) -> EngineStats {
        let source = self.inner.source.status();
        EngineStats {
            cache: self.inner.cache.stats(),
            worker: self.inner.sync.state(),
            backlog: source.backlog,
            behind: behind(&self.inner.sync, source.head),
            applied: self.inner.sync.applied(),
            source,
            memory: self.memory(),
        }
    }

    /// Zeroes the cache counters.
    pub fn reset_stats(&self) {
        self.inner.cache.reset_stats();
        self.inner.events.publish(|| Event::StatsReset);
    }

    /// Waits until every transaction the source has produced so far is
    /// durable in Redis.
    pub async fn settle(&self, timeout: Duration) -> Result<()> {
        match self.inner.source.status().head {
            Some(head) => self.inner.sync.wait_applied(head, timeout).await,
            None => Ok(()),
        }
    }

    /// Stops the self-healing check and the sync worker (draining what is
    /// ready, within `timeout`).
    pub async fn shutdown(&self, timeout: Duration) -> Result<()> {
        let healer = self
            .inner
            .healer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(healer) = healer {
            healer.abort();
        }
        self.inner.sync.stop(timeout).await
    }
}

/// Why `state` shows that Redis lost what the engine wrote, if it does.
fn lost_reason(state: &CacheState, source: &str, applied: Option<Version>) -> Option<String> {
    match state.source.as_deref() {
        None => Some("the cache's state is gone (Redis restarted empty or was flushed)".into()),
        Some(other) if other != source => Some(format!(
            "the cache's state now belongs to another source ({other})"
        )),
        Some(_) if state.loading.is_some() => {
            Some("a load was interrupted before it finished".into())
        }
        Some(_) if state.position < applied => Some(format!(
            "Redis is behind what was written (position {} < {})",
            state.position.map(|p| p.to_string()).unwrap_or_default(),
            applied.map(|p| p.to_string()).unwrap_or_default()
        )),
        Some(_) => None,
    }
}

async fn heal_loop<S, C>(
    engine: Weak<Inner<S, C>>,
    lost: Arc<Notify>,
    every: Duration,
    mut resyncs_seen: u64,
) where
    S: Source + ?Sized,
    C: crate::Connection,
{
    let every = every.max(Duration::from_millis(10));
    loop {
        tokio::select! {
            _ = lost.notified() => {}
            _ = tokio::time::sleep(every) => {}
        }
        let Some(inner) = engine.upgrade() else {
            return;
        };
        let engine = Engine {
            reads: inner.cache.clone(),
            inner,
        };
        engine.refresh_memory().await;
        let asked = engine.inner.source.status().resync_requests;
        if asked > resyncs_seen {
            tracing::info!("the source asked for a fresh snapshot; re-prefetching");
            match engine.reprefetch().await {
                Ok(_) => resyncs_seen = asked,
                Err(e) => {
                    tracing::warn!(error = %e, "re-prefetch the source asked for failed; will retry")
                }
            }
        }
        match engine.heal().await {
            Ok(_) => {}
            // Redis unreachable: the worker's retries say so already.
            Err(e) if e.is_unavailable() => tracing::debug!(error = %e, "state check failed"),
            Err(e) => tracing::warn!(error = %e, "self-healing failed; will retry"),
        }
    }
}
