//! Applying from the consumer group: [`FeedSource`], the tail, the dead letters.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::FutureExt;
use prefetch::{
    BoxFuture, Error, Event, EventBus, Primary, Record, Result, Source, SourceSnapshot,
    SourceStatus, Transaction, Version,
};
use prefetch::{Redis, RedisClient};
use redis::{FromRedisValue, Value};

use super::config::*;
use super::wire::decode_tx;
use crate::decode::DecodeOptions;

/// `SET KEYS[1] ARGV[1]` unless it already holds a larger number.
const RAISE: &str = "local c = tonumber(redis.call('GET', KEYS[1]) or '0') if tonumber(ARGV[1]) > c then redis.call('SET', KEYS[1], ARGV[1]) end return 1";

/// A member of the pipeline's consumer group, as the engine's [`Source`]:
/// snapshots, records and the demo's mutations go to `inner` (the source of
/// truth itself); changes come from the feed.
///
/// - **Own pending entries first**: after a restart under the same
///   consumer name, what was delivered but not acknowledged comes again.
/// - **Claims**: entries pending longer than
///   [`PipelineConfig::claim_idle`] at another consumer (a dead replica)
///   are claimed with `XAUTOCLAIM`.
/// - **Dead letters**: an entry that cannot be decoded, or was delivered
///   [`PipelineConfig::max_deliveries`] times, is copied to the capped
///   dead-letter stream with its reason and acknowledged;
///   [`replay_dead_letters`] puts such entries back.
/// - **Acknowledged after the write**: `XACK` only once the engine stored
///   the entry's transaction in Redis.
/// - **Live everywhere**: every transaction published, whichever replica
///   applies it, is announced on this replica's [`EventBus`].
pub struct FeedSource<P: ?Sized> {
    inner: Arc<P>,
    config: PipelineConfig,
    streams: Vec<String>,
    commands: Redis,
    blocking: Redis,
    state: Mutex<FeedState>,
    debezium: DecodeOptions,
    tail: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct FeedState {
    /// Read our own pending entries before new ones.
    pending_first: bool,
    last_claim: Option<Instant>,
    /// Entries handed out and not yet acknowledged: position → (stream, id).
    in_flight: Vec<(Version, String, String)>,
    head: Option<Version>,
    resync: u64,
    connected: bool,
    /// Entries in the dead-letter stream (as last read, plus our own since).
    dead_letters: u64,
    last_dead: Option<String>,
}

impl<P: ?Sized> std::fmt::Debug for FeedSource<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeedSource")
            .field("pipeline", &self.config.name)
            .field("consumer", &self.config.consumer)
            .finish_non_exhaustive()
    }
}

impl<P: ?Sized> Drop for FeedSource<P> {
    fn drop(&mut self) {
        self.tail.abort();
    }
}

type Entry = (String, Version, Vec<(String, Vec<u8>)>);

/// Sets "read our own pending entries first" when a pull ends without
/// handing out what it read.
struct RereadOwnPending<'a, P: ?Sized>(Option<&'a FeedSource<P>>);

impl<P: ?Sized> Drop for RereadOwnPending<'_, P> {
    fn drop(&mut self) {
        if let Some(feed) = self.0 {
            feed.state
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pending_first = true;
        }
    }
}

impl<P: Source + ?Sized> FeedSource<P> {
    /// Joins the pipeline's group on the Redis behind `client`; `inner` is
    /// the source of truth (for snapshots and records), `events` the bus
    /// this replica's dashboards listen to.
    pub async fn connect(
        client: impl Into<RedisClient>,
        inner: Arc<P>,
        config: PipelineConfig,
        events: EventBus,
    ) -> Result<Arc<Self>> {
        config.validate()?;
        let client: RedisClient = client.into();
        let manager = |timeout: Duration| {
            let client = client.clone();
            async move {
                client
                    .connect(timeout)
                    .await
                    .map_err(Error::source_unavailable)
            }
        };
        let commands = manager(Duration::from_secs(10)).await?;
        let blocking = manager(config.block + Duration::from_secs(5)).await?;
        let tail_conn = manager(config.block + Duration::from_secs(5)).await?;
        let streams = config.streams();
        let debezium = DecodeOptions::default();
        let tail = tokio::spawn(tail(
            tail_conn,
            streams.clone(),
            config.block,
            debezium.clone(),
            events,
        ));
        Ok(Arc::new(Self {
            inner,
            streams,
            config,
            commands,
            blocking,
            state: Mutex::new(FeedState {
                pending_first: true,
                connected: true,
                ..FeedState::default()
            }),
            debezium,
            tail,
        }))
    }

    /// The source of truth behind the feed.
    pub fn inner(&self) -> &Arc<P> {
        &self.inner
    }

    /// The pipeline's configuration.
    pub fn config(&self) -> &PipelineConfig {
        &self.config
    }

    fn state(&self) -> MutexGuard<'_, FeedState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates the group on every partition; true when it existed on all.
    async fn ensure_group(&self) -> Result<bool> {
        let mut conn = self.commands.clone();
        let mut existed = true;
        for stream in &self.streams {
            let r: redis::RedisResult<()> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(stream)
                .arg(&self.config.group)
                .arg("0")
                .arg("MKSTREAM")
                .query_async(&mut conn)
                .await;
            match r {
                Ok(()) => existed = false,
                Err(e) if e.code() == Some("BUSYGROUP") => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(existed)
    }

    async fn read_group(&self, from: &str, block: bool, max: usize) -> Result<Vec<Entry>> {
        let mut conn = self.blocking.clone();
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&self.config.group)
            .arg(&self.config.consumer)
            .arg("COUNT")
            .arg(max.div_ceil(self.streams.len().max(1)).max(1));
        if block {
            cmd.arg("BLOCK")
                .arg(self.config.block.as_millis().max(1) as u64);
        }
        cmd.arg("STREAMS").arg(&self.streams);
        for _ in &self.streams {
            cmd.arg(from);
        }
        let reply: redis::RedisResult<Value> = cmd.query_async(&mut conn).await;
        let reply = match reply {
            Ok(v) => v,
            Err(e) if e.code() == Some("NOGROUP") => {
                // Redis lost the feed (restarted empty, flushed): recreate
                // it; the engine notices the lost state and re-prefetches.
                self.ensure_group().await?;
                return Ok(Vec::new());
            }
            Err(e) => return Err(e.into()),
        };
        let Value::Array(streams) = reply else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for s in streams {
            let (name, items): (String, Value) =
                FromRedisValue::from_redis_value(s).map_err(Error::source_failed)?;
            let (good, bad) = split_ids(parse_raw(items)?);
            for (raw, fields) in bad {
                self.bury(&name, &raw, &fields, BAD_ID).await?;
            }
            for (id, fields) in good {
                out.push((name.clone(), id, fields));
            }
        }
        Ok(out)
    }

    /// `XAUTOCLAIM` on every partition: entries a dead consumer left.
    async fn claim(&self, max: usize) -> Result<Vec<Entry>> {
        let mut conn = self.commands.clone();
        let mut out = Vec::new();
        for stream in &self.streams {
            let reply: redis::RedisResult<(String, Value, Value)> = redis::cmd("XAUTOCLAIM")
                .arg(stream)
                .arg(&self.config.group)
                .arg(&self.config.consumer)
                .arg(self.config.claim_idle.as_millis() as u64)
                .arg("0-0")
                .arg("COUNT")
                .arg(max.div_ceil(self.streams.len().max(1)).max(1))
                .query_async(&mut conn)
                .await;
            let (_, items, _) = match reply {
                Ok(r) => r,
                Err(e) if e.code() == Some("NOGROUP") => continue,
                Err(e) => return Err(e.into()),
            };
            let (claimed, bad) = split_ids(parse_raw(items)?);
            for (raw, fields) in bad {
                self.bury(stream, &raw, &fields, BAD_ID).await?;
            }
            if claimed.is_empty() {
                continue;
            }
            // Delivery counts of what we now hold (the claim counted one).
            let counts = self.deliveries(stream, &claimed).await?;
            for (id, fields) in claimed {
                let n = counts.get(&id).copied().unwrap_or(0);
                if n > self.config.max_deliveries {
                    let why = format!("delivered {n} times without being acknowledged");
                    self.bury(stream, &entry_id_text(id), &fields, &why).await?;
                } else {
                    out.push((stream.clone(), id, fields));
                }
            }
        }
        if !out.is_empty() {
            tracing::info!(entries = out.len(), consumer = %self.config.consumer, "claimed entries a stopped consumer left pending");
        }
        Ok(out)
    }

    async fn deliveries(&self, stream: &str, entries: &[Item]) -> Result<BTreeMap<Version, u64>> {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return Ok(BTreeMap::new());
        };
        let mut conn = self.commands.clone();
        let rows: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
            .arg(stream)
            .arg(&self.config.group)
            .arg(entry_id_text(first.0))
            .arg(entry_id_text(last.0))
            .arg(entries.len() * 2)
            .arg(&self.config.consumer)
            .query_async(&mut conn)
            .await?;
        rows.into_iter()
            .map(|(id, _, _, n)| Ok((parse_entry_id(&id)?, n)))
            .collect()
    }

    /// Moves one entry to the dead-letter stream with `why`, and
    /// acknowledges it in the group.
    async fn bury(
        &self,
        stream: &str,
        entry: &str,
        fields: &[(String, Vec<u8>)],
        why: &str,
    ) -> Result<()> {
        tracing::warn!(%stream, %entry, reason = %why, "moving an entry to the dead-letter stream");
        let mut conn = self.commands.clone();
        let mut xadd = redis::cmd("XADD");
        xadd.arg(self.config.dlq_key())
            .arg("MAXLEN")
            .arg("~")
            .arg(self.config.dlq_max_len)
            .arg("*")
            .arg("__reason")
            .arg(why)
            .arg("__stream")
            .arg(stream)
            .arg("__id")
            .arg(entry);
        for (k, v) in fields {
            xadd.arg(k).arg(v.as_slice());
        }
        let mut pipe = redis::pipe();
        pipe.atomic()
            .add_command(xadd)
            .ignore()
            .cmd("XACK")
            .arg(stream)
            .arg(&self.config.group)
            .arg(entry)
            .ignore();
        let () = pipe.query_async(&mut conn).await?;
        let mut state = self.state();
        state.dead_letters += 1;
        state.last_dead = Some(format!("{entry}: {why}"));
        Ok(())
    }

    async fn next_entries(&self, max: usize) -> Result<Vec<Entry>> {
        loop {
            if self.state().pending_first {
                let own = self.read_group("0", false, max).await?;
                // Entries deleted from the stream (trimmed, XDEL) while
                // pending come back without fields: nothing to apply.
                let own: Vec<Entry> = own.into_iter().filter(|e| !e.2.is_empty()).collect();
                if !own.is_empty() {
                    return Ok(own);
                }
                self.state().pending_first = false;
            }
            let due = self
                .state()
                .last_claim
                .is_none_or(|t| t.elapsed() >= self.config.claim_every);
            if due {
                self.state().last_claim = Some(Instant::now());
                let claimed = self.claim(max).await?;
                if !claimed.is_empty() {
                    return Ok(claimed);
                }
                self.refresh().await;
            }
            let fresh = self.read_group(">", true, max).await?;
            if !fresh.is_empty() {
                return Ok(fresh);
            }
        }
    }

    async fn pull_feed(&self, max: usize) -> Result<Vec<Arc<Transaction>>> {
        // Entries Redis delivered to us but we never hand out (an error, or
        // the worker dropping this future) stay in our pending list: read
        // that list first next time, rather than wait for a claim.
        let mut guard = RereadOwnPending(Some(self));
        loop {
            let entries = self.next_entries(max).await?;
            let mut out = Vec::with_capacity(entries.len());
            let mut handed = Vec::with_capacity(entries.len());
            for (stream, id, fields) in entries {
                match decode_tx(id, &fields, &self.debezium) {
                    Ok(tx) => {
                        handed.push((tx.position, stream, entry_id_text(id)));
                        out.push(Arc::new(tx));
                    }
                    Err(e) => {
                        self.bury(&stream, &entry_id_text(id), &fields, &e.0)
                            .await?
                    }
                }
            }
            // No await from here on: what is handed out is exactly what the
            // next acknowledgement may cover.
            let mut state = self.state();
            state.connected = true;
            if let Some(newest) = out.iter().map(|tx| tx.position).max() {
                state.head = Some(state.head.map_or(newest, |h| h.max(newest)));
            }
            state.in_flight.extend(handed);
            drop(state);
            if !out.is_empty() {
                guard.0 = None;
                out.sort_by_key(|tx| tx.position);
                return Ok(out);
            }
        }
    }

    /// Re-reads the resync counter, what the last snapshot covered, and the
    /// dead-letter count (cheap; once per claim round). A request no
    /// snapshot covered yet raises this replica's resync count.
    async fn refresh(&self) {
        let mut conn = self.commands.clone();
        let r: redis::RedisResult<(Option<u64>, Option<u64>, u64)> = redis::pipe()
            .cmd("GET")
            .arg(self.config.resync_key())
            .cmd("GET")
            .arg(self.config.covered_key())
            .cmd("XLEN")
            .arg(self.config.dlq_key())
            .query_async(&mut conn)
            .await;
        match r {
            Ok((asked, covered, dead)) => {
                let mut state = self.state();
                let asked = asked.unwrap_or(0);
                if asked > covered.unwrap_or(0) {
                    state.resync = state.resync.max(asked);
                }
                state.dead_letters = dead;
            }
            Err(e) => tracing::debug!(error = %e, "cannot refresh the feed's counters"),
        }
    }

    async fn ack_feed(&self, upto: Version) -> Result<()> {
        let done: Vec<(Version, String, String)> = {
            let mut state = self.state();
            let (done, keep) = std::mem::take(&mut state.in_flight)
                .into_iter()
                .partition(|(v, _, _)| *v <= upto);
            state.in_flight = keep;
            done
        };
        if done.is_empty() {
            return Ok(());
        }
        let mut by_stream: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (_, stream, id) in &done {
            by_stream.entry(stream).or_default().push(id);
        }
        let mut pipe = redis::pipe();
        for (stream, ids) in by_stream {
            pipe.cmd("XACK")
                .arg(stream)
                .arg(&self.config.group)
                .arg(ids)
                .ignore();
        }
        let mut conn = self.commands.clone();
        let r: redis::RedisResult<()> = pipe.query_async(&mut conn).await;
        if let Err(e) = r {
            // Not acknowledged: put them back, so the next ack retries.
            self.state().in_flight.extend(done);
            return Err(e.into());
        }
        Ok(())
    }
}

/// Announces every published transaction on `events` (no group: every
/// replica sees every entry).
async fn tail(
    mut conn: Redis,
    streams: Vec<String>,
    block: Duration,
    debezium: DecodeOptions,
    events: EventBus,
) {
    // Start after each stream's newest entry. Not `$`: a blocked XREAD
    // answers for the stream that woke it only, and `$` on the next call
    // would skip what the others received meanwhile.
    let mut from: Vec<String> = Vec::with_capacity(streams.len());
    for s in &streams {
        loop {
            match last_id(&mut conn, s).await {
                Ok(id) => {
                    from.push(id);
                    break;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "feed tail: will retry");
                    tokio::time::sleep(block).await;
                }
            }
        }
    }
    loop {
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(1000)
            .arg("BLOCK")
            .arg(block.as_millis().max(1) as u64)
            .arg("STREAMS")
            .arg(&streams)
            .arg(&from);
        let reply: redis::RedisResult<Value> = cmd.query_async(&mut conn).await;
        let reply = match reply {
            Ok(Value::Array(r)) => r,
            Ok(_) => continue,
            Err(e) => {
                tracing::debug!(error = %e, "feed tail: will retry");
                tokio::time::sleep(block).await;
                continue;
            }
        };
        for s in reply {
            let Ok((name, items)) = <(String, Value)>::from_redis_value(s) else {
                continue;
            };
            let (Some(i), Ok(items)) = (streams.iter().position(|x| *x == name), parse_raw(items))
            else {
                tracing::debug!(stream = %name, "feed tail: an unreadable reply");
                tokio::time::sleep(block).await;
                continue;
            };
            for (raw, fields) in items {
                from[i] = raw;
                let Ok(id) = parse_entry_id(&from[i]) else {
                    continue;
                };
                if let Ok(tx) = decode_tx(id, &fields, &debezium)
                    && !tx.changes.is_empty()
                {
                    let tx = Arc::new(tx);
                    events.publish(|| Event::Primary(tx));
                }
            }
        }
    }
}

/// The id of the last entry ever added to `stream` (`0-0` for none).
async fn last_id(conn: &mut Redis, stream: &str) -> Result<String> {
    let info: redis::RedisResult<BTreeMap<String, Value>> = redis::cmd("XINFO")
        .arg("STREAM")
        .arg(stream)
        .query_async(conn)
        .await;
    match info {
        Ok(map) => map
            .get("last-generated-id")
            .cloned()
            .map(String::from_redis_value)
            .transpose()
            .map_err(Error::source_failed)?
            .ok_or_else(|| Error::source_failed("XINFO STREAM has no last-generated-id")),
        Err(e) if e.to_string().contains("no such key") => Ok("0-0".into()),
        Err(e) => Err(e.into()),
    }
}

/// Puts up to `max` dead letters back into the streams they came from.
///
/// Each goes back as a new entry with its content and its version
/// unchanged (an entry in Debezium's format, versioned by its entry id,
/// carries its original id as `__v`), so it applies only where it is newer.
/// One caveat: a delete's tombstone lasts the tombstone TTL (24 h by
/// default); a replay of an older upsert after that, with no re-prefetch in
/// between, can bring the row back until the next reconciliation. Returns
/// how many were replayed.
pub async fn replay_dead_letters(
    mut conn: Redis,
    config: &PipelineConfig,
    max: usize,
) -> Result<usize> {
    let mut replayed = 0;
    for (id, fields) in oldest_letters(&mut conn, config, max).await? {
        let field = |name: &str| field_text(&fields, name);
        // Debezium's format is versioned by the entry id: keep the original.
        let original = (field("v").is_none())
            .then(|| {
                field("__v").or_else(|| {
                    field("__id").and_then(|i| parse_entry_id(&i).ok().map(|v| v.to_string()))
                })
            })
            .flatten();
        let origin = field("__stream")
            .filter(|s| s.starts_with(&config.key_prefix()))
            .unwrap_or_else(|| config.stream(0));
        let mut xadd = redis::cmd("XADD");
        xadd.arg(&origin).arg("*");
        for (k, v) in fields.iter().filter(|(k, _)| !k.starts_with("__")) {
            xadd.arg(k).arg(v.as_slice());
        }
        if let Some(v) = original {
            xadd.arg("__v").arg(v);
        }
        let mut pipe = redis::pipe();
        pipe.atomic()
            .add_command(xadd)
            .ignore()
            .cmd("XDEL")
            .arg(config.dlq_key())
            .arg(&id)
            .ignore();
        let () = pipe.query_async(&mut conn).await?;
        replayed += 1;
    }
    Ok(replayed)
}

/// Up to `max` of the oldest dead letters.
async fn oldest_letters(
    conn: &mut Redis,
    config: &PipelineConfig,
    max: usize,
) -> Result<Vec<RawItem>> {
    let items: Value = redis::cmd("XRANGE")
        .arg(config.dlq_key())
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(max.max(1))
        .query_async(conn)
        .await?;
    parse_raw(items)
}

/// The text of field `name` of an entry.
fn field_text(fields: &[(String, Vec<u8>)], name: &str) -> Option<String> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
}

/// Dead letters held now, newest last: (entry id, reason).
pub async fn dead_letters(
    mut conn: Redis,
    config: &PipelineConfig,
    max: usize,
) -> Result<Vec<(String, String)>> {
    Ok(oldest_letters(&mut conn, config, max)
        .await?
        .into_iter()
        .map(|(id, fields)| {
            let why = field_text(&fields, "__reason").unwrap_or_default();
            (id, why)
        })
        .collect())
}

impl<P: Source + ?Sized> Source for FeedSource<P> {
    fn id(&self) -> String {
        self.inner.id()
    }

    fn open(&self, applied: Option<Version>) -> BoxFuture<'_, Result<bool>> {
        async move {
            let existed = self.ensure_group().await?;
            // Requests the last snapshot (of any replica) covered are done;
            // any above it make this replica's engine re-prefetch.
            let mut conn = self.commands.clone();
            let covered: Option<u64> = redis::cmd("GET")
                .arg(self.config.covered_key())
                .query_async(&mut conn)
                .await?;
            let mut state = self.state();
            state.resync = covered.unwrap_or(0);
            state.pending_first = true;
            state.in_flight.clear();
            Ok(existed && applied.is_some())
        }
        .boxed()
    }

    fn snapshot(&self) -> BoxFuture<'_, Result<SourceSnapshot>> {
        async move {
            // Every request counted before the snapshot starts is covered
            // by it (requests come after the publisher's own snapshot).
            let mut conn = self.commands.clone();
            let asked: Option<u64> = redis::cmd("GET")
                .arg(self.config.resync_key())
                .query_async(&mut conn)
                .await?;
            let snapshot = self.inner.snapshot().await?;
            if let Some(asked) = asked {
                let _: i64 = redis::Script::new(RAISE)
                    .key(self.config.covered_key())
                    .arg(asked)
                    .invoke_async(&mut conn)
                    .await?;
            }
            Ok(snapshot)
        }
        .boxed()
    }

    fn pull(&self, max_changes: usize) -> BoxFuture<'_, Result<Vec<Arc<Transaction>>>> {
        self.pull_feed(max_changes).boxed()
    }

    fn ack(&self, upto: Version) -> BoxFuture<'_, Result<()>> {
        self.ack_feed(upto).boxed()
    }

    fn status(&self) -> SourceStatus {
        let inner = self.inner.status();
        let state = self.state();
        let mut status = SourceStatus::connected(&inner.kind, state.head, state.in_flight.len());
        status.connected = state.connected;
        status.resync_requests = state.resync + inner.resync_requests;
        status.details = inner.details;
        status.details.extend([
            ("pipeline".to_owned(), self.config.name.clone()),
            ("replica".to_owned(), self.config.consumer.clone()),
            ("partitions".to_owned(), self.streams.len().to_string()),
            ("dead letters".to_owned(), state.dead_letters.to_string()),
        ]);
        if let Some(last) = &state.last_dead {
            status
                .details
                .push(("last dead letter".into(), last.clone()));
        }
        status
    }
}

impl<P: Primary + ?Sized> Primary for FeedSource<P> {
    fn records(&self) -> BoxFuture<'_, Result<Vec<Record>>> {
        self.inner.records()
    }

    fn update_field<'a>(
        &'a self,
        id: &'a str,
        field: &'a str,
        value: &'a str,
    ) -> BoxFuture<'a, Result<Record>> {
        self.inner.update_field(id, field, value)
    }

    fn add(&self, record: Record) -> BoxFuture<'_, Result<Record>> {
        self.inner.add(record)
    }

    fn delete<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<String>> {
        self.inner.delete(id)
    }

    fn reads(&self) -> u64 {
        self.inner.reads()
    }

    fn reset_reads(&self) {
        self.inner.reset_reads();
    }

    fn read_latency(&self) -> Duration {
        self.inner.read_latency()
    }
}
