//! A change feed any adapter can push into: [`channel`] returns the
//! [`ChangeSender`] (for a CDC reader, a mock, a test) and the
//! [`ChangeFeed`] a [`Source`](crate::Source) pulls from.
//!
//! The feed behaves like a replication slot: it keeps every transaction
//! until it is acknowledged, hands each out once, and can hand out again
//! everything after a given position ([`ChangeFeed::rewind`]) when a
//! consumer restarts. It is unbounded, so a sender never waits for a paused
//! consumer; acknowledging is what frees memory. A sender that can wait
//! (a replication reader: the database keeps what it has not read) bounds
//! it with [`ChangeSender::wait_below`].

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::events::{Event, EventBus};
use crate::model::{ChangeKind, Transaction, Version};

/// A connected sender and feed sharing one log.
///
/// `events` receives an [`Event::Primary`] for every transaction sent, in
/// send order, for dashboards.
///
/// ```
/// # async fn demo() {
/// use prefetch::{Change, EventBus, Transaction, Version, feed};
///
/// let (sender, feed) = feed::channel(EventBus::default());
/// let v = Version::new(1, 0);
/// sender.send(Transaction::new(v, vec![Change::delete("cat-001", v)]));
/// let pulled = feed.pull(100).await;
/// assert_eq!(pulled[0].position, v);
/// feed.ack(v); // durable in Redis: forget it
/// assert_eq!(feed.backlog(), 0);
/// # }
/// ```
pub fn channel(events: EventBus) -> (ChangeSender, ChangeFeed) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            log: VecDeque::new(),
            next: 0,
            acked: None,
            head: None,
            queued_changes: 0,
            pending: HashMap::new(),
            senders: 1,
        }),
        ids: RandomState::new(),
        pending_ids: AtomicUsize::new(0),
        notify: Notify::new(),
        drained: Notify::new(),
        events,
    });
    (
        ChangeSender {
            shared: Arc::clone(&shared),
        },
        ChangeFeed { shared },
    )
}

struct Shared {
    state: Mutex<State>,
    notify: Notify,
    /// Woken when an acknowledgement frees memory.
    drained: Notify,
    events: EventBus,
    /// Hashes ids for `pending` (64 bits: no allocation per change).
    ids: RandomState,
    /// `pending`'s length, read without the lock (a read of an id checks
    /// nothing while every change is acknowledged).
    pending_ids: AtomicUsize,
}

struct State {
    /// Every transaction not yet acknowledged, in send order.
    log: VecDeque<Arc<Transaction>>,
    /// Index in `log` of the next transaction to hand out.
    next: usize,
    acked: Option<Version>,
    head: Option<Version>,
    /// Changes inside `log`.
    queued_changes: usize,
    /// Per id (its 64-bit hash): the changes inside `log` and the newest
    /// of them.
    pending: HashMap<u64, Pending>,
    senders: usize,
}

struct Pending {
    count: u32,
    newest: PendingChange,
}

/// The newest change of an id that was sent but not yet acknowledged: what
/// a read of that id should have seen, had the cache kept up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingChange {
    /// Its version.
    pub version: Version,
    /// Whether it deletes the record.
    pub delete: bool,
}

impl State {
    fn note_sent(&mut self, tx: &Transaction, ids: &RandomState) {
        for change in &tx.changes {
            if change.kind == ChangeKind::Truncate {
                continue;
            }
            let newest = PendingChange {
                version: change.version,
                delete: change.kind == ChangeKind::Delete,
            };
            self.pending
                .entry(ids.hash_one(change.id.as_str()))
                .and_modify(|p| {
                    p.count += 1;
                    if p.newest.version <= newest.version {
                        p.newest = newest;
                    }
                })
                .or_insert(Pending { count: 1, newest });
        }
    }

    fn note_acknowledged(&mut self, tx: &Transaction, ids: &RandomState) {
        for change in &tx.changes {
            let id = ids.hash_one(change.id.as_str());
            if let Some(p) = self.pending.get_mut(&id) {
                p.count -= 1;
                if p.count == 0 {
                    self.pending.remove(&id);
                }
            }
        }
    }
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // Nothing panics while the lock is held; recover rather than poison.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The pushing end of a change feed. Cloning adds a sender; the feed ends
/// once every sender is dropped and everything was handed out.
pub struct ChangeSender {
    shared: Arc<Shared>,
}

impl Clone for ChangeSender {
    fn clone(&self) -> Self {
        self.shared.state().senders += 1;
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl Drop for ChangeSender {
    fn drop(&mut self) {
        self.shared.state().senders -= 1;
        self.shared.notify.notify_waiters();
    }
}

impl std::fmt::Debug for ChangeSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeSender").finish_non_exhaustive()
    }
}

impl ChangeSender {
    /// Appends one committed transaction. Never waits. Transactions must be
    /// sent in commit order (positions never decreasing).
    pub fn send(&self, tx: Transaction) -> Arc<Transaction> {
        let tx = Arc::new(tx);
        {
            let mut state = self.shared.state();
            state.queued_changes += tx.changes.len();
            state.note_sent(&tx, &self.shared.ids);
            self.shared.pending_ids.store(state.pending.len(), Relaxed);
            state.head = Some(state.head.map_or(tx.position, |h| h.max(tx.position)));
            state.log.push_back(Arc::clone(&tx));
            // The worker first: the feed's subscribers (the live hub) run
            // on the same runtime, and what is woken first runs first.
            self.shared.notify.notify_waiters();
            // Published under the lock, so subscribers see send order.
            self.shared.events.publish(|| Event::primary(&tx));
        }
        tx
    }

    /// The position of the newest transaction sent.
    pub fn head(&self) -> Option<Version> {
        self.shared.state().head
    }

    /// Changes sent but not yet acknowledged.
    pub fn backlog(&self) -> usize {
        self.shared.state().queued_changes
    }

    /// Waits, up to `at_most`, until fewer than `limit` changes are waiting
    /// for an acknowledgement; returns whether they are. Back-pressure for
    /// a sender that can hold back (the source keeps what it has not sent).
    pub async fn wait_below(&self, limit: usize, at_most: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + at_most;
        loop {
            let drained = self.shared.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if self.backlog() < limit {
                return true;
            }
            if tokio::time::timeout_at(deadline, drained).await.is_err() {
                return false;
            }
        }
    }
}

/// The pulling end of a change feed. Cheap to clone; clones share the log
/// and the read position.
#[derive(Clone)]
pub struct ChangeFeed {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ChangeFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.shared.state();
        f.debug_struct("ChangeFeed")
            .field("unacknowledged", &state.log.len())
            .field("head", &state.head)
            .field("acked", &state.acked)
            .finish()
    }
}

impl ChangeFeed {
    /// Waits until at least one transaction is waiting, then hands out
    /// transactions up to about `max_changes` changes (always at least one
    /// whole transaction). Returns an empty list once every sender is gone
    /// and nothing is left.
    ///
    /// Cancel-safe: a cancelled call hands out nothing.
    pub async fn pull(&self, max_changes: usize) -> Vec<Arc<Transaction>> {
        loop {
            let notified = self.shared.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.shared.state();
                if state.next < state.log.len() {
                    return take(&mut state, max_changes);
                }
                if state.senders == 0 {
                    return Vec::new();
                }
            }
            notified.await;
        }
    }

    /// What [`pull`](Self::pull) would hand out now, without waiting.
    pub fn try_pull(&self, max_changes: usize) -> Vec<Arc<Transaction>> {
        take(&mut self.shared.state(), max_changes)
    }

    /// Everything up to and including `upto` is durable: forget it (also
    /// transactions not yet handed out, which a snapshot at `upto` covers).
    pub fn ack(&self, upto: Version) {
        let mut state = self.shared.state();
        while state.log.front().is_some_and(|tx| tx.position <= upto) {
            if let Some(tx) = state.log.pop_front() {
                state.queued_changes -= tx.changes.len();
                state.note_acknowledged(&tx, &self.shared.ids);
            }
            state.next = state.next.saturating_sub(1);
        }
        state.acked = Some(state.acked.map_or(upto, |a| a.max(upto)));
        self.shared.pending_ids.store(state.pending.len(), Relaxed);
        drop(state);
        self.shared.drained.notify_waiters();
    }

    /// Hands out again everything after `after` (`None`: everything kept).
    /// Returns false when the log no longer reaches back that far, because
    /// a later position was acknowledged meanwhile.
    pub fn rewind(&self, after: Option<Version>) -> bool {
        let mut state = self.shared.state();
        if state.acked.is_some() && after < state.acked {
            return false;
        }
        state.next = state
            .log
            .iter()
            .position(|tx| Some(tx.position) > after)
            .unwrap_or(state.log.len());
        true
    }

    /// Changes sent but not yet acknowledged.
    pub fn backlog(&self) -> usize {
        self.shared.state().queued_changes
    }

    /// The position of the newest transaction sent.
    pub fn head(&self) -> Option<Version> {
        self.shared.state().head
    }

    /// The newest acknowledged position.
    pub fn acked(&self) -> Option<Version> {
        self.shared.state().acked
    }

    /// The newest change of `id` sent but not yet acknowledged (`None`:
    /// every change of `id` sent so far is durable in Redis).
    pub fn pending(&self, id: &str) -> Option<PendingChange> {
        if self.shared.pending_ids.load(Relaxed) == 0 {
            return None;
        }
        let id = self.shared.ids.hash_one(id);
        self.shared.state().pending.get(&id).map(|p| p.newest)
    }
}

fn take(state: &mut State, max_changes: usize) -> Vec<Arc<Transaction>> {
    let mut out = Vec::new();
    let mut changes = 0;
    while let Some(tx) = state.log.get(state.next) {
        if !out.is_empty() && changes + tx.changes.len() > max_changes {
            break;
        }
        changes += tx.changes.len();
        out.push(Arc::clone(tx));
        state.next += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Change;

    fn tx(commit: u64, n: usize) -> Transaction {
        let v = Version::new(commit, 0);
        Transaction::new(
            v,
            (0..n).map(|i| Change::delete(format!("k{i}"), v)).collect(),
        )
    }

    #[tokio::test]
    async fn pulled_transactions_come_back_after_a_rewind_until_acknowledged() {
        let (sender, feed) = channel(EventBus::default());
        for c in 1..=5 {
            sender.send(tx(c, 2));
        }
        let first = feed.pull(4).await;
        assert_eq!(first.len(), 2, "whole transactions up to the limit");
        assert_eq!(feed.backlog(), 10);
        feed.ack(Version::new(1, 0));
        assert_eq!(feed.backlog(), 8);
        assert!(feed.rewind(Some(Version::new(1, 0))));
        let again = feed.pull(100).await;
        assert_eq!(
            again.iter().map(|t| t.position.commit).collect::<Vec<_>>(),
            [2, 3, 4, 5]
        );
        assert!(
            !feed.rewind(Some(Version::ZERO)),
            "acknowledged history is gone"
        );
        feed.ack(Version::new(9, 0));
        assert_eq!(feed.backlog(), 0);
        assert!(feed.try_pull(10).is_empty());
        drop(sender);
        assert!(feed.pull(10).await.is_empty(), "ends when senders are gone");
    }

    #[tokio::test]
    async fn an_id_is_pending_from_send_until_its_last_change_is_acknowledged() {
        let (sender, feed) = channel(EventBus::default());
        let (v1, v2) = (Version::new(1, 0), Version::new(2, 0));
        let fields: crate::Fields = [("id".to_owned(), "a".to_owned())].into();
        sender.send(Transaction::new(v1, vec![Change::upsert("a", fields, v1)]));
        sender.send(Transaction::new(v2, vec![Change::delete("a", v2)]));
        let newest = PendingChange {
            version: v2,
            delete: true,
        };
        assert_eq!(feed.pending("a"), Some(newest));
        assert_eq!(feed.pending("b"), None);
        let _ = feed.pull(100).await;
        assert_eq!(feed.pending("a"), Some(newest), "pulled is not applied");
        feed.ack(v1);
        assert_eq!(feed.pending("a"), Some(newest));
        feed.ack(v2);
        assert_eq!(feed.pending("a"), None);
    }

    #[tokio::test]
    async fn a_transaction_bigger_than_the_limit_still_comes_whole() {
        let (sender, feed) = channel(EventBus::default());
        sender.send(tx(1, 50));
        assert_eq!(feed.pull(10).await[0].changes.len(), 50);
    }
}
