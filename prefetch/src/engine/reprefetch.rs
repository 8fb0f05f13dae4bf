//! Loads: the first one at start (plain pipelines into an empty cache, or
//! through the guard), and re-prefetches that write a fresh snapshot
//! through the guard while the worker keeps applying, then sweep what the
//! snapshot no longer has; every one checked against Redis's memory budget
//! first.

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use futures::StreamExt;

use super::{Engine, WINDOW_LEASE};
use crate::error::Result;
use crate::events::{Event, PrefetchReason};
use crate::model::Version;
use crate::source::Source;

/// What a (re-)prefetch does when the working set would not fit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MemoryCheck {
    /// Refuse, writing nothing ([`Error::MemoryBudget`](crate::Error::MemoryBudget)).
    #[default]
    Refuse,
    /// Log a warning and load anyway.
    Warn,
}

/// Redis memory against the cache's budget.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemoryStatus {
    /// Bytes Redis uses now.
    pub used: u64,
    /// Bytes the cache may let Redis reach (`maxmemory` less the headroom;
    /// 0: no limit).
    pub budget: u64,
    /// The eviction policy.
    pub policy: String,
}

/// The outcome of a (re-)prefetch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefetchReport {
    /// Records written to Redis.
    pub loaded: usize,
    /// Keys removed because the snapshot no longer had them.
    pub swept: usize,
    /// Snapshot read + write + sweep.
    pub elapsed: Duration,
    /// The snapshot's version (`None`: the engine resumed from the position
    /// Redis held and loaded nothing).
    pub version: Option<Version>,
}

/// How a load writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum LoadMode {
    /// Nothing else writes yet: plain pipelines.
    Fresh,
    /// The worker may be writing: through the version guard, then a sweep.
    Guarded,
}

impl<S, C> Engine<S, C>
where
    S: Source + ?Sized,
    C: crate::Connection,
{
    /// The load at start: none when the source `resumed` after the position
    /// Redis holds for it; otherwise a snapshot, through the guard when
    /// Redis holds this source's cache (or other engines share it), else
    /// with plain pipelines into a reset cache while the worker waits. Also
    /// returns how many fresh-snapshot requests of the source the result
    /// covers.
    pub(super) async fn first_load(
        &self,
        state: &crate::cache::CacheState,
        resumed: bool,
        shared_writers: bool,
    ) -> Result<(PrefetchReport, u64)> {
        let inner = &self.inner;
        let ours = state.source.as_deref() == Some(inner.cache.source_id());
        // Requests for a fresh snapshot the source makes from here on are
        // not covered by what Redis holds or is about to load.
        let covered = inner.source.status().resync_requests;
        if resumed {
            let position = state.position.unwrap_or_default();
            inner.sync.mark_applied(position);
            tracing::info!(%position, "resuming from the position Redis holds");
            let report = PrefetchReport {
                loaded: 0,
                swept: 0,
                elapsed: Duration::ZERO,
                version: None,
            };
            return Ok((report, covered));
        }
        let _admin = inner.admin.lock().await;
        inner.source.open(None).await?;
        let covered = inner.source.status().resync_requests;
        let mode = if ours || (shared_writers && state.source.is_none()) {
            LoadMode::Guarded
        } else {
            if state.source.is_some() {
                tracing::info!(
                    "Redis holds the cache of another source under this prefix; replacing it"
                );
            }
            inner.cache.reset().await?;
            if shared_writers {
                LoadMode::Guarded
            } else {
                LoadMode::Fresh
            }
        };
        // Plain pipelines are not guarded: keep the worker out meanwhile.
        let pause = match mode {
            LoadMode::Fresh => Some(inner.sync.pause(inner.pause_timeout).await?),
            LoadMode::Guarded => None,
        };
        let report = self.load(mode, PrefetchReason::Start).await?;
        drop(pause);
        Ok((report, covered))
    }

    /// Rebuilds the cache from a fresh snapshot of the source while the
    /// sync worker keeps applying: every record is written through the
    /// version guard (a key a newer change already reached is left alone),
    /// then every key older than the snapshot is removed (records the source
    /// no longer has, orphans). Readers never miss a key that exists
    /// throughout.
    pub async fn reprefetch(&self) -> Result<PrefetchReport> {
        self.load_guarded(PrefetchReason::Requested).await
    }

    /// Snapshots one table of the source again while the sync worker keeps
    /// applying every table's changes: the table's records are written
    /// through the version guard inside a snapshot window (as a
    /// re-prefetch writes them), then the records whose id starts with
    /// `id_prefix` and that are older than the snapshot are removed. Nothing
    /// else moves: the floor and the stored position stay where the
    /// worker has them, since the other tables' changes below the
    /// snapshot's version may still be on their way. `table` is the name
    /// [`Source::snapshot_of`] takes.
    pub async fn resnapshot(&self, table: &str, id_prefix: &str) -> Result<PrefetchReport> {
        let _admin = self.inner.admin.lock().await;
        let started = Instant::now();
        let cache = &self.inner.cache;
        let window = cache.open_window(WINDOW_LEASE).await?;
        let report = self.resnapshot_in(table, id_prefix, started).await;
        let closed = window.close().await;
        if let (Err(e), Ok(_)) = (&closed, &report) {
            tracing::warn!(error = %e, "cannot close the snapshot window; it lapses by itself");
        }
        report
    }

    async fn resnapshot_in(
        &self,
        table: &str,
        id_prefix: &str,
        started: Instant,
    ) -> Result<PrefetchReport> {
        let cache = &self.inner.cache;
        let snapshot = self.inner.source.snapshot_of(table).await?;
        let version = snapshot.version;
        let mut chunks = snapshot.chunks;
        let mut loaded = 0;
        while let Some(chunk) = chunks.next().await {
            let mut chunk = chunk?;
            // Only the table's own records: the sweep below looks at no
            // other id, so nothing else may be written at this version.
            chunk.retain(|r| r.id().is_some_and(|id| id.starts_with(id_prefix)));
            loaded += cache.write_snapshot(&chunk, version).await?;
        }
        let swept = cache.sweep_within(version, id_prefix).await?;
        let elapsed = started.elapsed();
        tracing::info!(
            table,
            loaded,
            swept,
            ms = elapsed.as_secs_f64() * 1000.0,
            "table snapshotted again"
        );
        self.inner.events.publish(|| Event::Prefetched {
            loaded,
            swept,
            elapsed,
            reason: PrefetchReason::Table,
        });
        Ok(PrefetchReport {
            loaded,
            swept,
            elapsed,
            version: Some(version),
        })
    }

    /// Removes a table the source no longer streams: waits (at most 30 s)
    /// until the worker has applied everything up to `settled`, the
    /// position after which the stream holds no change of the table, then
    /// deletes the table's keys ([`PrefetchCache::drop_table`](crate::PrefetchCache::drop_table)).
    /// A key the worker writes after a wait that timed out is no record
    /// any more: its TTL is not renewed and it expires. Returns how many
    /// keys were deleted.
    pub async fn remove_table(&self, id_prefix: &str, settled: Option<Version>) -> Result<usize> {
        let _admin = self.inner.admin.lock().await;
        if let Some(settled) = settled
            && let Err(e) = self
                .inner
                .sync
                .wait_applied(settled, Duration::from_secs(30))
                .await
        {
            tracing::warn!(error = %e, "removing a table before the sync worker applied its last changes; a key it writes later expires with its TTL");
        }
        let started = Instant::now();
        let deleted = self.inner.cache.drop_table(id_prefix).await?;
        tracing::info!(prefix = id_prefix, deleted, "table removed");
        // Views of the cache start again from a snapshot without it.
        self.inner.events.publish(|| Event::Prefetched {
            loaded: 0,
            swept: deleted,
            elapsed: started.elapsed(),
            reason: PrefetchReason::Table,
        });
        Ok(deleted)
    }

    /// A re-prefetch for `reason`, serialised with the other admin
    /// operations.
    pub(super) async fn load_guarded(&self, reason: PrefetchReason) -> Result<PrefetchReport> {
        let _admin = self.inner.admin.lock().await;
        self.load(LoadMode::Guarded, reason).await
    }

    pub(super) async fn load(
        &self,
        mode: LoadMode,
        reason: PrefetchReason,
    ) -> Result<PrefetchReport> {
        let started = Instant::now();
        let cache = &self.inner.cache;
        // Opened before the snapshot is taken: every change newer than the
        // snapshot is then applied inside the window and logged, so no
        // snapshot write can land on a key such a change reached and
        // something removed since.
        let window = match mode {
            LoadMode::Fresh => None,
            LoadMode::Guarded => Some(cache.open_window(WINDOW_LEASE).await?),
        };
        // A fresh membership filter, begun before the snapshot is taken so
        // that no change applied meanwhile escapes it.
        let members = cache.members().begin(0);
        let report = self.load_in(mode, reason, started, members).await;
        match &report {
            Ok(_) => cache.members().finish(members),
            Err(_) => cache.members().abandon(members),
        }
        if let Some(window) = window {
            let closed = window.close().await;
            if let (Err(e), Ok(_)) = (&closed, &report) {
                tracing::warn!(error = %e, "cannot close the snapshot window; it lapses by itself");
            }
        }
        report
    }

    async fn load_in(
        &self,
        mode: LoadMode,
        reason: PrefetchReason,
        started: Instant,
        members: u64,
    ) -> Result<PrefetchReport> {
        let cache = &self.inner.cache;
        let snapshot = self.inner.source.snapshot().await?;
        let version = snapshot.version;
        if let Some(rows) = snapshot.rows {
            cache.members().reserve(members, rows);
        }
        let mut chunks = snapshot.chunks;
        // The first chunk tells what a record weighs: check the budget
        // before writing anything.
        let first = chunks.next().await.transpose()?;
        if let Some(first) = &first {
            let rows = snapshot.rows.unwrap_or(first.len() as u64);
            self.check_memory(first, rows, mode).await?;
        }
        cache.begin_load(version).await?;
        // Every slot's state is there again: a loss reported before now is
        // covered by this load.
        cache.take_state_lost();
        let mut loaded = 0;
        let mut pending = first;
        loop {
            let chunk = match pending.take() {
                Some(chunk) => chunk,
                None => match chunks.next().await {
                    Some(chunk) => chunk?,
                    None => break,
                },
            };
            loaded += match mode {
                LoadMode::Fresh => cache.bulk_load(&chunk, version).await?,
                LoadMode::Guarded => cache.write_snapshot(&chunk, version).await?,
            };
        }
        let swept = match mode {
            LoadMode::Fresh => 0,
            LoadMode::Guarded => cache.sweep(version).await?,
        };
        cache.finish_load(version).await?;
        self.inner.repairs.reloaded();
        self.inner
            .last_loaded
            .store(loaded as u64, std::sync::atomic::Ordering::Relaxed);
        *self
            .inner
            .last_snapshot
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(std::time::SystemTime::now());
        if let Err(e) = self.inner.source.ack(version).await {
            tracing::warn!(error = %e, "cannot acknowledge the snapshot to the source");
        }
        self.inner.sync.mark_applied(version);
        if reason != PrefetchReason::Start {
            cache.counters().reprefetches.fetch_add(1, Relaxed);
        }
        if reason == PrefetchReason::Refill {
            cache.counters().refills.fetch_add(1, Relaxed);
        }
        let report = PrefetchReport {
            loaded,
            swept,
            elapsed: started.elapsed(),
            version: Some(version),
        };
        self.inner.events.publish(|| Event::Prefetched {
            loaded,
            swept,
            elapsed: report.elapsed,
            reason,
        });
        Ok(report)
    }

    /// Refuses (or warns) when writing `rows` records like `sample` would
    /// take Redis past its budget.
    async fn check_memory(
        &self,
        sample: &[crate::model::Record],
        rows: u64,
        mode: LoadMode,
    ) -> Result<()> {
        let info = self.inner.cache.memory().await?;
        if info.max == 0 || sample.is_empty() {
            return Ok(());
        }
        // Field bytes, the key, the version and hash fields, and Redis's
        // own overhead per small hash with a TTL (about 100 bytes on 7.0).
        let prefix = self.inner.cache.prefix().len() as u64;
        let bytes: u64 = sample
            .iter()
            .map(|r| {
                r.fields()
                    .iter()
                    .map(|(k, v)| (k.len() + v.len()) as u64)
                    .sum::<u64>()
                    + r.id().map_or(0, |id| id.len() as u64)
                    + prefix
                    + 150
            })
            .sum();
        let per_record = bytes / sample.len() as u64;
        let overwritten = match mode {
            LoadMode::Fresh => 0,
            LoadMode::Guarded => self
                .inner
                .last_loaded
                .load(std::sync::atomic::Ordering::Relaxed),
        };
        let needed = info.used + rows.saturating_sub(overwritten) * per_record;
        let headroom = self.inner.memory_headroom;
        let budget = (info.max as f64 * (1.0 - headroom)) as u64;
        if needed <= budget {
            return Ok(());
        }
        let err = crate::Error::MemoryBudget {
            needed,
            budget,
            max: info.max,
            headroom_pct: (headroom * 100.0).round() as u64,
        };
        match self.inner.memory_check {
            MemoryCheck::Refuse => Err(err),
            MemoryCheck::Warn => {
                tracing::warn!(error = %err, "loading anyway (--memory-check warn)");
                Ok(())
            }
        }
    }

    /// Redis memory against the budget, as last checked (every heal tick).
    pub fn memory(&self) -> Option<MemoryStatus> {
        self.inner
            .memory
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(super) async fn refresh_memory(&self) {
        if let Ok(info) = self.inner.cache.memory().await {
            let budget = (info.max as f64 * (1.0 - self.inner.memory_headroom)) as u64;
            *self.inner.memory.lock().unwrap_or_else(|p| p.into_inner()) = Some(MemoryStatus {
                used: info.used,
                budget,
                policy: info.policy,
            });
        }
    }
}
