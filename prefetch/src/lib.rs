//! A Redis **prefetch cache**: the whole working set is loaded into Redis
//! before the first request, every read is served by Redis alone, and a sync
//! worker carries each change of the source of truth into Redis within
//! milliseconds, through a version guard that nothing can regress.
//!
//! # The three paths
//!
//! 1. **Prefetch.** A consistent [snapshot](Source::snapshot) of the source,
//!    with the version it reflects, is written to Redis in pipelined round
//!    trips. A re-prefetch writes through the version guard while the worker
//!    keeps running, then sweeps keys the snapshot no longer has: no pause,
//!    no miss.
//! 2. **Read.** [`PrefetchCache::get`] is one `HGETALL`. A miss is reported,
//!    never repaired from the source: there is no code path from a read to
//!    the source.
//! 3. **Sync.** The [sync worker](SyncHandle) pulls committed
//!    [`Transaction`]s from the [`Source`], applies each batch in one atomic
//!    call of a Redis FUNCTION that writes a key only when the change is
//!    newer than the [`Version`] stored with it (deletes leave tombstones),
//!    stores the applied position in the same step, and only then
//!    acknowledges to the source. Failures are retried with backoff and never
//!    dropped; duplicates, replays and reorders change nothing.
//!
//! The position lives in Redis with the data, so a Redis that lost its data
//! (restarted empty, flushed, failed over to a replica that was behind) is
//! noticed within [`EngineConfig::heal_interval`], or at the next write,
//! and refilled by itself.
//!
//! # Layout
//!
//! | module | what |
//! |---|---|
//! | `error` | [`Error`] |
//! | `model` | [`Record`], [`Version`], [`Change`], [`Transaction`], validation |
//! | `bloom` | sets of ids in a few bytes each: exact when small, Bloom filters when large |
//! | `slots` | Redis Cluster hash slots: hash tags, CRC16, a tag per slot |
//! | `keys` | key naming, bookkeeping keys, tombstone keys, glob escaping; tables that come and go |
//! | `acl` | [`AclRule`]: the Redis commands and keys a cache needs, for a least-privilege user |
//! | `template` | [`KeyTemplate`]: a row's key from its columns, escaped, and back |
//! | `stats` | lock-free counters and a lag histogram → [`Stats`] |
//! | `events` | [`EventBus`]: a lossy feed of what happened, for dashboards |
//! | `feed` | [`ChangeSender`] / [`ChangeFeed`]: the push API for any CDC adapter |
//! | `source` | the [`Source`] trait: what the engine needs from a source of truth |
//! | `primary` | the [`Primary`] trait: what a demo needs beside it (view, edits) |
//! | `guard` | the version guard: its Redis FUNCTION library and the storage format |
//! | `cluster` | one node or a Redis Cluster: [`Connection`], slot routing |
//! | `cache` | [`PrefetchCache`]: reads, guarded writes, loads and sweeps, state |
//! | `sync` | the sync worker's [`SyncHandle`] (pause, resume, stop) |
//! | `engine` | [`Engine`]: all of the above, re-prefetch, self-healing, reconciliation |
//! | `faults` | fault injection as wrappers: [`FaultySource`], [`FaultyConnection`] |
//! | `mock` | [`MockPrimary`], the embedded source of truth (feature `mock`) |
//! | `launcher` | a private `redis-server` (feature `launcher`) |
//! | `testing` | real servers and engines for tests (feature `test-support`) |
//!
//! Each module uses only the ones above it (`scripts/structure.py` checks
//! that the graph has no cycle). The crate knows nothing about HTTP,
//! Leptos, WebAssembly or any database; any tokio service can embed it and
//! plug in a source of its own (see the [`Source`] docs).
//!
//! # Example
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use prefetch::{Engine, EngineConfig, EventBus, MockPrimary};
//!
//! let conn = redis::Client::open("redis://127.0.0.1:6379")?
//!     .get_connection_manager()
//!     .await?;
//! let events = EventBus::default();
//! let primary = Arc::new(MockPrimary::new(Duration::from_millis(80), events.clone()));
//! let (engine, report) = Engine::start(conn, primary, events, EngineConfig::default()).await?;
//! println!("prefetched {} records in {:?}", report.loaded, report.elapsed);
//!
//! let read = engine.read("cat-001").await?;
//! assert!(read.lookup.hit());
//!
//! engine.source().update_field("cat-001", "name", "Drinks")?; // a primary write
//! engine.settle(Duration::from_secs(1)).await?;                 // worker caught up
//! engine.shutdown(Duration::from_secs(2)).await?;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod error;
mod model;

mod bloom;
mod keys;
mod slots;

mod acl;
mod stats;
mod template;

mod events;
pub mod feed;

mod primary;
mod source;

mod guard;

mod cluster;

mod cache;
mod sync;

mod engine;

mod faults;

#[cfg(feature = "mock")]
mod mock;

#[cfg(feature = "launcher")]
pub mod launcher;
#[cfg(feature = "test-support")]
pub mod testing;

pub use acl::{AclRule, CACHE_COMMANDS, CLUSTER_COMMANDS, WAIT_COMMANDS, cache_key_patterns};
pub use cache::{
    BatchOutcome, CacheConfig, CacheState, CachedEntry, DEFAULT_MEMBERSHIP_EXACT_LIMIT,
    DEFAULT_PREFIX, DEFAULT_TOMBSTONE_TTL, DEFAULT_TTL, Lookup, MembershipStatus, MemoryInfo,
    PrefetchCache, ScanCursor, ScanPage, SnapshotWindow, Ttl,
};
pub use cluster::{ClusterNode, Connection, Redis, RedisClient, RedisNode, SlotMap};
pub use engine::{
    Connections, Engine, EngineConfig, EngineStats, MemoryCheck, MemoryStatus, MissKind,
    PrefetchReport, ReadResult, RenewalStatus, RestoreLost,
};
pub use error::{BoxError, Error, Result};
pub use events::{AppliedWrite, Event, EventBus, PrefetchReason, WriteOutcome};
pub use faults::{Fault, FaultKind, Faults, FaultyConnection, FaultySource, PendingFaults};
pub use feed::{ChangeFeed, ChangeSender, PendingChange};
pub use guard::{JSON_FIELD, content_hash, hash_text};
pub use keys::{
    KeySpace, RESERVED_KEY_PREFIX, SLOTS, Tombstone, escape_glob, hash_tag, slot, slot_tag,
};
#[cfg(feature = "mock")]
pub use mock::{DEFAULT_READ_LATENCY, MockPrimary, Mutation, seed_records};
pub use model::{
    Change, ChangeKind, DriftTotals, Fields, ID_FIELD, MAX_FIELD_LEN, MAX_ID_LEN, MAX_VALUE_LEN,
    Op, ParseVersionError, REPORT_IDS, RESERVED_FIELD_PREFIX, ReconcileReport, Record, Transaction,
    Version, WorkerState, decode_key, encode_key, validate_field, validate_id,
};
pub use primary::{Primary, RowCount};
pub use source::{BoxFuture, BoxStream, Fetched, Source, SourceSnapshot, SourceStatus};
pub use stats::{HistogramSnapshot, Histograms, LagSummary, Stats, TableStats, VISIBLE_WITHIN};
pub use sync::{PauseGuard, SyncConfig, SyncHandle};
pub use template::{KeyTemplate, Piece, escape_key_value, unescape_key_value};
