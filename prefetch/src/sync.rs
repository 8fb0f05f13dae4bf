//! [`SyncWorker`]: applies the primary's change feed to Redis.
//!
//! The worker is one tokio task in a loop over three states. Running, it
//! waits for events and applies whatever is queued (up to
//! [`SyncConfig::max_batch`]) in one round trip the moment anything arrives:
//! no polling interval. Paused, it holds still with no apply in flight while
//! events pile up in the unbounded feed. Retrying, it keeps the failed batch
//! and tries it again with exponential backoff, first, so order is kept and
//! nothing is dropped.
//!
//! Control goes through a [`SyncHandle`]. Every pause has its own id, and the
//! worker stays parked while any pause is outstanding: a late or repeated
//! resume from an earlier pause cannot release a later one.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::ConnectionLike;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::cache::{BatchOutcome, PrefetchCache};
use crate::error::{Error, Result};
use crate::events::{AppliedWrite, Event, EventBus};
use crate::model::{Change, ChangeKind};
use crate::primary::ChangeFeed;

/// Tuning of the sync worker.
#[derive(Clone, Debug)]
pub struct SyncConfig {
    /// Most events applied in one round trip.
    pub max_batch: usize,
    /// First retry delay after a failed apply.
    pub retry_min: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            max_batch: 4096,
            retry_min: Duration::from_millis(5),
            retry_max: Duration::from_secs(1),
        }
    }
}

/// What the worker is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerState {
    /// Applying events as they arrive (or waiting for the next one).
    Running,
    /// Parked by a pause; no apply in flight; events queue up.
    Paused,
    /// The last apply failed; the batch is kept and retried after a delay.
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

/// Identifies one pause; see [`SyncHandle::resume`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PauseId(u64);

#[derive(Clone, Debug, Default)]
struct Control {
    pauses: BTreeSet<PauseId>,
    epoch: u64,
    stop_deadline: Option<Instant>,
}

/// What the worker reports about itself.
#[derive(Clone, Copy, Debug)]
struct Status {
    state: WorkerState,
    /// The control epoch the worker last parked under.
    parked_epoch: u64,
    /// Highest primary sequence number applied (or skipped as malformed).
    applied_seq: u64,
}

struct Shared {
    control: watch::Sender<Control>,
    status: watch::Sender<Status>,
    join: Mutex<Option<JoinHandle<()>>>,
    next_pause: AtomicU64,
}

/// Spawns the sync worker task.
#[derive(Debug)]
pub struct SyncWorker;

impl SyncWorker {
    /// Starts applying `feed` to `cache` on the current tokio runtime, and
    /// returns the handle that controls the task.
    pub fn spawn<C>(
        cache: PrefetchCache<C>,
        feed: ChangeFeed,
        config: SyncConfig,
        events: EventBus,
    ) -> SyncHandle
    where
        C: ConnectionLike + Clone + Send + Sync + 'static,
    {
        let (control, _) = watch::channel(Control::default());
        let (status, _) = watch::channel(Status {
            state: WorkerState::Running,
            parked_epoch: 0,
            applied_seq: 0,
        });
        let shared = Arc::new(Shared {
            control,
            status,
            join: Mutex::new(None),
            next_pause: AtomicU64::new(0),
        });
        let task = Task {
            cache,
            feed,
            config,
            events,
            shared: Arc::clone(&shared),
            batch: Vec::new(),
        };
        let join = tokio::spawn(task.run());
        *shared.join.lock().unwrap_or_else(|p| p.into_inner()) = Some(join);
        SyncHandle { shared }
    }
}

/// Controls a running [`SyncWorker`]. Cheap to clone.
#[derive(Clone)]
pub struct SyncHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for SyncHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncHandle")
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

impl SyncHandle {
    /// Parks the worker. Returns once it is parked with no apply in flight,
    /// so the caller may touch the cache without racing it. Events emitted
    /// meanwhile are queued and applied in order after the last outstanding
    /// pause is resumed.
    ///
    /// Fails with [`Error::PauseTimeout`] (and withdraws the request) if the
    /// worker does not park in time, for example while an apply is stuck on
    /// an unreachable Redis, and with [`Error::WorkerStopped`] after a stop.
    pub async fn pause(&self, timeout: Duration) -> Result<PauseGuard> {
        let id = PauseId(self.shared.next_pause.fetch_add(1, Relaxed) + 1);
        let mut epoch = 0;
        self.shared.control.send_modify(|c| {
            c.pauses.insert(id);
            c.epoch += 1;
            epoch = c.epoch;
        });
        let mut status = self.shared.status.subscribe();
        let parked = status.wait_for(|s| {
            s.state == WorkerState::Stopped
                || (s.state == WorkerState::Paused && s.parked_epoch >= epoch)
        });
        let outcome = match tokio::time::timeout(timeout, parked).await {
            Ok(Ok(s)) if s.state != WorkerState::Stopped => Ok(()),
            Ok(_) => Err(Error::WorkerStopped),
            Err(_) => Err(Error::PauseTimeout(timeout)),
        };
        match outcome {
            Ok(()) => Ok(PauseGuard {
                handle: self.clone(),
                id,
                released: false,
            }),
            Err(e) => {
                self.resume(id);
                Err(e)
            }
        }
    }

    /// Withdraws the pause `id`. Returns `false` when that pause was already
    /// resumed (a stale resume), which changes nothing. The worker runs again
    /// once no pause is outstanding.
    pub fn resume(&self, id: PauseId) -> bool {
        self.shared.control.send_if_modified(|c| {
            let removed = c.pauses.remove(&id);
            if removed {
                c.epoch += 1;
            }
            removed
        })
    }

    /// Stops the worker: it finishes the apply in flight, applies what is
    /// still queued (retrying until the deadline), and ends. Overrides any
    /// pause. Returns [`Error::StopTimeout`] if the task had to be cancelled.
    pub async fn stop(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        self.shared.control.send_modify(|c| {
            c.stop_deadline.get_or_insert(deadline);
        });
        let join = self
            .shared
            .join
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        match join {
            Some(mut join) => match tokio::time::timeout_at(deadline, &mut join).await {
                Ok(_) => Ok(()),
                Err(_) => {
                    join.abort();
                    self.shared
                        .status
                        .send_modify(|s| s.state = WorkerState::Stopped);
                    Err(Error::StopTimeout(timeout))
                }
            },
            // Another caller is stopping it: wait for the same outcome.
            None => {
                let mut status = self.shared.status.subscribe();
                let stopped = status.wait_for(|s| s.state == WorkerState::Stopped);
                match tokio::time::timeout_at(deadline, stopped).await {
                    Ok(_) => Ok(()),
                    Err(_) => Err(Error::StopTimeout(timeout)),
                }
            }
        }
    }

    /// Waits until every event up to primary sequence number `seq` has been
    /// applied (or skipped as malformed).
    pub async fn wait_applied(&self, seq: u64, timeout: Duration) -> Result<()> {
        let mut status = self.shared.status.subscribe();
        let caught_up =
            status.wait_for(|s| s.applied_seq >= seq || s.state == WorkerState::Stopped);
        match tokio::time::timeout(timeout, caught_up).await {
            Ok(Ok(s)) if s.applied_seq >= seq => Ok(()),
            Ok(_) => Err(Error::WorkerStopped),
            Err(_) => Err(Error::SettleTimeout(timeout)),
        }
    }

    /// The worker's current state.
    pub fn state(&self) -> WorkerState {
        self.shared.status.borrow().state
    }

    /// Highest primary sequence number applied so far.
    pub fn applied_seq(&self) -> u64 {
        self.shared.status.borrow().applied_seq
    }
}

/// An outstanding pause. Resumes on [`resume`](Self::resume) or on drop, so
/// an early return or a panic cannot leave the worker parked forever.
#[must_use = "dropping the guard resumes the worker at once"]
#[derive(Debug)]
pub struct PauseGuard {
    handle: SyncHandle,
    id: PauseId,
    released: bool,
}

impl PauseGuard {
    /// This pause's id.
    pub fn id(&self) -> PauseId {
        self.id
    }

    /// Withdraws this pause.
    pub fn resume(mut self) {
        self.released = true;
        self.handle.resume(self.id);
    }
}

impl Drop for PauseGuard {
    fn drop(&mut self) {
        if !self.released {
            self.handle.resume(self.id);
        }
    }
}

struct Task<C> {
    cache: PrefetchCache<C>,
    feed: ChangeFeed,
    config: SyncConfig,
    events: EventBus,
    shared: Arc<Shared>,
    /// Taken from the feed but not yet applied (kept across retries).
    batch: Vec<Change>,
}

impl<C> Task<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    async fn run(mut self) {
        let mut control = self.shared.control.subscribe();
        let mut attempt = 0u32;
        let mut feed_open = true;
        let deadline = loop {
            let ctl = control.borrow_and_update().clone();
            if let Some(deadline) = ctl.stop_deadline {
                break deadline;
            }
            if !ctl.pauses.is_empty() {
                self.set_state(WorkerState::Paused, Some(ctl.epoch));
                if control.changed().await.is_err() {
                    return;
                }
                continue;
            }
            if self.batch.is_empty() {
                self.set_state(WorkerState::Running, None);
                let max = self.config.max_batch.max(1);
                tokio::select! {
                    biased;
                    changed = control.changed() => {
                        if changed.is_err() { return; }
                        continue;
                    }
                    n = self.feed.rx.recv_many(&mut self.batch, max), if feed_open => {
                        if n == 0 {
                            // The primary is gone: nothing more will come.
                            feed_open = false;
                            continue;
                        }
                    }
                }
            }
            match self.apply().await {
                Ok(()) => attempt = 0,
                Err(e) => {
                    attempt = attempt.saturating_add(1);
                    self.cache.count_retry();
                    tracing::warn!(
                        error = %e,
                        attempt,
                        events = self.batch.len(),
                        "sync apply failed; will retry"
                    );
                    self.set_state(WorkerState::Retrying { attempt }, None);
                    let delay = self.backoff(attempt);
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        changed = control.changed() => {
                            if changed.is_err() { return; }
                        }
                    }
                }
            }
        };
        self.drain(deadline).await;
        self.set_state(WorkerState::Stopped, None);
    }

    /// Applies the pending batch; on success clears it and reports it.
    async fn apply(&mut self) -> Result<()> {
        let outcome = self.cache.apply_batch(&self.batch).await?;
        self.report(&outcome);
        self.batch.clear();
        Ok(())
    }

    /// At stop: applies what is pending and queued, retrying until `deadline`.
    async fn drain(&mut self, deadline: Instant) {
        let max = self.config.max_batch.max(1);
        let mut attempt = 0;
        loop {
            while self.batch.len() < max {
                match self.feed.rx.try_recv() {
                    Ok(change) => self.batch.push(change),
                    Err(_) => break,
                }
            }
            if self.batch.is_empty() {
                return;
            }
            match tokio::time::timeout_at(deadline, self.apply()).await {
                Ok(Ok(())) => attempt = 0,
                Ok(Err(e)) => {
                    attempt += 1;
                    let delay = self.backoff(attempt);
                    if Instant::now() + delay >= deadline {
                        self.warn_unapplied(&e.to_string());
                        return;
                    }
                    tokio::time::sleep(delay).await;
                }
                Err(_) => {
                    self.warn_unapplied("stop deadline reached");
                    return;
                }
            }
        }
    }

    fn warn_unapplied(&self, why: &str) {
        let left = self.batch.len() + self.feed.len();
        tracing::warn!(
            events = left,
            why,
            "sync worker stopped with events unapplied"
        );
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(16);
        self.config
            .retry_min
            .saturating_mul(factor)
            .min(self.config.retry_max)
    }

    fn report(&self, outcome: &BatchOutcome) {
        let applied_seq = self.batch.iter().map(|c| c.seq).max().unwrap_or(0);
        self.shared.status.send_if_modified(|s| {
            let advanced = applied_seq > s.applied_seq;
            if advanced {
                s.applied_seq = applied_seq;
            }
            advanced
        });
        self.events.publish(|| {
            let now = std::time::Instant::now();
            let writes = outcome
                .written
                .iter()
                .map(|&i| {
                    let change = &self.batch[i];
                    AppliedWrite {
                        id: change.id.clone(),
                        seq: change.seq,
                        fields: match &change.kind {
                            ChangeKind::Upsert(fields) => Some(fields.clone()),
                            ChangeKind::Delete => None,
                        },
                        lag: now.saturating_duration_since(change.emitted_at),
                    }
                })
                .collect();
            Event::SyncApplied {
                writes,
                applied: outcome.applied,
                skipped: outcome.skipped,
            }
        });
    }

    fn set_state(&self, state: WorkerState, parked_epoch: Option<u64>) {
        let mut state_changed = false;
        self.shared.status.send_if_modified(|s| {
            state_changed = s.state != state;
            s.state = state;
            let mut epoch_changed = false;
            if let Some(epoch) = parked_epoch
                && epoch != s.parked_epoch
            {
                s.parked_epoch = epoch;
                epoch_changed = true;
            }
            state_changed || epoch_changed
        });
        if state_changed {
            self.events.publish(|| Event::Worker(state));
        }
    }
}
