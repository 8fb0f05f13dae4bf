//! What the engine reports about itself: the sync worker's state and a
//! reconciliation's findings.

use std::time::Duration;

use super::Version;

/// What the sync worker is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerState {
    /// Applying changes as they arrive (or waiting for the next one).
    Running,
    /// Parked by a pause; no apply in flight; changes queue up.
    Paused,
    /// The last attempt failed; the batch is kept and retried after a delay.
    Retrying {
        /// Failed attempts so far for the current batch.
        attempt: u32,
    },
    /// The task has ended.
    Stopped,
}

impl WorkerState {
    /// `running`, `paused`, `retrying` or `stopped`.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Running => "running",
            WorkerState::Paused => "paused",
            WorkerState::Retrying { .. } => "retrying",
            WorkerState::Stopped => "stopped",
        }
    }
}

/// What a reconciliation (see `Engine::reconcile`) found (ids sorted) and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Records compared (source rows plus keys only Redis had).
    pub checked: usize,
    /// In the source, not in Redis.
    pub missing: Vec<String>,
    /// In Redis, not in the source.
    pub orphaned: Vec<String>,
    /// Redis holds an older version the pipeline wrote: a change was lost.
    pub stale: Vec<String>,
    /// Redis holds something the pipeline did not write.
    pub changed_outside: Vec<String>,
    /// Differences that resolved on a recheck (changes under way).
    pub in_flight: Vec<String>,
    /// Keys written or removed to repair the differences.
    pub repaired: usize,
    /// Keys found correct, whose TTL was refreshed.
    pub verified: usize,
    /// The snapshot's version.
    pub version: Version,
    /// Snapshot read + comparison + recheck + repair.
    pub elapsed: Duration,
}

impl ReconcileReport {
    /// Whether Redis matched the source (in-flight changes aside).
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty()
            && self.orphaned.is_empty()
            && self.stale.is_empty()
            && self.changed_outside.is_empty()
    }

    /// The number of findings of each kind, by the kind's name.
    pub fn counts(&self) -> [(&'static str, usize); 5] {
        [
            ("missing", self.missing.len()),
            ("orphaned", self.orphaned.len()),
            ("stale", self.stale.len()),
            ("changed_outside", self.changed_outside.len()),
            ("in_flight", self.in_flight.len()),
        ]
    }
}
