//! Fault injection for drills and the dashboard: the sync worker drops,
//! duplicates, reorders or delays the next changes it applies, or loses its
//! Redis connection for a while. What the version guard does with them
//! (and what reconciliation finds afterwards) is the point of the drill.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One fault to inject into the sync worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Acknowledge the next `n` changes without applying them (lost events:
    /// reconciliation reports them as stale or missing).
    Drop(u32),
    /// Apply the next `n` changes a second time (the guard refuses the
    /// copies as stale).
    Duplicate(u32),
    /// Apply the next `n` changes after the rest of their batch, newest
    /// first (the guard refuses any an earlier one overtook).
    Reorder(u32),
    /// Hold the batches carrying the next `n` changes back by this long.
    Delay(u32, Duration),
    /// Fail every apply for this long, as if the Redis connection were cut
    /// (the worker retries with backoff; nothing is lost).
    Outage(Duration),
}

/// What a fault did to one change, for the live feed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// Acknowledged, never applied.
    Dropped,
    /// Applied again.
    Duplicated,
    /// Applied late, after newer changes.
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

/// Faults still to come.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PendingFaults {
    /// Changes still to drop.
    pub drop: u32,
    /// Changes still to duplicate.
    pub duplicate: u32,
    /// Changes still to reorder.
    pub reorder: u32,
    /// Changes still to delay, and by how much.
    pub delay: u32,
    /// The delay.
    pub delay_by: Duration,
    /// Time left of an outage.
    pub outage: Duration,
}

#[derive(Debug, Default)]
struct State {
    drop: u32,
    duplicate: u32,
    reorder: u32,
    delay: u32,
    delay_by: Duration,
    outage_until: Option<Instant>,
}

/// The plan for one batch of `n` changes.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// Per change: what happens to it (`None`: applied normally).
    pub(crate) each: Vec<Option<FaultKind>>,
    pub(crate) delay: Option<Duration>,
    pub(crate) outage: bool,
}

/// The worker's injected faults. Shared by the engine and the worker.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    state: Mutex<State>,
}

impl Faults {
    pub(crate) fn inject(&self, fault: Fault) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match fault {
            Fault::Drop(n) => s.drop = s.drop.saturating_add(n),
            Fault::Duplicate(n) => s.duplicate = s.duplicate.saturating_add(n),
            Fault::Reorder(n) => s.reorder = s.reorder.saturating_add(n),
            Fault::Delay(n, by) => {
                s.delay = s.delay.saturating_add(n);
                s.delay_by = by;
            }
            Fault::Outage(d) => s.outage_until = Some(Instant::now() + d),
        }
    }

    pub(crate) fn pending(&self) -> PendingFaults {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        PendingFaults {
            drop: s.drop,
            duplicate: s.duplicate,
            reorder: s.reorder,
            delay: s.delay,
            delay_by: s.delay_by,
            outage: s
                .outage_until
                .map(|u| u.saturating_duration_since(Instant::now()))
                .unwrap_or_default(),
        }
    }

    /// What to do with a batch of `n` changes (consumes the faults used).
    pub(crate) fn plan(&self, n: usize) -> Plan {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let outage = s.outage_until.is_some_and(|u| Instant::now() < u);
        if outage {
            return Plan {
                outage,
                ..Plan::default()
            };
        }
        s.outage_until = None;
        let mut plan = Plan::default();
        if s.delay > 0 && n > 0 {
            plan.delay = Some(s.delay_by);
            s.delay = s.delay.saturating_sub(u32::try_from(n).unwrap_or(u32::MAX));
        }
        if s.drop + s.duplicate + s.reorder == 0 {
            return plan;
        }
        plan.each = (0..n)
            .map(|_| {
                if s.drop > 0 {
                    s.drop -= 1;
                    Some(FaultKind::Dropped)
                } else if s.reorder > 0 {
                    s.reorder -= 1;
                    Some(FaultKind::Reordered)
                } else if s.duplicate > 0 {
                    s.duplicate -= 1;
                    Some(FaultKind::Duplicated)
                } else {
                    None
                }
            })
            .collect();
        plan
    }
}
