//! Fault injection for drills and the dashboard, as wrappers: a
//! [`FaultySource`] drops, duplicates, reorders or delays changes on their
//! way from a source to the sync worker, and a [`FaultyConnection`] fails
//! every command while an outage lasts. The worker knows nothing of them;
//! what the version guard does with what they let through (and what
//! reconciliation finds afterwards) is the point of the drill.
//!
//! ```
//! use std::sync::Arc;
//! use prefetch::{EventBus, Fault, Faults, FaultySource, MockPrimary};
//!
//! let events = EventBus::default();
//! let primary = Arc::new(MockPrimary::new(Default::default(), events.clone()));
//! let faults = Faults::default();
//! // The engine takes `source`; whoever injects faults keeps `faults`.
//! let source = FaultySource::new(primary, faults.clone(), events);
//! faults.inject(Fault::Drop(1)); // the next change never reaches Redis
//! assert_eq!(faults.pending().drop, 1);
//! # drop(source);
//! ```
//!
//! | module | what |
//! |---|---|
//! | `source` | [`FaultySource`]: drops, copies, late changes, delays |
//! | `connection` | [`FaultyConnection`]: outages |

mod connection;
mod source;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub use crate::events::FaultKind;
pub use connection::FaultyConnection;
pub use source::FaultySource;

/// One fault to inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Acknowledge the next `n` changes without applying them (lost events:
    /// reconciliation reports them as stale or missing).
    Drop(u32),
    /// Deliver the next `n` changes a second time, each on its own right
    /// after the original (the guard refuses the copies as stale).
    Duplicate(u32),
    /// Hold the next `n` changes back and deliver them after the changes
    /// that follow them (or after half a second with nothing following),
    /// newest first, each on its own (the guard refuses any a newer change
    /// of the same record overtook).
    Reorder(u32),
    /// Hold the batches carrying the next `n` changes back by this long.
    Delay(u32, Duration),
    /// Fail every command of the wrapped connection for this long, as if
    /// it were cut (the worker retries with backoff; nothing is lost).
    Outage(Duration),
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
struct Plan {
    drop: u32,
    duplicate: u32,
    reorder: u32,
    delay: u32,
    delay_by: Duration,
    outage_until: Option<Instant>,
}

/// The faults to come, shared by the wrappers and whoever injects them.
/// Cheap to clone; clones share the plan.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    plan: Arc<Mutex<Plan>>,
}

impl Faults {
    fn plan(&self) -> MutexGuard<'_, Plan> {
        self.plan.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a fault to the plan.
    pub fn inject(&self, fault: Fault) {
        let mut s = self.plan();
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

    /// The faults still to come.
    pub fn pending(&self) -> PendingFaults {
        let s = self.plan();
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

    pub(crate) fn in_outage(&self) -> bool {
        let mut s = self.plan();
        match s.outage_until {
            Some(until) if Instant::now() < until => true,
            Some(_) => {
                s.outage_until = None;
                false
            }
            None => false,
        }
    }

    /// What happens to each of `n` changes about to be handed out, and how
    /// long the batch waits first (consumes the faults used).
    pub(crate) fn fates(&self, n: usize) -> (Vec<Option<FaultKind>>, Option<Duration>) {
        let mut s = self.plan();
        let delay = (s.delay > 0 && n > 0).then(|| {
            s.delay = s.delay.saturating_sub(u32::try_from(n).unwrap_or(u32::MAX));
            s.delay_by
        });
        if s.drop + s.duplicate + s.reorder == 0 {
            return (Vec::new(), delay);
        }
        let fates = (0..n)
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
        (fates, delay)
    }
}
