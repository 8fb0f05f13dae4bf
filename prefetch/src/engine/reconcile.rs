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
//!
//! Memory stays bounded whatever the table holds: rows are compared a chunk
//! at a time; suspects are rechecked (and repaired) a batch at a time; the
//! snapshot's ids, needed to find keys only Redis holds, are kept exactly up
//! to 200,000 and in a Bloom filter above (about 2 bytes an id); the
//! report lists at most [`REPORT_IDS`] ids per kind and counts them all.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;

use super::{Engine, WINDOW_LEASE};
use crate::bloom::IdSet;
use crate::cache::PrefetchCache;
use crate::cache::ScanCursor;
use crate::error::Result;
use crate::events::Event;
use crate::guard::{self, Stored};
use crate::model::{Fields, REPORT_IDS, ReconcileReport, Record, Version, WorkerState};
use crate::source::Source;
use crate::source::SourceSnapshot;

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

/// Reads keys (the record and its tombstone) for `ids`, pipelined.
async fn read<C>(cache: &PrefetchCache<C>, ids: &[String]) -> Result<Vec<(Stored, Option<Version>)>>
where
    C: crate::Connection,
{
    let keys: Vec<String> = ids.iter().map(|id| cache.key(id)).collect();
    let read = cache.inspect(&cache.writer(), &keys).await?;
    Ok(read.into_iter().map(|r| (r.stored, r.tomb)).collect())
}

/// Suspects held before they are rechecked (after the worker caught up).
const SUSPECTS: usize = 10_000;

/// Compares `source` with `cache`; see the module docs. `settle` waits until
/// the sync worker has applied everything up to the snapshot's version
/// (before each recheck); `repair` writes the fixes, inside a snapshot
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
    F: Fn(Version) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let started = Instant::now();
    // Repairs are snapshot writes: the window opens before the snapshot is
    // taken (see `PrefetchCache::open_window`).
    let window = match repair {
        true => Some(cache.open_window(window_lease).await?),
        false => None,
    };
    let snapshot = source.snapshot().await;
    let report = match snapshot {
        Ok(snapshot) => {
            let mut run = Run::new(cache, &snapshot, repair, settle);
            run.compare(snapshot).await.map(|()| run.finish(started))
        }
        Err(e) => Err(e),
    };
    if let Some(window) = window {
        window.close().await?;
    }
    report
}

/// What a reconciliation differs by, for [`Run::note`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Missing,
    Orphaned,
    Stale,
    ChangedOutside,
    InFlight,
}

/// One reconciliation under way.
struct Run<'a, C, F> {
    cache: &'a PrefetchCache<C>,
    at: Version,
    repair: bool,
    settle: F,
    report: ReconcileReport,
    /// Every id the snapshot held.
    seen: IdSet,
    /// Differences to look at again once the worker caught up.
    suspects: Vec<(String, Option<Fields>)>,
}

impl<'a, C, F, Fut> Run<'a, C, F>
where
    C: crate::Connection,
    F: Fn(Version) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    fn new(
        cache: &'a PrefetchCache<C>,
        snapshot: &SourceSnapshot,
        repair: bool,
        settle: F,
    ) -> Self {
        let seen = IdSet::for_ids(snapshot.rows.unwrap_or(0));
        Self {
            cache,
            at: snapshot.version,
            repair,
            settle,
            report: ReconcileReport {
                version: snapshot.version,
                exact: seen.is_exact(),
                ..ReconcileReport::default()
            },
            seen,
            suspects: Vec::new(),
        }
    }

    /// Counts a finding, and lists it while the list has room.
    fn note(&mut self, kind: Kind, id: &str) {
        let (list, total) = match kind {
            Kind::Missing => (&mut self.report.missing, &mut self.report.totals.missing),
            Kind::Orphaned => (&mut self.report.orphaned, &mut self.report.totals.orphaned),
            Kind::Stale => (&mut self.report.stale, &mut self.report.totals.stale),
            Kind::ChangedOutside => (
                &mut self.report.changed_outside,
                &mut self.report.totals.changed_outside,
            ),
            Kind::InFlight => (
                &mut self.report.in_flight,
                &mut self.report.totals.in_flight,
            ),
        };
        *total += 1;
        if list.len() < REPORT_IDS {
            list.push(id.to_owned());
        }
    }

    /// Every row of the snapshot against Redis, then every key only Redis
    /// holds.
    async fn compare(&mut self, snapshot: SourceSnapshot) -> Result<()> {
        let mut chunks = snapshot.chunks;
        while let Some(chunk) = chunks.next().await {
            let rows: Vec<(String, Fields)> = chunk?
                .into_iter()
                .filter_map(|r: Record| Some((r.id()?.to_owned(), r.into_fields())))
                .collect();
            for part in rows.chunks(CHUNK) {
                self.first_look(part).await?;
            }
        }
        let mut from = Some(ScanCursor::START);
        while let Some(at) = from {
            let page = self.cache.scan_ids(at, "", CHUNK).await?;
            for id in page.ids {
                if !self.seen.contains(&id) {
                    self.report.checked += 1;
                    self.suspect(id, None).await?;
                }
            }
            from = page.next;
        }
        self.recheck().await
    }

    /// Rows of the snapshot against what Redis holds for them; keys found
    /// correct get their TTL back at once.
    async fn first_look(&mut self, part: &[(String, Fields)]) -> Result<()> {
        let ids: Vec<String> = part.iter().map(|(id, _)| id.clone()).collect();
        let stored = read(self.cache, &ids).await?;
        let mut verified = Vec::new();
        for ((id, row), (s, tomb)) in part.iter().zip(stored) {
            self.report.checked += 1;
            self.seen.insert(id);
            let key = self.cache.key(id);
            let stored_row = self.cache.stored_form(&key, row);
            match classify(Some(&s), tomb, Some(&stored_row), self.at) {
                Finding::Ok => verified.push(key),
                Finding::InFlight => self.note(Kind::InFlight, id),
                _ => self.suspect(id.clone(), Some(row.clone())).await?,
            }
        }
        self.report.verified += verified.len();
        self.cache.renew_ttls(&verified).await
    }

    /// Holds a difference for the recheck; rechecks when enough are held.
    async fn suspect(&mut self, id: String, row: Option<Fields>) -> Result<()> {
        self.suspects.push((id, row));
        if self.suspects.len() >= SUSPECTS {
            self.recheck().await?;
        }
        Ok(())
    }

    /// The suspects classified for good (once the worker caught up with the
    /// snapshot), and with `repair`, fixed.
    async fn recheck(&mut self) -> Result<()> {
        if self.suspects.is_empty() {
            return Ok(());
        }
        (self.settle)(self.at).await;
        let mut suspects = std::mem::take(&mut self.suspects);
        // `SCAN` may name a key twice.
        suspects.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        suspects.dedup_by(|a, b| a.0 == b.0);
        let mut repair_rows: Vec<Record> = Vec::new();
        let mut orphans: Vec<String> = Vec::new();
        for part in suspects.chunks(CHUNK) {
            let ids: Vec<String> = part.iter().map(|(id, _)| id.clone()).collect();
            let stored = read(self.cache, &ids).await?;
            for ((id, row), (s, tomb)) in part.iter().zip(stored) {
                let live = !s.deleted && !s.fields.is_empty();
                let key = self.cache.key(id);
                let stored_row = row.as_ref().map(|r| self.cache.stored_form(&key, r));
                match (
                    row,
                    classify(Some(&s), tomb, stored_row.as_deref(), self.at),
                ) {
                    (_, Finding::Ok | Finding::InFlight) => self.note(Kind::InFlight, id),
                    (None, _) if live => {
                        self.note(Kind::Orphaned, id);
                        orphans.push(self.cache.key(id));
                    }
                    (None, _) => self.note(Kind::InFlight, id),
                    (Some(row), finding) => {
                        let kind = match finding {
                            Finding::Missing => Kind::Missing,
                            Finding::Stale => Kind::Stale,
                            _ => Kind::ChangedOutside,
                        };
                        self.note(kind, id);
                        repair_rows.push(Record::with_id(id.clone(), row.clone()));
                    }
                }
            }
        }
        if self.repair {
            self.report.repaired += self.cache.write_snapshot(&repair_rows, self.at).await?;
            if !orphans.is_empty() {
                self.report.repaired += self.cache.sweep_keys(self.at, &orphans).await?;
            }
        }
        Ok(())
    }

    fn finish(mut self, started: Instant) -> ReconcileReport {
        for list in [
            &mut self.report.missing,
            &mut self.report.orphaned,
            &mut self.report.stale,
            &mut self.report.changed_outside,
            &mut self.report.in_flight,
        ] {
            list.sort_unstable();
            list.dedup();
        }
        self.report.elapsed = started.elapsed();
        self.report
    }
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
            move |at| {
                let (source, sync) = (source.clone(), sync.clone());
                async move {
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
                }
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
