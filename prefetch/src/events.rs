//! An in-process feed of everything the engine does, for dashboards.
//!
//! The feed is lossy by design: it is a [`tokio::sync::broadcast`] channel,
//! so a subscriber that falls behind gets `Lagged` and should resynchronise
//! from a fresh snapshot. Nothing on the data path ever waits for it, and
//! events are only built when someone is listening.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::broadcast;

use crate::model::{Fields, ReconcileReport, Transaction, Version, WorkerState};

/// What the version guard did with one write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Newer than what Redis held: written.
    Applied,
    /// Not newer than what Redis held (a duplicate, a replay, a reorder, or
    /// older than the last snapshot): left alone.
    Stale,
}

/// One key the sync worker wrote, deleted, or refused to regress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppliedWrite {
    /// The record id.
    pub id: String,
    /// The version of the change.
    pub version: Version,
    /// The fields now cached, or `None` for a delete.
    pub fields: Option<Arc<Fields>>,
    /// Time from the source's commit to the write being visible in Redis.
    pub lag: Duration,
    /// When Redis confirmed the write (its TTL runs from here).
    pub at: SystemTime,
    /// Whether the version guard let it through.
    pub outcome: WriteOutcome,
}

/// Why a (re-)prefetch ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrefetchReason {
    /// The engine started.
    Start,
    /// Someone asked for it ([`Engine::reprefetch`](crate::Engine::reprefetch)).
    Requested,
    /// Redis had lost the cache's state and the engine refilled it.
    SelfHeal,
    /// Sync was stopped long enough for keys to expire, and is back.
    Refill,
    /// One table was snapshotted again or removed
    /// ([`Engine::resnapshot`](crate::Engine::resnapshot),
    /// [`Engine::remove_table`](crate::Engine::remove_table)).
    Table,
}

/// What a fault did to one change, for the live feed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// Acknowledged, never applied.
    Dropped,
    /// Delivered again.
    Duplicated,
    /// Delivered late, after newer changes.
    Reordered,
    /// Held back.
    Delayed,
}

impl FaultKind {
    /// `dropped`, `duplicated`, `reordered` or `delayed`.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::Dropped => "dropped",
            FaultKind::Duplicated => "duplicated",
            FaultKind::Reordered => "reordered",
            FaultKind::Delayed => "delayed",
        }
    }
}

/// Something that happened in the engine.
#[non_exhaustive]
#[derive(Clone, Debug)]
pub enum Event {
    /// The source committed a transaction (in commit order).
    Primary(Arc<Transaction>),
    /// The sync worker applied a batch in one atomic call.
    SyncApplied {
        /// The keys written or refused, one per id (the batch's newest change).
        writes: Arc<[AppliedWrite]>,
        /// Changes applied, including ones superseded within the batch.
        applied: usize,
        /// Changes the version guard refused as not newer.
        stale: usize,
        /// Malformed changes skipped.
        skipped: usize,
    },
    /// A lost key (the source has the row, its key was gone) was written
    /// back from the source.
    Restored {
        /// The record id.
        id: String,
        /// What was written.
        fields: Fields,
    },
    /// An admin deleted one key.
    Invalidated {
        /// The record id.
        id: String,
        /// Whether the key existed.
        existed: bool,
    },
    /// An admin deleted every key under the prefix.
    Cleared {
        /// How many keys were deleted.
        deleted: usize,
    },
    /// Redis no longer held the cache's state; a refill follows.
    StateLost {
        /// What gave it away.
        reason: String,
    },
    /// The cache was (re-)loaded from a snapshot of the source.
    Prefetched {
        /// Records written.
        loaded: usize,
        /// Keys removed because the snapshot no longer had them.
        swept: usize,
        /// Snapshot read + write + sweep.
        elapsed: Duration,
        /// Why it ran.
        reason: PrefetchReason,
    },
    /// An injected fault did something to one change.
    Fault {
        /// What.
        kind: FaultKind,
        /// The record id.
        id: String,
        /// The change's version.
        version: Version,
        /// What the version guard did with it (`None`: never applied).
        outcome: Option<WriteOutcome>,
    },
    /// A reconciliation finished.
    Reconciled(Arc<ReconcileReport>),
    /// The sync worker changed state.
    Worker(WorkerState),
    /// The counters were zeroed.
    StatsReset,
    /// More changes at once than events carry row by row (over
    /// [`EventBus::ROW_LIMIT`]): a transaction from the source (`applied`
    /// false, instead of [`Event::Primary`]) or a batch the worker applied
    /// (`applied` true, instead of [`Event::SyncApplied`]). A subscriber
    /// that mirrors rows reads the ones it shows again. This keeps what
    /// the bus buffers bounded: a million-row `UPDATE` is never held in it.
    Bulk {
        /// Whether the worker applied them (else the source committed them).
        applied: bool,
        /// How many changes.
        changes: usize,
    },
}

impl Event {
    /// [`Event::Primary`] for `tx`, or [`Event::Bulk`] when it holds more
    /// than [`EventBus::ROW_LIMIT`] changes.
    pub fn primary(tx: &Arc<Transaction>) -> Event {
        if tx.changes.len() > EventBus::ROW_LIMIT {
            Event::Bulk {
                applied: false,
                changes: tx.changes.len(),
            }
        } else {
            Event::Primary(Arc::clone(tx))
        }
    }
}

/// The sending side of the event feed. Cheap to clone.
#[derive(Clone, Debug)]
pub struct EventBus {
    tx: broadcast::Sender<Event>,
}

impl EventBus {
    /// Changes an event carries row by row at most (see [`Event::Bulk`]).
    pub const ROW_LIMIT: usize = 256;

    /// A bus buffering up to `capacity` events per subscriber.
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(1));
        Self { tx }
    }

    /// A new subscriber, seeing events published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }

    /// Publishes the event `make` builds, building it only if anyone listens.
    pub fn publish(&self, make: impl FnOnce() -> Event) {
        if self.tx.receiver_count() > 0 {
            // An error only means every receiver left meanwhile.
            let _ = self.tx.send(make());
        }
    }
}

/// The default bus buffers 1,024 events: with [`EventBus::ROW_LIMIT`], at
/// most about 260,000 rows' worth (a subscriber that falls further behind
/// is told it lagged, and reads again).
impl Default for EventBus {
    fn default() -> Self {
        Self::new(1024)
    }
}
