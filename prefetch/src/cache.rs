//! [`PrefetchCache`]: the Redis side of the pattern.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use redis::{Cmd, Pipeline, Value};

use crate::apply::{self, Guard, Mode, Stored, Write};
use crate::conn::{self, Connection, Part, Redis};
use crate::error::Result;
use crate::events::WriteOutcome;
use crate::keys::{KeySpace, SLOTS, Tombstone};
use crate::model::{Change, ChangeKind, Fields, Record, Version};
use crate::stats::{Counters, Stats};

/// Default key prefix, as in the reference demos.
pub const DEFAULT_PREFIX: &str = "cache:category:";
/// Default safety-net TTL: one hour.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);
/// Default lifetime of a delete's tombstone: one day. A change older than a
/// delete that arrives later than this (and after no re-prefetch) could
/// bring the row back; reconciliation would then remove it.
pub const DEFAULT_TOMBSTONE_TTL: Duration = Duration::from_secs(24 * 3600);
/// Records per pipeline chunk in a fresh bulk load.
const BULK_CHUNK: usize = 512;
/// Records per guarded call while re-prefetching.
const GUARDED_CHUNK: usize = 256;
/// Guarded calls in flight at once while re-prefetching.
const GUARDED_IN_FLIGHT: usize = 16;
/// Keys asked for per `SCAN` page.
const SCAN_COUNT: usize = 1000;
/// Calls in flight at once on a cluster, where a batch becomes one call
/// per slot.
const CLUSTER_IN_FLIGHT: usize = 256;

/// How a [`PrefetchCache`] names and expires its keys.
#[derive(Clone, Debug)]
pub struct CacheConfig {
    /// Prefix of every key (`{prefix}{id}`); may contain glob characters,
    /// must not start with `__pf:`.
    pub prefix: String,
    /// Safety-net TTL set on every write. It bounds memory if sync stops; it
    /// is not a freshness mechanism. Whole seconds, at least one.
    pub ttl: Duration,
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
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            prefix: DEFAULT_PREFIX.to_owned(),
            ttl: DEFAULT_TTL,
            tombstone_ttl: DEFAULT_TOMBSTONE_TTL,
            wait_replicas: 0,
            wait_timeout: Duration::from_secs(1),
        }
    }
}

/// Remaining lifetime of a key, with Redis `TTL` semantics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ttl {
    /// The key does not exist (`TTL` answers -2).
    Missing,
    /// The key exists without an expiry (`TTL` answers -1).
    Persistent,
    /// Whole seconds left.
    Seconds(u64),
}

impl Ttl {
    /// The value `TTL` would answer: -2, -1, or the seconds left.
    ///
    /// ```
    /// use prefetch::Ttl;
    /// assert_eq!(Ttl::Missing.as_redis(), -2);
    /// assert_eq!(Ttl::Seconds(7).as_redis(), 7);
    /// ```
    pub fn as_redis(self) -> i64 {
        match self {
            Ttl::Missing => -2,
            Ttl::Persistent => -1,
            Ttl::Seconds(s) => i64::try_from(s).unwrap_or(i64::MAX),
        }
    }

    fn from_redis(v: i64) -> Self {
        match v {
            -1 => Ttl::Persistent,
            v if v < 0 => Ttl::Missing,
            v => Ttl::Seconds(v.unsigned_abs()),
        }
    }
}

/// The answer to a read.
#[derive(Clone, Debug, PartialEq)]
pub struct Lookup {
    /// The cached record, or `None` on a miss.
    pub record: Option<Record>,
    /// Time spent waiting for Redis (one round trip).
    pub redis_latency: Duration,
}

impl Lookup {
    /// Whether the key was found.
    pub fn hit(&self) -> bool {
        self.record.is_some()
    }
}

/// One cached key with its fields, remaining TTL and stored metadata.
#[derive(Clone, Debug, PartialEq)]
pub struct CachedEntry {
    /// The record id (key without prefix).
    pub id: String,
    /// The record's fields (metadata removed).
    pub fields: Fields,
    /// Remaining TTL.
    pub ttl: Ttl,
    /// The version of the change that wrote it (`None`: written outside the
    /// pipeline).
    pub version: Option<Version>,
    /// Whether the fields still hash to what the pipeline wrote (`false`:
    /// someone changed the hash outside the pipeline).
    pub intact: bool,
}

/// What the cache's state hash in Redis says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CacheState {
    /// The source the state belongs to (`None`: no state at all).
    pub source: Option<String>,
    /// Position up to which every change is in Redis.
    pub position: Option<Version>,
    /// No write older than this applies (the last snapshot's version).
    pub floor: Option<Version>,
    /// A load of this snapshot version started and has not finished.
    pub loading: Option<Version>,
}

/// What Redis says about its memory (`INFO memory`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemoryInfo {
    /// `used_memory`, in bytes.
    pub used: u64,
    /// `maxmemory`, in bytes (0: no limit).
    pub max: u64,
    /// `maxmemory_policy` (`noeviction`, `allkeys-lru`, …).
    pub policy: String,
}

impl MemoryInfo {
    /// Whether Redis may evict this cache's keys on its own (any policy but
    /// `noeviction`: the keys carry a TTL, so `volatile-*` can pick them
    /// too). A prefetch cache never falls back to the source, so an evicted
    /// key is a silent miss.
    pub fn may_evict(&self) -> bool {
        self.policy != "noeviction"
    }
}

/// What [`PrefetchCache::apply_batch`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Changes applied, counting each change superseded by a newer one for
    /// the same id in the same batch (its effect is contained in the newer).
    pub applied: usize,
    /// Changes the version guard refused (Redis held the same or newer).
    pub stale: usize,
    /// Malformed changes skipped (see [`Change::is_malformed`]).
    pub skipped: usize,
    /// Indices into the input of the changes sent to Redis (the newest
    /// well-formed change of each id), in input order, with what the guard
    /// did with each.
    pub written: Vec<(usize, WriteOutcome)>,
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
    tombstone_ttl_ms: u64,
    source: String,
    counters: Counters,
    wait_replicas: u32,
    wait_timeout: Duration,
    /// Set when a write found its state gone (`PFLOST`); on a cluster only
    /// the slots of a node that lost its data may be affected, while the
    /// main state looks fine.
    state_lost: std::sync::atomic::AtomicBool,
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
                keys: KeySpace::new(config.prefix),
                ttl_secs: config.ttl.as_secs().max(1),
                tombstone_ttl_ms: u64::try_from(config.tombstone_ttl.as_millis())
                    .unwrap_or(u64::MAX)
                    .max(1),
                source: source.into(),
                counters: Counters::default(),
                wait_replicas: config.wait_replicas,
                wait_timeout: config.wait_timeout,
                state_lost: std::sync::atomic::AtomicBool::new(false),
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

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        self.inner.keys.prefix()
    }

    /// The safety-net TTL applied on every write.
    pub fn ttl_config(&self) -> Duration {
        Duration::from_secs(self.inner.ttl_secs)
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

    /// Runs `make(state key, is a slot's copy)` on the main state, then on
    /// a cluster on every slot's copy of it.
    async fn on_every_state(&self, make: impl Fn(&str, bool) -> Cmd) -> Result<()> {
        self.on_every_window(|(meta, _), slot| make(meta, slot))
            .await
    }

    /// Runs `make((state key, window log key), is a slot's copy)` on the
    /// main state, then on a cluster on every slot's copy of it.
    async fn on_every_window(&self, make: impl Fn((&str, &str), bool) -> Cmd) -> Result<()> {
        let main = (self.inner.keys.meta_key(), &*self.inner.keys.window_key());
        apply::fcall::<_, Value>(&mut self.writer.clone(), &make(main, false)).await?;
        if self.writer.is_cluster() {
            let parts = (0..SLOTS)
                .map(|s| {
                    let slot = (
                        &*self.inner.keys.slot_meta_key(s),
                        &*self.inner.keys.slot_window_key(s),
                    );
                    Part {
                        slot: Some(s),
                        cmds: vec![make(slot, true)],
                    }
                })
                .collect();
            conn::run_parts(&self.writer, parts, CLUSTER_IN_FLIGHT, fcall_part).await?;
        }
        Ok(())
    }

    /// Opens a snapshot window for `lease` (see [`SnapshotWindow`]): from
    /// now until it closes, every change the guard applies is also logged,
    /// so that a snapshot taken after this call never writes a key that a
    /// newer change reached before something removed it (an invalidate, a
    /// clear, a `DEL` from outside, expiry, eviction). Snapshot writes
    /// ([`write_snapshot`](Self::write_snapshot)) are refused outside a
    /// window.
    pub async fn open_window(&self, lease: Duration) -> Result<SnapshotWindow<C>> {
        let guard = self.guard();
        self.on_every_window(|keys, _| guard.window(keys, true, lease))
            .await?;
        let renewer = {
            let cache = self.clone();
            tokio::spawn(async move {
                let every = (lease / 3).max(Duration::from_millis(10));
                loop {
                    tokio::time::sleep(every).await;
                    let guard = cache.guard();
                    let renewed = cache
                        .on_every_window(|keys, _| guard.window(keys, false, lease))
                        .await;
                    if let Err(e) = renewed {
                        tracing::warn!(error = %e, "cannot renew the snapshot window");
                    }
                }
            })
        };
        Ok(SnapshotWindow {
            cache: self.clone(),
            renewer: Some(renewer),
        })
    }

    /// Sends `writes` through the version guard and returns 1 (applied) or
    /// 0 (stale) for each. On one node they go out in runs of `chunk` (all
    /// in one atomic call when `None`, which then also moves the position);
    /// on a cluster, one call per slot, and the position moves only once
    /// every slot's call succeeded.
    async fn guarded(
        &self,
        mode: Mode,
        position: Option<Version>,
        writes: &[Write<'_>],
        chunk: Option<usize>,
    ) -> Result<Vec<i64>> {
        let guard = self.guard();
        let keys: Vec<String> = writes.iter().map(|w| self.key(w.id)).collect();
        let cluster = self.writer.is_cluster();
        let chunk = if cluster {
            Some(chunk.unwrap_or(GUARDED_CHUNK))
        } else {
            chunk
        };
        let parts = conn::split(&self.writer, &keys, chunk);
        let inline_position = !cluster && parts.len() == 1;
        let in_flight = if cluster {
            CLUSTER_IN_FLIGHT
        } else {
            GUARDED_IN_FLIGHT
        };
        let calls: Vec<Part> = parts
            .iter()
            .map(|(slot, ids)| {
                let part: Vec<Write<'_>> = ids.iter().map(|&i| writes[i]).collect();
                let at = if inline_position { position } else { None };
                Part {
                    slot: *slot,
                    cmds: vec![guard.apply(
                        (&self.meta_for(*slot), &self.window_for(*slot)),
                        mode,
                        at,
                        &part,
                    )],
                }
            })
            .collect();
        let replies =
            self.noting_loss(conn::run_parts(&self.writer, calls, in_flight, fcall_part).await)?;
        let mut out = vec![0; writes.len()];
        for ((_, ids), reply) in parts.iter().zip(replies) {
            let reply: Vec<i64> = match reply.into_iter().next() {
                Some(v) => redis::from_redis_value(v).map_err(redis::RedisError::from)?,
                None => Vec::new(),
            };
            for (&i, r) in ids.iter().zip(reply) {
                out[i] = r;
            }
        }
        if position.is_some() && !inline_position {
            let main = (self.inner.keys.meta_key(), &*self.inner.keys.window_key());
            let cmd = guard.apply(main, mode, position, &[]);
            apply::fcall::<_, Vec<i64>>(&mut self.writer.clone(), &cmd).await?;
        }
        self.replicated().await?;
        Ok(out)
    }

    /// With [`CacheConfig::wait_replicas`], waits until that many replicas
    /// of every primary hold what this cache's writer wrote (`WAIT` on the
    /// writer's connection to each primary: it covers every write sent on
    /// it before).
    async fn replicated(&self) -> Result<()> {
        let wanted = self.inner.wait_replicas;
        if wanted == 0 {
            return Ok(());
        }
        let timeout = self.inner.wait_timeout;
        let ms = u64::try_from(timeout.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let mut acked = u32::MAX;
        for mut node in self.writer.primaries().await? {
            let n: u32 = redis::cmd("WAIT")
                .arg(wanted)
                .arg(ms)
                .query_async(&mut node)
                .await?;
            acked = acked.min(n);
        }
        if acked < wanted {
            return Err(crate::Error::NotReplicated {
                wanted,
                acked,
                timeout,
            });
        }
        Ok(())
    }

    /// Remembers a [`StateLost`](crate::Error::StateLost) on its way out.
    fn noting_loss<T>(&self, result: Result<T>) -> Result<T> {
        if let Err(crate::Error::StateLost) = &result {
            self.inner.state_lost.store(true, Relaxed);
        }
        result
    }

    /// Whether a write found this cache's state gone since the last call
    /// (and forgets it). On a Redis Cluster a node that lost its data loses
    /// only its slots' copies of the state, so this, not
    /// [`state`](Self::state), tells.
    pub fn take_state_lost(&self) -> bool {
        self.inner.state_lost.swap(false, Relaxed)
    }

    fn guard(&self) -> Guard<'_> {
        Guard {
            keys: &self.inner.keys,
            source: &self.inner.source,
            ttl_secs: self.inner.ttl_secs,
            tombstone_ttl_ms: self.inner.tombstone_ttl_ms,
        }
    }

    /// Loads the cache's Redis function library (also done by itself when
    /// a call finds it missing).
    pub async fn load_library(&self) -> Result<()> {
        apply::load_library(&mut self.writer.clone()).await
    }

    /// What Redis holds about this cache's state.
    pub async fn state(&self) -> Result<CacheState> {
        let (source, position, floor, loading): (
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
        ) = redis::cmd("HMGET")
            .arg(self.inner.keys.meta_key())
            .arg(&["source", "pos", "floor", "loading"])
            .query_async(&mut self.conn.clone())
            .await?;
        let parse = |v: Option<String>| v.and_then(|v| v.parse().ok());
        Ok(CacheState {
            source,
            position: parse(position),
            floor: parse(floor),
            loading: parse(loading),
        })
    }

    /// Writes every record that has an id at `version`, replacing any
    /// previous hash, in pipelined round trips (`DEL` + `HSET` + `EXPIRE` per
    /// record, 512 records per pipeline, all sent before any reply is
    /// awaited). Not version-guarded: for a cache nothing else writes to yet
    /// (see [`Engine`](crate::Engine) for the guarded re-prefetch). Returns
    /// how many records were written.
    ///
    /// Being one round trip, the whole load must fit in the connection's
    /// response timeout (redis-rs defaults to 500 ms; 100,000 records take
    /// a few hundred ms on loopback), so configure it for large sets.
    pub async fn bulk_load<'r, I>(&self, records: I, version: Version) -> Result<usize>
    where
        I: IntoIterator<Item = &'r Record>,
    {
        let records: Vec<(&str, &Fields)> = records
            .into_iter()
            .filter_map(|r| Some((r.id()?, r.fields())))
            .collect();
        let version = version.to_string();
        let keys: Vec<String> = records.iter().map(|(id, _)| self.key(id)).collect();
        // Chunks go out back to back on the one connection without waiting
        // for replies (still one round trip of latency), so packing later
        // chunks overlaps Redis executing earlier ones. On a cluster a
        // pipeline keeps to one slot.
        let parts: Vec<Part> = conn::split(&self.writer, &keys, Some(BULK_CHUNK))
            .into_iter()
            .map(|(slot, ids)| {
                let mut pipe = redis::pipe();
                for i in ids {
                    let (id, fields) = records[i];
                    self.push_fresh(&mut pipe, id, fields, &version);
                }
                Part {
                    slot,
                    cmds: pipe.cmd_iter().cloned().collect(),
                }
            })
            .collect();
        let all = parts.len();
        conn::run_parts(&self.writer, parts, all, conn::as_pipeline).await?;
        self.replicated().await?;
        let loaded = records.len();
        self.inner
            .counters
            .prefetched
            .fetch_add(loaded as u64, Relaxed);
        Ok(loaded)
    }

    fn push_fresh(&self, pipe: &mut Pipeline, id: &str, fields: &Fields, version: &str) {
        let key = self.key(id);
        pipe.del(&key).ignore();
        pipe.cmd("HSET")
            .arg(&key)
            .arg(fields)
            .arg(apply::VERSION_FIELD)
            .arg(version)
            .arg(apply::HASH_FIELD)
            .arg(apply::hash_text(fields))
            .ignore();
        pipe.expire(&key, self.inner.ttl_secs as i64).ignore();
    }

    /// Reads one record: a single `HGETALL`, never the source. Counts a hit
    /// or a miss.
    pub async fn get(&self, id: &str) -> Result<Lookup> {
        let cmd = hgetall(&self.key(id));
        let started = Instant::now();
        let fields: Fields = cmd.query_async(&mut self.conn.clone()).await?;
        let redis_latency = started.elapsed();
        Ok(self.count_lookup(fields, redis_latency))
    }

    /// Reads one record and its TTL in one round trip (`HGETALL` and `TTL`
    /// pipelined). Counts a hit or a miss exactly like [`get`](Self::get).
    pub async fn get_with_ttl(&self, id: &str) -> Result<(Lookup, Ttl)> {
        let key = self.key(id);
        let mut pipe = redis::pipe();
        pipe.add_command(hgetall(&key)).cmd("TTL").arg(&key);
        let started = Instant::now();
        let (fields, ttl): (Fields, i64) = pipe.query_async(&mut self.conn.clone()).await?;
        let redis_latency = started.elapsed();
        let lookup = self.count_lookup(fields, redis_latency);
        let ttl = if lookup.hit() {
            Ttl::from_redis(ttl)
        } else {
            Ttl::Missing
        };
        Ok((lookup, ttl))
    }

    fn count_lookup(&self, raw: Fields, redis_latency: Duration) -> Lookup {
        self.inner.counters.reads.record(redis_latency);
        let record = Stored::split(raw).into_record_fields().map(Record::new);
        let counter = if record.is_some() {
            &self.inner.counters.hits
        } else {
            &self.inner.counters.misses
        };
        counter.fetch_add(1, Relaxed);
        Lookup {
            record,
            redis_latency,
        }
    }

    /// Applies changes in one atomic call of the version guard, and moves
    /// the stored position to `position` in the same step.
    ///
    /// Each change applies only when its version is newer than what Redis
    /// holds for the key (record or tombstone) and not older than the last
    /// snapshot. An upsert replaces the whole hash (a dropped field
    /// disappears) and refreshes its TTL; a delete leaves a tombstone. Only
    /// the newest change per id is sent; the ones it supersedes count as
    /// applied. Malformed changes are skipped and counted, never sent.
    ///
    /// Fails with [`Error::StateLost`](crate::Error::StateLost) (writing nothing) when Redis no longer
    /// holds this cache's state. On any error nothing is counted and the
    /// whole batch may be retried: applying it again changes nothing.
    pub async fn apply_batch(
        &self,
        changes: &[Change],
        position: Option<Version>,
    ) -> Result<BatchOutcome> {
        let refs: Vec<&Change> = changes.iter().collect();
        self.apply_changes(&refs, position).await
    }

    /// [`apply_batch`](Self::apply_batch) over borrowed changes.
    pub(crate) async fn apply_changes(
        &self,
        changes: &[&Change],
        position: Option<Version>,
    ) -> Result<BatchOutcome> {
        if let Some(at) = changes.iter().position(|c| c.kind == ChangeKind::Truncate) {
            // Everything before a truncate, then the truncate (a sweep at
            // its version), then the rest, in order.
            let mut outcome = Box::pin(self.apply_changes(&changes[..at], None)).await?;
            // Nothing older than the truncate applies from now on, even if
            // it arrives later (out of order, from another applier); raised
            // before the sweep, so nothing older lands behind its cursor.
            let guard = self.guard();
            let version = changes[at].version;
            self.on_every_state(|meta, _| guard.floor(meta, version))
                .await?;
            let swept = self.sweep(changes[at].version).await?;
            tracing::debug!(swept, version = %changes[at].version, "truncate applied");
            outcome.applied += 1;
            self.inner.counters.applied.fetch_add(1, Relaxed);
            let rest = Box::pin(self.apply_changes(&changes[at + 1..], position)).await?;
            outcome.applied += rest.applied;
            outcome.stale += rest.stale;
            outcome.skipped += rest.skipped;
            outcome
                .written
                .extend(rest.written.into_iter().map(|(i, o)| (i + at + 1, o)));
            return Ok(outcome);
        }
        let mut outcome = BatchOutcome::default();
        let mut newest: HashMap<&str, usize> = HashMap::with_capacity(changes.len());
        for (i, change) in changes.iter().enumerate() {
            if change.is_malformed() {
                outcome.skipped += 1;
                continue;
            }
            newest
                .entry(change.id.as_str())
                .and_modify(|j| {
                    if changes[*j].version <= change.version {
                        *j = i;
                    }
                })
                .or_insert(i);
        }
        let mut sent: Vec<usize> = newest.into_values().collect();
        sent.sort_unstable();
        if sent.is_empty() && position.is_none() {
            self.count_outcome(&outcome);
            return Ok(outcome);
        }
        let writes: Vec<Write<'_>> = sent
            .iter()
            .map(|&i| {
                let c = &changes[i];
                Write {
                    id: &c.id,
                    version: c.version,
                    fields: match &c.kind {
                        ChangeKind::Upsert(f) => Some(f.as_ref()),
                        ChangeKind::Delete | ChangeKind::Truncate => None,
                    },
                }
            })
            .collect();
        let results = self.guarded(Mode::Live, position, &writes, None).await?;
        let superseded = changes.len() - outcome.skipped - sent.len();
        outcome.applied = superseded;
        for (&i, r) in sent.iter().zip(results) {
            let o = if r == 1 {
                outcome.applied += 1;
                WriteOutcome::Applied
            } else {
                outcome.stale += 1;
                WriteOutcome::Stale
            };
            outcome.written.push((i, o));
        }
        self.count_outcome(&outcome);
        if !sent.is_empty() {
            self.inner.counters.batches.fetch_add(1, Relaxed);
            self.inner
                .counters
                .batch
                .record(Duration::from_micros(changes.len() as u64));
        }
        Ok(outcome)
    }

    fn count_outcome(&self, outcome: &BatchOutcome) {
        let c = &self.inner.counters;
        c.applied.fetch_add(outcome.applied as u64, Relaxed);
        c.stale.fetch_add(outcome.stale as u64, Relaxed);
        c.skipped.fetch_add(outcome.skipped as u64, Relaxed);
    }

    /// Starts a load of a snapshot at `version`: claims the state for this
    /// cache's source and raises the floor, so no change older than the
    /// snapshot applies from now on.
    pub async fn begin_load(&self, version: Version) -> Result<()> {
        let guard = self.guard();
        self.on_every_state(|meta, slot| guard.begin(meta, version, slot))
            .await
    }

    /// Writes snapshot records through the version guard, at `version`:
    /// a record Redis holds in a newer version is left alone, and so is a
    /// record a newer change reached inside the open snapshot window, even
    /// if its key was removed since. Safe while the sync worker applies
    /// changes. The snapshot must have been taken after a window was
    /// opened ([`open_window`](Self::open_window)) that is still open;
    /// without one, Redis refuses the write (`PFWINDOW`). Returns how many
    /// were written.
    pub async fn write_snapshot(&self, records: &[Record], version: Version) -> Result<usize> {
        let writes: Vec<Write<'_>> = records
            .iter()
            .filter_map(|r| {
                Some(Write {
                    id: r.id()?,
                    version,
                    fields: Some(r.fields()),
                })
            })
            .collect();
        let results = self
            .guarded(Mode::Snapshot, None, &writes, Some(GUARDED_CHUNK))
            .await?;
        let written = results.iter().filter(|&&r| r == 1).count();
        self.inner
            .counters
            .prefetched
            .fetch_add(written as u64, Relaxed);
        Ok(written)
    }

    /// Removes every record older than the snapshot at `version` (so the
    /// snapshot did not contain it), leaving tombstones. Returns how many.
    pub async fn sweep(&self, version: Version) -> Result<usize> {
        let mut swept = 0usize;
        for mut node in self.writer.primaries().await? {
            let mut cursor = 0u64;
            loop {
                let (next, keys) =
                    scan_page(&mut node, cursor, self.inner.keys.scan_pattern()).await?;
                if !keys.is_empty() {
                    swept += self.sweep_keys(version, &keys).await?;
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(swept)
    }

    /// Removes the records at `data_keys` that are older than `version`
    /// (tombstoned at it). Returns how many.
    pub async fn sweep_keys(&self, version: Version, data_keys: &[String]) -> Result<usize> {
        let guard = self.guard();
        let parts = conn::split(&self.writer, data_keys, Some(SCAN_COUNT));
        let calls: Vec<Part> = parts
            .iter()
            .map(|(slot, ids)| {
                let keys = ids.iter().map(|&i| &data_keys[i]);
                Part {
                    slot: *slot,
                    cmds: vec![guard.sweep(&self.meta_for(*slot), version, keys)],
                }
            })
            .collect();
        let mut swept = 0;
        let replies = conn::run_parts(&self.writer, calls, CLUSTER_IN_FLIGHT, fcall_part).await;
        for reply in self.noting_loss(replies)? {
            for v in reply {
                swept += redis::from_redis_value::<usize>(v).map_err(redis::RedisError::from)?;
            }
        }
        Ok(swept)
    }

    /// Ends the load of the snapshot at `version`: the stored position
    /// reaches it.
    pub async fn finish_load(&self, version: Version) -> Result<()> {
        let cmd = self.guard().finish(version);
        apply::fcall::<_, i64>(&mut self.writer.clone(), &cmd).await?;
        Ok(())
    }

    /// Deletes everything this cache keeps in Redis: records, tombstones
    /// and its state. For a Redis that holds another source's cache under
    /// the same prefix; returns how many records were deleted.
    pub async fn reset(&self) -> Result<usize> {
        let deleted = self.clear().await?;
        for pattern in self.inner.keys.tombstone_patterns() {
            delete_matching(&self.writer, &pattern).await?;
        }
        let mut state = vec![
            self.inner.keys.meta_key().to_owned(),
            self.inner.keys.window_key(),
        ];
        if self.writer.is_cluster() {
            for s in 0..SLOTS {
                state.push(self.inner.keys.slot_meta_key(s));
                state.push(self.inner.keys.slot_window_key(s));
            }
        }
        conn::pipelined(&self.writer, &state, 0, |pipe, key| {
            pipe.del(key).ignore();
        })
        .await?;
        Ok(deleted)
    }

    /// Deletes one key (simulates a lost sync event). Returns whether it
    /// existed.
    pub async fn invalidate(&self, id: &str) -> Result<bool> {
        let n: u64 = redis::cmd("DEL")
            .arg(self.key(id))
            .query_async(&mut self.writer.clone())
            .await?;
        Ok(n > 0)
    }

    /// Deletes every record key under the prefix and nothing else: `SCAN
    /// MATCH` on the escaped prefix, one `DEL` per page. Never `FLUSHDB`.
    /// Tombstones and the cache's state stay. Returns how many keys were
    /// deleted.
    pub async fn clear(&self) -> Result<usize> {
        delete_matching(&self.writer, self.inner.keys.scan_pattern()).await
    }

    /// Every id currently cached, sorted, each once.
    pub async fn ids(&self) -> Result<Vec<String>> {
        let mut ids = Vec::new();
        let mut in_hash = Vec::new();
        for mut node in self.conn.primaries().await? {
            let mut cursor = 0u64;
            loop {
                let (next, keys) =
                    scan_page(&mut node, cursor, self.inner.keys.scan_pattern()).await?;
                for key in keys {
                    let Some(id) = self.inner.keys.id_of(&key) else {
                        continue;
                    };
                    if self.inner.keys.tombstone(&key) == Tombstone::InHash {
                        in_hash.push(key);
                    } else {
                        ids.push(id.to_owned());
                    }
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        // Only keys with `}` and no hash tag can hold a tombstone: check those.
        if !in_hash.is_empty() {
            let deleted = conn::pipelined(&self.conn, &in_hash, 1, |pipe, key| {
                pipe.cmd("HEXISTS").arg(key).arg(apply::DELETED_FIELD);
            })
            .await?;
            for (key, d) in in_hash.iter().zip(deleted) {
                let deleted: bool = redis::from_redis_value(d).map_err(redis::RedisError::from)?;
                if let (false, Some(id)) = (deleted, self.inner.keys.id_of(key)) {
                    ids.push(id.to_owned());
                }
            }
        }
        // SCAN may return a key more than once.
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }

    /// Remaining TTL of one key.
    pub async fn ttl(&self, id: &str) -> Result<Ttl> {
        let v: i64 = redis::cmd("TTL")
            .arg(self.key(id))
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(Ttl::from_redis(v))
    }

    /// Every cached record with its TTL, sorted by id: a `SCAN` plus one
    /// pipelined `HGETALL` + `TTL` per page of keys. For dashboards and
    /// consistency checks, not for the read path.
    pub async fn entries(&self) -> Result<Vec<CachedEntry>> {
        let ids = self.ids().await?;
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(SCAN_COUNT) {
            let keys: Vec<String> = chunk.iter().map(|id| self.key(id)).collect();
            let values = conn::pipelined(&self.conn, &keys, 2, |pipe, key| {
                pipe.add_command(hgetall(key)).cmd("TTL").arg(key);
            })
            .await?;
            for (id, pair) in chunk.iter().zip(values.chunks(2)) {
                let [fields, ttl] = pair else { continue };
                let fields: Fields =
                    redis::from_redis_value(fields.clone()).map_err(redis::RedisError::from)?;
                let ttl: i64 =
                    redis::from_redis_value(ttl.clone()).map_err(redis::RedisError::from)?;
                // The key may have vanished between SCAN and HGETALL.
                if let Some(entry) = entry_of(id, fields, ttl) {
                    out.push(entry);
                }
            }
        }
        Ok(out)
    }

    /// One cached record with its TTL, without counting a hit or miss (for
    /// dashboards).
    pub async fn peek(&self, id: &str) -> Result<Option<CachedEntry>> {
        let key = self.key(id);
        let mut pipe = redis::pipe();
        pipe.add_command(hgetall(&key)).cmd("TTL").arg(&key);
        let (fields, ttl): (Fields, i64) = pipe.query_async(&mut self.conn.clone()).await?;
        Ok(entry_of(id, fields, ttl))
    }

    /// The counters since the last reset.
    pub fn stats(&self) -> Stats {
        self.inner.counters.snapshot()
    }

    /// `INFO memory`: used, maximum and eviction policy (on a cluster,
    /// used and maximum summed over the primaries, and the first one's
    /// policy).
    pub async fn memory(&self) -> Result<MemoryInfo> {
        let mut total = MemoryInfo {
            used: 0,
            max: 0,
            policy: String::new(),
        };
        for mut node in self.conn.primaries().await? {
            let info: String = redis::cmd("INFO")
                .arg("memory")
                .query_async(&mut node)
                .await?;
            let field = |name: &str| {
                info.lines()
                    .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                    .map(str::trim)
            };
            total.used += field("used_memory")
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            total.max += field("maxmemory")
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            if total.policy.is_empty() {
                total.policy = field("maxmemory_policy").unwrap_or("").to_owned();
            }
        }
        Ok(total)
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

/// An open snapshot window ([`PrefetchCache::open_window`]): renewed in the
/// background until [`close`](Self::close)d or dropped (a dropped window
/// stops being renewed and lapses at the end of its lease).
#[must_use = "a window closes when dropped"]
pub struct SnapshotWindow<C: Connection> {
    cache: PrefetchCache<C>,
    renewer: Option<tokio::task::JoinHandle<()>>,
}

impl<C: Connection> SnapshotWindow<C> {
    /// Closes the window: writes stop being logged once no other window is
    /// open on this cache.
    pub async fn close(mut self) -> Result<()> {
        if let Some(renewer) = self.renewer.take() {
            renewer.abort();
        }
        let guard = self.cache.guard();
        self.cache
            .on_every_window(|keys, _| guard.close(keys))
            .await
    }
}

impl<C: Connection> Drop for SnapshotWindow<C> {
    fn drop(&mut self) {
        if let Some(renewer) = self.renewer.take() {
            renewer.abort();
        }
    }
}

impl<C: Connection> std::fmt::Debug for SnapshotWindow<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotWindow")
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

fn entry_of(id: &str, raw: Fields, ttl: i64) -> Option<CachedEntry> {
    let stored = Stored::split(raw);
    let version = stored.version;
    let hash = stored.hash;
    let fields = stored.into_record_fields()?;
    let intact = hash == Some(apply::content_hash(&fields));
    Some(CachedEntry {
        id: id.to_owned(),
        fields,
        ttl: Ttl::from_redis(ttl),
        version,
        intact,
    })
}

async fn scan_page<C: redis::aio::ConnectionLike + Send>(
    conn: &mut C,
    cursor: u64,
    pattern: &str,
) -> Result<(u64, Vec<String>)> {
    Ok(redis::cmd("SCAN")
        .arg(cursor)
        .arg("MATCH")
        .arg(pattern)
        .arg("COUNT")
        .arg(SCAN_COUNT)
        .query_async(conn)
        .await?)
}

/// `SCAN MATCH pattern` on every primary + one `DEL` per page (split by
/// slot on a cluster); returns how many were deleted.
async fn delete_matching<C: Connection>(conn: &C, pattern: &str) -> Result<usize> {
    let mut deleted = 0usize;
    for mut node in conn.primaries().await? {
        let mut cursor = 0u64;
        loop {
            let (next, keys) = scan_page(&mut node, cursor, pattern).await?;
            if !keys.is_empty() {
                let n: usize = redis::cmd("DEL")
                    .arg(&keys)
                    .query_async(&mut conn.clone())
                    .await?;
                deleted += n;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    Ok(deleted)
}

/// The `retry` of a part of `FCALL`s: each through [`apply::fcall`]
/// (reloading the library if the node lacks it; `PFLOST` becomes
/// [`Error::StateLost`](crate::Error::StateLost)).
fn fcall_part<C: Connection>(mut conn: C, part: Part) -> BoxFuture<'static, Result<Vec<Value>>> {
    Box::pin(async move {
        let mut out = Vec::with_capacity(part.cmds.len());
        for cmd in &part.cmds {
            out.push(apply::fcall::<_, Value>(&mut conn, cmd).await?);
        }
        Ok(out)
    })
}

fn hgetall(key: &str) -> Cmd {
    let mut cmd = redis::cmd("HGETALL");
    cmd.arg(key);
    cmd
}
