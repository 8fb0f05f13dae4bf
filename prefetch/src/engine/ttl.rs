//! TTL renewal: while sync is healthy, no cached key's TTL runs out.
//!
//! The TTL is the safety net that bounds memory and staleness *when sync
//! stops*. While the worker runs and the source is connected, a row nobody
//! changes must stay cached, so the engine walks every key under the
//! prefix once per third of the TTL (`SCAN` per primary, then `EXPIRE … GT`
//! per page, on a connection of its own), paced to spread the walk over
//! that period instead of bursting. A key is renewed at least every two
//! thirds of its TTL.
//!
//! When sync stops (worker paused, retrying or stopped; source
//! disconnected; the engine gone) nothing renews, so keys expire as the
//! safety net intends, and the status says why. When sync is healthy again
//! after long enough for keys to have expired, the cache is refilled by a
//! guarded re-prefetch (logged once, counted in `refills`, told on the
//! event feed).

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::time::Instant;

use super::{Engine, Inner};
use crate::events::PrefetchReason;
use crate::keys::{KeySpace, Tombstone};
use crate::model::WorkerState;
use crate::source::Source;

/// Keys asked for per `SCAN` page (and renewed per pipeline).
const PAGE: usize = 1000;
/// How often a suspended renewal looks at sync's health again.
const RECHECK: Duration = Duration::from_millis(100);

/// What TTL renewal is doing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RenewalStatus {
    /// Whether keys are being renewed (false: sync is not healthy, or
    /// renewal is off).
    pub active: bool,
    /// Why not, when it is not.
    pub suspended: Option<String>,
    /// Keys renewed since start.
    pub renewed: u64,
    /// Walks over every key completed since start.
    pub walks: u64,
    /// Refills after keys could have expired while sync was stopped.
    pub refills: u64,
    /// Keys the last complete walk met (a count of the cache, as of then).
    pub keys: u64,
}

impl<S, C> Engine<S, C>
where
    S: Source + ?Sized,
    C: crate::Connection,
{
    /// How many keys the cache holds, as last counted (by the last TTL
    /// renewal walk, else the last load): a count that costs nothing.
    pub fn cached_keys(&self) -> u64 {
        let renewal = self.renewal();
        if renewal.walks > 0 {
            renewal.keys
        } else {
            self.inner
                .last_loaded
                .load(std::sync::atomic::Ordering::Relaxed)
        }
    }

    /// What TTL renewal is doing.
    pub fn renewal(&self) -> RenewalStatus {
        self.inner
            .renewal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Why sync is not healthy right now, if it is not: keys must then be
    /// left to expire.
    fn unhealthy(&self) -> Option<String> {
        match self.inner.sync.state() {
            WorkerState::Running => {}
            WorkerState::Paused => return Some("the sync worker is paused".into()),
            WorkerState::Retrying { .. } => {
                return Some("the sync worker cannot apply (retrying)".into());
            }
            WorkerState::Stopped => return Some("the sync worker has stopped".into()),
        }
        (!self.inner.source.status().connected).then(|| "the source is disconnected".into())
    }

    fn set_renewal(&self, f: impl FnOnce(&mut RenewalStatus)) {
        f(&mut self.inner.renewal.lock().unwrap_or_else(|p| p.into_inner()));
    }
}

/// Renews every key's TTL once per `ttl / 3` while sync is healthy, on
/// `conn`, until the engine is gone; `ttl` is the shortest any key gets,
/// read again before each walk (a table may come with a shorter one).
pub(super) async fn renew_loop<S, C>(weak: Weak<Inner<S, C>>, conn: C)
where
    S: Source + ?Sized,
    C: crate::Connection,
{
    let (mut ttl, mut period);
    // The load before this task wrote every key with a fresh TTL.
    let mut last_walk = Instant::now();
    let mut suspended = false;
    // `SCAN` calls the last walk made: the next one paces itself by them
    // (the first by the database's size, an upper bound).
    let mut last_pages: Option<u64> = None;
    loop {
        let Some(engine) = upgrade(&weak) else {
            return;
        };
        if let Some(why) = engine.unhealthy() {
            if !suspended {
                tracing::info!(reason = %why, "TTL renewal suspended: keys expire after their TTL until sync is healthy again");
                suspended = true;
            }
            engine.set_renewal(|r| {
                r.active = false;
                r.suspended = Some(why);
            });
            drop(engine);
            tokio::time::sleep(RECHECK).await;
            continue;
        }
        engine.set_renewal(|r| {
            r.active = true;
            r.suspended = None;
        });
        ttl = engine.inner.cache.shortest_ttl();
        period = (ttl / 3).max(Duration::from_millis(100));
        if std::mem::take(&mut suspended) {
            tracing::info!("TTL renewal resumed");
            // A key renewed as the last walk started expires at its start
            // plus the TTL; the next walk reaches every key within a period.
            if last_walk.elapsed() + period >= ttl {
                refill(&engine).await;
                last_walk = Instant::now();
            }
        }
        drop(engine);
        let due = last_walk + period;
        if Instant::now() < due {
            // Not yet: look at sync's health again meanwhile.
            tokio::time::sleep_until(due.min(Instant::now() + RECHECK)).await;
            continue;
        }
        let started = Instant::now();
        let pages = match last_pages {
            Some(n) => n,
            None => db_size(&conn).await.div_ceil(PAGE as u64),
        };
        match walk(&weak, &conn, period, pages).await {
            Ok(Some(made)) => {
                last_walk = started;
                last_pages = Some(made);
            }
            Ok(None) => {} // stopped halfway: sync went unhealthy
            Err(e) => tracing::debug!(error = %e, "TTL renewal walk failed; will retry"),
        }
    }
}

fn upgrade<S: ?Sized, C: Clone>(weak: &Weak<Inner<S, C>>) -> Option<Engine<S, C>> {
    let inner = weak.upgrade()?;
    Some(Engine {
        reads: inner.cache.clone(),
        inner,
    })
}

/// A guarded re-prefetch: keys may have expired while sync was stopped.
async fn refill<S, C>(engine: &Engine<S, C>)
where
    S: Source + ?Sized,
    C: crate::Connection,
{
    tracing::warn!(
        "sync was stopped longer than the TTL allows; keys may have expired; refilling the cache"
    );
    match engine.load_guarded(PrefetchReason::Refill).await {
        Ok(report) => {
            engine.set_renewal(|r| r.refills += 1);
            tracing::info!(
                loaded = report.loaded,
                swept = report.swept,
                elapsed_ms = report.elapsed.as_secs_f64() * 1000.0,
                "cache refilled"
            );
        }
        Err(e) => tracing::warn!(error = %e, "refill failed; the next self-healing check retries"),
    }
}

/// Keys in every primary's database (`DBSIZE`, summed): at least as many
/// as the walk will meet.
async fn db_size<C: crate::Connection>(conn: &C) -> u64 {
    let Ok(nodes) = conn.primaries().await else {
        return 0;
    };
    let mut total = 0;
    for mut node in nodes {
        let n: redis::RedisResult<u64> = redis::cmd("DBSIZE").query_async(&mut node).await;
        total += n.unwrap_or(0);
    }
    total
}

/// One walk over every key, paced to spread its `pages` (`SCAN` calls, as
/// many as the last walk made) over most of `period`. Returns how many
/// calls it made, or `None` when it stopped halfway because sync went
/// unhealthy (or the engine is gone).
async fn walk<S, C>(
    engine: &Weak<Inner<S, C>>,
    conn: &C,
    period: Duration,
    pages: u64,
) -> crate::Result<Option<u64>>
where
    S: Source + ?Sized,
    C: crate::Connection,
{
    let Some(first) = upgrade(engine) else {
        return Ok(None);
    };
    let keys = first.inner.cache.key_space().clone();
    let ttl = (
        first.inner.cache.ttl_config().as_secs(),
        first.inner.cache.table_ttls(),
    );
    let json = first.inner.cache.json_tables();
    drop(first);
    // The pause between pages spreads them over the period.
    let gap = period.mul_f64(0.8) / u32::try_from(pages.max(1)).unwrap_or(u32::MAX);
    let (mut renewed, mut made, mut met) = (0u64, 0u64, 0u64);
    for mut node in conn.primaries().await? {
        let mut cursor = 0u64;
        loop {
            let page_started = Instant::now();
            let (next, page): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(keys.scan_pattern())
                .arg("COUNT")
                .arg(PAGE)
                .query_async(&mut node)
                .await?;
            let done = renew(conn, &keys, &page, (ttl.0, &ttl.1), &json).await?;
            renewed += done;
            made += 1;
            met += page.len() as u64;
            let Some(engine) = upgrade(engine) else {
                return Ok(None);
            };
            engine.set_renewal(|r| r.renewed += done);
            if engine.unhealthy().is_some() {
                return Ok(None);
            }
            drop(engine);
            if next == 0 {
                break;
            }
            cursor = next;
            tokio::time::sleep_until(page_started + gap).await;
        }
    }
    if let Some(engine) = upgrade(engine) {
        engine.set_renewal(|r| {
            r.walks += 1;
            r.keys = met;
        });
        tracing::debug!(renewed, pages = made, "TTL renewal walk done");
    }
    Ok(Some(made))
}

/// `EXPIRE key ttl GT` for every key of a page (never shortening a TTL,
/// never giving one to a key that has none), `ttl` being the key's table's
/// own or the cache's (`(default, own)`); a tombstone kept inside its
/// record's hash is left to expire. Returns how many were renewed.
async fn renew<C: crate::Connection>(
    conn: &C,
    keys: &KeySpace,
    page: &[String],
    (ttl, own): (u64, &[(String, u64)]),
    json: &[String],
) -> crate::Result<u64> {
    // Under a prefix several tables share, other keys may turn up.
    let page: Vec<String> = page
        .iter()
        .filter(|k| keys.id_of(k).is_some())
        .cloned()
        .collect();
    let page = page.as_slice();
    if page.is_empty() {
        return Ok(0);
    }
    let in_hash: Vec<String> = page
        .iter()
        .filter(|k| {
            keys.tombstone(k) == Tombstone::InHash
                && !json.iter().any(|p| k.starts_with(p.as_str()))
        })
        .cloned()
        .collect();
    let tombed = if in_hash.is_empty() {
        Vec::new()
    } else {
        let found = crate::cluster::pipelined(conn, &in_hash, 1, |pipe, key| {
            pipe.cmd("HEXISTS")
                .arg(key)
                .arg(crate::guard::DELETED_FIELD);
        })
        .await?;
        in_hash
            .into_iter()
            .zip(found)
            .filter(|(_, v)| matches!(v, redis::Value::Int(1)))
            .map(|(k, _)| k)
            .collect()
    };
    let live: Vec<String> = page
        .iter()
        .filter(|k| !tombed.contains(k))
        .cloned()
        .collect();
    let replies = crate::cluster::pipelined(conn, &live, 2, |pipe, key| {
        let ttl = crate::guard::ttl_of(own, ttl, key);
        pipe.cmd("EXPIRE").arg(key).arg(ttl).arg("GT");
        // A JSON record's version lives in its tombstone key: it lives as
        // long as the record.
        match keys.tombstone(key) {
            Tombstone::Key(tomb) if json.iter().any(|p| key.starts_with(p.as_str())) => {
                pipe.cmd("EXPIRE").arg(tomb).arg(ttl).arg("GT");
            }
            _ => {
                pipe.cmd("ECHO").arg("");
            }
        }
    })
    .await?;
    let replies: Vec<redis::Value> = replies.into_iter().step_by(2).collect();
    Ok(replies
        .iter()
        .filter(|v| matches!(v, redis::Value::Int(1)))
        .count() as u64)
}

/// Starts the renewal task.
pub(super) fn spawn<S, C>(engine: &Engine<S, C>, conn: C) -> tokio::task::JoinHandle<()>
where
    S: Source + ?Sized,
    C: crate::Connection,
{
    engine.set_renewal(|r| r.active = true);
    tokio::spawn(tracing::Instrument::instrument(
        renew_loop(Arc::downgrade(&engine.inner), conn),
        tracing::info_span!("ttl_renewal"),
    ))
}
