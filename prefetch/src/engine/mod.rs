//! [`Engine`]: the cache, a source and the sync worker as one service, plus
//! the operations that coordinate them.
//!
//! | module | what |
//! |---|---|
//! | `reprefetch` | loads: the first one, re-prefetch without a pause, the memory budget |
//! | `heal` | self-healing: a Redis that lost the cache's state is noticed and refilled |
//! | `misses` | misses classified (deleted, absent, lost), lost keys restored, stale reads |
//! | `reconcile` | the source against Redis, differences classified and repaired |
//! | `ttl` | TTL renewal while sync is healthy; a refill when it comes back |

mod heal;
mod misses;
mod reconcile;
mod reprefetch;
mod ttl;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::{Notify, broadcast};
use tokio::task::JoinHandle;

use crate::cache::{CacheConfig, CacheState, CachedEntry, Lookup, PrefetchCache, Ttl};
use crate::error::Result;
use crate::events::{Event, EventBus};
use crate::model::{ReconcileReport, Version, WorkerState, validate_id};
use crate::source::{Source, SourceStatus};
use crate::stats::Stats;
use crate::sync::{SyncConfig, SyncHandle, behind};

pub use misses::{MissKind, RestoreLost};
pub use reprefetch::{MemoryCheck, MemoryStatus, PrefetchReport};
pub use ttl::RenewalStatus;

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
    /// Keep every cached key's TTL from running out while sync is healthy
    /// (see [`RenewalStatus`]); without it a row nobody changes expires
    /// after the TTL.
    pub renew_ttls: bool,
    /// When lost keys (the source has the row, the key is gone) are
    /// written back from the source.
    pub restore_lost: RestoreLost,
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
            renew_ttls: true,
            restore_lost: RestoreLost::Always,
        }
    }
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
    /// Why it missed (`None` on a hit).
    pub miss: Option<MissKind>,
}

/// The connections an engine runs on.
#[derive(Clone, Debug)]
pub struct Connections<C> {
    /// Reads (a server gives each event loop its own, see
    /// [`Engine::with_reader`]).
    pub reads: C,
    /// Loads, applies, sweeps, reconciliation.
    pub writes: C,
    /// Background work that must not queue ahead of reads or writes: TTL
    /// renewal.
    pub background: C,
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
    /// What TTL renewal is doing.
    pub renewal: RenewalStatus,
    /// When the last snapshot (the first load or a re-prefetch) finished.
    pub last_snapshot: Option<std::time::SystemTime>,
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
    renewer: Mutex<Option<JoinHandle<()>>>,
    repairer: Mutex<Option<JoinHandle<()>>>,
    repairs: misses::Repairs,
    restore_lost: RestoreLost,
    renewal: Mutex<RenewalStatus>,
    last_reconcile: Mutex<Option<(SystemTime, ReconcileReport)>>,
    memory: Mutex<Option<MemoryStatus>>,
    /// Records the last load wrote (what a re-prefetch overwrites).
    last_loaded: std::sync::atomic::AtomicU64,
    /// When the last load finished.
    last_snapshot: Mutex<Option<std::time::SystemTime>>,
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
    /// [`PrefetchCache::with_writer`]. TTL renewal shares the writer's.
    pub async fn start_with_writer(
        reads: C,
        writes: C,
        source: Arc<S>,
        events: EventBus,
        config: EngineConfig,
    ) -> Result<(Self, PrefetchReport)> {
        let connections = Connections {
            reads,
            background: writes.clone(),
            writes,
        };
        Self::start_on(connections, source, events, config).await
    }

    /// [`start`](Self::start) on three connections: reads, writes, and the
    /// background work that must not queue ahead of either (TTL renewal).
    pub async fn start_on(
        connections: Connections<C>,
        source: Arc<S>,
        events: EventBus,
        config: EngineConfig,
    ) -> Result<(Self, PrefetchReport)> {
        let Connections {
            reads,
            writes,
            background,
        } = connections;
        crate::keys::KeySpace::with_tables(
            config.cache.prefix.clone(),
            config.cache.tables.clone(),
        )
        .validate()?;
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
        // Whether the source resumes after the position Redis holds: asked
        // before the worker starts pulling, so that what it pulls first is
        // exactly what follows that position.
        let resumed = state.source.as_deref() == Some(cache.source_id())
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
        let engine = Self {
            reads: cache.clone(),
            inner: Arc::new(Inner {
                cache,
                sync,
                events,
                admin: tokio::sync::Mutex::new(()),
                pause_timeout: config.pause_timeout,
                healer: Mutex::new(None),
                renewer: Mutex::new(None),
                repairer: Mutex::new(None),
                repairs: misses::Repairs::new(),
                restore_lost: config.restore_lost,
                renewal: Mutex::new(RenewalStatus::default()),
                last_reconcile: Mutex::new(None),
                memory: Mutex::new(None),
                last_loaded: std::sync::atomic::AtomicU64::new(0),
                last_snapshot: Mutex::new(None),
                memory_check: config.memory_check,
                memory_headroom: config.memory_headroom.clamp(0.0, 0.9),
                source,
            }),
        };
        let (report, resyncs_covered) = engine
            .first_load(&state, resumed, config.shared_writers)
            .await?;
        engine.spawn_healer(lost, config.heal_interval, resyncs_covered);
        engine.spawn_misses(report.version.is_none());
        if config.renew_ttls {
            let renewer = ttl::spawn(&engine, background);
            *engine
                .inner
                .renewer
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(renewer);
        }
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
    /// Never waits for the source. A miss says why ([`MissKind`]); a lost
    /// key is queued to be restored in the background. A read that found
    /// an older value than a change already received from the source counts
    /// as stale ([`Stats::stale_reads`]).
    pub async fn read(&self, id: &str) -> Result<ReadResult> {
        let id = validate_id(id)?;
        let (lookup, ttl) = self.reads.get_with_ttl(id).await?;
        self.count_if_stale(id, &lookup);
        let miss = match lookup.record {
            Some(_) => None,
            None => Some(self.classify_miss(id, lookup.tombstone).await?),
        };
        Ok(ReadResult {
            id: id.to_owned(),
            lookup,
            ttl,
            miss,
        })
    }

    /// Deletes one cache key (simulates a lost sync event). Returns the
    /// trimmed id and whether the key existed.
    pub async fn invalidate(&self, id: &str) -> Result<(String, bool)> {
        let id = validate_id(id)?.to_owned();
        // Removed on purpose: left missing, not restored.
        self.inner.repairs.dropped(&id);
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
        self.inner.repairs.cleared();
        let deleted = self.inner.cache.clear().await;
        pause.resume();
        let deleted = deleted?;
        self.inner.events.publish(|| Event::Cleared { deleted });
        Ok(deleted)
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
            renewal: self.renewal(),
            last_snapshot: *self
                .inner
                .last_snapshot
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
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

    /// Read-your-writes: waits until every change up to `position` is in
    /// Redis, at most `timeout`. `position` is one the source gave for a
    /// commit ([`Source::parse_position`] reads it from its own notation,
    /// such as `pg_current_wal_lsn()` after a PostgreSQL commit). The
    /// worker wakes the waiters as it applies; nothing polls. Fails with
    /// [`Error::SettleTimeout`](crate::Error::SettleTimeout) when the wait
    /// runs out, [`Error::WorkerStopped`](crate::Error::WorkerStopped) when
    /// the worker has stopped.
    pub async fn wait_applied(&self, position: Version, timeout: Duration) -> Result<()> {
        self.inner.sync.wait_applied(position, timeout).await
    }

    /// Stops the self-healing check, TTL renewal, the restoring of lost
    /// keys and the sync worker (draining what is ready, within `timeout`).
    pub async fn shutdown(&self, timeout: Duration) -> Result<()> {
        let tasks = [
            &self.inner.healer,
            &self.inner.renewer,
            &self.inner.repairer,
        ];
        for task in tasks {
            let task = task.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(task) = task {
                task.abort();
            }
        }
        self.inner.sync.stop(timeout).await
    }
}
