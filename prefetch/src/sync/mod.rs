//! The sync worker: pulls committed transactions from a [`Source`], applies
//! them to Redis through the version guard, acknowledges them.
//!
//! The worker is one tokio task in a loop over three states. Running, it
//! waits for the source and applies whatever it hands out (up to
//! [`SyncConfig::max_batch`] changes) in one atomic call the moment anything
//! arrives: no polling interval. Paused, it holds still with no apply in
//! flight while changes pile up at the source. Retrying, it keeps the failed
//! batch and tries it again with exponential backoff, first, so order is
//! kept and nothing is dropped.
//!
//! Acknowledgements follow the write: the source hears that a transaction
//! is durable only after Redis confirmed it, together with the position.
//! A crash between the two makes the source send it again, and the guard
//! refuses it as stale.
//!
//! Control goes through a [`SyncHandle`]. A pause is a [`PauseGuard`]; the
//! worker stays parked while any guard lives, and only a guard resumes, so
//! nobody can release somebody else's pause.
//!
//! | module | what |
//! |---|---|
//! | `task` | the worker's loop |

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument;

use crate::cache::PrefetchCache;
use crate::error::{Error, Result};
use crate::events::EventBus;
use crate::model::{Version, WorkerState};
use crate::source::{Source, age};

mod task;

use task::Task;

/// Tuning of the sync worker.
#[derive(Clone, Debug)]
pub struct SyncConfig {
    /// Most changes applied in one call (whole transactions: a bigger one
    /// still goes in one call).
    pub max_batch: usize,
    /// First retry delay after a failed attempt.
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

#[derive(Clone, Debug, Default)]
struct Control {
    pauses: usize,
    epoch: u64,
    stop_deadline: Option<Instant>,
}

/// What the worker reports about itself.
#[derive(Clone, Copy, Debug)]
struct Status {
    state: WorkerState,
    /// The control epoch the worker last parked under.
    parked_epoch: u64,
    /// Position of the newest transaction durable in Redis.
    applied: Option<Version>,
    /// Commit time of that transaction.
    applied_commit: Option<SystemTime>,
}

struct Shared {
    control: watch::Sender<Control>,
    status: watch::Sender<Status>,
    join: Mutex<Option<JoinHandle<()>>>,
}

/// Controls a running sync worker. Cheap to clone.
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
    /// Starts applying `source` to `cache` on the current tokio runtime.
    /// When Redis turns out to have lost the cache's state, the worker
    /// notifies `lost` and keeps retrying its batch until the state is back.
    pub fn spawn<C, S>(
        cache: PrefetchCache<C>,
        source: Arc<S>,
        config: SyncConfig,
        events: EventBus,
        lost: Arc<Notify>,
    ) -> SyncHandle
    where
        C: crate::Connection,
        S: Source + ?Sized,
    {
        let (control, _) = watch::channel(Control::default());
        let (status, _) = watch::channel(Status {
            state: WorkerState::Running,
            parked_epoch: 0,
            applied: None,
            applied_commit: None,
        });
        let shared = Arc::new(Shared {
            control,
            status,
            join: Mutex::new(None),
        });
        let span = tracing::info_span!("sync_worker", prefix = cache.prefix());
        let task = Task {
            cache,
            source,
            config,
            events,
            lost,
            shared: Arc::clone(&shared),
            batch: Vec::new(),
        };
        let join = tokio::spawn(task.run().instrument(span));
        *shared.join.lock().unwrap_or_else(|p| p.into_inner()) = Some(join);
        SyncHandle { shared }
    }

    /// Parks the worker. Returns once it is parked with no apply in flight,
    /// so the caller may touch the cache without racing it. Changes made
    /// meanwhile wait at the source and are applied in order once every
    /// outstanding pause is dropped or resumed.
    ///
    /// Fails with [`Error::PauseTimeout`] (and withdraws the request) if the
    /// worker does not park in time, for example while an apply is stuck on
    /// an unreachable Redis, and with [`Error::WorkerStopped`] after a stop.
    pub async fn pause(&self, timeout: Duration) -> Result<PauseGuard> {
        let mut epoch = 0;
        self.shared.control.send_modify(|c| {
            c.pauses += 1;
            c.epoch += 1;
            epoch = c.epoch;
        });
        // From here on, the guard withdraws this pause whatever happens.
        let guard = PauseGuard {
            handle: self.clone(),
        };
        let mut status = self.shared.status.subscribe();
        let parked = status.wait_for(|s| {
            s.state == WorkerState::Stopped
                || (s.state == WorkerState::Paused && s.parked_epoch >= epoch)
        });
        match tokio::time::timeout(timeout, parked).await {
            Ok(Ok(s)) if s.state != WorkerState::Stopped => Ok(guard),
            Ok(_) => Err(Error::WorkerStopped),
            Err(_) => Err(Error::PauseTimeout(timeout)),
        }
    }

    fn release(&self) {
        self.shared.control.send_modify(|c| {
            c.pauses = c.pauses.saturating_sub(1);
            c.epoch += 1;
        });
    }

    /// Stops the worker: it finishes the apply in flight, applies what the
    /// source still has ready (retrying until the deadline), and ends.
    /// Overrides any pause. Returns [`Error::StopTimeout`] if the task had to
    /// be cancelled.
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

    /// Waits until every transaction up to position `upto` is durable in
    /// Redis.
    pub async fn wait_applied(&self, upto: Version, timeout: Duration) -> Result<()> {
        let mut status = self.shared.status.subscribe();
        let caught_up =
            status.wait_for(|s| s.applied >= Some(upto) || s.state == WorkerState::Stopped);
        match tokio::time::timeout(timeout, caught_up).await {
            Ok(Ok(s)) if s.applied >= Some(upto) => Ok(()),
            Ok(_) => Err(Error::WorkerStopped),
            Err(_) => Err(Error::SettleTimeout(timeout)),
        }
    }

    /// Once no pause is outstanding, waits (at most `timeout`) until the
    /// worker has left the paused state, and returns the state it is in
    /// (a resume is taken up by the worker's task a moment later).
    pub async fn settle_resumed(&self, timeout: Duration) -> WorkerState {
        if self.shared.control.borrow().pauses == 0 {
            let mut status = self.shared.status.subscribe();
            let left = status.wait_for(|s| s.state != WorkerState::Paused);
            let _ = tokio::time::timeout(timeout, left).await;
        }
        self.state()
    }

    /// The worker's current state.
    pub fn state(&self) -> WorkerState {
        self.shared.status.borrow().state
    }

    /// Position of the newest transaction the worker made durable in Redis.
    pub fn applied(&self) -> Option<Version> {
        self.shared.status.borrow().applied
    }

    /// Commit time of that transaction at the source.
    pub fn applied_commit(&self) -> Option<SystemTime> {
        self.shared.status.borrow().applied_commit
    }

    /// Records that everything up to `position` is in Redis by other means
    /// (a snapshot load), so waiting for it succeeds.
    pub(crate) fn mark_applied(&self, position: Version) {
        self.shared.status.send_if_modified(|s| {
            let advanced = s.applied < Some(position);
            if advanced {
                s.applied = Some(position);
            }
            advanced
        });
    }
}

/// An outstanding pause. Resumes on [`resume`](Self::resume) or on drop, so
/// an early return or a panic cannot leave the worker parked forever.
#[must_use = "dropping the guard resumes the worker at once"]
#[derive(Debug)]
pub struct PauseGuard {
    handle: SyncHandle,
}

impl PauseGuard {
    /// Withdraws this pause (the same as dropping the guard).
    pub fn resume(self) {}
}

impl Drop for PauseGuard {
    fn drop(&mut self) {
        self.handle.release();
    }
}

/// How far behind the source Redis is: the age of the newest commit that is
/// in Redis, or zero when nothing is waiting.
pub(crate) fn behind(handle: &SyncHandle, head: Option<Version>) -> Duration {
    if head <= handle.applied() {
        return Duration::ZERO;
    }
    handle.applied_commit().map(age).unwrap_or_default()
}
