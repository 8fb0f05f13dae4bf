//! Reads: one `HGETALL` (with `TTL` in the same round trip for the API),
//! never the source; and the listing and peeking dashboards and checks use.

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use redis::Value;

use super::{PrefetchCache, SCAN_COUNT};
use crate::cluster::{self, Connection};
use crate::error::Result;
use crate::guard::{self, Stored};
use crate::model::{Fields, Record, Version};
use crate::stats::TableCount;

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

    pub(super) fn from_redis(v: i64) -> Self {
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
    /// The version of the change that wrote what was found (the record or
    /// its tombstone; `None` when nothing was, or a JSON record, whose
    /// version lives in its tombstone key).
    pub version: Option<crate::Version>,
    /// Whether the key held a delete's tombstone (hash records; a JSON
    /// record's tombstone is another key).
    pub tombstone: bool,
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

impl<C: Connection> PrefetchCache<C> {
    /// Reads one record: a single `HGETALL`, never the source. Counts a hit
    /// or a miss.
    pub async fn get(&self, id: &str) -> Result<Lookup> {
        let key = self.key(id);
        let json = self.is_json(&key);
        let started = Instant::now();
        let reply: Value = Self::read_cmd(&key, json)
            .query_async(&mut self.conn.clone())
            .await?;
        let redis_latency = started.elapsed();
        Ok(self.count_lookup(&key, json, reply, redis_latency))
    }

    /// Reads one record and its TTL in one round trip (`HGETALL` and `TTL`
    /// pipelined). Counts a hit or a miss exactly like [`get`](Self::get).
    pub async fn get_with_ttl(&self, id: &str) -> Result<(Lookup, Ttl)> {
        let key = self.key(id);
        let json = self.is_json(&key);
        let mut pipe = redis::pipe();
        pipe.add_command(Self::read_cmd(&key, json))
            .cmd("TTL")
            .arg(&key);
        let started = Instant::now();
        let (reply, ttl): (Value, i64) = pipe.query_async(&mut self.conn.clone()).await?;
        let redis_latency = started.elapsed();
        let lookup = self.count_lookup(&key, json, reply, redis_latency);
        let ttl = if lookup.hit() {
            Ttl::from_redis(ttl)
        } else {
            Ttl::Missing
        };
        Ok((lookup, ttl))
    }

    fn count_lookup(&self, key: &str, json: bool, reply: Value, redis_latency: Duration) -> Lookup {
        let counters = &self.inner.counters;
        counters.reads.record(redis_latency);
        let id = key.strip_prefix(self.prefix()).unwrap_or(key);
        let stored = Self::stored_of(json, reply);
        let (version, tombstone) = (stored.version, stored.deleted);
        let record = stored.into_record_fields().map(|f| {
            // A document holds no `id` field: the record is named by its key.
            if json {
                Record::with_id(id, f)
            } else {
                Record::new(f)
            }
        });
        let (counter, what) = if record.is_some() {
            (&counters.hits, TableCount::Hit)
        } else {
            (&counters.misses, TableCount::Miss)
        };
        counter.fetch_add(1, Relaxed);
        counters
            .tables
            .count(&self.inner.keys.tables(), key, what, 1);
        Lookup {
            record,
            redis_latency,
            version,
            tombstone,
        }
    }

    /// How many keys Redis holds (`DBSIZE`, summed over a cluster's
    /// primaries): the cache's keys, its state, and anything else stored
    /// in the same database. Always current, and O(1) per node.
    pub async fn db_keys(&self) -> Result<u64> {
        let mut total = 0;
        for mut node in self.conn.primaries().await? {
            let n: u64 = redis::cmd("DBSIZE").query_async(&mut node).await?;
            total += n;
        }
        Ok(total)
    }

    /// How many keys start with `key_prefix` (a table's, when the cache
    /// holds several), counting at most `cap`: `(count, exact)`, inexact
    /// once the count reached `cap` (a `SCAN`, so bounded work whatever
    /// the size; a key `SCAN` returns twice during a rehash counts twice).
    pub async fn count_keys(&self, key_prefix: &str, cap: u64) -> Result<(u64, bool)> {
        let pattern = format!("{}*", crate::keys::escape_glob(key_prefix));
        let mut count = 0u64;
        for mut node in self.conn.primaries().await? {
            let mut cursor = 0u64;
            loop {
                let (next, keys) = scan_page(&mut node, cursor, &pattern).await?;
                count += keys.len() as u64;
                if count >= cap {
                    return Ok((count, false));
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok((count, true))
    }

    /// Every id currently cached, sorted, each once.
    pub async fn ids(&self) -> Result<Vec<String>> {
        let mut ids = Vec::new();
        let mut from = Some(super::ScanCursor::START);
        while let Some(at) = from {
            let page = self.scan_ids(at, "", SCAN_COUNT).await?;
            ids.extend(page.ids);
            from = page.next;
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
            out.extend(self.entries_of(chunk).await?);
        }
        Ok(out)
    }

    /// Which of `ids` are cached (a record, not a tombstone), in the order
    /// given: one pipelined `EXISTS` per key (and `HEXISTS` for the rare key
    /// that keeps its tombstone inside).
    pub async fn cached_of(&self, ids: &[String]) -> Result<Vec<bool>> {
        let keys: Vec<String> = ids.iter().map(|id| self.key(id)).collect();
        let values = cluster::pipelined(&self.conn, &keys, 2, |pipe, key| {
            pipe.cmd("EXISTS").arg(key);
            if self.is_json(key) {
                // A JSON record keeps no tombstone inside.
                pipe.cmd("ECHO").arg("");
            } else {
                pipe.cmd("HEXISTS").arg(key).arg(guard::DELETED_FIELD);
            }
        })
        .await?;
        Ok(values
            .chunks(2)
            .map(|pair| {
                matches!(pair, [redis::Value::Int(1), tombed] if *tombed != redis::Value::Int(1))
            })
            .collect())
    }

    /// The cached records among `ids`, with their TTLs, in the order given:
    /// one pipelined `HGETALL` + `TTL` per key.
    pub async fn entries_of(&self, ids: &[String]) -> Result<Vec<CachedEntry>> {
        let keys: Vec<String> = ids.iter().map(|id| self.key(id)).collect();
        let read = self.inspect(&self.conn, &keys).await?;
        // A key may have vanished between SCAN and the read.
        Ok(ids
            .iter()
            .zip(read)
            .filter_map(|(id, r)| entry_of(id, r.stored, r.ttl))
            .collect())
    }

    /// What Redis holds for `id`: its record, a delete's tombstone, or
    /// nothing (for a JSON record, the document and its tombstone key).
    pub(crate) async fn presence(&self, id: &str) -> Result<Presence> {
        let read = self.inspect(&self.writer, &[self.key(id)]).await?;
        let Some(stored) = read.into_iter().next().map(|r| r.stored) else {
            return Ok(Presence::Gone);
        };
        Ok(
            if stored.deleted
                || (stored.fields.is_empty() && stored.version.is_some() && stored.hash.is_none())
            {
                Presence::Deleted
            } else if !stored.fields.is_empty() {
                Presence::Held
            } else if self.tombstoned(id).await? {
                Presence::Deleted
            } else {
                Presence::Gone
            },
        )
    }

    /// Whether `id`'s tombstone key holds a delete (a hash record's
    /// tombstone key exists only once deleted; a JSON record's holds its
    /// version alone once deleted, and its version and hash before).
    pub(crate) async fn tombstoned(&self, id: &str) -> Result<bool> {
        let crate::Tombstone::Key(tomb) = self.key_space().tombstone(&self.key(id)) else {
            return Ok(false); // in the hash: the read saw it
        };
        let text: Option<String> = redis::cmd("GET")
            .arg(tomb)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(text.is_some_and(|t| !t.contains(' ')))
    }

    /// One cached record with its TTL, without counting a hit or miss (for
    /// dashboards).
    pub async fn peek(&self, id: &str) -> Result<Option<CachedEntry>> {
        let read = self.inspect(&self.conn, &[self.key(id)]).await?;
        Ok(read
            .into_iter()
            .next()
            .and_then(|r| entry_of(id, r.stored, r.ttl)))
    }
}

/// What Redis holds for an id ([`PrefetchCache::presence`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Presence {
    Held,
    Deleted,
    Gone,
}

fn entry_of(id: &str, stored: Stored, ttl: i64) -> Option<CachedEntry> {
    let version = stored.version;
    let hash = stored.hash;
    let fields = stored.into_record_fields()?;
    let intact = hash == Some(guard::content_hash(&fields));
    Some(CachedEntry {
        id: id.to_owned(),
        fields,
        ttl: Ttl::from_redis(ttl),
        version,
        intact,
    })
}

pub(super) async fn scan_page<C: redis::aio::ConnectionLike + Send>(
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
