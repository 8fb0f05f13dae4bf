//! [`StreamSource`]: a [`Source`] that follows one Redis stream written by
//! Debezium Server's Redis sink or RDI's collector.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::FutureExt;
use prefetch::{
    BoxFuture, Change, Error, Event, EventBus, Fields, Primary, Record, Result, Source,
    SourceSnapshot, SourceStatus, Transaction, Version,
};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{FromRedisValue, Value};

use crate::config::StreamConfig;
use crate::decode::{Decoded, decode_entry};
use crate::history::{StreamInfo, id_text, parse_entries, parse_id};

/// A stream lost entries (trimmed or deleted): a snapshot folded from it
/// could miss records, so none is folded unless
/// [`StreamConfig::allow_incomplete_history`] says so.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "stream '{stream}' lost {removed} entries (trimmed or deleted), so a snapshot folded from it could miss records; re-run the connector's initial snapshot into a fresh stream, or allow an incomplete history"
)]
pub struct HistoryLost {
    /// The stream's key.
    pub stream: String,
    /// Entries gone.
    pub removed: u64,
}

/// Follows one Redis stream of Debezium change events.
///
/// - **Versions** are the stream's entry ids (`<ms>-<seq>`, as
///   [`Version`]`{commit: ms, ord: seq}`): totally ordered, and the same
///   every time an entry is read again, so a re-read changes nothing.
/// - **Snapshot**: the stream folded from its first entry up to its last
///   (the connector's initial snapshot, `op: r`, is in the stream itself),
///   as of that last entry. A stream that lost entries to trimming or
///   `XDEL` is refused unless [`StreamConfig::allow_incomplete_history`].
/// - **Resume**: the position stored in Redis is an entry id; after a
///   restart, reading goes on right after it, as long as nothing after it
///   was trimmed.
/// - **Read-only**: the stream is read, never written, trimmed or
///   acknowledged; the demo's mutations answer [`Error::ReadOnly`].
/// - An entry that cannot be decoded is logged, counted in the status, and
///   passed over (it stays in the stream for inspection); the position
///   moves past it.
///
/// Each entry is one [`Transaction`]: the sink writes one entry per row
/// change, without transaction boundaries.
pub struct StreamSource {
    config: StreamConfig,
    /// Short commands (`XINFO`, `XRANGE`).
    commands: ConnectionManager,
    /// Blocking `XREAD`s, which would hold up anything queued behind them.
    blocking: ConnectionManager,
    events: EventBus,
    state: Mutex<State>,
    reads: AtomicU64,
    read_micros: AtomicU64,
}

#[derive(Default)]
struct State {
    /// The id after which the next read starts; `None` until a snapshot
    /// (or a resume) says where.
    cursor: Option<Version>,
    head: Option<Version>,
    connected: bool,
    entries: u64,
    undecodable: u64,
    last_undecodable: Option<String>,
}

impl std::fmt::Debug for StreamSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamSource")
            .field("stream", &self.config.stream)
            .finish_non_exhaustive()
    }
}

impl StreamSource {
    /// Connects to the Redis that holds the stream (it may be the cache's
    /// own Redis or another one).
    pub async fn connect(
        client: redis::Client,
        config: StreamConfig,
        events: EventBus,
    ) -> Result<Arc<Self>> {
        if config.stream.is_empty() {
            return Err(Error::InvalidConfig("the stream name is empty".into()));
        }
        let commands = client
            .get_connection_manager_with_config(
                ConnectionManagerConfig::new().set_response_timeout(Some(Duration::from_secs(10))),
            )
            .await
            .map_err(unavailable)?;
        let blocking = client
            .get_connection_manager_with_config(
                ConnectionManagerConfig::new()
                    .set_response_timeout(Some(config.block + Duration::from_secs(5))),
            )
            .await
            .map_err(unavailable)?;
        Ok(Arc::new(Self {
            config,
            commands,
            blocking,
            events,
            state: Mutex::new(State {
                connected: true,
                ..State::default()
            }),
            reads: AtomicU64::new(0),
            read_micros: AtomicU64::new(0),
        }))
    }

    /// The stream followed.
    pub fn stream(&self) -> &str {
        &self.config.stream
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `XINFO STREAM`: the last id ever added and the highest id removed
    /// (`0-0` when nothing was), or `None` when the stream does not exist.
    async fn info(&self) -> Result<Option<StreamInfo>> {
        let mut conn = self.commands.clone();
        let reply: redis::RedisResult<Value> = redis::cmd("XINFO")
            .arg("STREAM")
            .arg(&self.config.stream)
            .query_async(&mut conn)
            .await;
        let reply = match reply {
            Ok(v) => v,
            Err(e) if e.code() == Some("ERR") && e.to_string().contains("no such key") => {
                return Ok(None);
            }
            Err(e) => return Err(self.failed(e)),
        };
        let map: BTreeMap<String, Value> =
            FromRedisValue::from_redis_value(reply).map_err(Error::source_failed)?;
        let id = |name: &str| -> Result<Version> {
            let raw = map
                .get(name)
                .cloned()
                .ok_or_else(|| Error::source_failed(format!("XINFO STREAM has no {name}")))?;
            let text: String =
                FromRedisValue::from_redis_value(raw).map_err(Error::source_failed)?;
            parse_id(&text)
        };
        let count = |name: &str| -> Result<u64> {
            let raw = map
                .get(name)
                .cloned()
                .ok_or_else(|| Error::source_failed(format!("XINFO STREAM has no {name}")))?;
            FromRedisValue::from_redis_value(raw).map_err(Error::source_failed)
        };
        Ok(Some(StreamInfo {
            last: id("last-generated-id")?,
            max_deleted: id("max-deleted-entry-id")?,
            first: id("recorded-first-entry-id")?,
            removed: count("entries-added")?.saturating_sub(count("length")?),
        }))
    }

    fn failed(&self, e: redis::RedisError) -> Error {
        if e.is_io_error()
            || e.is_timeout()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
        {
            self.state().connected = false;
            unavailable(e)
        } else {
            Error::source_failed(e)
        }
    }

    /// Every record the stream holds up to its last entry, and that entry's id.
    async fn fold(&self) -> Result<(Version, Vec<Record>)> {
        let Some(info) = self.info().await? else {
            return Ok((Version::ZERO, Vec::new()));
        };
        if info.removed > 0 && !self.config.allow_incomplete_history {
            return Err(Error::source_failed(HistoryLost {
                stream: self.config.stream.clone(),
                removed: info.removed,
            }));
        }
        let mut rows: BTreeMap<String, Fields> = BTreeMap::new();
        let mut from = "-".to_owned();
        let end = id_text(info.last);
        let mut conn = self.commands.clone();
        loop {
            let reply: Value = redis::cmd("XRANGE")
                .arg(&self.config.stream)
                .arg(&from)
                .arg(&end)
                .arg("COUNT")
                .arg(self.config.snapshot_chunk.max(1))
                .query_async(&mut conn)
                .await
                .map_err(|e| self.failed(e))?;
            let entries = parse_entries(reply)?;
            let Some((last, _)) = entries.last() else {
                break;
            };
            from = format!("({}", id_text(*last));
            let n = entries.len();
            for (id, fields) in entries {
                match self.decode(id, &fields, false) {
                    Some(Decoded::Upsert { id, fields }) => {
                        rows.insert(id, fields);
                    }
                    Some(Decoded::Delete { id }) => {
                        rows.remove(&id);
                    }
                    Some(Decoded::Truncate { prefix }) => {
                        rows.retain(|id, _| !id.starts_with(&prefix));
                    }
                    Some(Decoded::Skip(_)) | None => {}
                }
            }
            if n < self.config.snapshot_chunk.max(1) {
                break;
            }
        }
        self.state().connected = true;
        // Named by the entries' ids (a declared table's row has no `id`).
        let records = rows.into_iter().map(|(id, f)| Record::with_id(id, f));
        Ok((info.last, records.collect()))
    }

    /// Decodes one entry; an undecodable one is `None`, and when `count`
    /// (the live stream, where each entry is read once) logged and counted.
    fn decode(&self, id: Version, fields: &[(String, Vec<u8>)], count: bool) -> Option<Decoded> {
        match decode_entry(fields, &self.config.decode) {
            Ok(d) => Some(d),
            Err(e) if !count => {
                tracing::debug!(stream = %self.config.stream, entry = %id_text(id), error = %e, "folding past an entry that cannot be decoded");
                None
            }
            Err(e) => {
                let entry = id_text(id);
                tracing::warn!(stream = %self.config.stream, %entry, error = %e, "passing over an entry that cannot be decoded");
                let mut state = self.state();
                state.undecodable += 1;
                state.last_undecodable = Some(format!("{entry}: {e}"));
                None
            }
        }
    }

    async fn pull_entries(&self, max: usize) -> Result<Vec<Arc<Transaction>>> {
        let mut conn = self.blocking.clone();
        loop {
            let from = self.state().cursor.unwrap_or(Version::ZERO);
            let reply: Value = redis::cmd("XREAD")
                .arg("COUNT")
                .arg(max.max(1))
                .arg("BLOCK")
                .arg(self.config.block.as_millis().max(1) as u64)
                .arg("STREAMS")
                .arg(&self.config.stream)
                .arg(id_text(from))
                .query_async(&mut conn)
                .await
                .map_err(|e| self.failed(e))?;
            // Nil: nothing new within `block`; ask again.
            let Value::Array(streams) = reply else {
                self.state().connected = true;
                continue;
            };
            let mut entries = Vec::new();
            for stream in streams {
                let (_name, items): (Value, Value) =
                    FromRedisValue::from_redis_value(stream).map_err(Error::source_failed)?;
                entries.extend(parse_entries(items)?);
            }
            let mut out = Vec::with_capacity(entries.len());
            for (id, fields) in entries {
                let change = match self.decode(id, &fields, true) {
                    Some(Decoded::Upsert { id: key, fields }) => {
                        Some(Change::upsert(key, fields, id))
                    }
                    Some(Decoded::Delete { id: key }) => Some(Change::delete(key, id)),
                    Some(Decoded::Truncate { prefix }) => Some(Change::truncate_within(prefix, id)),
                    Some(Decoded::Skip(_)) | None => None,
                };
                let mut tx = Transaction::new(id, change.into_iter().collect());
                // The entry id's milliseconds are when the sink wrote it.
                tx.committed_at = UNIX_EPOCH + Duration::from_millis(id.commit);
                tx.committed_at = tx.committed_at.min(SystemTime::now());
                let tx = Arc::new(tx);
                if !tx.changes.is_empty() {
                    self.events.publish(|| Event::primary(&tx));
                }
                out.push(tx);
            }
            let mut state = self.state();
            state.connected = true;
            if let Some(last) = out.last() {
                state.cursor = Some(last.position);
                state.head = Some(state.head.map_or(last.position, |h| h.max(last.position)));
                state.entries += out.len() as u64;
                return Ok(out);
            }
        }
    }

    fn read_only(&self) -> Error {
        Error::ReadOnly(format!(
            "it follows the change stream '{}'; write to the database behind it",
            self.config.stream
        ))
    }
}

fn unavailable(e: redis::RedisError) -> Error {
    Error::source_unavailable(e)
}

impl Source for StreamSource {
    fn id(&self) -> String {
        format!("redis-stream:{}", self.config.stream)
    }

    fn open(&self, applied: Option<Version>) -> BoxFuture<'_, Result<bool>> {
        async move {
            let resumable = match (applied, self.info().await?) {
                (Some(at), Some(info)) => info.holds_everything_after(at),
                _ => false,
            };
            self.state().cursor = if resumable { applied } else { None };
            Ok(resumable)
        }
        .boxed()
    }

    fn snapshot(&self) -> BoxFuture<'_, Result<SourceSnapshot>> {
        async move {
            let started = Instant::now();
            let (version, records) = self.fold().await?;
            self.reads.fetch_add(1, Relaxed);
            self.read_micros
                .store(started.elapsed().as_micros() as u64, Relaxed);
            let mut state = self.state();
            if state.cursor.is_none() {
                state.cursor = Some(version);
            }
            Ok(SourceSnapshot::from_records(version, records))
        }
        .boxed()
    }

    fn pull(&self, max_changes: usize) -> BoxFuture<'_, Result<Vec<Arc<Transaction>>>> {
        self.pull_entries(max_changes).boxed()
    }

    fn ack(&self, _upto: Version) -> BoxFuture<'_, Result<()>> {
        // The stream belongs to the connector: nothing to trim or confirm.
        async { Ok(()) }.boxed()
    }

    fn status(&self) -> SourceStatus {
        let state = self.state();
        let mut status = SourceStatus::connected("redis-stream", state.head, 0);
        status.connected = state.connected;
        status.details = vec![
            ("stream".into(), self.config.stream.clone()),
            (
                "read up to".into(),
                state.cursor.map_or_else(|| "-".into(), id_text),
            ),
            ("entries read".into(), state.entries.to_string()),
            ("undecodable".into(), state.undecodable.to_string()),
        ];
        if let Some(last) = &state.last_undecodable {
            status
                .details
                .push(("last undecodable".into(), last.clone()));
        }
        status
    }
}

/// The stream's view pages over its fold: each call reads the stream from
/// the start (a change stream has no index to page by).
impl Primary for StreamSource {
    fn records_after<'a>(
        &'a self,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Record>>> {
        async move {
            let mut records = self.fold().await?.1;
            records.sort_by(|a, b| a.id().cmp(&b.id()));
            Ok(records
                .into_iter()
                .filter(|r| after.is_none_or(|after| r.id().is_some_and(|id| id > after)))
                .take(limit)
                .collect())
        }
        .boxed()
    }

    fn records_for<'a>(&'a self, ids: &'a [String]) -> BoxFuture<'a, Result<Vec<Record>>> {
        async move {
            let mut records: Vec<Record> = self
                .fold()
                .await?
                .1
                .into_iter()
                .filter(|r| r.id().is_some_and(|id| ids.iter().any(|want| want == id)))
                .collect();
            records.sort_by(|a, b| a.id().cmp(&b.id()));
            Ok(records)
        }
        .boxed()
    }

    fn count(&self) -> BoxFuture<'_, Result<prefetch::RowCount>> {
        async move {
            let rows = self.fold().await?.1.len() as u64;
            Ok(prefetch::RowCount { rows, exact: true })
        }
        .boxed()
    }

    fn update_field<'a>(
        &'a self,
        _id: &'a str,
        _field: &'a str,
        _value: &'a str,
    ) -> BoxFuture<'a, Result<Record>> {
        let e = self.read_only();
        async move { Err(e) }.boxed()
    }

    fn add(&self, _record: Record) -> BoxFuture<'_, Result<Record>> {
        let e = self.read_only();
        async move { Err(e) }.boxed()
    }

    fn delete<'a>(&'a self, _id: &'a str) -> BoxFuture<'a, Result<String>> {
        let e = self.read_only();
        async move { Err(e) }.boxed()
    }

    fn reads(&self) -> u64 {
        self.reads.load(Relaxed)
    }

    fn reset_reads(&self) {
        self.reads.store(0, Relaxed);
    }

    fn read_latency(&self) -> Duration {
        Duration::from_micros(self.read_micros.load(Relaxed))
    }
}
