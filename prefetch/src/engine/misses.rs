//! Misses that say why, and lost keys that come back by themselves.
//!
//! A read that misses is classified at once, from what Redis answered and
//! what the engine knows, never by asking the source: `deleted` (a
//! tombstone), `absent` (the membership filter says the source does not
//! have the id), `lost` (it does: the key is gone). A lost key is queued
//! for repair: read from the source ([`Source::fetch`]), then, once the
//! worker has applied everything the read may have missed, written through
//! the version guard only where Redis still holds nothing for it. Keys
//! removed on purpose (an invalidate, a clear) stay missing until the next
//! change or load: that is what those operations are for.

use std::collections::HashSet;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::Instrument;

use super::{Engine, Inner};
use crate::cache::Presence;
use crate::error::Result;
use crate::source::Source;

/// Why a read missed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MissKind {
    /// The row was deleted: a tombstone says so.
    Deleted,
    /// The source does not have the id (as far as the membership filter
    /// knows: a Bloom filter errs towards [`Lost`](Self::Lost) at its
    /// false-positive rate, never the other way).
    Absent,
    /// The source has the row but its key is gone (evicted, deleted by
    /// hand, a failed node): repaired in the background.
    Lost,
    /// The membership filter is not built yet (the engine resumed and is
    /// still reading the keys Redis holds).
    Unknown,
}

impl MissKind {
    /// Every kind, in the order of [`Stats`](crate::Stats)'s counters.
    pub const ALL: [MissKind; 4] = [
        MissKind::Deleted,
        MissKind::Absent,
        MissKind::Lost,
        MissKind::Unknown,
    ];

    /// Its name: `deleted`, `absent`, `lost`, `unknown`.
    pub fn as_str(self) -> &'static str {
        match self {
            MissKind::Deleted => "deleted",
            MissKind::Absent => "absent",
            MissKind::Lost => "lost",
            MissKind::Unknown => "unknown",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for MissKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// When lost keys are restored from the source.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RestoreLost {
    /// As soon as the engine hears of it: a read's miss, or Redis reporting
    /// the key gone ([`Engine::key_gone`]).
    #[default]
    Always,
    /// Only when a read misses it.
    OnRead,
    /// Never: lost keys stay missing until a re-prefetch or a
    /// reconciliation's repair (misses are still classified).
    Off,
}

/// Lost keys waiting to be repaired at once.
const QUEUE: usize = 4096;
/// Lost keys whose restoration is logged one by one; past that, counted.
const LOGGED: usize = 10_000;
/// How long a repair waits for the worker to reach the source's position.
const REPAIR_WAIT: Duration = Duration::from_secs(2);
/// A key Redis reports gone is restored this long after: whoever watches
/// (the dashboard) sees it go, then come back; a read's miss repairs at
/// once.
const NOTICED_DELAY: Duration = Duration::from_millis(100);

/// The repair queue and what it must leave alone.
#[derive(Debug)]
pub(super) struct Repairs {
    queue: mpsc::Sender<(String, Instant)>,
    receiver: Mutex<Option<mpsc::Receiver<(String, Instant)>>>,
    /// Queued or being repaired.
    in_flight: Mutex<HashSet<String>>,
    /// Removed on purpose (an invalidate): left missing.
    dropped: Mutex<HashSet<String>>,
    /// The whole cache was cleared on purpose: nothing is repaired until
    /// the next load.
    cleared: std::sync::atomic::AtomicBool,
    logged: Mutex<HashSet<String>>,
}

impl Repairs {
    pub(super) fn new() -> Self {
        let (queue, receiver) = mpsc::channel(QUEUE);
        Self {
            queue,
            receiver: Mutex::new(Some(receiver)),
            in_flight: Mutex::default(),
            dropped: Mutex::default(),
            cleared: std::sync::atomic::AtomicBool::new(false),
            logged: Mutex::default(),
        }
    }

    /// `id` was removed on purpose.
    pub(super) fn dropped(&self, id: &str) {
        lock(&self.dropped).insert(id.to_owned());
    }

    /// Everything was removed on purpose.
    pub(super) fn cleared(&self) {
        self.cleared.store(true, Relaxed);
    }

    /// A load rewrote everything: nothing is missing on purpose any more.
    pub(super) fn reloaded(&self) {
        self.cleared.store(false, Relaxed);
        lock(&self.dropped).clear();
    }

    fn left_alone(&self, id: &str) -> bool {
        self.cleared.load(Relaxed) || lock(&self.dropped).contains(id)
    }

    /// Queues `id` for repair, not before `at`.
    fn enqueue(&self, id: &str, at: Instant) {
        if self.left_alone(id) || !lock(&self.in_flight).insert(id.to_owned()) {
            return;
        }
        if self.queue.try_send((id.to_owned(), at)).is_err() {
            // Full: the next miss of this id queues it again.
            lock(&self.in_flight).remove(id);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<S, C> Engine<S, C>
where
    S: Source + ?Sized,
    C: crate::Connection,
{
    /// Classifies a miss of `id` (`tombstone`: the read found a delete's
    /// tombstone) and queues a lost key for repair. Counts it.
    pub(super) async fn classify_miss(&self, id: &str, tombstone: bool) -> Result<MissKind> {
        // A tombstone outside the hash is a key of its own: one more look.
        let deleted = tombstone || self.reads.tombstoned(id).await?;
        let kind = if deleted {
            MissKind::Deleted
        } else {
            match self.inner.cache.members().contains(id) {
                None => MissKind::Unknown,
                Some(false) => MissKind::Absent,
                Some(true) => {
                    if self.inner.restore_lost != RestoreLost::Off {
                        self.inner.repairs.enqueue(id, Instant::now());
                    }
                    MissKind::Lost
                }
            }
        };
        self.inner.cache.counters().miss_kinds[kind.index()].fetch_add(1, Relaxed);
        Ok(kind)
    }

    /// Redis says `id`'s key went away (a keyspace notification of a `del`,
    /// an expiry, an eviction): when the source still has the row and
    /// nothing removed it on purpose, it is restored in the background,
    /// before anyone reads it. Cheap to call for every such event: only a
    /// key the membership filter holds is looked at.
    pub fn key_gone(&self, id: &str) {
        // Keys expiring while sync is not running are the refill's to
        // bring back, all at once, once it runs again.
        if self.inner.restore_lost == RestoreLost::Always
            && self.inner.sync.state() == crate::WorkerState::Running
            && self.inner.cache.members().contains(id) == Some(true)
        {
            self.inner
                .repairs
                .enqueue(id, Instant::now() + NOTICED_DELAY);
        }
    }

    /// Lost keys queued for restoration or being restored now.
    pub fn restoring(&self) -> usize {
        lock(&self.inner.repairs.in_flight).len()
    }

    /// Starts the repairer (it holds the engine weakly) and, when the
    /// engine `resumed` without loading, the filter's build from Redis.
    pub(super) fn spawn_misses(&self, resumed: bool) {
        let Some(receiver) = lock(&self.inner.repairs.receiver).take() else {
            return;
        };
        let weak = Arc::downgrade(&self.inner);
        let task =
            tokio::spawn(repair_loop(weak, receiver).instrument(tracing::info_span!("repair")));
        *lock(&self.inner.repairer) = Some(task);
        if resumed {
            self.spawn_membership_scan();
        }
    }

    /// Restores `id` if it is still lost. Returns whether it wrote it.
    async fn repair_one(&self, id: &str) -> Result<bool> {
        let cache = &self.inner.cache;
        if self.inner.repairs.left_alone(id) || cache.presence(id).await? != Presence::Gone {
            return Ok(false);
        }
        let Some(fetched) = self.inner.source.fetch(id).await? else {
            return Ok(false); // this source cannot read one record
        };
        cache.counters().repair_source_reads.fetch_add(1, Relaxed);
        let Some(record) = fetched.record else {
            // The filter's false alarm, or deleted with its tombstone gone.
            cache.members().note(std::iter::empty(), [id]);
            return Ok(false);
        };
        // Whatever the read missed below this position is applied first,
        // so the guarded write below finds the key held and leaves it.
        self.inner
            .sync
            .wait_applied(fetched.wait_for, REPAIR_WAIT)
            .await?;
        if self.inner.repairs.left_alone(id) {
            return Ok(false);
        }
        let written = cache.repair(&record, fetched.version).await?;
        if written {
            cache.counters().lost_repaired.fetch_add(1, Relaxed);
            self.inner.events.publish(|| crate::Event::Restored {
                id: id.to_owned(),
                fields: record.fields().clone(),
            });
            let mut logged = lock(&self.inner.repairs.logged);
            if logged.len() < LOGGED && logged.insert(id.to_owned()) {
                tracing::info!(id, "restored a lost key from the source");
            }
        }
        Ok(written)
    }

    /// The stale-read check of a read of `id` that found `version` (or a
    /// miss): a newer change already received and not yet applied.
    pub(super) fn count_if_stale(&self, id: &str, lookup: &crate::Lookup) {
        let Some(pending) = self.inner.source.pending(id) else {
            return;
        };
        let stale = match (&lookup.record, lookup.version) {
            (Some(_), Some(v)) => v < pending.version,
            (Some(_), None) => true,
            (None, v) => !pending.delete && v.is_none_or(|v| v < pending.version),
        };
        if stale {
            self.inner
                .cache
                .counters()
                .stale_reads
                .fetch_add(1, Relaxed);
        }
    }
}

async fn repair_loop<S, C>(weak: Weak<Inner<S, C>>, mut receiver: mpsc::Receiver<(String, Instant)>)
where
    S: Source + ?Sized,
    C: crate::Connection,
{
    while let Some((id, at)) = receiver.recv().await {
        tokio::time::sleep_until(at).await;
        let Some(inner) = weak.upgrade() else {
            return;
        };
        let engine = Engine {
            reads: inner.cache.clone(),
            inner,
        };
        match engine.repair_one(&id).await {
            Ok(_) => {}
            // The worker did not get there in time (paused, behind): the
            // next miss tries again.
            Err(crate::Error::SettleTimeout(_) | crate::Error::WorkerStopped) => {
                tracing::debug!(id, "lost key not restored: the worker is not caught up");
            }
            Err(e) => {
                tracing::warn!(id, error = %e, "cannot restore a lost key; the next miss tries again");
            }
        }
        lock(&engine.inner.repairs.in_flight).remove(&id);
    }
}

impl<S, C> Engine<S, C>
where
    S: Source + ?Sized,
    C: crate::Connection,
{
    /// After a resume nothing was loaded: the membership filter is built
    /// from the keys Redis holds, in the background (misses meanwhile are
    /// [`MissKind::Unknown`]). A key lost before the restart is not among
    /// them, and waits for the next re-prefetch or reconciliation.
    pub(super) fn spawn_membership_scan(&self) {
        let engine = self.clone();
        tokio::spawn(
            async move {
                if let Err(e) = engine.scan_members().await {
                    tracing::warn!(error = %e, "cannot read the cached ids; misses stay unclassified until the next load");
                }
            }
            .instrument(tracing::info_span!("membership")),
        );
    }

    async fn scan_members(&self) -> Result<()> {
        let cache = &self.inner.cache;
        let token = cache.members().begin(0);
        let built = async {
            cache.members().reserve(token, cache.db_keys().await?);
            let mut at = crate::ScanCursor::START;
            loop {
                let page = cache.scan_ids(at, "", 1000).await?;
                cache
                    .members()
                    .note(page.ids.iter().map(String::as_str), std::iter::empty());
                match page.next {
                    Some(next) => at = next,
                    None => return Ok(()),
                }
            }
        }
        .await;
        match built {
            Ok(()) => cache.members().finish(token),
            Err(_) => cache.members().abandon(token),
        }
        built
    }
}
