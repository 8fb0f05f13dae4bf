//! Changes made outside the app (a `redis-cli` write, an expiry, another
//! replica's apply): the keys keyspace notifications name (or the whole
//! cache, when polling) re-read and compared with the mirror of what
//! clients were told.

use std::collections::{BTreeMap, BTreeSet};

use app::api::now_ms;
use app::model::{Fields, LiveEvent, WriteOrigin, expires_at};
use prefetch::CachedEntry;

use super::task::Task;
use super::views::{Mirrored, lock};

/// More keys than this pending at once: resync instead of checking each.
const MAX_PENDING: usize = 512;

/// Expiry differences below this are clock noise, not an external EXPIRE.
const EXPIRY_TOLERANCE_MS: i64 = 2000;

impl Task {
    pub(super) fn set_mirror(
        &mut self,
        id: &str,
        fields: Option<Fields>,
        expires_at_ms: Option<i64>,
    ) {
        match fields {
            Some(fields) => {
                self.mirror.insert(
                    id.to_owned(),
                    Mirrored {
                        fields,
                        expires_at_ms,
                    },
                );
            }
            None => {
                self.mirror.remove(id);
            }
        }
    }

    /// Re-reads keys that keyspace notifications named and reports those
    /// that differ from what clients were told: changes from outside.
    pub(super) async fn check_pending(&mut self) {
        let mut ids = std::mem::take(&mut self.pending);
        let expired = std::mem::take(&mut self.expired);
        if !self.following().await {
            return;
        }
        if self.resync_due.is_some() {
            // A bulk change is being applied: what the notifications name
            // is the worker's own writes, not yet in the mirror; the resync
            // that is due re-reads every row shown.
            return;
        }
        ids.retain(|id| self.follows(id));
        if ids.len() > MAX_PENDING {
            self.resync().await;
            return;
        }
        let now = now_ms();
        for id in ids {
            let entry = self.hub.ctx.engine.cache().peek(&id).await;
            self.drain_engine_events().await;
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    tracing::debug!(error = %e, "cannot re-read key after notification");
                    continue;
                }
            };
            let source = if expired.contains(&id) {
                WriteOrigin::Expired
            } else {
                self.origin(&id, entry.as_ref()).await
            };
            let actual = entry.map(|e| Mirrored {
                expires_at_ms: expires_at(e.ttl, now),
                fields: e.fields,
            });
            self.report_if_changed(&id, actual, source);
        }
    }

    /// Who made what the cache now holds for `id` (`entry`), when it is
    /// not the app's own write (those were drained from the engine's
    /// events first): new fields that hash to what an applier wrote, with
    /// its version, or a delete that left a tombstone, were applied by
    /// another replica of the pipeline; anything else is an outside write.
    async fn origin(&self, id: &str, entry: Option<&CachedEntry>) -> WriteOrigin {
        if !self.hub.ctx.replicated() {
            return WriteOrigin::External;
        }
        let applied_elsewhere = match entry {
            Some(e) => {
                e.version.is_some()
                    && e.intact
                    && self.mirror.get(id).is_none_or(|m| m.fields != e.fields)
            }
            None => self.mirror.contains_key(id) && self.tombstoned(id).await,
        };
        if applied_elsewhere {
            WriteOrigin::Sync
        } else {
            WriteOrigin::External
        }
    }

    /// Whether the record `id` has a tombstone (a versioned delete).
    async fn tombstoned(&self, id: &str) -> bool {
        let cache = self.hub.ctx.engine.cache();
        let data = cache.key(id);
        let mut conn = cache.connection();
        let found: redis::RedisResult<bool> = match cache.key_space().tombstone(&data) {
            prefetch::Tombstone::Key(key) => {
                redis::cmd("EXISTS").arg(key).query_async(&mut conn).await
            }
            prefetch::Tombstone::InHash => {
                redis::cmd("HEXISTS")
                    .arg(&data)
                    .arg("__del")
                    .query_async(&mut conn)
                    .await
            }
        };
        found.unwrap_or_else(|e| {
            tracing::debug!(error = %e, "cannot check a tombstone");
            false
        })
    }

    pub(super) fn report_if_changed(
        &mut self,
        id: &str,
        actual: Option<Mirrored>,
        source: WriteOrigin,
    ) {
        let known = self.mirror.get(id);
        let same = match (known, &actual) {
            (None, None) => true,
            (Some(k), Some(a)) => {
                k.fields == a.fields
                    && match (k.expires_at_ms, a.expires_at_ms) {
                        (Some(x), Some(y)) => (x - y).abs() <= EXPIRY_TOLERANCE_MS,
                        (x, y) => x == y,
                    }
            }
            _ => false,
        };
        if same {
            return;
        }
        // Only the expiry moved, forward to about now plus the TTL: the
        // engine's TTL renewal, not someone outside.
        let renewed = match (known, &actual) {
            (Some(k), Some(a)) => {
                let ttl_ms = i64::try_from(self.hub.ctx.engine.cache().ttl_config().as_millis())
                    .unwrap_or(i64::MAX / 2);
                k.fields == a.fields
                    && a.expires_at_ms.is_some_and(|at| {
                        k.expires_at_ms.is_some_and(|before| at > before)
                            && (at - (now_ms() + ttl_ms)).abs() <= EXPIRY_TOLERANCE_MS
                    })
            }
            _ => false,
        };
        let source = if renewed {
            WriteOrigin::Renewed
        } else {
            source
        };
        let (fields, expires) = match actual {
            Some(a) => (Some(a.fields), a.expires_at_ms),
            None => (None, None),
        };
        self.set_mirror(id, fields.clone(), expires);
        self.hub.send(&LiveEvent::Cache {
            id: id.to_owned(),
            fields,
            expires_at_ms: expires,
            source,
            lag_ms: None,
        });
    }

    /// Polling fallback: diff the rows clients show against the mirror.
    pub(super) async fn poll(&mut self) {
        if !self.following().await || self.resync_due.is_some() {
            return;
        }
        if self.whole {
            self.poll_whole().await;
        } else {
            let ids = lock(&self.hub.views).ids();
            self.recheck(&ids).await;
        }
    }

    /// Re-reads `ids` and reports those that differ from the mirror.
    pub(super) async fn recheck(&mut self, ids: &[String]) {
        match self.hub.ctx.engine.cache().entries_of(ids).await {
            Ok(entries) => {
                let found = entries.into_iter().map(|e| (e.id.clone(), e)).collect();
                self.compare(ids.iter().cloned(), found).await;
            }
            Err(e) => tracing::debug!(error = %e, "cannot re-read the rows clients show"),
        }
    }

    /// Re-reads the whole (small) cache and reports every difference from
    /// the mirror; a cache grown past [`FULL_LIMIT`](app::page::FULL_LIMIT) makes every client
    /// take a page instead.
    pub(super) async fn poll_whole(&mut self) {
        let ids = match self.small_cache().await {
            Ok(Some(ids)) => ids,
            Ok(None) => {
                self.whole = false;
                self.resync().await;
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, "cache poll failed");
                return;
            }
        };
        let entries = match self.hub.ctx.engine.cache().entries_of(&ids).await {
            Ok(entries) => entries,
            Err(e) => {
                tracing::debug!(error = %e, "cache poll failed");
                return;
            }
        };
        let found: BTreeMap<String, CachedEntry> =
            entries.into_iter().map(|e| (e.id.clone(), e)).collect();
        let mut all: BTreeSet<String> = self.mirror.keys().cloned().collect();
        all.extend(found.keys().cloned());
        self.compare(all.into_iter(), found).await;
    }

    /// Reports each of `ids` whose entry in `found` (or absence) differs
    /// from the mirror.
    async fn compare(
        &mut self,
        ids: impl Iterator<Item = String>,
        mut found: BTreeMap<String, CachedEntry>,
    ) {
        // The app's own writes that landed before the read may still be
        // queued for us: mirror them first, or they would look external.
        self.drain_engine_events().await;
        let now = now_ms();
        for id in ids {
            let entry = found.remove(&id);
            let source = self.origin(&id, entry.as_ref()).await;
            let actual = entry.map(|e| Mirrored {
                expires_at_ms: expires_at(e.ttl, now),
                fields: e.fields,
            });
            self.report_if_changed(&id, actual, source);
        }
    }
}
