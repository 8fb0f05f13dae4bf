//! Guarded writes: a batch of changes in one atomic call of the version
//! guard (one call per slot on a cluster), the position moved in the same
//! step, and, when asked for, `WAIT` for replicas.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use super::{CLUSTER_IN_FLIGHT, GUARDED_CHUNK, GUARDED_IN_FLIGHT, PrefetchCache, fcall_part};
use crate::cluster::{self, Connection, Part};
use crate::error::Result;
use crate::events::WriteOutcome;
use crate::guard::{self, Mode, Write};
use crate::model::{Change, ChangeKind, Version};
use crate::stats::TableCount;

/// What [`PrefetchCache::apply_batch`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Changes applied, counting each change superseded by a newer one for
    /// the same id in the same batch (its effect is contained in the newer).
    pub applied: usize,
    /// Changes the version guard refused (Redis held the same or newer).
    pub stale: usize,
    /// Malformed changes skipped (see [`Change::is_malformed`]).
    pub skipped: usize,
    /// Indices into the input of the changes sent to Redis (the newest
    /// well-formed change of each id), in input order, with what the guard
    /// did with each.
    pub written: Vec<(usize, WriteOutcome)>,
}

impl<C: Connection> PrefetchCache<C> {
    /// Sends `writes` through the version guard and returns 1 (applied) or
    /// 0 (stale) for each (the guard answers with the places of the stale
    /// ones). On one node they go out in runs of `chunk` (all
    /// in one atomic call when `None`, which then also moves the position);
    /// on a cluster, one call per slot, and the position moves only once
    /// every slot's call succeeded.
    pub(super) async fn guarded(
        &self,
        mode: Mode,
        position: Option<Version>,
        writes: &[Write<'_>],
        chunk: Option<usize>,
    ) -> Result<Vec<i64>> {
        let guard = self.guard();
        let keys: Vec<String> = writes.iter().map(|w| self.key(w.id)).collect();
        let cluster = self.writer.is_cluster();
        let chunk = if cluster {
            Some(chunk.unwrap_or(GUARDED_CHUNK))
        } else {
            chunk
        };
        let parts = cluster::split(&self.writer, &keys, chunk);
        let inline_position = !cluster && parts.len() == 1;
        let in_flight = if cluster {
            CLUSTER_IN_FLIGHT
        } else {
            GUARDED_IN_FLIGHT
        };
        let calls: Vec<Part> = parts
            .iter()
            .map(|(slot, ids)| {
                let part: Vec<Write<'_>> = ids.iter().map(|&i| writes[i]).collect();
                let at = if inline_position { position } else { None };
                Part {
                    slot: *slot,
                    cmds: vec![guard.apply(
                        (&self.meta_for(*slot), &self.window_for(*slot)),
                        mode,
                        at,
                        &part,
                    )],
                }
            })
            .collect();
        let replies =
            self.noting_loss(cluster::run_parts(&self.writer, calls, in_flight, fcall_part).await)?;
        let mut out = vec![0; writes.len()];
        for ((_, ids), reply) in parts.iter().zip(replies) {
            let Some(reply) = reply.into_iter().next() else {
                continue;
            };
            let stale: Vec<usize> =
                redis::from_redis_value(reply).map_err(redis::RedisError::from)?;
            for &i in ids {
                out[i] = 1;
            }
            for place in stale {
                if let Some(&i) = place.checked_sub(1).and_then(|p| ids.get(p)) {
                    out[i] = 0;
                }
            }
        }
        if position.is_some() && !inline_position {
            let main = (self.inner.keys.meta_key(), &*self.inner.keys.window_key());
            let cmd = guard.apply(main, mode, position, &[]);
            guard::fcall::<_, Vec<i64>>(&mut self.writer.clone(), &cmd).await?;
        }
        if let Err(e) = self.replicated().await {
            if mode == Mode::Live && matches!(e, crate::Error::NotReplicated { .. }) {
                self.hold_unreplicated(writes, &out);
            }
            return Err(e);
        }
        Ok(out)
    }

    /// Remembers the writes of a live call that Redis took (`1`) but too
    /// few replicas acknowledged: the call is retried, and the guard then
    /// refuses them as already held.
    fn hold_unreplicated(&self, writes: &[Write<'_>], results: &[i64]) {
        let mut held = self
            .inner
            .unreplicated
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (w, _) in writes.iter().zip(results).filter(|(_, r)| **r == 1) {
            held.insert((w.id.to_owned(), w.version));
        }
    }

    /// The writes held by [`hold_unreplicated`](Self::hold_unreplicated),
    /// forgotten: called once a retry is acknowledged by enough replicas.
    fn take_unreplicated(&self) -> std::collections::HashSet<(String, Version)> {
        let mut held = self
            .inner
            .unreplicated
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        std::mem::take(&mut *held)
    }

    /// With [`CacheConfig::wait_replicas`], waits until that many replicas
    /// of every primary hold what this cache's writer wrote (`WAIT` on the
    /// writer's connection to each primary: it covers every write sent on
    /// it before).
    pub(super) async fn replicated(&self) -> Result<()> {
        let wanted = self.inner.wait_replicas;
        if wanted == 0 {
            return Ok(());
        }
        let timeout = self.inner.wait_timeout;
        let ms = u64::try_from(timeout.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let mut acked = u32::MAX;
        for mut node in self.writer.primaries().await? {
            let n: u32 = redis::cmd("WAIT")
                .arg(wanted)
                .arg(ms)
                .query_async(&mut node)
                .await?;
            acked = acked.min(n);
        }
        if acked < wanted {
            return Err(crate::Error::NotReplicated {
                wanted,
                acked,
                timeout,
            });
        }
        Ok(())
    }

    /// Remembers a [`StateLost`](crate::Error::StateLost) on its way out.
    pub(super) fn noting_loss<T>(&self, result: Result<T>) -> Result<T> {
        if let Err(crate::Error::StateLost) = &result {
            self.inner.state_lost.store(true, Relaxed);
        }
        result
    }

    /// Whether a write found this cache's state gone since the last call
    /// (and forgets it). On a Redis Cluster a node that lost its data loses
    /// only its slots' copies of the state, so this, not
    /// [`state`](Self::state), tells.
    pub fn take_state_lost(&self) -> bool {
        self.inner.state_lost.swap(false, Relaxed)
    }

    /// Applies changes in one atomic call of the version guard, and moves
    /// the stored position to `position` in the same step.
    ///
    /// Each change applies only when its version is newer than what Redis
    /// holds for the key (record or tombstone) and not older than the last
    /// snapshot. An upsert replaces the whole hash (a dropped field
    /// disappears) and refreshes its TTL; a delete leaves a tombstone. Only
    /// the newest change per id is sent; the ones it supersedes count as
    /// applied. Malformed changes are skipped and counted, never sent.
    ///
    /// Fails with [`Error::StateLost`](crate::Error::StateLost) (writing nothing) when Redis no longer
    /// holds this cache's state. On any error nothing is counted and the
    /// whole batch may be retried: applying it again changes nothing.
    pub async fn apply_batch(
        &self,
        changes: &[Change],
        position: Option<Version>,
    ) -> Result<BatchOutcome> {
        let refs: Vec<&Change> = changes.iter().collect();
        self.apply_changes(&refs, position).await
    }

    /// [`apply_batch`](Self::apply_batch) over borrowed changes.
    pub(crate) async fn apply_changes(
        &self,
        changes: &[&Change],
        position: Option<Version>,
    ) -> Result<BatchOutcome> {
        if let Some(at) = changes.iter().position(|c| c.kind == ChangeKind::Truncate) {
            return self.apply_around_truncate(changes, at, position).await;
        }
        let mut outcome = BatchOutcome::default();
        let mut newest: HashMap<&str, usize> = HashMap::with_capacity(changes.len());
        for (i, change) in changes.iter().enumerate() {
            if change.is_malformed() {
                outcome.skipped += 1;
                continue;
            }
            newest
                .entry(change.id.as_str())
                .and_modify(|j| {
                    if changes[*j].version <= change.version {
                        *j = i;
                    }
                })
                .or_insert(i);
        }
        let mut sent: Vec<usize> = newest.into_values().collect();
        sent.sort_unstable();
        if sent.is_empty() && position.is_none() {
            self.count_outcome(&outcome);
            return Ok(outcome);
        }
        let writes: Vec<Write<'_>> = sent
            .iter()
            .map(|&i| {
                let c = &changes[i];
                Write {
                    id: &c.id,
                    version: c.version,
                    fields: match &c.kind {
                        ChangeKind::Upsert(f) => Some(f.as_ref()),
                        ChangeKind::Delete | ChangeKind::Truncate => None,
                    },
                }
            })
            .collect();
        let results = self.guarded(Mode::Live, position, &writes, None).await?;
        self.members().note(
            writes.iter().filter(|w| w.fields.is_some()).map(|w| w.id),
            writes.iter().filter(|w| w.fields.is_none()).map(|w| w.id),
        );
        // Writes an earlier attempt made whose replication timed out: this
        // retry finds them held, and they count once, as applied.
        let held = self.take_unreplicated();
        let superseded = changes.len() - outcome.skipped - sent.len();
        outcome.applied = superseded;
        for (&i, r) in sent.iter().zip(results) {
            let c = changes[i];
            let o = if r == 1 || (!held.is_empty() && held.contains(&(c.id.clone(), c.version))) {
                outcome.applied += 1;
                WriteOutcome::Applied
            } else {
                outcome.stale += 1;
                WriteOutcome::Stale
            };
            outcome.written.push((i, o));
        }
        self.count_outcome(&outcome);
        self.count_per_table(changes, &outcome);
        if !sent.is_empty() {
            self.inner.counters.batches.fetch_add(1, Relaxed);
            self.inner
                .counters
                .batch
                .record(Duration::from_micros(changes.len() as u64));
        }
        Ok(outcome)
    }

    /// Restores a record the cache lost, at `version`, through the version
    /// guard: written only where Redis holds nothing for it (no record, no
    /// tombstone), so it never overwrites what a change wrote meanwhile.
    /// Returns whether it was written.
    pub async fn repair(&self, record: &crate::Record, version: Version) -> Result<bool> {
        let Some(id) = record.id() else {
            return Ok(false);
        };
        let write = Write {
            id,
            version,
            fields: Some(record.fields()),
        };
        let results = self.guarded(Mode::Repair, None, &[write], None).await?;
        Ok(results.first() == Some(&1))
    }

    /// Everything before the truncate at `at`, then the truncate (a sweep at
    /// its version), then the rest, in order.
    async fn apply_around_truncate(
        &self,
        changes: &[&Change],
        at: usize,
        position: Option<Version>,
    ) -> Result<BatchOutcome> {
        let mut outcome = Box::pin(self.apply_changes(&changes[..at], None)).await?;
        // Nothing older than the truncate applies from now on, even if it
        // arrives later (out of order, from another applier); raised before
        // the sweep, so nothing older lands behind its cursor.
        let guard = self.guard();
        let (version, within) = (changes[at].version, changes[at].id.as_str());
        // A truncate of one table of several (an id prefix) sweeps its
        // records only, and leaves the floor: older changes of the other
        // tables may still be on their way.
        if within.is_empty() {
            self.on_every_state(|meta, _| guard.floor(meta, version))
                .await?;
        }
        let swept = self.sweep_within(version, within).await?;
        tracing::debug!(swept, %version, "truncate applied");
        outcome.applied += 1;
        self.inner.counters.applied.fetch_add(1, Relaxed);
        let rest = Box::pin(self.apply_changes(&changes[at + 1..], position)).await?;
        outcome.applied += rest.applied;
        outcome.stale += rest.stale;
        outcome.skipped += rest.skipped;
        outcome
            .written
            .extend(rest.written.into_iter().map(|(i, o)| (i + at + 1, o)));
        Ok(outcome)
    }

    /// Each table's changes applied: those written, and those a newer
    /// change of the same row superseded.
    fn count_per_table(&self, changes: &[&Change], outcome: &BatchOutcome) {
        let tables = self.inner.keys.tables();
        if tables.is_empty() {
            return;
        }
        let per_table = &self.inner.counters.tables;
        let stale: std::collections::HashSet<usize> = outcome
            .written
            .iter()
            .filter(|(_, o)| *o == WriteOutcome::Stale)
            .map(|(i, _)| *i)
            .collect();
        for (i, c) in changes.iter().enumerate() {
            if c.is_malformed() || stale.contains(&i) {
                continue;
            }
            per_table.count(&tables, &self.key(&c.id), TableCount::Applied, 1);
        }
    }

    fn count_outcome(&self, outcome: &BatchOutcome) {
        let c = &self.inner.counters;
        c.applied.fetch_add(outcome.applied as u64, Relaxed);
        c.stale.fetch_add(outcome.stale as u64, Relaxed);
        c.skipped.fetch_add(outcome.skipped as u64, Relaxed);
    }
}
