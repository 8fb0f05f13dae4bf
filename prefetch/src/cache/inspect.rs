//! Reading stored records whatever their encoding: a hash (the record's
//! fields with its metadata inside), or a JSON document (a string key,
//! its version and content hash in its tombstone key).

use redis::{Cmd, Value};

use super::PrefetchCache;
use crate::cluster::{self, Connection};
use crate::error::Result;
use crate::guard::{self, Stored};
use crate::model::{Fields, Version};

/// One key as read for inspection.
pub(crate) struct Inspected {
    /// The record and its metadata (empty fields: no record).
    pub(crate) stored: Stored,
    /// `TTL`'s answer for the key.
    pub(crate) ttl: i64,
    /// The version of the delete that left a tombstone, if one did.
    pub(crate) tomb: Option<Version>,
}

impl<C: Connection> PrefetchCache<C> {
    /// The command that reads the record at `key`: `HGETALL`, or `GET` for
    /// a JSON document (`json`, as [`is_json`](Self::is_json) says).
    pub(crate) fn read_cmd(key: &str, json: bool) -> Cmd {
        let mut cmd = redis::cmd(if json { "GET" } else { "HGETALL" });
        cmd.arg(key);
        cmd
    }

    /// What [`read_cmd`](Self::read_cmd) answered, as stored.
    pub(crate) fn stored_of(json: bool, reply: Value) -> Stored {
        if json {
            let doc: Option<String> = redis::from_redis_value(reply).unwrap_or(None);
            Stored::json(doc, None)
        } else {
            let raw: Fields = redis::from_redis_value(reply).unwrap_or_default();
            Stored::split(raw)
        }
    }

    /// `fields` as the record at `key` stores them: the same for a hash, the
    /// document alone for a JSON record.
    pub(crate) fn stored_form<'f>(
        &self,
        key: &str,
        fields: &'f Fields,
    ) -> std::borrow::Cow<'f, Fields> {
        if self.is_json(key) {
            let doc = guard::json_document(fields);
            std::borrow::Cow::Owned([(guard::JSON_FIELD.to_owned(), doc)].into())
        } else {
            std::borrow::Cow::Borrowed(fields)
        }
    }

    /// Renews the TTL of the records at `keys` (and a JSON record's
    /// tombstone key, which holds its version), each to its table's.
    pub(crate) async fn renew_ttls(&self, keys: &[String]) -> Result<()> {
        let space = self.key_space();
        cluster::pipelined(&self.writer(), keys, 0, |pipe, key| {
            let ttl = self.ttl_of(key).as_secs();
            pipe.cmd("EXPIRE").arg(key).arg(ttl);
            if self.is_json(key) {
                pipe.cmd("EXPIRE").arg(guard::tomb_key(space, key)).arg(ttl);
            }
        })
        .await?;
        Ok(())
    }

    /// Reads the records at `keys` on `conn` with their TTLs and
    /// tombstones: three commands per key, pipelined per slot.
    pub(crate) async fn inspect(&self, conn: &C, keys: &[String]) -> Result<Vec<Inspected>> {
        let space = self.key_space();
        let json_tables = self.json_tables();
        let json = |key: &str| guard::is_json(&json_tables, key);
        let values = cluster::pipelined(conn, keys, 3, |pipe, key| {
            pipe.add_command(Self::read_cmd(key, json(key)));
            pipe.cmd("TTL").arg(key);
            let tomb = guard::tomb_key(space, key);
            if tomb == key {
                pipe.cmd("ECHO").arg("");
            } else {
                pipe.cmd("GET").arg(tomb);
            }
        })
        .await?;
        let mut out = Vec::with_capacity(keys.len());
        for (key, triple) in keys.iter().zip(values.chunks(3)) {
            let [record, ttl, tomb] = triple else {
                continue;
            };
            let ttl: i64 = redis::from_redis_value(ttl.clone()).unwrap_or(-2);
            let tomb: Option<String> = redis::from_redis_value(tomb.clone()).unwrap_or(None);
            let (stored, tomb) = if json(key) {
                let doc: Option<String> = redis::from_redis_value(record.clone()).unwrap_or(None);
                let stored = Stored::json(doc, tomb.as_deref());
                // A delete leaves its version alone, without a hash.
                let deleted = stored.fields.is_empty() && stored.hash.is_none();
                let tomb = if deleted { stored.version } else { None };
                (stored, tomb)
            } else {
                let stored = Self::stored_of(false, record.clone());
                let tomb = if stored.deleted {
                    stored.version
                } else {
                    tomb.and_then(|t| t.parse().ok())
                };
                (stored, tomb)
            };
            out.push(Inspected { stored, ttl, tomb });
        }
        Ok(out)
    }
}
