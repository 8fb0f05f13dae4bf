//! An in-process feed of everything the engine does, for dashboards.
//!
//! The feed is lossy by design: it is a [`tokio::sync::broadcast`] channel,
//! so a subscriber that falls behind gets `Lagged` and should resynchronise
//! from a fresh snapshot. Nothing on the data path ever waits for it, and
//! events are only built when someone is listening.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;

use crate::model::{Change, Fields};
use crate::sync::WorkerState;

/// One key written or deleted by the sync worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppliedWrite {
    /// The record id.
    pub id: String,
    /// The primary sequence number of the event that was written.
    pub seq: u64,
    /// The fields now cached, or `None` when the key was deleted.
    pub fields: Option<Fields>,
    /// Time from the primary mutation to the write being visible in Redis.
    pub lag: Duration,
}

/// Something that happened in the engine.
#[non_exhaustive]
#[derive(Clone, Debug)]
pub enum Event {
    /// The primary was mutated (in mutation order).
    Primary(Change),
    /// The sync worker applied a batch in one round trip.
    SyncApplied {
        /// The keys written, one per id (the batch's last event for it).
        writes: Arc<[AppliedWrite]>,
        /// Events applied, including ones superseded within the batch.
        applied: usize,
        /// Malformed events skipped.
        skipped: usize,
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
    /// The cache was (re-)loaded from the primary.
    Prefetched {
        /// Records written.
        loaded: usize,
        /// Time for clear + primary read + bulk load.
        elapsed: Duration,
    },
    /// The sync worker changed state.
    Worker(WorkerState),
    /// The counters were zeroed.
    StatsReset,
}

/// The sending side of the event feed. Cheap to clone.
#[derive(Clone, Debug)]
pub struct EventBus {
    tx: broadcast::Sender<Event>,
}

impl EventBus {
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

impl Default for EventBus {
    fn default() -> Self {
        Self::new(4096)
    }
}
