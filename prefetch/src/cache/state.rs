//! The cache's state in Redis (source, position, floor, load mark), what
//! Redis says about its memory, and the operations that remove keys:
//! invalidate, clear, reset.

use crate::model::Version;

use super::PrefetchCache;
use super::read::scan_page;
use crate::cluster::{self, Connection};
use crate::error::Result;
use crate::guard;
use crate::keys::SLOTS;

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

impl<C: Connection> PrefetchCache<C> {
    /// Loads the cache's Redis function library (also done by itself when
    /// a call finds it missing).
    pub async fn load_library(&self) -> Result<()> {
        guard::load_library(&mut self.writer.clone()).await
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

    /// Deletes everything this cache keeps in Redis: records, tombstones
    /// and its state. For a Redis that holds another source's cache under
    /// the same prefix; returns how many records were deleted.
    pub async fn reset(&self) -> Result<usize> {
        let deleted = self.clear().await?;
        for pattern in self.inner.keys.tombstone_patterns() {
            delete_matching(&self.writer, &pattern, |_| true).await?;
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
        cluster::pipelined(&self.writer, &state, 0, |pipe, key| {
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
        let keys = &self.inner.keys;
        delete_matching(&self.writer, keys.scan_pattern(), |k| {
            keys.id_of(k).is_some()
        })
        .await
    }

    /// Stops holding the table whose ids start with `id_prefix` as records
    /// ([`KeySpace::remove_table`](crate::KeySpace::remove_table)) and
    /// deletes its keys: `SCAN MATCH` on the table's prefix, never a key
    /// that is still a record of another table. Its tombstones expire by
    /// themselves. Returns how many keys were deleted.
    pub async fn drop_table(&self, id_prefix: &str) -> Result<usize> {
        let prefix = self.key(id_prefix);
        let keys = &self.inner.keys;
        keys.remove_table(&prefix);
        let pattern = format!("{}*", crate::keys::escape_glob(&prefix));
        delete_matching(&self.writer, &pattern, |k| keys.id_of(k).is_none()).await
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
}

/// `SCAN MATCH pattern` on every primary + one `DEL` per page of the keys
/// `keep` accepts (split by slot on a cluster); returns how many were
/// deleted.
async fn delete_matching<C: Connection>(
    conn: &C,
    pattern: &str,
    keep: impl Fn(&str) -> bool,
) -> Result<usize> {
    let mut deleted = 0usize;
    for mut node in conn.primaries().await? {
        let mut cursor = 0u64;
        loop {
            let (next, mut keys) = scan_page(&mut node, cursor, pattern).await?;
            keys.retain(|k| keep(k));
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
