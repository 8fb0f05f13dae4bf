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
    /// In the source, not in Redis (the first [`REPORT_IDS`], sorted).
    pub missing: Vec<String>,
    /// In Redis, not in the source (the first [`REPORT_IDS`], sorted).
    pub orphaned: Vec<String>,
    /// Redis holds an older version the pipeline wrote: a change was lost
    /// (the first [`REPORT_IDS`], sorted).
    pub stale: Vec<String>,
    /// Redis holds something the pipeline did not write (the first
    /// [`REPORT_IDS`], sorted).
    pub changed_outside: Vec<String>,
    /// Differences that resolved on a recheck (changes under way; the
    /// first [`REPORT_IDS`], sorted).
    pub in_flight: Vec<String>,
    /// How many of each kind there were, listed or not.
    pub totals: DriftTotals,
    /// Whether keys only Redis holds were found exactly (false above
    /// 200,000 rows: a Bloom filter of the snapshot's ids decides, and may
    /// miss one orphan in a thousand per run; each run draws a new seed).
    pub exact: bool,
    /// Keys written or removed to repair the differences.
    pub repaired: usize,
    /// Keys found correct, whose TTL was refreshed.
    pub verified: usize,
    /// The snapshot's version.
    pub version: Version,
    /// Snapshot read + comparison + recheck + repair.
    pub elapsed: Duration,
}

/// Ids a report lists per kind at most (its totals count them all), so a
/// report stays small whatever drifted.
pub const REPORT_IDS: usize = 1000;

/// How many findings of each kind a reconciliation made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DriftTotals {
    /// In the source, not in Redis.
    pub missing: usize,
    /// In Redis, not in the source.
    pub orphaned: usize,
    /// A change was lost.
    pub stale: usize,
    /// Written outside the pipeline.
    pub changed_outside: usize,
    /// Resolved on a recheck.
    pub in_flight: usize,
}

impl ReconcileReport {
    /// Whether Redis matched the source (in-flight changes aside).
    pub fn is_clean(&self) -> bool {
        let t = &self.totals;
        t.missing + t.orphaned + t.stale + t.changed_outside == 0
    }

    /// The number of findings of each kind, by the kind's name.
    pub fn counts(&self) -> [(&'static str, usize); 5] {
        let t = &self.totals;
        [
            ("missing", t.missing),
            ("orphaned", t.orphaned),
            ("stale", t.stale),
            ("changed_outside", t.changed_outside),
            ("in_flight", t.in_flight),
        ]
    }
}
