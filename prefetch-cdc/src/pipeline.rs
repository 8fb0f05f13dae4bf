//! A durable change feed in Redis Streams shared by several replicas.
//!
//! One replica at a time holds the source of truth under a [`Lease`] and
//! [publishes](run_leader) its committed transactions into partition
//! streams; every replica applies from one consumer group through a
//! [`FeedSource`]. The source hears that a transaction is durable only once
//! the feed holds it, and a replica that dies leaves its unacknowledged
//! entries to the others.
//!
//! # Keys (`<p>` is the pipeline name)
//!
//! | key | what |
//! |---|---|
//! | `prefetch:<p>:cdc:{pNN}` | partition stream `NN`, one entry per source transaction |
//! | `prefetch:<p>:leader` | the publishing lease: the holder's name, with a TTL |
//! | `prefetch:<p>:published` | the position of the last transaction published |
//! | `prefetch:<p>:resync` | how often the publisher asked every replica for a fresh snapshot |
//! | `prefetch:<p>:resync:covered` | the count the last snapshot (of any replica) covered |
//! | `prefetch:<p>:dlq` | dead letters (capped), each with its reason and origin |
//!
//! # Entry format
//!
//! An entry holds one whole transaction, so that whichever replica applies
//! it applies all of it in one atomic call: `v` (its position, the
//! [`Version`] text form), `ts` (commit time, Unix milliseconds), `changes`
//! (a JSON array of `{"id", "op": "u"|"d"|"t", "v", "after": {…}}`). A
//! group member also accepts entries in Debezium Server's formats (see
//! [`crate::decode`]), versioned by their entry id, so the same group can
//! apply what a Debezium sink writes.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, UNIX_EPOCH};

use futures::FutureExt;
use prefetch::{
    BoxFuture, Change, ChangeKind, Error, Event, EventBus, Fields, Primary, Record, Result, Source,
    SourceSnapshot, SourceStatus, Transaction, Version,
};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{FromRedisValue, Value};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::decode::{DecodeError, DecodeOptions, Decoded, decode_entry};

/// Names, partitions and timings of one pipeline.
#[derive(Clone, Debug)]
pub struct PipelineConfig {
    /// The pipeline's name (every key is under `prefetch:<name>:`).
    pub name: String,
    /// Partition streams (transactions are spread by position).
    pub partitions: u16,
    /// The consumer group every replica applies from.
    pub group: String,
    /// This replica's name in the group and for the lease; unique per
    /// replica, and stable across its restarts if it should find its own
    /// pending entries again.
    pub consumer: String,
    /// How long one blocking read waits.
    pub block: Duration,
    /// An entry pending this long at another consumer is claimed.
    pub claim_idle: Duration,
    /// How often a consumer looks for entries to claim.
    pub claim_every: Duration,
    /// An entry already delivered this many times without being
    /// acknowledged goes to the dead-letter stream when claimed again.
    pub max_deliveries: u64,
    /// The dead-letter stream's approximate cap.
    pub dlq_max_len: u64,
    /// The lease's time to live; it is renewed every third of it.
    pub lease_ttl: Duration,
    /// How often the leader trims what every group acknowledged.
    pub trim_every: Duration,
}

impl PipelineConfig {
    /// A pipeline named `name`, for the replica named `consumer`.
    pub fn new(name: impl Into<String>, consumer: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            partitions: 4,
            group: "appliers".into(),
            consumer: consumer.into(),
            block: Duration::from_millis(500),
            claim_idle: Duration::from_secs(5),
            claim_every: Duration::from_secs(1),
            max_deliveries: 5,
            dlq_max_len: 10_000,
            lease_ttl: Duration::from_secs(3),
            trim_every: Duration::from_secs(5),
        }
    }

    /// Partition stream `p`.
    ///
    /// ```
    /// let c = prefetch_cdc::PipelineConfig::new("shop", "replica-1");
    /// assert_eq!(c.stream(7), "prefetch:shop:cdc:{p07}");
    /// ```
    pub fn stream(&self, p: u16) -> String {
        format!("prefetch:{}:cdc:{{p{p:02}}}", self.name)
    }

    /// Every partition stream.
    pub fn streams(&self) -> Vec<String> {
        (0..self.partitions.max(1))
            .map(|p| self.stream(p))
            .collect()
    }

    /// The partition a transaction goes to: its position's bits mixed
    /// (splitmix64), since positions such as PostgreSQL LSNs are aligned
    /// and would all land on one partition under a plain modulo.
    pub fn partition_of(&self, position: Version) -> u16 {
        let n = u64::from(self.partitions.max(1));
        let mut z = position
            .commit
            .wrapping_add(u64::from(position.ord).rotate_left(32))
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z % n) as u16
    }

    /// The lease key.
    pub fn leader_key(&self) -> String {
        format!("prefetch:{}:leader", self.name)
    }

    /// The last published position.
    pub fn published_key(&self) -> String {
        format!("prefetch:{}:published", self.name)
    }

    /// The resync counter.
    pub fn resync_key(&self) -> String {
        format!("prefetch:{}:resync", self.name)
    }

    /// The resync counter's value the last snapshot covered.
    pub fn covered_key(&self) -> String {
        format!("prefetch:{}:resync:covered", self.name)
    }

    /// The dead-letter stream.
    pub fn dlq_key(&self) -> String {
        format!("prefetch:{}:dlq", self.name)
    }

    /// Every key of the pipeline starts with this.
    pub fn key_prefix(&self) -> String {
        format!("prefetch:{}:", self.name)
    }
}

/// One change as the feed carries it.
#[derive(Serialize, Deserialize)]
struct WireChange {
    id: String,
    op: String,
    v: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    after: Option<Fields>,
}

/// A transaction as the fields of one entry.
pub fn encode_tx(tx: &Transaction) -> Vec<(String, String)> {
    let changes: Vec<WireChange> = tx
        .changes
        .iter()
        .map(|c| WireChange {
            id: c.id.clone(),
            op: match c.kind {
                ChangeKind::Upsert(_) => "u",
                ChangeKind::Delete => "d",
                ChangeKind::Truncate => "t",
            }
            .into(),
            v: c.version.to_string(),
            after: c.kind.fields().map(|f| (**f).clone()),
        })
        .collect();
    let ts = tx
        .committed_at
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    vec![
        ("v".into(), tx.position.to_string()),
        ("ts".into(), ts.to_string()),
        (
            "changes".into(),
            serde_json::to_string(&changes).unwrap_or_else(|_| "[]".into()),
        ),
    ]
}

/// An entry back into a transaction: the feed's own format, or a Debezium
/// entry versioned by its entry id.
///
/// ```
/// use prefetch::{Change, Transaction, Version};
/// use prefetch_cdc::pipeline::{decode_tx, encode_tx};
///
/// let v = Version::new(42, 1);
/// let tx = Transaction::new(v, vec![Change::delete("cat-001", v)]);
/// let entry: Vec<(String, Vec<u8>)> = encode_tx(&tx)
///     .into_iter()
///     .map(|(k, v)| (k, v.into_bytes()))
///     .collect();
/// let back = decode_tx(Version::new(1, 0), &entry, &Default::default()).unwrap();
/// assert_eq!(back.position, v);
/// assert_eq!(back.changes, tx.changes);
/// ```
pub fn decode_tx(
    entry_id: Version,
    entry: &[(String, Vec<u8>)],
    debezium: &DecodeOptions,
) -> Result<Transaction, DecodeError> {
    let field = |name: &str| entry.iter().find(|(k, _)| k == name).map(|(_, v)| v);
    let (Some(v), Some(changes)) = (field("v"), field("changes")) else {
        // A replayed Debezium entry carries its original version as `__v`.
        let (entry_id, entry) = match field("__v") {
            Some(v) => (
                String::from_utf8_lossy(v)
                    .parse::<Version>()
                    .map_err(|_| DecodeError("`__v` is not a version".into()))?,
                entry
                    .iter()
                    .filter(|(k, _)| k != "__v")
                    .cloned()
                    .collect::<Vec<_>>(),
            ),
            None => (entry_id, entry.to_vec()),
        };
        let entry = entry.as_slice();
        let change = match decode_entry(entry, debezium)? {
            Decoded::Upsert { id, fields } => Some(Change::upsert(id, fields, entry_id)),
            Decoded::Delete { id } => Some(Change::delete(id, entry_id)),
            Decoded::Truncate => Some(Change::truncate(entry_id)),
            Decoded::Skip(_) => None,
        };
        let mut tx = Transaction::new(entry_id, change.into_iter().collect());
        tx.committed_at =
            (UNIX_EPOCH + Duration::from_millis(entry_id.commit)).min(tx.committed_at);
        return Ok(tx);
    };
    let version = |s: &str| {
        s.parse::<Version>()
            .map_err(|_| DecodeError(format!("'{s}' is not a version")))
    };
    let position = version(&String::from_utf8_lossy(v))?;
    let wire: Vec<WireChange> = serde_json::from_slice(changes)
        .map_err(|e| DecodeError(format!("changes are not the feed's JSON: {e}")))?;
    let changes = wire
        .into_iter()
        .map(|c| {
            let v = version(&c.v)?;
            Ok(match (c.op.as_str(), c.after) {
                ("u", Some(after)) => Change::upsert(c.id, after, v),
                ("d", _) => Change::delete(c.id, v),
                ("t", _) => Change::truncate(v),
                (op, _) => return Err(DecodeError(format!("unknown op '{op}'"))),
            })
        })
        .collect::<Result<Vec<_>, DecodeError>>()?;
    let mut tx = Transaction::new(position, changes);
    if let Some(ms) = field("ts").and_then(|t| String::from_utf8_lossy(t).parse::<u64>().ok()) {
        tx.committed_at = (UNIX_EPOCH + Duration::from_millis(ms)).min(tx.committed_at);
    }
    Ok(tx)
}

// ---------------------------------------------------------------------------
// The lease

/// Who publishes: a key holding the holder's name and a token unique to
/// this `Lease`, with a TTL that the holder renews.
///
/// Two processes started under one name never both hold it. Every publish
/// checks it in the same atomic step, so a replica that lost the lease
/// cannot publish (fencing).
#[derive(Clone)]
pub struct Lease {
    conn: ConnectionManager,
    key: String,
    me: String,
    ttl: Duration,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("key", &self.key)
            .field("me", &self.me)
            .finish_non_exhaustive()
    }
}

const RENEW: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0";
const RELEASE: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";

impl Lease {
    /// The lease of `config`'s pipeline, for its consumer, with a fresh token.
    pub fn new(conn: ConnectionManager, config: &PipelineConfig) -> Self {
        Self {
            conn,
            key: config.leader_key(),
            me: format!("{}#{:016x}", config.consumer, token()),
            ttl: config.lease_ttl,
        }
    }

    /// What this lease writes into the key: `<consumer>#<token>`.
    pub fn holder_id(&self) -> &str {
        &self.me
    }

    fn ttl_ms(&self) -> u64 {
        self.ttl.as_millis().max(1) as u64
    }

    /// Takes the lease if nobody holds it (or renews it if we do).
    pub async fn acquire(&self) -> Result<bool> {
        let mut conn = self.conn.clone();
        let set: Option<String> = redis::cmd("SET")
            .arg(&self.key)
            .arg(&self.me)
            .arg("NX")
            .arg("PX")
            .arg(self.ttl_ms())
            .query_async(&mut conn)
            .await?;
        Ok(set.is_some() || self.renew().await?)
    }

    /// Extends the lease if we still hold it.
    pub async fn renew(&self) -> Result<bool> {
        let mut conn = self.conn.clone();
        let n: i64 = redis::Script::new(RENEW)
            .key(&self.key)
            .arg(&self.me)
            .arg(self.ttl_ms())
            .invoke_async(&mut conn)
            .await?;
        Ok(n == 1)
    }

    /// Gives the lease up if we hold it.
    pub async fn release(&self) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: i64 = redis::Script::new(RELEASE)
            .key(&self.key)
            .arg(&self.me)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Who holds it now.
    pub async fn holder(&self) -> Result<Option<String>> {
        let mut conn = self.conn.clone();
        Ok(redis::cmd("GET")
            .arg(&self.key)
            .query_async(&mut conn)
            .await?)
    }
}

/// 64 random bits, from the standard library's per-process hash seed, the
/// clock and the process id.
fn token() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.write_u32(std::process::id());
    h.finish()
}

/// The consumer name in a lease value (`<consumer>#<token>`).
///
/// ```
/// assert_eq!(prefetch_cdc::pipeline::holder_name("replica-a#00ff"), "replica-a");
/// ```
pub fn holder_name(value: &str) -> &str {
    value.rsplit_once('#').map_or(value, |(name, _)| name)
}

// ---------------------------------------------------------------------------
// Publishing

/// Publishes a batch only while `ARGV[1]` holds the lease (KEYS[1]); sets
/// the published position (KEYS[2]). KEYS[3..] are the entries' streams;
/// ARGV: holder, position, then per entry its field count and fields.
/// `SET KEYS[1] ARGV[1]` unless it already holds a larger number.
const RAISE: &str = "local c = tonumber(redis.call('GET', KEYS[1]) or '0') if tonumber(ARGV[1]) > c then redis.call('SET', KEYS[1], ARGV[1]) end return 1";

const PUBLISH: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('PFNOTLEADER the publishing lease is held by another replica')
end
local a = 3
for k = 3, #KEYS do
  local n = tonumber(ARGV[a])
  redis.call('XADD', KEYS[k], '*', unpack(ARGV, a + 1, a + n))
  a = a + n + 1
end
redis.call('SET', KEYS[2], ARGV[2])
return #KEYS - 2
"#;

/// A source the leader publishes from, made anew at every takeover (a
/// replication slot reader cannot be restarted once closed).
pub type SourceFactory = Arc<dyn Fn() -> BoxFuture<'static, Result<Arc<dyn Source>>> + Send + Sync>;

/// A replica's leader loop, until `cancel`: wait for the lease, publish.
///
/// While holding the lease it publishes and trims what every group
/// acknowledged; it starts over when the lease is lost. `leading` follows
/// whether this replica publishes right now.
pub async fn run_leader(
    conn: ConnectionManager,
    config: PipelineConfig,
    make_source: SourceFactory,
    leading: tokio::sync::watch::Sender<bool>,
    cancel: CancellationToken,
) {
    let lease = Lease::new(conn.clone(), &config);
    let every = config.lease_ttl / 3;
    while !cancel.is_cancelled() {
        match lease.acquire().await {
            Ok(true) => {
                tracing::info!(pipeline = %config.name, consumer = %config.consumer, "holding the publishing lease");
                leading.send_replace(true);
                let term = cancel.child_token();
                let publisher = publish_term(conn.clone(), &config, &make_source, &lease, &term);
                let keeper = keep_lease(&lease, every, &term);
                let trimmer = trim_loop(conn.clone(), &config, &term);
                tokio::pin!(publisher);
                let outcome = tokio::select! {
                    r = &mut publisher => r,
                    () = keeper => Err(Error::source_unavailable("the publishing lease was lost")),
                    () = trimmer => Ok(()),
                };
                term.cancel();
                leading.send_replace(false);
                if let Err(e) = &outcome {
                    tracing::warn!(error = %e, pipeline = %config.name, "stopped publishing");
                }
                if let Err(e) = lease.release().await {
                    tracing::warn!(error = %e, "cannot release the publishing lease");
                }
                if cancel.is_cancelled() {
                    break;
                }
                // Let another replica take over after a term ended (a
                // failure, a lost lease, a source that ended).
                sleep_or_cancel(config.lease_ttl, &cancel).await;
            }
            Ok(false) => sleep_or_cancel(every, &cancel).await,
            Err(e) => {
                tracing::warn!(error = %e, "cannot reach Redis for the publishing lease");
                sleep_or_cancel(every, &cancel).await;
            }
        }
    }
}

async fn sleep_or_cancel(d: Duration, cancel: &CancellationToken) {
    tokio::select! {
        () = tokio::time::sleep(d) => {}
        () = cancel.cancelled() => {}
    }
}

/// Renews the lease every `every`; returns when it is lost.
async fn keep_lease(lease: &Lease, every: Duration, term: &CancellationToken) {
    loop {
        sleep_or_cancel(every, term).await;
        if term.is_cancelled() {
            return;
        }
        match lease.renew().await {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                // Unreachable Redis: the lease runs out on its own; stop
                // before it does rather than publish without it.
                tracing::warn!(error = %e, "cannot renew the publishing lease");
                return;
            }
        }
    }
}

/// One term as leader: open the source where the feed stands and publish
/// until cancelled.
async fn publish_term(
    mut conn: ConnectionManager,
    config: &PipelineConfig,
    make_source: &SourceFactory,
    lease: &Lease,
    term: &CancellationToken,
) -> Result<()> {
    let source = make_source().await?;
    let published: Option<String> = redis::cmd("GET")
        .arg(config.published_key())
        .query_async(&mut conn)
        .await?;
    let published = published.and_then(|p| p.parse::<Version>().ok());
    let resumed = source.open(published).await?;
    if !resumed {
        // The source starts from a snapshot of its own: take it (a
        // replication slot holds it until read) and tell every replica
        // that the feed does not reach back past it. Also on the very first
        // start: a replica's snapshot taken before this point would miss
        // what committed in between.
        drop(source.snapshot().await?);
        let _: i64 = redis::cmd("INCR")
            .arg(config.resync_key())
            .query_async(&mut conn)
            .await?;
    }
    tracing::info!(pipeline = %config.name, ?published, resumed, "publishing");
    let mut resyncs = source.status().resync_requests;
    loop {
        let txs = tokio::select! {
            () = term.cancelled() => return Ok(()),
            txs = source.pull(1000) => txs?,
        };
        if txs.is_empty() {
            return Ok(()); // the source ended
        }
        let Some(position) = publish(&mut conn, config, &lease.me, &txs).await? else {
            continue;
        };
        // Durable in the feed: only now may the source forget it.
        source.ack(position).await?;
        let now = source.status().resync_requests;
        if now > resyncs {
            resyncs = now;
            let _: i64 = redis::cmd("INCR")
                .arg(config.resync_key())
                .query_async(&mut conn)
                .await?;
        }
    }
}

/// Appends `txs` to their partitions, fenced by the lease.
///
/// The entries and the newest position (as published) are written in one
/// atomic step that fails (`PFNOTLEADER`) unless `holder` holds the lease.
/// Returns the newest position (`None` for no transactions).
pub async fn publish(
    conn: &mut ConnectionManager,
    config: &PipelineConfig,
    holder: &str,
    txs: &[Arc<Transaction>],
) -> Result<Option<Version>> {
    let Some(position) = txs.iter().map(|tx| tx.position).max() else {
        return Ok(None);
    };
    let script = redis::Script::new(PUBLISH);
    let mut call = script.prepare_invoke();
    call.key(config.leader_key()).key(config.published_key());
    call.arg(holder).arg(position.to_string());
    for tx in txs {
        let fields = encode_tx(tx);
        call.key(config.stream(config.partition_of(tx.position)));
        call.arg(fields.len() * 2);
        for (k, v) in fields {
            call.arg(k).arg(v);
        }
    }
    let _: i64 = call.invoke_async(conn).await?;
    Ok(Some(position))
}

/// Trims every partition below what every group acknowledged.
async fn trim_loop(conn: ConnectionManager, config: &PipelineConfig, term: &CancellationToken) {
    loop {
        sleep_or_cancel(config.trim_every, term).await;
        if term.is_cancelled() {
            return;
        }
        for stream in config.streams() {
            if let Err(e) = trim(conn.clone(), &stream).await {
                tracing::warn!(error = %e, %stream, "cannot trim the feed");
            }
        }
    }
}

/// `XTRIM MINID` at the oldest entry some group still needs.
///
/// That is a group's oldest pending entry, or the last one it was given
/// when nothing is pending. Returns the entries removed. A stream without a
/// group is left alone.
pub async fn trim(mut conn: ConnectionManager, stream: &str) -> Result<u64> {
    let groups: Vec<BTreeMap<String, Value>> = match redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(&mut conn)
        .await
    {
        Ok(g) => g,
        Err(e) if e.to_string().contains("no such key") => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    let mut keep: Option<Version> = None;
    for g in &groups {
        let text = |k: &str| -> Option<String> {
            g.get(k)
                .cloned()
                .and_then(|v| String::from_redis_value(v).ok())
        };
        let (Some(name), Some(last)) = (text("name"), text("last-delivered-id")) else {
            continue;
        };
        let pending = g
            .get("pending")
            .cloned()
            .and_then(|v| u64::from_redis_value(v).ok())
            .unwrap_or(0);
        let mut needed = parse_entry_id(&last)?;
        if pending > 0 {
            // XPENDING summary: [count, smallest, greatest, consumers].
            let summary: (u64, Option<String>, Option<String>, Value) = redis::cmd("XPENDING")
                .arg(stream)
                .arg(&name)
                .query_async(&mut conn)
                .await?;
            if let Some(oldest) = summary.1 {
                needed = needed.min(parse_entry_id(&oldest)?);
            }
        }
        keep = Some(keep.map_or(needed, |k| k.min(needed)));
    }
    let Some(keep) = keep else {
        return Ok(0);
    };
    Ok(redis::cmd("XTRIM")
        .arg(stream)
        .arg("MINID")
        .arg(entry_id_text(keep))
        .query_async(&mut conn)
        .await?)
}

fn parse_entry_id(text: &str) -> Result<Version> {
    let bad = || Error::source_failed(format!("'{text}' is not a stream entry id"));
    let (ms, seq) = text.split_once('-').ok_or_else(bad)?;
    let seq = u32::try_from(seq.parse::<u64>().map_err(|_| bad())?).map_err(|_| bad())?;
    Ok(Version::new(ms.parse().map_err(|_| bad())?, seq))
}

fn entry_id_text(v: Version) -> String {
    format!("{}-{}", v.commit, v.ord)
}

// ---------------------------------------------------------------------------
// Applying from the group

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
    commands: ConnectionManager,
    blocking: ConnectionManager,
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
        client: redis::Client,
        inner: Arc<P>,
        config: PipelineConfig,
        events: EventBus,
    ) -> Result<Arc<Self>> {
        if config.consumer.is_empty() || config.name.is_empty() {
            return Err(Error::InvalidConfig(
                "a pipeline needs a name and a consumer name".into(),
            ));
        }
        let manager = |timeout: Duration| {
            let client = client.clone();
            async move {
                client
                    .get_connection_manager_with_config(
                        ConnectionManagerConfig::new().set_response_timeout(Some(timeout)),
                    )
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
                .arg(max.max(1))
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
    mut conn: ConnectionManager,
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
async fn last_id(conn: &mut ConnectionManager, stream: &str) -> Result<String> {
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

/// One stream entry: its id and its field/value pairs.
type Item = (Version, Vec<(String, Vec<u8>)>);

/// One stream entry with its id as Redis wrote it.
type RawItem = (String, Vec<(String, Vec<u8>)>);

/// `[[id, [field, value, …]], …]` as raw ids and field/value pairs.
fn parse_raw(items: Value) -> Result<Vec<RawItem>> {
    let items: Vec<(String, Option<Vec<Vec<u8>>>)> =
        FromRedisValue::from_redis_value(items).map_err(Error::source_failed)?;
    Ok(items
        .into_iter()
        .map(|(id, flat)| {
            let mut pairs = Vec::new();
            let mut it = flat.unwrap_or_default().into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                pairs.push((String::from_utf8_lossy(&k).into_owned(), v));
            }
            (id, pairs)
        })
        .collect())
}

/// Entries whose ids are versions, and the raw ids of those that are not
/// (a sequence number of 2^32 or more within one millisecond, only
/// possible with ids given explicitly).
fn split_ids(items: Vec<RawItem>) -> (Vec<Item>, Vec<RawItem>) {
    let mut good = Vec::with_capacity(items.len());
    let mut bad = Vec::new();
    for (raw, fields) in items {
        match parse_entry_id(&raw) {
            Ok(id) => good.push((id, fields)),
            Err(_) => bad.push((raw, fields)),
        }
    }
    (good, bad)
}

const BAD_ID: &str = "its entry id is not a version (sequence numbers stop at 2^32 - 1)";

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
    mut conn: ConnectionManager,
    config: &PipelineConfig,
    max: usize,
) -> Result<usize> {
    let items: Value = redis::cmd("XRANGE")
        .arg(config.dlq_key())
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(max.max(1))
        .query_async(&mut conn)
        .await?;
    let mut replayed = 0;
    for (id, fields) in parse_raw(items)? {
        let field = |name: &str| {
            fields
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        };
        // Debezium's format is versioned by the entry id: keep the original.
        let original = (field("v").is_none())
            .then(|| {
                field("__v").or_else(|| {
                    field("__id").and_then(|i| parse_entry_id(&i).ok().map(|v| v.to_string()))
                })
            })
            .flatten();
        let origin = fields
            .iter()
            .find(|(k, _)| k == "__stream")
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
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

/// Dead letters held now, newest last: (entry id, reason).
pub async fn dead_letters(
    mut conn: ConnectionManager,
    config: &PipelineConfig,
    max: usize,
) -> Result<Vec<(String, String)>> {
    let items: Value = redis::cmd("XRANGE")
        .arg(config.dlq_key())
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(max.max(1))
        .query_async(&mut conn)
        .await?;
    Ok(parse_raw(items)?
        .into_iter()
        .map(|(id, fields)| {
            let why = fields
                .iter()
                .find(|(k, _)| k == "__reason")
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default();
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

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;

    #[test]
    fn transactions_round_trip_through_entries() {
        let v = Version::new(u64::MAX - 3, 2);
        let fields: Fields = [("id", "a"), ("name", "x")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let tx = Transaction::new(
            v,
            vec![
                Change::upsert("a", fields, Version::new(u64::MAX - 3, 0)),
                Change::delete("b", Version::new(u64::MAX - 3, 1)),
                Change::truncate(v),
            ],
        );
        let entry: Vec<(String, Vec<u8>)> = encode_tx(&tx)
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes()))
            .collect();
        let back = decode_tx(Version::ZERO, &entry, &DecodeOptions::default()).unwrap();
        assert_eq!(back.position, tx.position);
        assert_eq!(back.changes, tx.changes);
        let ms = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_millis();
        assert_eq!(ms(back.committed_at), ms(tx.committed_at));
    }

    #[test]
    fn a_debezium_entry_in_the_group_is_versioned_by_its_id() {
        let entry = vec![(
            r#"{"id":"a"}"#.to_owned(),
            br#"{"after":{"id":"a","n":1},"op":"c"}"#.to_vec(),
        )];
        let tx = decode_tx(
            Version::new(1_700_000_000_000, 3),
            &entry,
            &DecodeOptions::default(),
        )
        .unwrap();
        assert_eq!(tx.position, Version::new(1_700_000_000_000, 3));
        assert_eq!(tx.changes[0].version, tx.position);
    }

    #[test]
    fn broken_entries_say_why() {
        let e = |fields: &[(&str, &str)]| {
            let entry: Vec<(String, Vec<u8>)> = fields
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
                .collect();
            decode_tx(Version::ZERO, &entry, &DecodeOptions::default())
                .unwrap_err()
                .0
        };
        assert!(e(&[("v", "x"), ("changes", "[]")]).contains("not a version"));
        assert!(e(&[("v", "0:1:0"), ("changes", "{")]).contains("not the feed's JSON"));
        assert!(
            e(&[
                ("v", "0:1:0"),
                ("changes", r#"[{"id":"a","op":"q","v":"0:1:0"}]"#)
            ])
            .contains("unknown op")
        );
    }

    #[test]
    fn partitions_spread_and_stay_in_range() {
        let mut c = PipelineConfig::new("p", "r");
        c.partitions = 3;
        let used: std::collections::BTreeSet<u16> = (0..30)
            .map(|i| c.partition_of(Version::new(i, 0)))
            .collect();
        assert_eq!(used.into_iter().collect::<Vec<_>>(), vec![0, 1, 2]);
        c.partitions = 0;
        assert_eq!(c.partition_of(Version::new(5, 0)), 0);
        // PostgreSQL commit LSNs are 8-byte aligned: all four partitions
        // still get their share.
        c.partitions = 4;
        let mut counts = [0usize; 4];
        for i in 0..400u64 {
            counts[usize::from(c.partition_of(Version::new(0x0100_0000 + i * 8 * 13, 0)))] += 1;
        }
        assert!(counts.iter().all(|&n| n > 60), "{counts:?}");
    }
}
