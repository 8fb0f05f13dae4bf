//! [`PrefetchCache`]: the Redis side of the pattern.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::{Cmd, Pipeline, Value};

use crate::error::Result;
use crate::keys::KeySpace;
use crate::model::{Change, ChangeKind, Fields, Record};
use crate::stats::{Counters, Stats};

/// Default key prefix, as in the reference demos.
pub const DEFAULT_PREFIX: &str = "cache:category:";
/// Default safety-net TTL: one hour.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);
/// Records per pipeline chunk in a bulk load.
const BULK_CHUNK: usize = 512;
/// Keys asked for per `SCAN` page.
const SCAN_COUNT: usize = 1000;

/// How a [`PrefetchCache`] names and expires its keys.
#[derive(Clone, Debug)]
pub struct CacheConfig {
    /// Prefix of every key (`{prefix}{id}`); may contain glob characters.
    pub prefix: String,
    /// Safety-net TTL set on every write. It bounds memory if sync stops; it
    /// is not a freshness mechanism. Whole seconds, at least one.
    pub ttl: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            prefix: DEFAULT_PREFIX.to_owned(),
            ttl: DEFAULT_TTL,
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
    /// Whether the key was found.
    pub hit: bool,
    /// Time spent waiting for Redis (one round trip).
    pub redis_latency: Duration,
}

/// One cached key with its fields and remaining TTL.
#[derive(Clone, Debug, PartialEq)]
pub struct CachedEntry {
    /// The record id (key without prefix).
    pub id: String,
    /// The hash's fields.
    pub fields: Fields,
    /// Remaining TTL.
    pub ttl: Ttl,
}

/// What [`PrefetchCache::apply_batch`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Events applied, counting each event superseded by a later one for the
    /// same id in the same batch (its effect is contained in the later one).
    pub applied: usize,
    /// Malformed events skipped (see [`Change::is_malformed`]).
    pub skipped: usize,
    /// Indices into the input of the events actually written to Redis, in
    /// order: the last well-formed event of each id.
    pub written: Vec<usize>,
}

/// A prefetch cache over one Redis connection.
///
/// Each record is a Redis hash at `{prefix}{id}` with a safety-net TTL.
/// Reads are `HGETALL` on Redis and nothing else; there is deliberately no
/// path from here to the primary. Cloning is cheap and clones share counters.
///
/// `C` is any async redis connection: [`ConnectionManager`] (reconnects by
/// itself) in production, or a `MultiplexedConnection`.
pub struct PrefetchCache<C = ConnectionManager> {
    conn: C,
    inner: Arc<Inner>,
}

struct Inner {
    keys: KeySpace,
    ttl_secs: u64,
    counters: Counters,
}

impl<C: Clone> Clone for PrefetchCache<C> {
    fn clone(&self) -> Self {
        Self {
            conn: self.conn.clone(),
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<C> std::fmt::Debug for PrefetchCache<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrefetchCache")
            .field("prefix", &self.inner.keys.prefix())
            .field("ttl_secs", &self.inner.ttl_secs)
            .finish_non_exhaustive()
    }
}

impl<C> PrefetchCache<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    /// A cache writing through `conn` with the given naming and TTL.
    pub fn new(conn: C, config: CacheConfig) -> Self {
        Self {
            conn,
            inner: Arc::new(Inner {
                keys: KeySpace::new(config.prefix),
                ttl_secs: config.ttl.as_secs().max(1),
                counters: Counters::default(),
            }),
        }
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

    /// Writes every record that has an id, replacing any previous hash, in one
    /// pipelined round trip (`DEL` + `HSET` + `EXPIRE` per record): loads of
    /// more than 512 records are sent as several pipelines back to back,
    /// without waiting for replies in between. Returns how many records were
    /// written.
    ///
    /// Being one round trip, the whole load must fit in the connection's
    /// response timeout (redis-rs defaults to 500 ms; 100,000 records take
    /// a few hundred ms on loopback), so configure it for large sets.
    ///
    /// The pipeline is not transactional: a reader may briefly miss a key
    /// between its `DEL` and `HSET`. That is fine at start-up and during the
    /// engine's re-prefetch, which runs with the sync worker paused.
    pub async fn bulk_load<'r, I>(&self, records: I) -> Result<usize>
    where
        I: IntoIterator<Item = &'r Record>,
    {
        let records: Vec<(&str, &Fields)> = records
            .into_iter()
            .filter_map(|r| Some((r.id()?, r.fields())))
            .collect();
        // Chunks go out back to back on the one connection without waiting
        // for replies (still one round trip of latency), so packing later
        // chunks overlaps Redis executing earlier ones.
        let sends = records.chunks(BULK_CHUNK).map(|chunk| {
            let mut conn = self.conn.clone();
            async move {
                let mut pipe = redis::pipe();
                for (id, fields) in chunk {
                    self.push_upsert(&mut pipe, id, fields);
                }
                pipe.exec_async(&mut conn).await
            }
        });
        futures::future::try_join_all(sends).await?;
        let loaded = records.len();
        self.inner
            .counters
            .prefetched
            .fetch_add(loaded as u64, Relaxed);
        Ok(loaded)
    }

    /// Reads one record: a single `HGETALL`, never the primary. Counts a hit
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
        Ok((
            self.count_lookup(fields, redis_latency),
            Ttl::from_redis(ttl),
        ))
    }

    fn count_lookup(&self, fields: Fields, redis_latency: Duration) -> Lookup {
        let hit = !fields.is_empty();
        let counter = if hit {
            &self.inner.counters.hits
        } else {
            &self.inner.counters.misses
        };
        counter.fetch_add(1, Relaxed);
        Lookup {
            record: hit.then(|| Record::new(fields)),
            hit,
            redis_latency,
        }
    }

    /// Applies one change: see [`apply_batch`](Self::apply_batch).
    pub async fn apply(&self, change: &Change) -> Result<BatchOutcome> {
        self.apply_batch(std::slice::from_ref(change)).await
    }

    /// Applies a batch of changes in one atomic round trip (`MULTI`/`EXEC`).
    ///
    /// An upsert becomes `DEL` + `HSET` + `EXPIRE`, so the hash holds exactly
    /// the record's current fields (a dropped field disappears) and its TTL is
    /// refreshed; a delete becomes `DEL`. Because each event carries the
    /// record's whole state, only the last event per id is written; the events
    /// it supersedes still count as applied. Malformed events are skipped and
    /// counted, never sent.
    ///
    /// On error nothing is counted and the whole batch may be retried: the
    /// writes are idempotent, so re-applying yields the same state.
    pub async fn apply_batch(&self, changes: &[Change]) -> Result<BatchOutcome> {
        let mut outcome = BatchOutcome::default();
        let mut last: HashMap<&str, usize> = HashMap::with_capacity(changes.len());
        for (i, change) in changes.iter().enumerate() {
            if change.is_malformed() {
                outcome.skipped += 1;
            } else {
                outcome.applied += 1;
                last.insert(change.id.as_str(), i);
            }
        }
        outcome.written = last.into_values().collect();
        outcome.written.sort_unstable();

        if !outcome.written.is_empty() {
            let mut pipe = redis::pipe();
            pipe.atomic();
            for &i in &outcome.written {
                let change = &changes[i];
                match &change.kind {
                    ChangeKind::Upsert(fields) => self.push_upsert(&mut pipe, &change.id, fields),
                    ChangeKind::Delete => {
                        pipe.del(self.key(&change.id)).ignore();
                    }
                }
            }
            pipe.exec_async(&mut self.conn.clone()).await?;
        }

        let visible = Instant::now();
        let c = &self.inner.counters;
        c.applied.fetch_add(outcome.applied as u64, Relaxed);
        c.skipped.fetch_add(outcome.skipped as u64, Relaxed);
        if !outcome.written.is_empty() {
            c.batches.fetch_add(1, Relaxed);
        }
        for change in changes.iter().filter(|c| !c.is_malformed()) {
            c.lag
                .record(visible.saturating_duration_since(change.emitted_at));
        }
        Ok(outcome)
    }

    fn push_upsert(&self, pipe: &mut Pipeline, id: &str, fields: &Fields) {
        let key = self.key(id);
        pipe.del(&key).ignore();
        pipe.cmd("HSET").arg(&key).arg(fields).ignore();
        pipe.expire(&key, self.inner.ttl_secs as i64).ignore();
    }

    /// Deletes one key. Returns whether it existed.
    pub async fn invalidate(&self, id: &str) -> Result<bool> {
        let n: u64 = redis::cmd("DEL")
            .arg(self.key(id))
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(n > 0)
    }

    /// Deletes every key under the prefix and nothing else: `SCAN MATCH` on
    /// the escaped prefix, one `DEL` per page. Never `FLUSHDB`. Returns how
    /// many keys were deleted.
    pub async fn clear(&self) -> Result<usize> {
        let mut conn = self.conn.clone();
        let mut cursor = 0u64;
        let mut deleted = 0usize;
        loop {
            let (next, keys) = self.scan_page(&mut conn, cursor).await?;
            if !keys.is_empty() {
                let n: usize = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await?;
                deleted += n;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }

    /// Every id currently cached, sorted, each once.
    pub async fn ids(&self) -> Result<Vec<String>> {
        let mut conn = self.conn.clone();
        let mut cursor = 0u64;
        let mut ids = Vec::new();
        loop {
            let (next, keys) = self.scan_page(&mut conn, cursor).await?;
            ids.extend(
                keys.iter()
                    .filter_map(|k| self.inner.keys.id_of(k))
                    .map(str::to_owned),
            );
            if next == 0 {
                break;
            }
            cursor = next;
        }
        // SCAN may return a key more than once.
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }

    async fn scan_page(&self, conn: &mut C, cursor: u64) -> Result<(u64, Vec<String>)> {
        Ok(redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(self.inner.keys.scan_pattern())
            .arg("COUNT")
            .arg(SCAN_COUNT)
            .query_async(conn)
            .await?)
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
        let mut conn = self.conn.clone();
        for chunk in ids.chunks(SCAN_COUNT) {
            let mut pipe = redis::pipe();
            for id in chunk {
                let key = self.key(id);
                pipe.add_command(hgetall(&key)).cmd("TTL").arg(&key);
            }
            let values: Vec<Value> = pipe.query_async(&mut conn).await?;
            for (id, pair) in chunk.iter().zip(values.chunks(2)) {
                let [fields, ttl] = pair else { continue };
                let fields: Fields =
                    redis::from_redis_value(fields.clone()).map_err(redis::RedisError::from)?;
                let ttl: i64 =
                    redis::from_redis_value(ttl.clone()).map_err(redis::RedisError::from)?;
                // The key may have vanished between SCAN and HGETALL.
                if !fields.is_empty() {
                    out.push(CachedEntry {
                        id: id.clone(),
                        fields,
                        ttl: Ttl::from_redis(ttl),
                    });
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
        Ok((!fields.is_empty()).then(|| CachedEntry {
            id: id.to_owned(),
            fields,
            ttl: Ttl::from_redis(ttl),
        }))
    }

    /// The counters since the last reset.
    pub fn stats(&self) -> Stats {
        self.inner.counters.snapshot()
    }

    /// Zeroes every counter.
    pub fn reset_stats(&self) {
        self.inner.counters.reset();
    }

    pub(crate) fn count_retry(&self) {
        self.inner.counters.retries.fetch_add(1, Relaxed);
    }
}

fn hgetall(key: &str) -> Cmd {
    let mut cmd = redis::cmd("HGETALL");
    cmd.arg(key);
    cmd
}
