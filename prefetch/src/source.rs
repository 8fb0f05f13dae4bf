//! The seam to the source of truth: [`Source`], what the engine needs from
//! any primary (a consistent snapshot with its version, committed
//! transactions in order, acknowledgements, a status). What the demo's API
//! and dashboard need on top (inspecting and editing it) is
//! [`Primary`](crate::Primary), held beside the engine, never by it.
//!
//! The methods return boxed futures so that a source can be used behind
//! `dyn Source` (the server picks one at run time) as well as statically.
//!
//! # A source of your own
//!
//! A change-data-capture adapter pushes transactions into a
//! [`ChangeSender`](crate::ChangeSender) from wherever it reads them, and
//! lets the engine pull them from the matching
//! [`ChangeFeed`](crate::ChangeFeed):
//!
//! ```no_run
//! use std::sync::Arc;
//! use futures::FutureExt;
//! use prefetch::{
//!     BoxFuture, ChangeFeed, ChangeSender, Engine, EngineConfig, EventBus, Record, Result,
//!     Source, SourceSnapshot, SourceStatus, Transaction, Version, feed,
//! };
//!
//! /// Reference data from a file, with changes pushed by a watcher.
//! struct FileSource {
//!     records: Vec<Record>,
//!     version: Version,
//!     feed: ChangeFeed,
//! }
//!
//! impl Source for FileSource {
//!     fn id(&self) -> String {
//!         "file:/etc/categories.json".into()
//!     }
//!     fn open(&self, applied: Option<Version>) -> BoxFuture<'_, Result<bool>> {
//!         // Resume right after `applied` when the feed still has it.
//!         let resumed = applied.is_some() && self.feed.rewind(applied);
//!         async move { Ok(resumed) }.boxed()
//!     }
//!     fn snapshot(&self) -> BoxFuture<'_, Result<SourceSnapshot>> {
//!         let snap = SourceSnapshot::from_records(self.version, self.records.clone());
//!         async move { Ok(snap) }.boxed()
//!     }
//!     fn pull(&self, max: usize) -> BoxFuture<'_, Result<Vec<Arc<Transaction>>>> {
//!         async move { Ok(self.feed.pull(max).await) }.boxed()
//!     }
//!     fn ack(&self, upto: Version) -> BoxFuture<'_, Result<()>> {
//!         self.feed.ack(upto);
//!         async { Ok(()) }.boxed()
//!     }
//!     fn status(&self) -> SourceStatus {
//!         SourceStatus::connected("file", self.feed.head(), self.feed.backlog())
//!     }
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let events = EventBus::default();
//! let (sender, feed): (ChangeSender, ChangeFeed) = feed::channel(events.clone());
//! let source = Arc::new(FileSource { records: vec![], version: Version::new(1, 0), feed });
//! let conn = redis::Client::open("redis://127.0.0.1/")?.get_connection_manager().await?;
//! let (engine, _report) = Engine::start(conn, source, events, EngineConfig::default()).await?;
//! // …the watcher calls `sender.send(Transaction::new(…))` on every change.
//! # drop((engine, sender)); Ok(()) }
//! ```

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
pub use futures::future::BoxFuture;
pub use futures::stream::BoxStream;

use crate::error::Result;
use crate::model::{Record, Transaction, Version};

/// A consistent snapshot of every record, as of `version`, read in chunks
/// so that a large table never has to fit in memory at once.
pub struct SourceSnapshot {
    /// Every change up to this version is in the snapshot, none after it.
    pub version: Version,
    /// How many records it holds, when the source knows before sending them
    /// (the engine checks them against Redis's memory budget first).
    pub rows: Option<u64>,
    /// The records, chunk by chunk.
    pub chunks: BoxStream<'static, Result<Vec<Record>>>,
}

impl SourceSnapshot {
    /// A snapshot of records already in memory.
    pub fn from_records(version: Version, records: Vec<Record>) -> Self {
        Self {
            version,
            rows: Some(records.len() as u64),
            chunks: futures::stream::iter([Ok(records)]).boxed(),
        }
    }
}

impl std::fmt::Debug for SourceSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceSnapshot")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// How a source is doing, for stats, metrics and the dashboard header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceStatus {
    /// What kind of source this is (`mock`, `postgres`, …).
    pub kind: String,
    /// Whether the source is reachable right now.
    pub connected: bool,
    /// The newest position the source has produced.
    pub head: Option<Version>,
    /// Changes produced but not yet acknowledged.
    pub backlog: usize,
    /// Labelled facts worth showing (server version, slot, confirmed position…).
    pub details: Vec<(String, String)>,
    /// How often the source asked for a fresh snapshot (its schema changed,
    /// its stream restarted somewhere the engine cannot follow). The engine
    /// re-prefetches whenever this grows.
    pub resync_requests: u64,
}

impl SourceStatus {
    /// A connected source of `kind`.
    pub fn connected(kind: &str, head: Option<Version>, backlog: usize) -> Self {
        Self {
            kind: kind.to_owned(),
            connected: true,
            head,
            backlog,
            details: Vec::new(),
            resync_requests: 0,
        }
    }
}

/// A source of truth the cache mirrors.
///
/// The engine calls [`open`](Self::open) once at start, [`snapshot`](Self::snapshot)
/// whenever it (re-)prefetches, and [`pull`](Self::pull) / [`ack`](Self::ack)
/// from its sync worker: pull, apply to Redis, acknowledge. Every
/// transaction pulled after the engine stored position `p` in Redis must
/// have a position above `p` or be harmless to apply again: writes are
/// version-guarded, so duplicates and replays change nothing.
pub trait Source: Send + Sync + 'static {
    /// Identifies the history the versions belong to (a database and its
    /// replication slot, a stream, a mock instance). Redis state written for
    /// another id is discarded at start, because versions from two
    /// histories cannot be compared.
    fn id(&self) -> String;

    /// Prepares the change stream. `applied` is the position Redis holds for
    /// this source, if any: returns `true` when the stream will deliver
    /// every transaction after it (no snapshot needed), `false` when the
    /// engine must load a snapshot.
    fn open(&self, applied: Option<Version>) -> BoxFuture<'_, Result<bool>>;

    /// A consistent snapshot. Changes after its version will still be
    /// pulled; changes up to it may be pulled too (they are then refused as
    /// stale).
    fn snapshot(&self) -> BoxFuture<'_, Result<SourceSnapshot>>;

    /// A consistent snapshot of one of the source's tables (`schema.name`,
    /// as [`Engine::resnapshot`](crate::Engine::resnapshot) is given it),
    /// with the same promise as [`snapshot`](Self::snapshot). A source of
    /// one table need not implement it: by default it refuses
    /// ([`Error::InvalidConfig`](crate::Error::InvalidConfig)).
    fn snapshot_of(&self, table: &str) -> BoxFuture<'_, Result<SourceSnapshot>> {
        let err = crate::Error::InvalidConfig(format!(
            "this source cannot snapshot one table ('{table}'); re-prefetch everything instead"
        ));
        Box::pin(async move { Err(err) })
    }

    /// Waits for at least one committed transaction and returns up to about
    /// `max_changes` changes of them, whole transactions, in commit order.
    /// An empty list means the source has ended. Must be cancel-safe.
    fn pull(&self, max_changes: usize) -> BoxFuture<'_, Result<Vec<Arc<Transaction>>>>;

    /// Everything up to `upto` is durable in Redis; the source may forget it.
    fn ack(&self, upto: Version) -> BoxFuture<'_, Result<()>>;

    /// The source's current status.
    fn status(&self) -> SourceStatus;

    /// A position in the source's own notation, for readers who wait for
    /// one (the mock: its sequence number; PostgreSQL: an LSN such as
    /// `0/16B3748`). By default the version's `hi:lo:ord`.
    fn position_text(&self, position: Version) -> String {
        position.to_string()
    }

    /// A position written in [`position_text`](Self::position_text)'s
    /// notation (`hi:lo:ord` is taken too); `None` when it is not one.
    fn parse_position(&self, text: &str) -> Option<Version> {
        text.trim().parse().ok()
    }

    /// The newest change of `id` the source has received but the cache has
    /// not yet acknowledged (what makes a read of `id` stale). `None` by
    /// default: a source that cannot tell counts no read as stale.
    fn pending(&self, id: &str) -> Option<crate::PendingChange> {
        let _ = id;
        None
    }

    /// Reads one record straight from the source, to restore a key the
    /// cache lost. `Ok(None)` (the default): this source cannot read one
    /// record, and lost keys wait for the next reconciliation.
    fn fetch<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Fetched>>> {
        let _ = id;
        Box::pin(async { Ok(None) })
    }
}

/// One record read straight from the source ([`Source::fetch`]), with the
/// two positions that make writing it back safe.
///
/// The engine waits until its applied position reaches
/// [`wait_for`](Self::wait_for), then writes `record` at
/// [`version`](Self::version) only where Redis still holds nothing for it.
/// Every change `record` lacks must either be applied by then (it then
/// holds the key, and the write leaves it alone) or come with a version
/// above `version` (it then overwrites the restored copy).
#[derive(Clone, Debug, PartialEq)]
pub struct Fetched {
    /// The record (`None`: the source does not have it).
    pub record: Option<crate::Record>,
    /// The applied position to wait for before writing.
    pub wait_for: Version,
    /// The version to write `record` at: at or above every change it
    /// contains.
    pub version: Version,
}

impl Fetched {
    /// The source does not have the record.
    pub fn absent() -> Self {
        Self {
            record: None,
            wait_for: Version::ZERO,
            version: Version::ZERO,
        }
    }
}

/// When a transaction or heartbeat committed, in milliseconds behind now.
pub(crate) fn age(at: SystemTime) -> Duration {
    SystemTime::now().duration_since(at).unwrap_or_default()
}
