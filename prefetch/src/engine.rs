//! [`Engine`]: the cache, the primary and the sync worker as one service.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager};
use tokio::sync::{Mutex, broadcast};

use crate::cache::{CacheConfig, CachedEntry, Lookup, PrefetchCache, Ttl};
use crate::error::Result;
use crate::events::{Event, EventBus};
use crate::model::{Change, Record, validate_id};
use crate::primary::{ChangeFeed, DEFAULT_READ_LATENCY, MockPrimary};
use crate::stats::Stats;
use crate::sync::{SyncConfig, SyncHandle, SyncWorker, WorkerState};

/// Everything [`Engine::start`] needs besides the Redis connection.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Key prefix and TTL.
    pub cache: CacheConfig,
    /// Simulated read latency of the mock primary.
    pub primary_read_latency: Duration,
    /// Sync worker tuning.
    pub sync: SyncConfig,
    /// How long admin operations wait for the sync worker to park.
    pub pause_timeout: Duration,
    /// Events buffered per feed subscriber before it is told it lagged.
    pub event_capacity: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            cache: CacheConfig::default(),
            primary_read_latency: DEFAULT_READ_LATENCY,
            sync: SyncConfig::default(),
            pause_timeout: Duration::from_secs(2),
            event_capacity: 4096,
        }
    }
}

/// The outcome of a (re-)prefetch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefetchReport {
    /// Records written to Redis.
    pub loaded: usize,
    /// Time for clear + primary read + bulk load.
    pub elapsed: Duration,
}

/// A read through the cache, with the key's TTL from the same round trip.
#[derive(Clone, Debug, PartialEq)]
pub struct ReadResult {
    /// The id that was read (trimmed).
    pub id: String,
    /// Record, hit flag and Redis latency.
    pub lookup: Lookup,
    /// Remaining TTL ([`Ttl::Missing`] on a miss).
    pub ttl: Ttl,
}

/// Cache counters plus the primary's and the worker's.
#[derive(Clone, Debug, PartialEq)]
pub struct EngineStats {
    /// The cache's counters.
    pub cache: Stats,
    /// Counted primary reads since the last reset.
    pub primary_reads_total: u64,
    /// The primary's simulated read latency.
    pub primary_read_latency: Duration,
    /// The sync worker's state.
    pub worker: WorkerState,
    /// Change events emitted by the primary but not yet applied.
    pub backlog: u64,
}

/// Primary and cache side by side, for dashboards.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// Every primary record, by id.
    pub primary: Vec<Record>,
    /// Primary sequence number the records include.
    pub primary_seq: u64,
    /// Every cached record with its TTL, by id.
    pub cache: Vec<CachedEntry>,
    /// Counters at the time of the snapshot.
    pub stats: EngineStats,
}

/// A running prefetch cache: [`PrefetchCache`], [`MockPrimary`] and
/// [`SyncWorker`] wired together, plus the admin operations that must
/// coordinate them. Cheap to clone; clones share everything.
///
/// Every surface of the product (HTTP API, server functions, tests, benches)
/// goes through these methods, so each behaviour exists once.
pub struct Engine<C = ConnectionManager> {
    inner: Arc<Inner<C>>,
}

struct Inner<C> {
    cache: PrefetchCache<C>,
    primary: MockPrimary,
    sync: SyncHandle,
    events: EventBus,
    /// Serialises clear and re-prefetch so two admins cannot interleave
    /// their pause/clear/load/resume sequences.
    admin: Mutex<()>,
    pause_timeout: Duration,
}

impl<C> Clone for Engine<C> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<C> std::fmt::Debug for Engine<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("cache", &self.inner.cache)
            .field("sync", &self.inner.sync)
            .finish_non_exhaustive()
    }
}

impl<C> Engine<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    /// Starts the engine over a seeded [`MockPrimary`]: clears the prefix,
    /// prefetches every record, then starts the sync worker.
    pub async fn start(conn: C, config: EngineConfig) -> Result<(Self, PrefetchReport)> {
        let events = EventBus::new(config.event_capacity);
        let (primary, feed) = MockPrimary::new(config.primary_read_latency, events.clone());
        Self::start_with(conn, primary, feed, events, config).await
    }

    /// Starts the engine over a primary of your own. `events` should be the
    /// bus the primary publishes to.
    pub async fn start_with(
        conn: C,
        primary: MockPrimary,
        feed: ChangeFeed,
        events: EventBus,
        config: EngineConfig,
    ) -> Result<(Self, PrefetchReport)> {
        let cache = PrefetchCache::new(conn, config.cache);
        let report = load(&cache, &primary).await?;
        // Changes made since the snapshot wait in the feed and apply next.
        let sync = SyncWorker::spawn(cache.clone(), feed, config.sync, events.clone());
        events.publish(|| Event::Prefetched {
            loaded: report.loaded,
            elapsed: report.elapsed,
        });
        let engine = Self {
            inner: Arc::new(Inner {
                cache,
                primary,
                sync,
                events,
                admin: Mutex::new(()),
                pause_timeout: config.pause_timeout,
            }),
        };
        Ok((engine, report))
    }

    /// The cache.
    pub fn cache(&self) -> &PrefetchCache<C> {
        &self.inner.cache
    }

    /// The primary.
    pub fn primary(&self) -> &MockPrimary {
        &self.inner.primary
    }

    /// The sync worker's handle.
    pub fn sync(&self) -> &SyncHandle {
        &self.inner.sync
    }

    /// A new subscriber to the engine's event feed.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.inner.events.subscribe()
    }

    /// Reads `id` through the cache (`HGETALL` + `TTL`, one round trip).
    /// Never touches the primary.
    pub async fn read(&self, id: &str) -> Result<ReadResult> {
        let id = validate_id(id)?;
        let (lookup, ttl) = self.inner.cache.get_with_ttl(id).await?;
        Ok(ReadResult {
            id: id.to_owned(),
            lookup,
            ttl,
        })
    }

    /// Updates one field in the primary; the sync worker carries it to Redis.
    pub fn update_field(&self, id: &str, field: &str, value: &str) -> Result<Change> {
        self.inner.primary.update_field(id, field, value)
    }

    /// Adds a record to the primary; the sync worker carries it to Redis.
    pub fn add(&self, record: Record) -> Result<Change> {
        self.inner.primary.add(record)
    }

    /// Deletes a record from the primary; the sync worker removes its key.
    pub fn delete(&self, id: &str) -> Result<Change> {
        self.inner.primary.delete(id)
    }

    /// Deletes one cache key (simulates a lost sync event). Returns whether
    /// it existed.
    pub async fn invalidate(&self, id: &str) -> Result<bool> {
        let id = validate_id(id)?;
        let existed = self.inner.cache.invalidate(id).await?;
        self.inner.events.publish(|| Event::Invalidated {
            id: id.to_owned(),
            existed,
        });
        Ok(existed)
    }

    /// Deletes every cache key (simulates losing the cache), with the sync
    /// worker paused so it cannot recreate a key between `SCAN` and `DEL`.
    pub async fn clear(&self) -> Result<usize> {
        let _admin = self.inner.admin.lock().await;
        let pause = self.inner.sync.pause(self.inner.pause_timeout).await?;
        let deleted = self.inner.cache.clear().await;
        pause.resume();
        let deleted = deleted?;
        self.inner.events.publish(|| Event::Cleared { deleted });
        Ok(deleted)
    }

    /// Rebuilds the cache from the primary: pause the worker, clear, read
    /// every record (one primary read), bulk load, resume. Events emitted
    /// meanwhile are applied after the load, in order, so the cache ends equal
    /// to the primary.
    pub async fn reprefetch(&self) -> Result<PrefetchReport> {
        let _admin = self.inner.admin.lock().await;
        let pause = self.inner.sync.pause(self.inner.pause_timeout).await?;
        let report = load(&self.inner.cache, &self.inner.primary).await;
        pause.resume();
        let report = report?;
        self.inner.events.publish(|| Event::Prefetched {
            loaded: report.loaded,
            elapsed: report.elapsed,
        });
        Ok(report)
    }

    /// Cached ids and primary ids, both sorted.
    pub async fn categories(&self) -> Result<(Vec<String>, Vec<String>)> {
        let cached = self.inner.cache.ids().await?;
        Ok((cached, self.inner.primary.list_ids()))
    }

    /// Counters of the cache, the primary and the worker.
    pub fn stats(&self) -> EngineStats {
        let primary = &self.inner.primary;
        EngineStats {
            cache: self.inner.cache.stats(),
            primary_reads_total: primary.reads(),
            primary_read_latency: primary.read_latency(),
            worker: self.inner.sync.state(),
            backlog: primary
                .last_seq()
                .saturating_sub(self.inner.sync.applied_seq()),
        }
    }

    /// Zeroes the cache counters and the primary read count.
    pub fn reset_stats(&self) {
        self.inner.cache.reset_stats();
        self.inner.primary.reset_reads();
        self.inner.events.publish(|| Event::StatsReset);
    }

    /// Primary and cache side by side (free on the primary, a `SCAN` plus
    /// pipelined reads on Redis).
    pub async fn snapshot(&self) -> Result<Snapshot> {
        let (primary, primary_seq) = self.inner.primary.inspect();
        let cache = self.inner.cache.entries().await?;
        Ok(Snapshot {
            primary,
            primary_seq,
            cache,
            stats: self.stats(),
        })
    }

    /// Waits until the sync worker has applied every change the primary has
    /// emitted so far.
    pub async fn settle(&self, timeout: Duration) -> Result<()> {
        let seq = self.inner.primary.last_seq();
        self.inner.sync.wait_applied(seq, timeout).await
    }

    /// Stops the sync worker (draining what is queued, within `timeout`).
    pub async fn shutdown(&self, timeout: Duration) -> Result<()> {
        self.inner.sync.stop(timeout).await
    }
}

/// Clear + one primary read + bulk load.
async fn load<C>(cache: &PrefetchCache<C>, primary: &MockPrimary) -> Result<PrefetchReport>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    let started = Instant::now();
    cache.clear().await?;
    let records = primary.list_records().await;
    let loaded = cache.bulk_load(&records).await?;
    Ok(PrefetchReport {
        loaded,
        elapsed: started.elapsed(),
    })
}
