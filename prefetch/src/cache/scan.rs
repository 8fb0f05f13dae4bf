//! Walking the cached ids a page at a time, from a cursor: `SCAN` on each
//! primary in turn, so that no caller ever holds every id of a large cache.

use std::fmt;
use std::str::FromStr;

use super::{PrefetchCache, SCAN_COUNT};
use crate::cluster::{self, Connection};
use crate::error::{Error, Result};
use crate::guard;
use crate::keys::{Tombstone, escape_glob};

/// Where a walk over the cached ids stands: which primary, and that
/// primary's `SCAN` cursor. Its text form (`node:cursor`, `0:0` at the
/// start) travels in URLs.
///
/// ```
/// use prefetch::ScanCursor;
/// let c: ScanCursor = "2:1536".parse().unwrap();
/// assert_eq!(c.to_string(), "2:1536");
/// assert_eq!(ScanCursor::START.to_string(), "0:0");
/// assert!("x".parse::<ScanCursor>().is_err());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ScanCursor {
    node: usize,
    cursor: u64,
}

impl ScanCursor {
    /// The start of a walk.
    pub const START: ScanCursor = ScanCursor { node: 0, cursor: 0 };
}

impl fmt::Display for ScanCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.node, self.cursor)
    }
}

impl FromStr for ScanCursor {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::InvalidId(format!("'{s}' is not a page cursor"));
        let (node, cursor) = s.split_once(':').ok_or_else(bad)?;
        Ok(Self {
            node: node.parse().map_err(|_| bad())?,
            cursor: cursor.parse().map_err(|_| bad())?,
        })
    }
}

/// One page of cached ids.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScanPage {
    /// Ids found (in `SCAN` order, not sorted; a key that moved during the
    /// walk may come twice or not at all, as `SCAN` promises).
    pub ids: Vec<String>,
    /// Where the next page starts (`None`: the walk is over).
    pub next: Option<ScanCursor>,
}

/// The `COUNT` for the next call of a walk that still needs `needed` ids,
/// having found `found` among about `scanned` keys looked at so far, the
/// last call having asked for `last` (0 before the first).
///
/// The share of matching keys is guessed from what the walk has seen; a
/// guess made from a few keys can be far too low, and a call sized on it
/// would bring several pages' worth at once. So a call asks for at most
/// twice the last one: a narrow search still reaches [`SCAN_COUNT`] a
/// call within a few calls, and a page holds about `needed` ids.
fn scan_count(needed: usize, scanned: usize, found: usize, last: usize) -> usize {
    let per_id = (scanned + 1) as f64 / (found + 1) as f64;
    let guess = (needed as f64 * per_id).ceil() as usize;
    let guess = if last == 0 {
        needed
    } else {
        guess.min(2 * last)
    };
    guess.clamp(10, SCAN_COUNT)
}

/// `SCAN` calls one page may make before it answers with fewer ids than
/// asked for (a narrow search over a large cache).
const MAX_CALLS: usize = 64;

impl<C: Connection> PrefetchCache<C> {
    /// Up to about `want` cached ids from `from` on, whose id starts with
    /// `prefix` (every id when empty), and where the next page starts.
    /// Tombstones are not ids. A page may hold a few more than `want` (`SCAN`
    /// answers whole hash buckets); each call looks at between 10 and 1,000
    /// keys, and a page makes at most 64 calls, whatever the cache holds: a
    /// narrow search over a large cache may answer with fewer ids than asked
    /// for (none, even), and a cursor to go on from.
    pub async fn scan_ids(&self, from: ScanCursor, prefix: &str, want: usize) -> Result<ScanPage> {
        let pattern = format!("{}*", escape_glob(&self.key(prefix)));
        let mut nodes = self.conn.primaries().await?;
        let mut at = from;
        let mut page = ScanPage::default();
        let mut calls = 0;
        // Each call asks for about as many keys as the page still needs,
        // scaled by the share of keys so far that were ids matching the
        // search: a page holds about `want` ids, and a narrow search soon
        // looks at [`SCAN_COUNT`] keys a call.
        let (mut scanned, mut found, mut last) = (0usize, 0usize, 0usize);
        while page.ids.len() < want.max(1) && calls < MAX_CALLS {
            let Some(node) = nodes.get_mut(at.node) else {
                return Ok(ScanPage {
                    ids: page.ids,
                    next: None,
                });
            };
            let count = scan_count(want.max(1) - page.ids.len(), scanned, found, last);
            last = count;
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(at.cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(count)
                .query_async(node)
                .await?;
            calls += 1;
            let ids = self.live_ids(keys).await?;
            // SCAN looks at about COUNT keys whatever MATCH lets through.
            scanned += count;
            found += ids.len();
            page.ids.extend(ids);
            at = if next == 0 {
                ScanCursor {
                    node: at.node + 1,
                    cursor: 0,
                }
            } else {
                ScanCursor {
                    node: at.node,
                    cursor: next,
                }
            };
        }
        page.next = (at.node < nodes.len()).then_some(at);
        Ok(page)
    }

    /// The ids of `keys` that are records: a key that holds its own
    /// tombstone (one with `}` and no hash tag) is checked.
    async fn live_ids(&self, keys: Vec<String>) -> Result<Vec<String>> {
        let keyspace = &self.inner.keys;
        let (in_hash, plain): (Vec<String>, Vec<String>) = keys
            .into_iter()
            .filter(|k| keyspace.id_of(k).is_some())
            .partition(|k| keyspace.tombstone(k) == Tombstone::InHash);
        let mut ids: Vec<String> = plain
            .iter()
            .filter_map(|k| keyspace.id_of(k).map(str::to_owned))
            .collect();
        if !in_hash.is_empty() {
            let deleted = cluster::pipelined(&self.conn, &in_hash, 1, |pipe, key| {
                pipe.cmd("HEXISTS").arg(key).arg(guard::DELETED_FIELD);
            })
            .await?;
            for (key, d) in in_hash.iter().zip(deleted) {
                let deleted: bool = redis::from_redis_value(d).map_err(redis::RedisError::from)?;
                if let (false, Some(id)) = (deleted, keyspace.id_of(key)) {
                    ids.push(id.to_owned());
                }
            }
        }
        Ok(ids)
    }
}
