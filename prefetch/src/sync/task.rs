//! The worker's loop: running (pull, apply, acknowledge, report), paused,
//! retrying with backoff, and the drain at stop.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, SystemTime};

use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::{Control, Shared, SyncConfig};
use crate::cache::{BatchOutcome, PrefetchCache};
use crate::error::{Error, Result};
use crate::events::{AppliedWrite, Event, EventBus};
use crate::model::{Change, Transaction, Version, WorkerState};
use crate::source::Source;

pub(super) struct Task<C, S: ?Sized> {
    pub(super) cache: PrefetchCache<C>,
    pub(super) source: Arc<S>,
    pub(super) config: SyncConfig,
    pub(super) events: EventBus,
    pub(super) lost: Arc<Notify>,
    pub(super) shared: Arc<Shared>,
    /// Pulled from the source but not yet durable in Redis (kept across
    /// retries).
    pub(super) batch: Vec<Arc<Transaction>>,
}

impl<C, S> Task<C, S>
where
    C: crate::Connection,
    S: Source + ?Sized,
{
    pub(super) async fn run(mut self) {
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
                    if e.is_out_of_memory() {
                        self.cache.counters().oom.fetch_add(1, Relaxed);
                    }
                    if matches!(e, Error::StateLost) {
                        // The healer says so (at warn) when Redis did lose
                        // it; at start the first load has not written it
                        // yet, which is no news.
                        self.lost.notify_one();
                        tracing::debug!(attempt, "no cache state in Redis; will retry");
                    } else {
                        tracing::warn!(
                            error = %e,
                            attempt,
                            transactions = self.batch.len(),
                            "sync apply failed; will retry"
                        );
                    }
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
        let outcome = self.cache.apply_changes(&changes, Some(position)).await?;
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
            if outcome.written.len() > EventBus::ROW_LIMIT {
                return Event::Bulk {
                    applied: true,
                    changes: outcome.applied,
                };
            }
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
