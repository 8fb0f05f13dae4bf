//! [`PrefetchCache`]: the Redis side of the pattern.
//!
//! | module | what |
//! |---|---|
//! | `inspect` | a stored record read whatever its encoding: a hash, or a JSON document |
//! | `members` | which ids the source has: the membership filter misses are classified by |
//! | `read` | reads: `HGETALL` or `GET` (+ `TTL`), listing and peeking for dashboards |
//! | `scan` | the cached ids a page at a time, from a cursor |
//! | `write` | guarded writes: a batch of changes through the version guard, `WAIT` |
//! | `load` | loads and sweeps: plain bulk loads, snapshot writes, the sweep, load marks |
//! | `window` | snapshot windows: what keeps a snapshot write off a newer change |
//! | `state` | the cache's state in Redis, memory, invalidate, clear, reset |

mod inspect;
mod load;
mod members;
mod read;
mod scan;
mod state;
mod window;
mod write;

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use redis::Value;

use crate::cluster::{Connection, Part, Redis};
use crate::error::Result;
use crate::guard::{self, Guard};
use crate::keys::KeySpace;
use crate::stats::{Counters, Stats};

pub use members::MembershipStatus;
pub(crate) use read::Presence;
pub use read::{CachedEntry, Lookup, Ttl};
pub use scan::{ScanCursor, ScanPage};
pub use state::{CacheState, MemoryInfo};
pub use window::SnapshotWindow;
pub use write::BatchOutcome;

/// Default key prefix, as in the reference demos.
pub const DEFAULT_PREFIX: &str = "cache:category:";

/// Default safety-net TTL: one hour.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);

/// Default lifetime of a delete's tombstone: one day. A change older than a
/// delete that arrives later than this (and after no re-prefetch) could
/// bring the row back; reconciliation would then remove it.
pub const DEFAULT_TOMBSTONE_TTL: Duration = Duration::from_secs(24 * 3600);

/// Records per pipeline chunk in a fresh bulk load.
pub(crate) const BULK_CHUNK: usize = 512;

/// Records per guarded call while re-prefetching.
pub(crate) const GUARDED_CHUNK: usize = 256;

/// Guarded calls in flight at once while re-prefetching.
pub(crate) const GUARDED_IN_FLIGHT: usize = 16;

/// Keys asked for per `SCAN` page.
pub(crate) const SCAN_COUNT: usize = 1000;

/// Ids the membership filter keeps exactly by default (about 30 bytes
/// each); above, a Bloom filter.
pub const DEFAULT_MEMBERSHIP_EXACT_LIMIT: u64 = 50_000;

/// Calls in flight at once on a cluster, where a batch becomes one call
/// per slot.
pub(crate) const CLUSTER_IN_FLIGHT: usize = 256;

/// How a [`PrefetchCache`] names and expires its keys.
#[derive(Clone, Debug)]
pub struct CacheConfig {
    /// Prefix of every key (`{prefix}{id}`); may contain glob characters,
    /// must not start with `__pf:`.
    pub prefix: String,
    /// With several tables: each one's key prefix, under `prefix` (see
    /// [`KeySpace::with_tables`]); empty: every key under `prefix` is a
    /// record.
    pub tables: Vec<String>,
    /// Safety-net TTL set on every write. It bounds memory if sync stops; it
    /// is not a freshness mechanism. Whole seconds, at least one.
    pub ttl: Duration,
    /// Tables whose keys take a TTL of their own instead: (key prefix, TTL).
    pub table_ttls: Vec<(String, Duration)>,
    /// Tables whose records are stored as JSON documents (a string key;
    /// see [`JSON_FIELD`](crate::JSON_FIELD)) instead of hashes: key
    /// prefixes.
    pub json_tables: Vec<String>,
    /// How long a delete's tombstone keeps older changes from resurrecting
    /// the record.
    pub tombstone_ttl: Duration,
    /// Replicas of each written primary that must hold a batch (`WAIT`)
    /// before it counts as applied, and so before the source hears it is
    /// durable; 0 (the default) waits for none. Redis replicates
    /// asynchronously: without it, writes a primary acknowledged just
    /// before it died can be missing on the replica promoted in its place.
    pub wait_replicas: u32,
    /// How long each primary waits for them; then the batch fails
    /// ([`Error::NotReplicated`](crate::Error::NotReplicated)) and is
    /// retried, which changes nothing already applied.
    pub wait_timeout: Duration,
    /// Up to this many ids the membership filter (which tells a lost key
    /// from an id the source does not have) keeps them exactly; above, a
    /// Bloom filter of about 1.8 bytes per id.
    pub membership_exact_limit: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            prefix: DEFAULT_PREFIX.to_owned(),
            tables: Vec::new(),
            ttl: DEFAULT_TTL,
            table_ttls: Vec::new(),
            json_tables: Vec::new(),
            tombstone_ttl: DEFAULT_TOMBSTONE_TTL,
            wait_replicas: 0,
            wait_timeout: Duration::from_secs(1),
            membership_exact_limit: DEFAULT_MEMBERSHIP_EXACT_LIMIT,
        }
    }
}

/// A prefetch cache over one Redis connection.
///
/// Each record is a Redis hash at `{prefix}{id}` with a safety-net TTL and
/// its version. Reads are `HGETALL` on Redis and nothing else; there is
/// deliberately no path from here to the source. Cloning is cheap and clones
/// share counters.
///
/// `C` is any [`Connection`]: [`Redis`] (one node or a cluster, chosen at
/// run time) in production, or one of redis-rs's connections. On a Redis
/// Cluster a batch becomes one call per slot, each atomic on its own; on
/// one node it stays one atomic call.
pub struct PrefetchCache<C = Redis> {
    /// Reads.
    conn: C,
    /// Writes (the same connection unless [`with_writer`](Self::with_writer)
    /// gave another).
    writer: C,
    inner: Arc<Inner>,
}

struct Inner {
    keys: KeySpace,
    ttl_secs: u64,
    /// Tables with a TTL of their own: (key prefix, seconds).
    table_ttls: std::sync::RwLock<Arc<Vec<(String, u64)>>>,
    /// Tables whose records are JSON documents: key prefixes.
    json_tables: std::sync::RwLock<Arc<Vec<String>>>,
    tombstone_ttl_ms: u64,
    source: String,
    counters: Counters,
    wait_replicas: u32,
    wait_timeout: Duration,
    /// Set when a write found its state gone (`PFLOST`); on a cluster only
    /// the slots of a node that lost its data may be affected, while the
    /// main state looks fine.
    state_lost: std::sync::atomic::AtomicBool,
    /// Live writes Redis took but too few replicas acknowledged
    /// ([`Error::NotReplicated`](crate::Error::NotReplicated)): the retry
    /// finds them already held, and counts them once as applied.
    unreplicated: std::sync::Mutex<std::collections::HashSet<(String, crate::Version)>>,
    /// Which ids the source has.
    members: members::Membership,
}

impl<C: Clone> Clone for PrefetchCache<C> {
    fn clone(&self) -> Self {
        Self {
            conn: self.conn.clone(),
            writer: self.writer.clone(),
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<C> std::fmt::Debug for PrefetchCache<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrefetchCache")
            .field("prefix", &self.inner.keys.prefix())
            .field("ttl_secs", &self.inner.ttl_secs)
            .field("source", &self.inner.source)
            .finish_non_exhaustive()
    }
}

impl<C: Connection> PrefetchCache<C> {
    /// A cache writing through `conn` with the given naming and TTL, for the
    /// source identified by `source` (see [`Source::id`](crate::Source::id)).
    pub fn new(conn: C, config: CacheConfig, source: impl Into<String>) -> Self {
        Self {
            writer: conn.clone(),
            conn,
            inner: Arc::new(Inner {
                keys: KeySpace::with_tables(config.prefix, config.tables),
                ttl_secs: config.ttl.as_secs().max(1),
                table_ttls: std::sync::RwLock::new(Arc::new(
                    config
                        .table_ttls
                        .into_iter()
                        .map(|(prefix, ttl)| (prefix, ttl.as_secs().max(1)))
                        .collect(),
                )),
                json_tables: std::sync::RwLock::new(Arc::new(config.json_tables)),
                tombstone_ttl_ms: u64::try_from(config.tombstone_ttl.as_millis())
                    .unwrap_or(u64::MAX)
                    .max(1),
                source: source.into(),
                counters: Counters::default(),
                wait_replicas: config.wait_replicas,
                wait_timeout: config.wait_timeout,
                state_lost: std::sync::atomic::AtomicBool::new(false),
                unreplicated: std::sync::Mutex::default(),
                members: members::Membership::new(config.membership_exact_limit),
            }),
        }
    }

    /// The same cache (same counters, same writer) reading on `conn`: one
    /// per event loop of a server, so that a read's reply wakes no other
    /// thread.
    #[must_use]
    pub fn with_reader(&self, conn: C) -> Self {
        Self {
            conn,
            writer: self.writer.clone(),
            inner: Arc::clone(&self.inner),
        }
    }

    /// The same cache writing through its own connection: loads, applies,
    /// sweeps and clears go to `writer`, reads stay on the first one. Redis
    /// answers one connection's commands in order, so on a single
    /// connection a read waits behind every write queued before it (a
    /// re-prefetch queues many); on two it waits at most for the command
    /// Redis is running.
    #[must_use]
    pub fn with_writer(mut self, writer: C) -> Self {
        self.writer = writer;
        self
    }

    /// Which ids the source has, as far as this cache saw.
    pub(crate) fn members(&self) -> &members::Membership {
        &self.inner.members
    }

    /// The membership filter's shape.
    pub fn membership(&self) -> MembershipStatus {
        self.inner.members.status()
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        self.inner.keys.prefix()
    }

    /// The safety-net TTL applied on every write (of a table without a
    /// TTL of its own).
    pub fn ttl_config(&self) -> Duration {
        Duration::from_secs(self.inner.ttl_secs)
    }

    /// The TTL a write of the key `key` sets: its table's own, or
    /// [`ttl_config`](Self::ttl_config).
    pub fn ttl_of(&self, key: &str) -> Duration {
        Duration::from_secs(guard::ttl_of(&self.table_ttls(), self.inner.ttl_secs, key))
    }

    /// The shortest TTL any key gets: TTL renewal runs often enough for it.
    pub fn shortest_ttl(&self) -> Duration {
        let own = self.table_ttls().iter().map(|(_, t)| *t).min();
        Duration::from_secs(own.map_or(self.inner.ttl_secs, |t| t.min(self.inner.ttl_secs)))
    }

    /// Gives the keys under `prefix` (a table's) a TTL of their own from
    /// the next write or renewal on (`None`: the cache's).
    pub fn set_table_ttl(&self, prefix: &str, ttl: Option<Duration>) {
        let mut ttls = self
            .inner
            .table_ttls
            .write()
            .unwrap_or_else(|p| p.into_inner());
        let mut next: Vec<(String, u64)> =
            ttls.iter().filter(|(p, _)| p != prefix).cloned().collect();
        if let Some(ttl) = ttl {
            next.push((prefix.to_owned(), ttl.as_secs().max(1)));
        }
        *ttls = Arc::new(next);
    }

    /// Stores the records under `prefix` (a table's) as JSON documents
    /// (`true`) or hashes from their next write on.
    pub fn set_table_json(&self, prefix: &str, json: bool) {
        let mut tables = self
            .inner
            .json_tables
            .write()
            .unwrap_or_else(|p| p.into_inner());
        let mut next: Vec<String> = tables.iter().filter(|p| *p != prefix).cloned().collect();
        if json {
            next.push(prefix.to_owned());
        }
        *tables = Arc::new(next);
    }

    /// Whether the record at `key` is stored as a JSON document.
    pub fn is_json(&self, key: &str) -> bool {
        guard::is_json(&self.json_tables(), key)
    }

    pub(crate) fn json_tables(&self) -> Arc<Vec<String>> {
        Arc::clone(
            &self
                .inner
                .json_tables
                .read()
                .unwrap_or_else(|p| p.into_inner()),
        )
    }

    pub(crate) fn table_ttls(&self) -> Arc<Vec<(String, u64)>> {
        Arc::clone(
            &self
                .inner
                .table_ttls
                .read()
                .unwrap_or_else(|p| p.into_inner()),
        )
    }

    /// The Redis key of `id`.
    pub fn key(&self, id: &str) -> String {
        self.inner.keys.key(id)
    }

    /// The key naming of this cache.
    pub fn key_space(&self) -> &KeySpace {
        &self.inner.keys
    }

    /// The source this cache's state belongs to.
    pub fn source_id(&self) -> &str {
        &self.inner.source
    }

    /// The state a call over `slot`'s records checks: the main state on
    /// one node, the slot's copy on a cluster.
    fn meta_for(&self, slot: Option<u16>) -> String {
        match slot {
            Some(s) => self.inner.keys.slot_meta_key(s),
            None => self.inner.keys.meta_key().to_owned(),
        }
    }

    /// The snapshot window's log beside [`meta_for`](Self::meta_for).
    fn window_for(&self, slot: Option<u16>) -> String {
        match slot {
            Some(s) => self.inner.keys.slot_window_key(s),
            None => self.inner.keys.window_key(),
        }
    }

    fn guard(&self) -> Guard<'_> {
        Guard {
            keys: &self.inner.keys,
            source: &self.inner.source,
            ttl_secs: self.inner.ttl_secs,
            table_ttls: self.table_ttls(),
            json_tables: self.json_tables(),
            tombstone_ttl_ms: self.inner.tombstone_ttl_ms,
        }
    }

    /// The counters since the last reset.
    pub fn stats(&self) -> Stats {
        self.inner.counters.snapshot()
    }

    /// The reads and changes of each table since the last reset, when the
    /// cache holds several (empty otherwise), in the key space's order.
    pub fn table_stats(&self) -> Vec<crate::TableStats> {
        self.inner
            .counters
            .tables
            .snapshot(&self.inner.keys.tables())
    }

    /// The latency and batch-size distributions, for metrics.
    pub fn histograms(&self) -> crate::stats::Histograms {
        self.inner.counters.histograms()
    }

    /// Zeroes every counter.
    pub fn reset_stats(&self) {
        self.inner.counters.reset();
    }

    pub(crate) fn counters(&self) -> &Counters {
        &self.inner.counters
    }

    /// A clone of the reads' connection, for callers that add commands of
    /// their own.
    pub fn connection(&self) -> C {
        self.conn.clone()
    }

    /// A clone of the writes' connection (also for background bulk reads,
    /// which should not queue ahead of a user's read).
    pub(crate) fn writer(&self) -> C {
        self.writer.clone()
    }
}

/// The `retry` of a part of `FCALL`s: each through [`guard::fcall`]
/// (reloading the library if the node lacks it; `PFLOST` becomes
/// [`Error::StateLost`](crate::Error::StateLost)).
pub(crate) fn fcall_part<C: Connection>(
    mut conn: C,
    part: Part,
) -> BoxFuture<'static, Result<Vec<Value>>> {
    Box::pin(async move {
        let mut out = Vec::with_capacity(part.cmds.len());
        for cmd in &part.cmds {
            out.push(guard::fcall::<_, Value>(&mut conn, cmd).await?);
        }
        Ok(out)
    })
}
