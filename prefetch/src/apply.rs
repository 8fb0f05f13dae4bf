//! The storage format and the Redis FUNCTION library that guards it.
//!
//! Every record's hash carries two metadata fields besides the record's own:
//! `__v`, the [`Version`] of the change that wrote it, and `__h`, a hash of
//! the fields as written (so a reconciliation can tell a lost event from a
//! write made outside the pipeline). Readers never see them. Deletes leave a
//! tombstone with their version (see [`KeySpace::tombstone`]), so a late,
//! older upsert cannot bring a row back.
//!
//! All writes of the sync path go through one call of `pf1_apply`
//! (`apply.lua`), which applies each write only when it is newer than what
//! the key holds, and stores the transaction's position in the same atomic
//! step. The library is loaded with `FUNCTION LOAD REPLACE` at start and
//! again whenever Redis answers that it does not know it (restarted,
//! `FUNCTION FLUSH`), and the call is retried.

use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::{Cmd, RedisError, Value};

use crate::error::{Error, Result};
use crate::keys::{KeySpace, Tombstone};
use crate::model::{Fields, Version};

/// The library's source (Lua 5.1, Redis 7.0+).
pub(crate) const LIBRARY: &str = include_str!("apply.lua");

/// Metadata field: the version of the change that wrote the hash.
pub(crate) const VERSION_FIELD: &str = "__v";
/// Metadata field: the content hash of the fields as written.
pub(crate) const HASH_FIELD: &str = "__h";
/// Metadata field: present on a tombstone kept inside the record's hash.
pub(crate) const DELETED_FIELD: &str = "__del";

/// How the version guard treats a write whose version equals the stored one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Only strictly newer writes apply (duplicates are stale).
    Live,
    /// Equal versions are rewritten too: a snapshot repairs its own rows.
    Snapshot,
}

/// One write for `pf1_apply`.
#[derive(Clone, Copy)]
pub(crate) struct Write<'a> {
    pub(crate) id: &'a str,
    pub(crate) version: Version,
    /// `None` for a delete.
    pub(crate) fields: Option<&'a Fields>,
}

/// A record hash as stored, split into the record and its metadata.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Stored {
    pub(crate) fields: Fields,
    pub(crate) version: Option<Version>,
    pub(crate) hash: Option<u64>,
    pub(crate) deleted: bool,
}

impl Stored {
    /// Splits what `HGETALL` returned.
    pub(crate) fn split(mut raw: Fields) -> Self {
        let version = raw.remove(VERSION_FIELD).and_then(|v| v.parse().ok());
        let hash = raw
            .remove(HASH_FIELD)
            .and_then(|h| u64::from_str_radix(h.get(..16)?, 16).ok());
        let deleted = raw.remove(DELETED_FIELD).is_some();
        raw.retain(|k, _| !k.starts_with(crate::model::RESERVED_FIELD_PREFIX));
        Self {
            fields: raw,
            version,
            hash,
            deleted,
        }
    }

    /// The record, if this is one (not missing, not a tombstone).
    pub(crate) fn into_record_fields(self) -> Option<Fields> {
        (!self.deleted && !self.fields.is_empty()).then_some(self.fields)
    }
}

/// A 64-bit FNV-1a hash of the fields, each name and value length-prefixed,
/// in name order: the same record always hashes the same, on any machine.
///
/// ```
/// use prefetch::{Fields, content_hash};
///
/// let a: Fields = [("id".into(), "x".into()), ("n".into(), "1".into())].into();
/// let mut b = a.clone();
/// assert_eq!(content_hash(&a), content_hash(&b));
/// b.insert("n".into(), "2".into());
/// assert_ne!(content_hash(&a), content_hash(&b));
/// ```
pub fn content_hash(fields: &Fields) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    let mut eat = |bytes: &[u8]| {
        let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        for b in len.to_le_bytes().iter().chain(bytes) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(PRIME);
        }
    };
    for (k, v) in fields {
        eat(k.as_bytes());
        eat(v.as_bytes());
    }
    h
}

/// A 64-bit FNV-1a hash of the field names alone (length-prefixed, in
/// order): two records with the same names can overwrite each other's hash
/// field by field, without a `DEL` first.
fn names_hash(fields: &Fields) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    for k in fields.keys() {
        for b in (k.len() as u64).to_le_bytes().iter().chain(k.as_bytes()) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(PRIME);
        }
    }
    h
}

/// The text stored in a record's `__h` field.
///
/// Its [`content_hash`] (16 hex digits), then a hash of its field names
/// alone (16 more): the apply function compares the names part to skip the
/// `DEL` before an update that keeps the same fields.
///
/// ```
/// let fields = [("id".to_owned(), "a".to_owned())].into();
/// let h = prefetch::hash_text(&fields);
/// assert_eq!(h.len(), 32);
/// assert_eq!(h[..16], format!("{:016x}", prefetch::content_hash(&fields)));
/// ```
pub fn hash_text(fields: &Fields) -> String {
    format!("{:016x}{:016x}", content_hash(fields), names_hash(fields))
}

/// The tombstone key to pass beside `data_key` (the data key itself when
/// the tombstone lives in the hash).
pub(crate) fn tomb_key(keys: &KeySpace, data_key: &str) -> String {
    match keys.tombstone(data_key) {
        Tombstone::Key(t) => t,
        Tombstone::InHash => data_key.to_owned(),
    }
}

/// Writing parameters shared by every call of one cache.
pub(crate) struct Guard<'a> {
    pub(crate) keys: &'a KeySpace,
    pub(crate) source: &'a str,
    pub(crate) ttl_secs: u64,
    pub(crate) tombstone_ttl_ms: u64,
}

impl Guard<'_> {
    /// `FCALL pf1_apply` for `writes`, checked against the state at `meta`
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
        let mut cmd = redis::cmd("FCALL");
        cmd.arg("pf1_apply").arg(2 + 2 * writes.len());
        cmd.arg(meta).arg(log);
        for w in writes {
            let data = self.keys.key(w.id);
            let tomb = tomb_key(self.keys, &data);
            cmd.arg(data).arg(tomb);
        }
        cmd.arg(self.source)
            .arg(match mode {
                Mode::Live => "live",
                Mode::Snapshot => "snapshot",
            })
            .arg(self.ttl_secs)
            .arg(self.tombstone_ttl_ms)
            .arg(position.map(|p| p.to_string()).unwrap_or_default());
        for w in writes {
            match w.fields {
                Some(fields) => {
                    let (version, hash) = (w.version.to_string(), hash_text(fields));
                    cmd.arg("u")
                        .arg(&version)
                        .arg(&hash)
                        .arg(fields.len() + 2)
                        .arg(fields)
                        .arg(VERSION_FIELD)
                        .arg(version)
                        .arg(HASH_FIELD)
                        .arg(hash);
                }
                None => {
                    cmd.arg("d").arg(w.version.to_string()).arg("").arg(0);
                }
            }
        }
        cmd
    }

    /// `FCALL pf1_sweep` over the records at `data_keys`.
    pub(crate) fn sweep<'k>(
        &self,
        meta: &str,
        snapshot: Version,
        data_keys: impl ExactSizeIterator<Item = &'k String>,
    ) -> Cmd {
        let mut cmd = redis::cmd("FCALL");
        cmd.arg("pf1_sweep").arg(1 + 2 * data_keys.len());
        cmd.arg(meta);
        for data in data_keys {
            cmd.arg(data).arg(tomb_key(self.keys, data));
        }
        cmd.arg(self.source)
            .arg(snapshot.to_string())
            .arg(self.tombstone_ttl_ms);
        cmd
    }

    /// `FCALL pf1_floor`: raise the floor at `meta` to `version` (a truncate).
    pub(crate) fn floor(&self, meta: &str, version: Version) -> Cmd {
        let mut cmd = redis::cmd("FCALL");
        cmd.arg("pf1_floor")
            .arg(1)
            .arg(meta)
            .arg(self.source)
            .arg(version.to_string());
        cmd
    }

    /// `FCALL pf1_begin`: claim the state at `meta` and raise its floor to
    /// `snapshot`; a slot's copy (`slot`) gets no loading mark.
    pub(crate) fn begin(&self, meta: &str, snapshot: Version, slot: bool) -> Cmd {
        let mut cmd = redis::cmd("FCALL");
        cmd.arg("pf1_begin")
            .arg(1)
            .arg(meta)
            .arg(self.source)
            .arg(snapshot.to_string());
        if slot {
            cmd.arg("slot");
        }
        cmd
    }

    /// `FCALL pf1_window`: opens (`open`) or renews a snapshot window at
    /// `meta` / `log` for `lease` from now.
    pub(crate) fn window(&self, (meta, log): (&str, &str), open: bool, lease: Duration) -> Cmd {
        let mut cmd = redis::cmd("FCALL");
        cmd.arg("pf1_window")
            .arg(2)
            .arg(meta)
            .arg(log)
            .arg(if open { "open" } else { "renew" })
            .arg(u64::try_from(lease.as_millis()).unwrap_or(u64::MAX));
        cmd
    }

    /// `FCALL pf1_close`: closes one snapshot window at `meta` / `log`.
    pub(crate) fn close(&self, (meta, log): (&str, &str)) -> Cmd {
        let mut cmd = redis::cmd("FCALL");
        cmd.arg("pf1_close").arg(2).arg(meta).arg(log);
        cmd
    }

    /// `FCALL pf1_finish`: the load of `snapshot` is complete.
    pub(crate) fn finish(&self, snapshot: Version) -> Cmd {
        let mut cmd = redis::cmd("FCALL");
        cmd.arg("pf1_finish")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_is_split_from_the_record() {
        let raw: Fields = [
            ("id", "a"),
            ("n", "1"),
            ("__v", "0:7:2"),
            ("__h", "00000000000000ff000000000badf00d"),
            ("__x", "future"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let s = Stored::split(raw);
        assert_eq!(s.fields.len(), 2);
        assert_eq!(s.version, Some(Version::new(7, 2)));
        assert_eq!(s.hash, Some(255));
        assert!(!s.deleted);
        let tomb: Fields = [
            ("__v".to_owned(), "0:1:0".to_owned()),
            ("__del".to_owned(), "1".to_owned()),
        ]
        .into();
        assert_eq!(Stored::split(tomb).into_record_fields(), None);
    }

    #[test]
    fn the_content_hash_depends_on_names_and_values_not_on_their_boundaries() {
        let a: Fields = [("ab".to_owned(), "c".to_owned())].into();
        let b: Fields = [("a".to_owned(), "bc".to_owned())].into();
        assert_ne!(content_hash(&a), content_hash(&b));
        assert_eq!(hash_text(&a).len(), 32);
        // The names part: equal for equal names, whatever the values.
        let c: Fields = [("ab".to_owned(), "zzz".to_owned())].into();
        assert_eq!(hash_text(&a)[16..], hash_text(&c)[16..]);
        assert_ne!(hash_text(&a)[..16], hash_text(&c)[..16]);
        assert_ne!(hash_text(&a)[16..], hash_text(&b)[16..]);
    }
}
