//! Self-healing: the applied position lives in Redis with the data, so a
//! Redis that lost it (restarted empty, flushed, failed over to a replica
//! that was behind, a cluster node that lost its slots) is noticed by a
//! periodic check or by the next write, and refilled by itself.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tracing::Instrument;

use super::reprefetch::LoadMode;
use super::{Engine, Inner};
use crate::cache::CacheState;
use crate::error::Result;
use crate::events::{Event, PrefetchReason};
use crate::model::Version;
use crate::source::Source;

impl<S, C> Engine<S, C>
where
    S: Source + ?Sized,
    C: crate::Connection,
{
    /// Starts the self-healing check (and the re-prefetch a source asks
    /// for beyond the `resyncs_seen` requests already covered).
    pub(super) fn spawn_healer(&self, lost: Arc<Notify>, every: Duration, resyncs_seen: u64) {
        let healer = tokio::spawn(
            heal_loop(Arc::downgrade(&self.inner), lost, every, resyncs_seen)
                .instrument(tracing::info_span!("self_heal")),
        );
        *self.inner.healer.lock().unwrap_or_else(|p| p.into_inner()) = Some(healer);
    }

    /// Checks that Redis still holds this cache's state, and refills it when
    /// not. Returns what was wrong, if anything. Runs by itself every
    /// [`EngineConfig::heal_interval`](crate::EngineConfig::heal_interval) and whenever a write finds the state
    /// gone.
    pub async fn heal(&self) -> Result<Option<String>> {
        let Ok(_admin) = self.inner.admin.try_lock() else {
            return Ok(None); // a load is under way
        };
        // Read what the worker made durable before asking Redis: Redis must
        // hold at least that much.
        let applied = self.inner.sync.applied();
        let state = self.inner.cache.state().await?;
        let slot_lost = self.inner.cache.take_state_lost();
        let reason = lost_reason(&state, self.inner.cache.source_id(), applied).or_else(|| {
            slot_lost.then(|| {
                "a write found the cache's state gone in its slot (a cluster node lost its data)"
                    .to_owned()
            })
        });
        let Some(reason) = reason else {
            return Ok(None);
        };
        tracing::warn!(%reason, "Redis lost the cache's state; re-prefetching");
        self.inner.cache.counters().self_heals.fetch_add(1, Relaxed);
        self.inner.events.publish(|| Event::StateLost {
            reason: reason.clone(),
        });
        if state.source.is_some() && state.source.as_deref() != Some(self.inner.cache.source_id()) {
            self.inner.cache.reset().await?;
        }
        let report = self
            .load(LoadMode::Guarded, PrefetchReason::SelfHeal)
            .await?;
        tracing::info!(
            loaded = report.loaded,
            swept = report.swept,
            elapsed_ms = report.elapsed.as_secs_f64() * 1000.0,
            "cache refilled"
        );
        Ok(Some(reason))
    }
}

/// Why `state` shows that Redis lost what the engine wrote, if it does.
fn lost_reason(state: &CacheState, source: &str, applied: Option<Version>) -> Option<String> {
    match state.source.as_deref() {
        None => Some("the cache's state is gone (Redis restarted empty or was flushed)".into()),
        Some(other) if other != source => Some(format!(
            "the cache's state now belongs to another source ({other})"
        )),
        Some(_) if state.loading.is_some() => {
            Some("a load was interrupted before it finished".into())
        }
        Some(_) if state.position < applied => Some(format!(
            "Redis is behind what was written (position {} < {})",
            state.position.map(|p| p.to_string()).unwrap_or_default(),
            applied.map(|p| p.to_string()).unwrap_or_default()
        )),
        Some(_) => None,
    }
}

async fn heal_loop<S, C>(
    engine: Weak<Inner<S, C>>,
    lost: Arc<Notify>,
    every: Duration,
    mut resyncs_seen: u64,
) where
    S: Source + ?Sized,
    C: crate::Connection,
{
    let every = every.max(Duration::from_millis(10));
    loop {
        tokio::select! {
            _ = lost.notified() => {}
            _ = tokio::time::sleep(every) => {}
        }
        let Some(inner) = engine.upgrade() else {
            return;
        };
        let engine = Engine {
            reads: inner.cache.clone(),
            inner,
        };
        engine.refresh_memory().await;
        let asked = engine.inner.source.status().resync_requests;
        if asked > resyncs_seen {
            tracing::info!("the source asked for a fresh snapshot; re-prefetching");
            match engine.reprefetch().await {
                Ok(_) => resyncs_seen = asked,
                Err(e) => {
                    tracing::warn!(error = %e, "re-prefetch the source asked for failed; will retry")
                }
            }
        }
        match engine.heal().await {
            Ok(_) => {}
            // Redis unreachable: the worker's retries say so already.
            Err(e) if e.is_unavailable() => tracing::debug!(error = %e, "state check failed"),
            Err(e) => tracing::warn!(error = %e, "self-healing failed; will retry"),
        }
    }
}
