//! [`FeedSource`]: one replica's member of the consumer group, as the
//! [`Source`] of its engine: pulls whole transactions from the partitions
//! (its own pending entries first, then claims, then new ones), hands them
//! out in position order, acknowledges them once Redis holds them.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::FutureExt;
use prefetch::{
    BoxFuture, Error, EventBus, Redis, RedisClient, Result, Source, SourceSnapshot, SourceStatus,
    Transaction, Version,
};
use prefetch_cdc::DecodeOptions;

use crate::config::*;
use crate::wire::decode_tx;

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
///   [`replay_dead_letters`](crate::replay_dead_letters) puts such entries back.
/// - **Acknowledged after the write**: `XACK` only once the engine stored
///   the entry's transaction in Redis.
/// - **Live everywhere**: every transaction published, whichever replica
///   applies it, is announced on this replica's [`EventBus`].
pub struct FeedSource<P: ?Sized> {
    pub(crate) inner: Arc<P>,
    pub(crate) config: PipelineConfig,
    pub(crate) streams: Vec<String>,
    pub(crate) commands: Redis,
    pub(crate) blocking: Redis,
    pub(crate) state: Mutex<FeedState>,
    debezium: DecodeOptions,
    tail: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
pub(crate) struct FeedState {
    /// Read our own pending entries before new ones.
    pub(crate) pending_first: bool,
    pub(crate) last_claim: Option<Instant>,
    /// Entries handed out and not yet acknowledged: position → (stream, id).
    pub(crate) in_flight: Vec<(Version, String, String)>,
    pub(crate) head: Option<Version>,
    pub(crate) resync: u64,
    pub(crate) connected: bool,
    /// Entries in the dead-letter stream (as last read, plus our own since).
    pub(crate) dead_letters: u64,
    pub(crate) last_dead: Option<String>,
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

pub(crate) type Entry = (String, Version, Vec<(String, Vec<u8>)>);

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
        let tail = tokio::spawn(crate::tail::tail(
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

    pub(crate) fn state(&self) -> MutexGuard<'_, FeedState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
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

    fn snapshot_of(&self, table: &str) -> BoxFuture<'_, Result<SourceSnapshot>> {
        self.inner.snapshot_of(table)
    }

    fn pull(&self, max_changes: usize) -> BoxFuture<'_, Result<Vec<Arc<Transaction>>>> {
        self.pull_feed(max_changes).boxed()
    }

    fn ack(&self, upto: Version) -> BoxFuture<'_, Result<()>> {
        self.ack_feed(upto).boxed()
    }

    fn position_text(&self, position: Version) -> String {
        self.inner.position_text(position)
    }

    fn parse_position(&self, text: &str) -> Option<Version> {
        self.inner.parse_position(text)
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
