//! The version guard: the Redis FUNCTION library (`library.lua`) that
//! writes a key only when the change is newer than what it holds, and the
//! commands that call it.
//!
//! Every record's hash carries two metadata fields besides the record's own:
//! `__v`, the [`Version`] of the change that wrote it, and `__h`: the
//! version again as 30 decimal digits (what the guard compares, with one
//! `HGET`), then a hash of the fields as written (so a reconciliation can
//! tell a lost event from a write made outside the pipeline) and one of
//! their names. Readers never see them. Deletes leave a
//! tombstone with their version (see [`KeySpace::tombstone`]), so a late,
//! older upsert cannot bring a row back.
//!
//! All writes of the sync path go through one call of `pf2_apply`
//! (`library.lua`), which applies each write only when it is newer than what
//! the key holds, and stores the transaction's position in the same atomic
//! step. The library is loaded with `FUNCTION LOAD REPLACE` at start and
//! again whenever Redis answers that it does not know it (restarted,
//! `FUNCTION FLUSH`), and the call is retried.
//!
//! | module | what |
//! |---|---|
//! | `stored` | the storage format: metadata fields, content hashes, tombstone keys |

mod stored;

use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::{Cmd, RedisError, Value};

use crate::error::{Error, Result};
use crate::keys::KeySpace;
use crate::model::{Fields, Version};

pub(crate) use stored::json_document;
pub(crate) use stored::{DELETED_FIELD, HASH_FIELD, Stored, VERSION_FIELD, guard_text, tomb_key};
pub use stored::{JSON_FIELD, content_hash, hash_text};
use stored::{names_of, version_key};

/// The library's source (Lua 5.1, Redis 7.0+).
pub(crate) const LIBRARY: &str = include_str!("library.lua");

/// How the version guard treats a write whose version equals the stored one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Only strictly newer writes apply (duplicates are stale).
    Live,
    /// Equal versions are rewritten too: a snapshot repairs its own rows.
    Snapshot,
    /// Only where nothing is stored: no record, no tombstone (for a JSON
    /// record: no document, and no delete in its tombstone key). Restores
    /// a key the cache lost without overwriting anything a change wrote.
    Repair,
}

/// One write for `pf2_apply`.
#[derive(Clone, Copy)]
pub(crate) struct Write<'a> {
    pub(crate) id: &'a str,
    pub(crate) version: Version,
    /// `None` for a delete.
    pub(crate) fields: Option<&'a Fields>,
}

/// Writing parameters shared by every call of one cache.
pub(crate) struct Guard<'a> {
    pub(crate) keys: &'a KeySpace,
    pub(crate) source: &'a str,
    pub(crate) ttl_secs: u64,
    /// Tables with a TTL of their own: (key prefix, seconds).
    pub(crate) table_ttls: std::sync::Arc<Vec<(String, u64)>>,
    /// Tables whose records are JSON documents: key prefixes.
    pub(crate) json_tables: std::sync::Arc<Vec<String>>,
    pub(crate) tombstone_ttl_ms: u64,
}

/// Whether the key `data` is a JSON record's (its table's values are JSON).
pub(crate) fn is_json(json_tables: &[String], data: &str) -> bool {
    json_tables.iter().any(|p| data.starts_with(p.as_str()))
}

/// The TTL of the key `data`: its table's own, or `default`.
pub(crate) fn ttl_of(table_ttls: &[(String, u64)], default: u64, data: &str) -> u64 {
    table_ttls
        .iter()
        .find(|(prefix, _)| data.starts_with(prefix.as_str()))
        .map_or(default, |(_, ttl)| *ttl)
}

impl Guard<'_> {
    /// `FCALL pf2_apply` for `writes`, checked against the state at `meta`
    /// and logged in the snapshot window at `log` (the main ones, or on a
    /// cluster the writes' slot's copies), moving the position to
    /// `position`.
    pub(crate) fn apply(
        &self,
        (meta, log): (&str, &str),
        mode: Mode,
        position: Option<Version>,
        writes: &[Write<'_>],
    ) -> Cmd {
        let data: Vec<String> = writes.iter().map(|w| self.keys.key(w.id)).collect();
        let json: Vec<bool> = data.iter().map(|d| is_json(&self.json_tables, d)).collect();
        let ttls: Vec<u64> = data
            .iter()
            .map(|d| ttl_of(&self.table_ttls, self.ttl_secs, d))
            .collect();
        // The plain call when every write takes the cache's TTL; else each
        // write names its own.
        let own_ttl = ttls.iter().any(|&t| t != self.ttl_secs);
        let mut cmd = redis::cmd("FCALL");
        cmd.arg(if own_ttl { "pf2_apply_t" } else { "pf2_apply" })
            .arg(2 + 2 * writes.len());
        cmd.arg(meta).arg(log);
        for data in data {
            let tomb = tomb_key(self.keys, &data);
            cmd.arg(data).arg(tomb);
        }
        cmd.arg(self.source)
            .arg(match mode {
                Mode::Live => "live",
                Mode::Snapshot => "snapshot",
                Mode::Repair => "repair",
            })
            .arg(self.ttl_secs)
            .arg(self.tombstone_ttl_ms)
            .arg(position.map(|p| p.to_string()).unwrap_or_default());
        for ((w, ttl), data) in writes.iter().zip(ttls).zip(&json) {
            if *data {
                self.json_write(&mut cmd, w, own_ttl.then_some(ttl));
                continue;
            }
            match w.fields {
                Some(fields) => {
                    // The op is the names hash; `__v` and `__h` are added
                    // to the pairs by the function.
                    let text = guard_text(fields, w.version);
                    cmd.arg(names_of(&text))
                        .arg(w.version.to_string())
                        .arg(&text[..30]);
                    if own_ttl {
                        cmd.arg(ttl);
                    }
                    cmd.arg(&text).arg(fields.len()).arg(fields);
                }
                None => {
                    cmd.arg("d")
                        .arg(w.version.to_string())
                        .arg(version_key(w.version));
                    if own_ttl {
                        cmd.arg(ttl);
                    }
                }
            }
        }
        cmd
    }

    /// One JSON record's write for `pf2_apply`: `j` with the document, or
    /// `x` (a delete).
    fn json_write(&self, cmd: &mut Cmd, w: &Write<'_>, ttl: Option<u64>) {
        let version = w.version.to_string();
        match w.fields {
            Some(fields) => {
                // Hashed as it is stored, so that a read can check it.
                let stored: Fields = [(JSON_FIELD.to_owned(), json_document(fields))].into();
                let text = guard_text(&stored, w.version);
                cmd.arg("j").arg(&version).arg(&text[..30]);
                if let Some(ttl) = ttl {
                    cmd.arg(ttl);
                }
                cmd.arg(&text)
                    .arg(1)
                    .arg(JSON_FIELD)
                    .arg(&stored[JSON_FIELD]);
            }
            None => {
                cmd.arg("x").arg(&version).arg(version_key(w.version));
                if let Some(ttl) = ttl {
                    cmd.arg(ttl);
                }
            }
        }
    }

    /// `FCALL pf2_sweep` over the records at `data_keys`.
    pub(crate) fn sweep<'k>(
        &self,
        meta: &str,
        snapshot: Version,
        data_keys: impl ExactSizeIterator<Item = &'k String>,
    ) -> Cmd {
        let mut cmd = redis::cmd("FCALL");
        cmd.arg("pf2_sweep").arg(1 + 2 * data_keys.len());
        cmd.arg(meta);
        for data in data_keys {
            cmd.arg(data).arg(tomb_key(self.keys, data));
        }
        cmd.arg(self.source)
            .arg(snapshot.to_string())
            .arg(self.tombstone_ttl_ms);
        cmd
    }

    /// `FCALL pf2_floor`: raise the floor at `meta` to `version` (a truncate).
    pub(crate) fn floor(&self, meta: &str, version: Version) -> Cmd {
        let mut cmd = redis::cmd("FCALL");
        cmd.arg("pf2_floor")
            .arg(1)
            .arg(meta)
            .arg(self.source)
            .arg(version.to_string());
        cmd
    }

    /// `FCALL pf2_begin`: claim the state at `meta` and raise its floor to
    /// `snapshot`; a slot's copy (`slot`) gets no loading mark.
    pub(crate) fn begin(&self, meta: &str, snapshot: Version, slot: bool) -> Cmd {
        let mut cmd = redis::cmd("FCALL");
        cmd.arg("pf2_begin")
            .arg(1)
            .arg(meta)
            .arg(self.source)
            .arg(snapshot.to_string());
        if slot {
            cmd.arg("slot");
        }
        cmd
    }

    /// `FCALL pf2_window`: opens (`open`) or renews a snapshot window at
    /// `meta` / `log` for `lease` from now.
    pub(crate) fn window(&self, (meta, log): (&str, &str), open: bool, lease: Duration) -> Cmd {
        let mut cmd = redis::cmd("FCALL");
        cmd.arg("pf2_window")
            .arg(2)
            .arg(meta)
            .arg(log)
            .arg(if open { "open" } else { "renew" })
            .arg(u64::try_from(lease.as_millis()).unwrap_or(u64::MAX));
        cmd
    }

    /// `FCALL pf2_close`: closes one snapshot window at `meta` / `log`.
    pub(crate) fn close(&self, (meta, log): (&str, &str)) -> Cmd {
        let mut cmd = redis::cmd("FCALL");
        cmd.arg("pf2_close").arg(2).arg(meta).arg(log);
        cmd
    }

    /// `FCALL pf2_finish`: the load of `snapshot` is complete.
    pub(crate) fn finish(&self, snapshot: Version) -> Cmd {
        let mut cmd = redis::cmd("FCALL");
        cmd.arg("pf2_finish")
            .arg(1)
            .arg(self.keys.meta_key())
            .arg(self.source)
            .arg(snapshot.to_string());
        cmd
    }
}

/// Loads (or replaces) the library.
pub(crate) async fn load_library<C: ConnectionLike + Send>(conn: &mut C) -> Result<()> {
    redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg("REPLACE")
        .arg(LIBRARY)
        .query_async::<Value>(conn)
        .await?;
    Ok(())
}

/// Whether Redis answered that it does not know the library's functions.
fn is_missing_function(e: &RedisError) -> bool {
    e.to_string().contains("Function not found")
}

/// Whether Redis answered that the cache's state is gone.
fn is_state_lost(e: &RedisError) -> bool {
    e.code() == Some("PFLOST")
}

/// Runs one `FCALL`, loading the library first if Redis does not know it.
/// `PFLOST` replies become [`Error::StateLost`].
pub(crate) async fn fcall<C, T>(conn: &mut C, cmd: &Cmd) -> Result<T>
where
    C: ConnectionLike + Send,
    T: redis::FromRedisValue,
{
    let first = cmd.query_async::<T>(conn).await;
    let result = match first {
        Err(e) if is_missing_function(&e) => {
            tracing::info!("loading the cache's Redis function library");
            load_library(conn).await?;
            cmd.query_async::<T>(conn).await
        }
        other => other,
    };
    result.map_err(|e| {
        if is_state_lost(&e) {
            Error::StateLost
        } else {
            Error::Redis(e)
        }
    })
}
