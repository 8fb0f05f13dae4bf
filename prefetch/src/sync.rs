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

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument;

use crate::cache::{BatchOutcome, PrefetchCache};
use crate::error::{Error, Result};
use crate::events::{AppliedWrite, Event, EventBus};
use crate::model::{Change, Transaction, Version, WorkerState};
use crate::source::{Source, age};

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
    faults: crate::faults::Faults,
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
            faults: crate::faults::Faults::default(),
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

    /// Injects a fault into the worker (see [`Fault`](crate::Fault)).
    pub fn inject(&self, fault: crate::faults::Fault) {
        self.shared.faults.inject(fault);
    }

    /// The faults still to come.
    pub fn pending_faults(&self) -> crate::faults::PendingFaults {
        self.shared.faults.pending()
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

struct Task<C, S: ?Sized> {
    cache: PrefetchCache<C>,
    source: Arc<S>,
    config: SyncConfig,
    events: EventBus,
    lost: Arc<Notify>,
    shared: Arc<Shared>,
    /// Pulled from the source but not yet durable in Redis (kept across
    /// retries).
    batch: Vec<Arc<Transaction>>,
}

impl<C, S> Task<C, S>
where
    C: crate::Connection,
    S: Source + ?Sized,
{
    async fn run(mut self) {
        let mut control = self.shared.control.subscribe();
        let mut attempt = 0u32;
        let mut source_open = true;
        let deadline = loop {
            let ctl = control.borrow_and_update().clone();
            if let Some(deadline) = ctl.stop_deadline {
                break deadline;
            }
            if ctl.pauses > 0 {
                self.set_state(WorkerState::Paused, Some(ctl.epoch));
                if control.changed().await.is_err() {
                    return;
                }
                continue;
            }
            if self.batch.is_empty() {
                if attempt == 0 {
                    self.set_state(WorkerState::Running, None);
                }
                let max = self.config.max_batch.max(1);
                let pulled = tokio::select! {
                    biased;
                    changed = control.changed() => {
                        if changed.is_err() { return; }
                        continue;
                    }
                    pulled = self.source.pull(max), if source_open => pulled,
                };
                match pulled {
                    Ok(txs) if txs.is_empty() => {
                        // The source has ended: nothing more will come.
                        source_open = false;
                        continue;
                    }
                    Ok(txs) => self.batch = txs,
                    Err(e) => {
                        attempt = attempt.saturating_add(1);
                        tracing::warn!(error = %e, attempt, "cannot pull from the source; will retry");
                        if !self.back_off(attempt, &mut control).await {
                            return;
                        }
                        continue;
                    }
                }
            }
            match self.apply().await {
                Ok(()) => attempt = 0,
                Err(e) => {
                    attempt = attempt.saturating_add(1);
                    self.cache.counters().retries.fetch_add(1, Relaxed);
                    if matches!(e, Error::StateLost) {
                        self.lost.notify_one();
                    }
                    if e.is_out_of_memory() {
                        self.cache.counters().oom.fetch_add(1, Relaxed);
                    }
                    tracing::warn!(
                        error = %e,
                        attempt,
                        transactions = self.batch.len(),
                        "sync apply failed; will retry"
                    );
                    if !self.back_off(attempt, &mut control).await {
                        return;
                    }
                }
            }
        };
        self.drain(deadline).await;
        self.set_state(WorkerState::Stopped, None);
    }

    /// Waits out the retry delay (or a control change). False: shut down.
    async fn back_off(&self, attempt: u32, control: &mut watch::Receiver<Control>) -> bool {
        self.set_state(WorkerState::Retrying { attempt }, None);
        let delay = self.backoff(attempt);
        tokio::select! {
            _ = tokio::time::sleep(delay) => true,
            changed = control.changed() => changed.is_ok(),
        }
    }

    /// Applies the pending batch, acknowledges it, reports it.
    async fn apply(&mut self) -> Result<()> {
        let Some(position) = self.batch.iter().map(|tx| tx.position).max() else {
            return Ok(());
        };
        let changes: Vec<&Change> = self.batch.iter().flat_map(|tx| &tx.changes).collect();
        let plan = self.shared.faults.plan(changes.len());
        if plan.outage {
            return Err(Error::Redis(redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "fault injection: the sync worker's Redis connection is cut",
            ))));
        }
        if let Some(delay) = plan.delay {
            tokio::time::sleep(delay).await;
        }
        let outcome = if plan.each.is_empty() {
            self.cache.apply_changes(&changes, Some(position)).await?
        } else {
            self.apply_with_faults(&changes, &plan, position).await?
        };
        let visible = SystemTime::now();
        let lags: Vec<Duration> = self
            .batch
            .iter()
            .flat_map(|tx| {
                let lag = visible.duration_since(tx.committed_at).unwrap_or_default();
                std::iter::repeat_n(lag, tx.changes.len())
            })
            .collect();
        for (change, lag) in changes.iter().zip(&lags) {
            if !change.is_malformed() {
                self.cache.counters().lag.record(*lag);
            }
        }
        let newest_commit = self.batch.iter().map(|tx| tx.committed_at).max();
        if let Err(e) = self.source.ack(position).await {
            // The next acknowledgement covers this one too.
            tracing::warn!(error = %e, %position, "cannot acknowledge to the source");
        }
        self.report(position, newest_commit, &changes, &lags, &outcome, visible);
        self.batch.clear();
        Ok(())
    }

    /// Applies `changes` as `plan` says: dropped ones are skipped (but the
    /// position still moves past them), reordered ones go after the rest,
    /// newest first, duplicated ones go again, each in a call of its own so
    /// that the guard, not the batching, decides what happens to them.
    async fn apply_with_faults(
        &self,
        changes: &[&Change],
        plan: &crate::faults::Plan,
        position: Version,
    ) -> Result<BatchOutcome> {
        use crate::faults::FaultKind;
        let fate = |i: usize| plan.each.get(i).copied().flatten();
        let kept: Vec<&Change> = changes
            .iter()
            .enumerate()
            .filter(|(i, _)| !matches!(fate(*i), Some(FaultKind::Dropped | FaultKind::Reordered)))
            .map(|(_, c)| *c)
            .collect();
        let mut outcome = self.cache.apply_changes(&kept, Some(position)).await?;
        // `written` indexes into `kept`; the report indexes into `changes`.
        let index: Vec<usize> = changes
            .iter()
            .enumerate()
            .filter(|(i, _)| !matches!(fate(*i), Some(FaultKind::Dropped | FaultKind::Reordered)))
            .map(|(i, _)| i)
            .collect();
        for w in &mut outcome.written {
            w.0 = index[w.0];
        }
        let late: Vec<usize> = (0..changes.len())
            .rev()
            .filter(|&i| fate(i) == Some(FaultKind::Reordered))
            .collect();
        let again: Vec<usize> = (0..changes.len())
            .filter(|&i| fate(i) == Some(FaultKind::Duplicated))
            .collect();
        for i in (0..changes.len()).filter(|&i| fate(i) == Some(FaultKind::Dropped)) {
            self.publish_fault(FaultKind::Dropped, changes[i], None);
        }
        for (kind, list) in [(FaultKind::Reordered, late), (FaultKind::Duplicated, again)] {
            for i in list {
                let one = self
                    .cache
                    .apply_changes(std::slice::from_ref(&changes[i]), None)
                    .await?;
                let result = one.written.first().map(|w| w.1);
                self.publish_fault(kind, changes[i], result);
            }
        }
        Ok(outcome)
    }

    fn publish_fault(
        &self,
        kind: crate::faults::FaultKind,
        change: &Change,
        outcome: Option<crate::events::WriteOutcome>,
    ) {
        tracing::info!(fault = kind.as_str(), id = %change.id, version = %change.version, ?outcome, "fault injected");
        self.events.publish(|| Event::Fault {
            kind,
            id: change.id.clone(),
            version: change.version,
            outcome,
        });
    }

    /// At stop: applies what is pending and ready, retrying until `deadline`.
    async fn drain(&mut self, deadline: Instant) {
        let max = self.config.max_batch.max(1);
        let mut attempt = 0;
        loop {
            if self.batch.is_empty() {
                // Only what the source has ready now: a short wait, no more.
                let wait = (Instant::now() + Duration::from_millis(5)).min(deadline);
                match tokio::time::timeout_at(wait, self.source.pull(max)).await {
                    Ok(Ok(txs)) if !txs.is_empty() => self.batch = txs,
                    _ => return,
                }
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
        let left = self.source.status().backlog;
        tracing::warn!(
            changes = left,
            why,
            "sync worker stopped with changes unapplied (the source keeps them)"
        );
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(16);
        self.config
            .retry_min
            .saturating_mul(factor)
            .min(self.config.retry_max)
    }

    fn report(
        &self,
        position: Version,
        newest_commit: Option<SystemTime>,
        changes: &[&Change],
        lags: &[Duration],
        outcome: &BatchOutcome,
        at: SystemTime,
    ) {
        self.shared.status.send_if_modified(|s| {
            let advanced = s.applied < Some(position);
            if advanced {
                s.applied = Some(position);
                s.applied_commit = newest_commit.or(s.applied_commit);
            }
            advanced
        });
        if outcome.written.is_empty() && outcome.skipped == 0 {
            return; // a heartbeat
        }
        self.events.publish(|| {
            let writes = outcome
                .written
                .iter()
                .map(|&(i, outcome)| {
                    let change = changes[i];
                    AppliedWrite {
                        id: change.id.clone(),
                        version: change.version,
                        fields: change.kind.fields().cloned(),
                        lag: lags[i],
                        at,
                        outcome,
                    }
                })
                .collect();
            Event::SyncApplied {
                writes,
                applied: outcome.applied,
                stale: outcome.stale,
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

/// How far behind the source Redis is: the age of the newest commit that is
/// in Redis, or zero when nothing is waiting.
pub(crate) fn behind(handle: &SyncHandle, head: Option<Version>) -> Duration {
    if head <= handle.applied() {
        return Duration::ZERO;
    }
    handle.applied_commit().map(age).unwrap_or_default()
}
