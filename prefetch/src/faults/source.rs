//! [`FaultySource`]: changes dropped, copied, reordered or delayed on
//! their way from a source to the sync worker.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use futures::FutureExt;

use super::{FaultKind, Faults};
use crate::error::Result;
use crate::events::{Event, EventBus};
use crate::model::{Change, Transaction, Version};
use crate::source::{BoxFuture, Source, SourceSnapshot, SourceStatus};

/// How long a reordered change waits for a newer one before it is
/// delivered anyway.
const REORDER_PATIENCE: Duration = Duration::from_millis(500);

/// A change to deliver again or late, on its own.
struct Extra {
    tx: Arc<Transaction>,
    kind: FaultKind,
    /// A reordered change goes once something newer went, or at this time.
    due: Option<Instant>,
    /// The pull it came in.
    pull: u64,
}

#[derive(Default)]
struct Held {
    /// Pulled and planned, handed out no earlier than `not_before`.
    ready: Vec<Arc<Transaction>>,
    not_before: Option<Instant>,
    /// Copies and late changes, in the order they go.
    extras: VecDeque<Extra>,
    /// Delivered copies and late changes whose outcome the feed has not
    /// told yet: id, version, kind, delivered at.
    watched: Vec<(String, Version, FaultKind, SystemTime)>,
    /// Pulls from the source so far.
    pulls: u64,
    /// Whether a task is watching the event feed for outcomes.
    listening: bool,
}

/// A source whose changes meet the [`Faults`] on their way to the sync
/// worker.
///
/// Dropped ones are left out of their transaction (whose position
/// still moves), duplicated ones come again on their own right after,
/// reordered ones come late, delayed batches wait. Each fault is announced
/// on the event feed ([`Event::Fault`]), a copy's or late change's once the
/// guard decided what to do with it.
///
/// Copies and late changes keep their transaction's position, so nothing
/// the source sends is ever acknowledged before it was applied; they count
/// in the status's backlog until delivered.
pub struct FaultySource<S: ?Sized> {
    inner: Arc<S>,
    faults: Faults,
    events: EventBus,
    held: Arc<Mutex<Held>>,
}

impl<S: ?Sized> std::fmt::Debug for FaultySource<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultySource")
            .field("pending", &self.faults.pending())
            .finish_non_exhaustive()
    }
}

impl<S: Source + ?Sized> FaultySource<S> {
    /// Wraps `inner`; `events` is the bus the engine publishes to (while
    /// copies or late changes are out, a task watches it for what the
    /// guard did with them; otherwise the wrapper costs a lock per pull).
    pub fn new(inner: Arc<S>, faults: Faults, events: EventBus) -> Arc<Self> {
        Arc::new(Self {
            inner,
            faults,
            events,
            held: Arc::new(Mutex::new(Held::default())),
        })
    }

    /// The wrapped source.
    pub fn inner(&self) -> &Arc<S> {
        &self.inner
    }

    /// The fault plan this source follows.
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    fn held(&self) -> MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn pull_faulty(&self, max: usize) -> Result<Vec<Arc<Transaction>>> {
        loop {
            if let Some(out) = self.take_ready().await {
                return Ok(out);
            }
            if let Some(extra) = self.take_extra(false) {
                return Ok(vec![extra]);
            }
            let due = self.held().extras.front().and_then(|e| e.due);
            let pulled = match due {
                Some(due) => tokio::select! {
                    pulled = self.inner.pull(max) => pulled?,
                    _ = tokio::time::sleep_until(due.into()) => match self.take_extra(true) {
                        Some(extra) => return Ok(vec![extra]),
                        None => continue,
                    },
                },
                None => self.inner.pull(max).await?,
            };
            if pulled.is_empty() {
                return Ok(pulled);
            }
            self.plan(pulled);
        }
    }

    /// What was pulled and planned, once its delay is over (cancel-safe:
    /// it stays held until handed out).
    async fn take_ready(&self) -> Option<Vec<Arc<Transaction>>> {
        let not_before = {
            let held = self.held();
            if held.ready.is_empty() {
                return None;
            }
            held.not_before
        };
        if let Some(at) = not_before {
            tokio::time::sleep_until(at.into()).await;
        }
        let mut held = self.held();
        held.not_before = None;
        // Reordered changes go once something that followed them went.
        let pull = held.pulls;
        for extra in held.extras.iter_mut() {
            if extra.kind == FaultKind::Reordered && extra.pull < pull {
                extra.due = None;
            }
        }
        Some(std::mem::take(&mut held.ready))
    }

    /// The next copy or late change that is due (any late one when
    /// `timed_out`).
    fn take_extra(&self, timed_out: bool) -> Option<Arc<Transaction>> {
        let mut held = self.held();
        let now = Instant::now();
        let front = held.extras.front()?;
        let due = timed_out || front.due.is_none_or(|d| d <= now);
        if !due {
            return None;
        }
        let extra = held.extras.pop_front()?;
        if let Some(change) = extra.tx.changes.first() {
            let watched = (
                change.id.clone(),
                change.version,
                extra.kind,
                SystemTime::now(),
            );
            held.watched.push(watched);
            if !held.listening {
                // Subscribed before the change is handed out: its outcome
                // is published after.
                held.listening = true;
                let feed = self.events.subscribe();
                tokio::spawn(tell_outcomes(
                    feed,
                    self.events.clone(),
                    Arc::clone(&self.held),
                ));
            }
        }
        Some(extra.tx)
    }

    /// Applies the plan to what was just pulled: drops, holds back, copies,
    /// delays; the result waits in `ready`.
    fn plan(&self, pulled: Vec<Arc<Transaction>>) {
        let n = pulled.iter().map(|tx| tx.changes.len()).sum();
        let (fates, delay) = self.faults.fates(n);
        let mut held = self.held();
        held.pulls += 1;
        let pull = held.pulls;
        if let Some(by) = delay {
            held.not_before = Some(Instant::now() + by);
        }
        if fates.is_empty() {
            held.ready.extend(pulled);
            return;
        }
        let mut fates = fates.into_iter();
        let mut late = Vec::new();
        for tx in pulled {
            let mut kept = Vec::with_capacity(tx.changes.len());
            for change in &tx.changes {
                match fates.next().flatten() {
                    None => kept.push(change.clone()),
                    Some(FaultKind::Dropped) => self.announce(FaultKind::Dropped, change),
                    Some(FaultKind::Reordered) => late.push(single(&tx, change)),
                    Some(kind) => {
                        kept.push(change.clone());
                        held.extras.push_back(Extra {
                            tx: single(&tx, change),
                            kind,
                            due: None,
                            pull,
                        });
                    }
                }
            }
            let mut planned = Transaction::new(tx.position, kept);
            planned.committed_at = tx.committed_at;
            held.ready.push(Arc::new(planned));
        }
        // Newest first, after the rest of their pull if it had any, else
        // after the next pull (or the patience).
        let rest = held.ready.iter().any(|tx| !tx.changes.is_empty());
        let due = (!rest).then(|| Instant::now() + REORDER_PATIENCE);
        for tx in late.into_iter().rev() {
            held.extras.push_back(Extra {
                tx,
                kind: FaultKind::Reordered,
                due,
                pull: if rest { 0 } else { pull },
            });
        }
    }

    fn announce(&self, kind: FaultKind, change: &Change) {
        tracing::info!(fault = kind.as_str(), id = %change.id, version = %change.version, "fault injected");
        self.events.publish(|| Event::Fault {
            kind,
            id: change.id.clone(),
            version: change.version,
            outcome: None,
        });
    }
}

/// `change` alone in a copy of `tx` (same position and commit time).
fn single(tx: &Transaction, change: &Change) -> Arc<Transaction> {
    let mut one = Transaction::new(tx.position, vec![change.clone()]);
    one.committed_at = tx.committed_at;
    Arc::new(one)
}

/// How long an outcome is waited for (the feed is lossy).
const OUTCOME_PATIENCE: Duration = Duration::from_secs(10);

/// Watches the feed for what the guard did with each delivered copy and
/// late change (the first write of its id and version made after it was
/// delivered), announces it, and ends when none is left to watch.
async fn tell_outcomes(
    mut feed: tokio::sync::broadcast::Receiver<Event>,
    events: EventBus,
    held: Arc<Mutex<Held>>,
) {
    loop {
        let event = tokio::time::timeout(OUTCOME_PATIENCE, feed.recv()).await;
        let writes = match event {
            Ok(Ok(Event::SyncApplied { writes, .. })) => writes,
            Ok(Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) | Err(_) => {
                Arc::from(Vec::new())
            }
            Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) => {
                held.lock().unwrap_or_else(|p| p.into_inner()).listening = false;
                return;
            }
        };
        let (told, done) = {
            let mut held = held.lock().unwrap_or_else(|p| p.into_inner());
            let mut told = Vec::new();
            let now = SystemTime::now();
            held.watched.retain(|(id, version, kind, delivered)| {
                if now
                    .duration_since(*delivered)
                    .is_ok_and(|waited| waited > OUTCOME_PATIENCE)
                {
                    return false;
                }
                let Some(w) = writes
                    .iter()
                    .find(|w| w.id == *id && w.version == *version && w.at >= *delivered)
                else {
                    return true;
                };
                tracing::info!(fault = kind.as_str(), %id, %version, outcome = ?w.outcome, "fault injected");
                told.push(Event::Fault {
                    kind: *kind,
                    id: id.clone(),
                    version: *version,
                    outcome: Some(w.outcome),
                });
                false
            });
            let done = held.watched.is_empty();
            if done {
                held.listening = false;
            }
            (told, done)
        };
        for event in told {
            events.publish(|| event);
        }
        if done {
            return;
        }
    }
}

impl<S: Source + ?Sized> Source for FaultySource<S> {
    fn id(&self) -> String {
        self.inner.id()
    }

    fn open(&self, applied: Option<Version>) -> BoxFuture<'_, Result<bool>> {
        self.inner.open(applied)
    }

    fn snapshot(&self) -> BoxFuture<'_, Result<SourceSnapshot>> {
        self.inner.snapshot()
    }

    fn snapshot_of(&self, table: &str) -> BoxFuture<'_, Result<SourceSnapshot>> {
        self.inner.snapshot_of(table)
    }

    fn pull(&self, max_changes: usize) -> BoxFuture<'_, Result<Vec<Arc<Transaction>>>> {
        self.pull_faulty(max_changes).boxed()
    }

    fn ack(&self, upto: Version) -> BoxFuture<'_, Result<()>> {
        self.inner.ack(upto)
    }

    fn position_text(&self, position: Version) -> String {
        self.inner.position_text(position)
    }

    fn parse_position(&self, text: &str) -> Option<Version> {
        self.inner.parse_position(text)
    }

    fn pending(&self, id: &str) -> Option<crate::PendingChange> {
        self.inner.pending(id)
    }

    fn fetch<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<crate::source::Fetched>>> {
        self.inner.fetch(id)
    }

    fn status(&self) -> SourceStatus {
        let mut status = self.inner.status();
        let held = self.held();
        status.backlog +=
            held.extras.len() + held.ready.iter().map(|tx| tx.changes.len()).sum::<usize>();
        status
    }
}
