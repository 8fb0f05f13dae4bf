//! Loads and sweeps: a fresh cache filled with plain pipelines, a
//! snapshot written through the guard beside the live stream, the sweep of
//! what a snapshot no longer has, and the marks that bracket a load.

use std::sync::atomic::Ordering::Relaxed;

use redis::{Cmd, Pipeline, Value};

use super::read::scan_page;
use super::{BULK_CHUNK, CLUSTER_IN_FLIGHT, GUARDED_CHUNK, PrefetchCache, SCAN_COUNT, fcall_part};
use crate::cluster::{self, Connection, Part};
use crate::error::Result;
use crate::guard::{self, Mode, Write};
use crate::keys::SLOTS;
use crate::model::{Fields, Record, Version};

impl<C: Connection> PrefetchCache<C> {
    /// Writes every record that has an id at `version`, replacing any
    /// previous hash, in pipelined round trips (`DEL` + `HSET` + `EXPIRE` per
    /// record, 512 records per pipeline, all sent before any reply is
    /// awaited). Not version-guarded: for a cache nothing else writes to yet
    /// (see [`Engine`](crate::Engine) for the guarded re-prefetch). Returns
    /// how many records were written.
    ///
    /// Being one round trip, the whole load must fit in the connection's
    /// response timeout (redis-rs defaults to 500 ms; 100,000 records take
    /// a few hundred ms on loopback), so configure it for large sets.
    pub async fn bulk_load<'r, I>(&self, records: I, version: Version) -> Result<usize>
    where
        I: IntoIterator<Item = &'r Record>,
    {
        let records: Vec<(&str, &Fields)> = records
            .into_iter()
            .filter_map(|r| Some((r.id()?, r.fields())))
            .collect();
        let keys: Vec<String> = records.iter().map(|(id, _)| self.key(id)).collect();
        // Chunks go out back to back on the one connection without waiting
        // for replies (still one round trip of latency), so packing later
        // chunks overlaps Redis executing earlier ones. On a cluster a
        // pipeline keeps to one slot.
        let parts: Vec<Part> = cluster::split(&self.writer, &keys, Some(BULK_CHUNK))
            .into_iter()
            .map(|(slot, ids)| {
                let mut pipe = redis::pipe();
                for i in ids {
                    let (id, fields) = records[i];
                    self.push_fresh(&mut pipe, id, fields, version);
                }
                Part {
                    slot,
                    cmds: pipe.cmd_iter().cloned().collect(),
                }
            })
            .collect();
        let all = parts.len();
        cluster::run_parts(&self.writer, parts, all, cluster::as_pipeline).await?;
        self.replicated().await?;
        self.members()
            .note(records.iter().map(|(id, _)| *id), std::iter::empty());
        let loaded = records.len();
        self.inner
            .counters
            .prefetched
            .fetch_add(loaded as u64, Relaxed);
        Ok(loaded)
    }

    fn push_fresh(&self, pipe: &mut Pipeline, id: &str, fields: &Fields, version: Version) {
        let key = self.key(id);
        if self.is_json(&key) {
            // The document, and its version and hash in its tombstone key.
            let stored = self.stored_form(&key, fields);
            let ttl = self.ttl_of(&key).as_secs();
            let tomb = guard::tomb_key(self.key_space(), &key);
            let side = format!("{version} {}", guard::guard_text(&stored, version));
            pipe.cmd("SET")
                .arg(&key)
                .arg(&stored[guard::JSON_FIELD])
                .arg("EX")
                .arg(ttl)
                .ignore();
            pipe.cmd("SET")
                .arg(tomb)
                .arg(side)
                .arg("EX")
                .arg(ttl)
                .ignore();
            return;
        }
        pipe.del(&key).ignore();
        pipe.cmd("HSET")
            .arg(&key)
            .arg(fields)
            .arg(guard::VERSION_FIELD)
            .arg(version.to_string())
            .arg(guard::HASH_FIELD)
            .arg(guard::guard_text(fields, version))
            .ignore();
        let ttl = guard::ttl_of(&self.table_ttls(), self.inner.ttl_secs, &key);
        pipe.expire(&key, i64::try_from(ttl).unwrap_or(i64::MAX))
            .ignore();
    }

    /// Starts a load of a snapshot at `version`: claims the state for this
    /// cache's source and raises the floor, so no change older than the
    /// snapshot applies from now on.
    pub async fn begin_load(&self, version: Version) -> Result<()> {
        let guard = self.guard();
        self.on_every_state(|meta, slot| guard.begin(meta, version, slot))
            .await
    }

    /// Writes snapshot records through the version guard, at `version`:
    /// a record Redis holds in a newer version is left alone, and so is a
    /// record a newer change reached inside the open snapshot window, even
    /// if its key was removed since. Safe while the sync worker applies
    /// changes. The snapshot must have been taken after a window was
    /// opened ([`open_window`](Self::open_window)) that is still open;
    /// without one, Redis refuses the write (`PFWINDOW`). Returns how many
    /// were written.
    pub async fn write_snapshot(&self, records: &[Record], version: Version) -> Result<usize> {
        let writes: Vec<Write<'_>> = records
            .iter()
            .filter_map(|r| {
                Some(Write {
                    id: r.id()?,
                    version,
                    fields: Some(r.fields()),
                })
            })
            .collect();
        let results = self
            .guarded(Mode::Snapshot, None, &writes, Some(GUARDED_CHUNK))
            .await?;
        // Every record of the snapshot exists, whether written or held newer.
        self.members()
            .note(writes.iter().map(|w| w.id), std::iter::empty());
        let written = results.iter().filter(|&&r| r == 1).count();
        self.inner
            .counters
            .prefetched
            .fetch_add(written as u64, Relaxed);
        Ok(written)
    }

    /// Removes every record older than the snapshot at `version` (so the
    /// snapshot did not contain it), leaving tombstones. Returns how many.
    pub async fn sweep(&self, version: Version) -> Result<usize> {
        self.sweep_within(version, "").await
    }

    /// [`sweep`](Self::sweep) over the records whose id starts with
    /// `id_prefix` only (one table's, after a snapshot of that table).
    pub async fn sweep_within(&self, version: Version, id_prefix: &str) -> Result<usize> {
        let pattern = if id_prefix.is_empty() {
            self.inner.keys.scan_pattern().to_owned()
        } else {
            format!("{}*", crate::keys::escape_glob(&self.key(id_prefix)))
        };
        let mut swept = 0usize;
        for mut node in self.writer.primaries().await? {
            let mut cursor = 0u64;
            loop {
                let (next, mut keys) = scan_page(&mut node, cursor, &pattern).await?;
                keys.retain(|k| self.inner.keys.id_of(k).is_some());
                if !keys.is_empty() {
                    swept += self.sweep_keys(version, &keys).await?;
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(swept)
    }

    /// Removes the records at `data_keys` that are older than `version`
    /// (tombstoned at it). Returns how many.
    pub async fn sweep_keys(&self, version: Version, data_keys: &[String]) -> Result<usize> {
        let guard = self.guard();
        let parts = cluster::split(&self.writer, data_keys, Some(SCAN_COUNT));
        let calls: Vec<Part> = parts
            .iter()
            .map(|(slot, ids)| {
                let keys = ids.iter().map(|&i| &data_keys[i]);
                Part {
                    slot: *slot,
                    cmds: vec![guard.sweep(&self.meta_for(*slot), version, keys)],
                }
            })
            .collect();
        let mut swept = 0;
        let replies = cluster::run_parts(&self.writer, calls, CLUSTER_IN_FLIGHT, fcall_part).await;
        for reply in self.noting_loss(replies)? {
            for v in reply {
                swept += redis::from_redis_value::<usize>(v).map_err(redis::RedisError::from)?;
            }
        }
        Ok(swept)
    }

    /// Ends the load of the snapshot at `version`: the stored position
    /// reaches it.
    pub async fn finish_load(&self, version: Version) -> Result<()> {
        let cmd = self.guard().finish(version);
        guard::fcall::<_, i64>(&mut self.writer.clone(), &cmd).await?;
        Ok(())
    }

    /// Runs `make(state key, is a slot's copy)` on the main state, then on
    /// a cluster on every slot's copy of it.
    pub(super) async fn on_every_state(&self, make: impl Fn(&str, bool) -> Cmd) -> Result<()> {
        self.on_every_window(|(meta, _), slot| make(meta, slot))
            .await
    }

    /// Runs `make((state key, window log key), is a slot's copy)` on the
    /// main state, then on a cluster on every slot's copy of it.
    pub(super) async fn on_every_window(
        &self,
        make: impl Fn((&str, &str), bool) -> Cmd,
    ) -> Result<()> {
        let main = (self.inner.keys.meta_key(), &*self.inner.keys.window_key());
        guard::fcall::<_, Value>(&mut self.writer.clone(), &make(main, false)).await?;
        if self.writer.is_cluster() {
            let parts = (0..SLOTS)
                .map(|s| {
                    let slot = (
                        &*self.inner.keys.slot_meta_key(s),
                        &*self.inner.keys.slot_window_key(s),
                    );
                    Part {
                        slot: Some(s),
                        cmds: vec![make(slot, true)],
                    }
                })
                .collect();
            cluster::run_parts(&self.writer, parts, CLUSTER_IN_FLIGHT, fcall_part).await?;
        }
        Ok(())
    }
}
