//! Reconciliation: a fresh snapshot of the source against what Redis holds,
//! every difference classified, and optionally repaired through the
//! version guard (so it is safe while the sync worker runs).
//!
//! | kind | meaning |
//! |---|---|
//! | `missing` | in the source, not in Redis (and no newer delete) |
//! | `orphaned` | in Redis, not in the source, and older than the snapshot |
//! | `stale` | Redis holds exactly what the pipeline wrote, but an older version: a change was lost |
//! | `changed_outside` | the hash differs from what the pipeline wrote: someone else wrote it |
//! | `in_flight` | a difference that resolved on a recheck once the worker caught up with the snapshot, or a key already newer than it |
//!
//! Keys found correct get their TTL refreshed, so rows that never change do
//! not expire while reconciliation runs.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;

use super::{Engine, WINDOW_LEASE};
use crate::cache::PrefetchCache;
use crate::error::Result;
use crate::events::Event;
use crate::guard::{self, Stored};
use crate::model::{Fields, ID_FIELD, ReconcileReport, Record, Version, WorkerState};
use crate::source::Source;

/// Keys per pipelined read.
const CHUNK: usize = 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Finding {
    Ok,
    Missing,
    Stale,
    ChangedOutside,
    InFlight,
}

/// How one key compares with the snapshot's row (`None`: not in the source).
fn classify(
    stored: Option<&Stored>,
    tomb: Option<Version>,
    row: Option<&Fields>,
    at: Version,
) -> Finding {
    let newest = stored.and_then(|s| s.version).max(tomb).filter(|v| *v > at);
    if newest.is_some() {
        return Finding::InFlight;
    }
    match (stored.filter(|s| !s.deleted && !s.fields.is_empty()), row) {
        (None, None) => Finding::Ok,
        (None, Some(_)) => Finding::Missing,
        // In Redis only: the caller reports it as orphaned.
        (Some(_), None) => Finding::Stale,
        (Some(s), Some(row)) if s.fields == *row => Finding::Ok,
        (Some(s), Some(_)) => {
            if s.hash == Some(guard::content_hash(&s.fields)) {
                Finding::Stale
            } else {
                Finding::ChangedOutside
            }
        }
    }
}

/// Reads keys (`HGETALL` and the tombstone) for `ids`, pipelined.
async fn read<C>(cache: &PrefetchCache<C>, ids: &[String]) -> Result<Vec<(Stored, Option<Version>)>>
where
    C: crate::Connection,
{
    let keys: Vec<String> = ids.iter().map(|id| cache.key(id)).collect();
    let values = crate::cluster::pipelined(&cache.writer(), &keys, 2, |pipe, key| {
        let tomb = guard::tomb_key(cache.key_space(), key);
        pipe.cmd("HGETALL").arg(key);
        if tomb == key {
            pipe.cmd("ECHO").arg("");
        } else {
            pipe.cmd("GET").arg(tomb);
        }
    })
    .await?;
    let mut out = Vec::with_capacity(ids.len());
    for pair in values.chunks(2) {
        let [hash, tomb] = pair else { continue };
        let raw: Fields = redis::from_redis_value(hash.clone()).unwrap_or_default();
        let tomb: Option<String> = redis::from_redis_value(tomb.clone()).unwrap_or(None);
        let stored = Stored::split(raw);
        let tomb = if stored.deleted {
            stored.version
        } else {
            tomb.and_then(|t| t.parse().ok())
        };
        out.push((stored, tomb));
    }
    Ok(out)
}

/// Compares `source` with `cache`; see the module docs. `settle` waits until
/// the sync worker has applied everything up to the snapshot's version
/// (before the recheck); `repair` writes the fixes, inside a snapshot
/// window of `window_lease`.
pub async fn reconcile<C, S, F, Fut>(
    cache: &PrefetchCache<C>,
    source: &S,
    repair: bool,
    window_lease: std::time::Duration,
    settle: F,
) -> Result<ReconcileReport>
where
    C: crate::Connection,
    S: Source + ?Sized,
    F: FnOnce(Version) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let started = Instant::now();
    // Repairs are snapshot writes: the window opens before the snapshot is
    // taken (see `PrefetchCache::open_window`).
    let window = match repair {
        true => Some(cache.open_window(window_lease).await?),
        false => None,
    };
    let report = compare(cache, source, repair, settle, started).await;
    if let Some(window) = window {
        window.close().await?;
    }
    report
}

/// What the first pass found: keys that matched, keys to look at again
/// once the worker caught up, and every id the snapshot held.
#[derive(Default)]
struct FirstPass {
    seen: HashSet<String>,
    suspects: Vec<(String, Option<Fields>)>,
    verified: Vec<String>,
}

async fn compare<C, S, F, Fut>(
    cache: &PrefetchCache<C>,
    source: &S,
    repair: bool,
    settle: F,
    started: Instant,
) -> Result<ReconcileReport>
where
    C: crate::Connection,
    S: Source + ?Sized,
    F: FnOnce(Version) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let snapshot = source.snapshot().await?;
    let at = snapshot.version;
    let mut report = ReconcileReport {
        version: at,
        ..ReconcileReport::default()
    };
    let mut pass = first_pass(cache, snapshot, &mut report).await?;
    // Keys only Redis has.
    for id in cache.ids().await? {
        if pass.seen.contains(&id) {
            continue;
        }
        report.checked += 1;
        pass.suspects.push((id, None));
    }
    // Recheck once the worker has caught up with the snapshot: what was
    // merely in flight resolves now.
    if !pass.suspects.is_empty() {
        settle(at).await;
    }
    let (repair_rows, orphans) = recheck(cache, &pass.suspects, at, &mut report).await?;
    // TTLs of verified keys start over: rows that never change never expire
    // while reconciliation runs.
    let ttl = cache.ttl_config().as_secs();
    for part in pass.verified.chunks(CHUNK) {
        let keys: Vec<String> = part.iter().map(|id| cache.key(id)).collect();
        crate::cluster::pipelined(&cache.writer(), &keys, 0, |pipe, key| {
            pipe.cmd("EXPIRE").arg(key).arg(ttl);
        })
        .await?;
    }
    report.verified = pass.verified.len();
    if repair {
        report.repaired += cache.write_snapshot(&repair_rows, at).await?;
        if !orphans.is_empty() {
            let keys: Vec<String> = orphans.iter().map(|id| cache.key(id)).collect();
            report.repaired += cache.sweep_keys(at, &keys).await?;
        }
    }
    for list in [
        &mut report.missing,
        &mut report.orphaned,
        &mut report.stale,
        &mut report.changed_outside,
        &mut report.in_flight,
    ] {
        let sorted: BTreeSet<String> = list.drain(..).collect();
        list.extend(sorted);
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

/// Every row of the snapshot against what Redis holds for it.
async fn first_pass<C: crate::Connection>(
    cache: &PrefetchCache<C>,
    snapshot: crate::source::SourceSnapshot,
    report: &mut ReconcileReport,
) -> Result<FirstPass> {
    let at = snapshot.version;
    let mut pass = FirstPass::default();
    let mut chunks = snapshot.chunks;
    while let Some(chunk) = chunks.next().await {
        let rows: Vec<(String, Fields)> = chunk?
            .into_iter()
            .filter_map(|r: Record| Some((r.id()?.to_owned(), r.into_fields())))
            .collect();
        for part in rows.chunks(CHUNK) {
            let ids: Vec<String> = part.iter().map(|(id, _)| id.clone()).collect();
            let stored = read(cache, &ids).await?;
            for ((id, row), (s, tomb)) in part.iter().zip(stored) {
                report.checked += 1;
                pass.seen.insert(id.clone());
                match classify(Some(&s), tomb, Some(row), at) {
                    Finding::Ok => pass.verified.push(id.clone()),
                    Finding::InFlight => report.in_flight.push(id.clone()),
                    _ => pass.suspects.push((id.clone(), Some(row.clone()))),
                }
            }
        }
    }
    Ok(pass)
}

/// The suspects classified for good (the worker has caught up); returns the
/// rows a repair writes and the orphans it sweeps.
async fn recheck<C: crate::Connection>(
    cache: &PrefetchCache<C>,
    suspects: &[(String, Option<Fields>)],
    at: Version,
    report: &mut ReconcileReport,
) -> Result<(Vec<Record>, Vec<String>)> {
    let mut repair_rows: Vec<Record> = Vec::new();
    let mut orphans: Vec<String> = Vec::new();
    for part in suspects.chunks(CHUNK) {
        let ids: Vec<String> = part.iter().map(|(id, _)| id.clone()).collect();
        let stored = read(cache, &ids).await?;
        for ((id, row), (s, tomb)) in part.iter().zip(stored) {
            let live = !s.deleted && !s.fields.is_empty();
            match (row, classify(Some(&s), tomb, row.as_ref(), at)) {
                (_, Finding::Ok | Finding::InFlight) => report.in_flight.push(id.clone()),
                (None, _) if live => {
                    report.orphaned.push(id.clone());
                    orphans.push(id.clone());
                }
                (None, _) => report.in_flight.push(id.clone()),
                (Some(row), finding) => {
                    match finding {
                        Finding::Missing => report.missing.push(id.clone()),
                        Finding::Stale => report.stale.push(id.clone()),
                        _ => report.changed_outside.push(id.clone()),
                    }
                    let mut row = row.clone();
                    row.entry(ID_FIELD.to_owned()).or_insert_with(|| id.clone());
                    repair_rows.push(Record::new(row));
                }
            }
        }
    }
    Ok((repair_rows, orphans))
}

impl<S, C> Engine<S, C>
where
    S: Source + ?Sized,
    C: crate::Connection,
{
    /// Compares a fresh snapshot of the source with Redis and classifies
    /// every difference; with `repair`, writes the fixes through the version
    /// guard (safe while the worker runs). Keys found correct get their TTL
    /// refreshed. See [`ReconcileReport`].
    pub async fn reconcile(&self, repair: bool) -> Result<ReconcileReport> {
        let sync = self.inner.sync.clone();
        let source = self.inner.source.clone();
        let report = reconcile(
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
}
