//! A Redis **prefetch cache**: the whole working set is loaded into Redis
//! before the first request, every read is served by Redis alone, and a sync
//! worker carries each change of the primary into Redis within milliseconds.
//!
//! # The three paths
//!
//! 1. **Prefetch.** [`PrefetchCache::bulk_load`] writes every record in one
//!    pipelined round trip: per record `DEL` + `HSET` + `EXPIRE`.
//! 2. **Read.** [`PrefetchCache::get`] is one `HGETALL`. A miss is reported,
//!    never repaired from the primary: there is no code path from a read to
//!    the primary, so reads cannot load it.
//! 3. **Sync.** Every mutation of the [`MockPrimary`] emits a [`Change`]
//!    under its table lock (so events are in mutation order) into an
//!    unbounded [`ChangeFeed`]. The [`SyncWorker`] applies whatever is queued
//!    in one atomic `MULTI`/`EXEC` round trip as soon as it arrives; failures
//!    are retried with backoff and never dropped. The TTL is a safety net
//!    that bounds memory if sync stops, not a freshness mechanism.
//!
//! # Layout
//!
//! | module | what |
//! |---|---|
//! | `model` | [`Record`], [`Change`], input validation |
//! | `keys` | `{prefix}{id}` naming and glob escaping for `SCAN MATCH` |
//! | `cache` | [`PrefetchCache`]: bulk load, get, apply, invalidate, clear |
//! | `stats` | lock-free counters and a lag histogram → [`Stats`] |
//! | `primary` | [`MockPrimary`], the embedded source of truth |
//! | `sync` | [`SyncWorker`] and its [`SyncHandle`] (pause, resume, stop) |
//! | `events` | [`EventBus`]: a lossy feed of what happened, for dashboards |
//! | `engine` | [`Engine`]: all of the above plus the admin operations |
//!
//! The crate knows nothing about HTTP, Leptos or WebAssembly; any tokio
//! service can embed it.
//!
//! # Example
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use prefetch::{Engine, EngineConfig};
//! use std::time::Duration;
//!
//! let client = redis::Client::open("redis://127.0.0.1:6379")?;
//! let conn = client.get_connection_manager().await?;
//! let (engine, report) = Engine::start(conn, EngineConfig::default()).await?;
//! println!("prefetched {} records in {:?}", report.loaded, report.elapsed);
//!
//! let read = engine.read("cat-001").await?;
//! assert!(read.lookup.hit);
//!
//! engine.update_field("cat-001", "name", "Drinks")?; // primary write
//! engine.settle(Duration::from_secs(1)).await?;        // worker caught up
//! engine.shutdown(Duration::from_secs(2)).await?;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod cache;
mod engine;
mod error;
mod events;
mod keys;
mod model;
mod primary;
mod stats;
mod sync;
#[cfg(feature = "test-support")]
pub mod testing;

pub use cache::{
    BatchOutcome, CacheConfig, CachedEntry, DEFAULT_PREFIX, DEFAULT_TTL, Lookup, PrefetchCache, Ttl,
};
pub use engine::{Engine, EngineConfig, EngineStats, PrefetchReport, ReadResult, Snapshot};
pub use error::{Error, Result};
pub use events::{AppliedWrite, Event, EventBus};
pub use keys::{KeySpace, escape_glob};
pub use model::{
    Change, ChangeKind, Fields, ID_FIELD, MAX_FIELD_LEN, MAX_ID_LEN, MAX_VALUE_LEN, Record,
    validate_field, validate_id,
};
pub use primary::{ChangeFeed, DEFAULT_READ_LATENCY, MockPrimary, seed_records};
pub use stats::Stats;
pub use sync::{PauseGuard, PauseId, SyncConfig, SyncHandle, SyncWorker, WorkerState};
