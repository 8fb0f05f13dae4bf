//! Engine events projected into the live feed's events; the mirror of
//! what clients saw follows the app's own writes.

use app::model::{LiveEvent, ReconcileResponse, WriteOrigin, epoch_ms, millis};
use prefetch::{Event, WriteOutcome};

use std::sync::Arc;

use app::page::FULL_LIMIT;

use super::task::Task;
use super::views::lock;

impl Task {
    pub(super) async fn on_engine(&mut self, event: Event) {
        match event {
            Event::Primary(tx) => self.project_primary(&tx),
            // Too many rows to follow one by one: the clients' rows are
            // read again once the burst settles (next stats tick).
            Event::Bulk { .. } => self.bulk(),
            Event::SyncApplied { writes, .. } => {
                // Overflow: the whole table is no longer small, so every
                // client takes a page instead.
                let overflow = self.project_applied(&writes);
                if overflow {
                    self.resync().await;
                }
            }
            Event::Invalidated { id, existed: true } if self.follows(&id) => {
                self.set_mirror(&id, None, None);
                self.hub.send(&LiveEvent::Cache {
                    id,
                    fields: None,
                    expires_at_ms: None,
                    source: WriteOrigin::Admin,
                    lag_ms: None,
                });
            }
            Event::Restored { id, fields } if self.follows(&id) => {
                self.project_restored(id, fields);
            }
            Event::Cleared { deleted } => {
                self.mirror.clear();
                self.hub.send(&LiveEvent::Cleared { deleted });
            }
            Event::StateLost { reason } => {
                self.hub.send(&LiveEvent::StateLost { reason });
            }
            Event::Prefetched {
                loaded,
                swept,
                elapsed,
                reason,
            } => {
                self.hub.send(&LiveEvent::Prefetched {
                    loaded,
                    swept,
                    elapsed_ms: millis(elapsed),
                    reason: reason.into(),
                });
                self.resync().await;
            }
            Event::Reconciled(report) => {
                self.hub.send(&LiveEvent::Reconciled(ReconcileResponse::new(
                    &report,
                    std::time::SystemTime::now(),
                )));
            }
            Event::Fault {
                kind, id, outcome, ..
            } => self.hub.send(&LiveEvent::Fault {
                kind: kind.as_str().to_owned(),
                id,
                outcome: outcome.map(|o| outcome_text(o).to_owned()),
            }),
            Event::Worker(state) => self.hub.send(&LiveEvent::Worker {
                state: state.into(),
            }),
            Event::StatsReset => self.stats(true),
            _ => {}
        }
    }

    /// A primary transaction's changes to rows some client shows.
    fn project_primary(&self, tx: &prefetch::Transaction) {
        let at_ms = epoch_ms(tx.committed_at);
        for change in &tx.changes {
            if change.op() != prefetch::Op::Truncate && !self.follows(&change.id) {
                continue; // a row nobody shows: the counters tell
            }
            self.hub.send(&LiveEvent::Primary {
                version: change.version.to_string(),
                op: change.op().into(),
                id: change.id.clone(),
                fields: change.kind.fields().map(|f| (**f).clone()),
                at_ms,
            });
        }
    }

    /// A lost key written back from the primary, on a row a client shows.
    fn project_restored(&mut self, id: String, fields: prefetch::Fields) {
        let cache = self.hub.ctx.engine.cache();
        let ttl_ms =
            i64::try_from(cache.ttl_of(&cache.key(&id)).as_millis()).unwrap_or(i64::MAX / 2);
        let expires = Some(app::api::now_ms().saturating_add(ttl_ms));
        self.set_mirror(&id, Some(fields.clone()), expires);
        self.hub.send(&LiveEvent::Cache {
            id,
            fields: Some(fields),
            expires_at_ms: expires,
            source: WriteOrigin::Restored,
            lag_ms: None,
        });
    }

    /// Writes the worker applied to rows some client shows: the mirror
    /// follows, and clients are told. True when the hub followed the whole
    /// table and it has outgrown [`FULL_LIMIT`].
    fn project_applied(&mut self, writes: &[prefetch::AppliedWrite]) -> bool {
        let ttl = self.hub.ctx.engine.cache().ttl_config();
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2);
        if self.is_idle() {
            return false; // nobody to tell; the next client re-seeds the mirror
        }
        let views = Arc::clone(&self.hub.views);
        let views = lock(&views);
        let whole = self.whole;
        let shown = writes
            .iter()
            .filter(|w| w.outcome == WriteOutcome::Applied)
            .filter(|w| whole || views.on_page(&w.id));
        for w in shown {
            let fields = w.fields.as_ref().map(|f| (**f).clone());
            let expires = fields
                .as_ref()
                .map(|_| epoch_ms(w.at).saturating_add(ttl_ms));
            self.set_mirror(&w.id, fields.clone(), expires);
            self.hub.send(&LiveEvent::Cache {
                id: w.id.clone(),
                fields,
                expires_at_ms: expires,
                source: WriteOrigin::Sync,
                lag_ms: Some(millis(w.lag)),
            });
        }
        self.whole && self.mirror.len() > FULL_LIMIT
    }
}

fn outcome_text(o: WriteOutcome) -> &'static str {
    match o {
        WriteOutcome::Applied => "applied",
        WriteOutcome::Stale => "stale",
    }
}
