//! What real change-data-capture tools write into Redis, as the source of
//! truth of a [`prefetch`] cache.
//!
//! Debezium Server's Redis sink writes one stream per table
//! (`<topic.prefix>.<schema>.<table>`), one entry per row change; Redis
//! Data Integration's collector *is* that sink, configured to write
//! `data:<topic.prefix>.<schema>.<table>`. [`StreamSource`] follows one
//! such stream and implements [`prefetch::Source`], so the cache mirrors
//! the table with versioned applies, self-healing and re-prefetch, while
//! the connector stays exactly as it is deployed. [`decode_entry`] reads
//! every shape the sink writes (see [`decode`] for the list).
//!
//! Several replicas sharing one durable feed are the `prefetch-pipeline`
//! crate's business; it reads these formats too.
//!
//! # Layout
//!
//! | module | what |
//! |---|---|
//! | `decode` | every entry shape the sink writes, to changes |
//! | `config` | [`StreamConfig`]: where the stream is, how to read it |
//! | `history` | a stream's history: entry ids as versions, what is still held |
//! | `source` | [`StreamSource`]: one stream as a [`prefetch::Source`] |
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use prefetch::{Engine, EngineConfig, EventBus};
//! use prefetch_cdc::{StreamConfig, StreamSource};
//!
//! let events = EventBus::default();
//! let redis = redis::Client::open("redis://127.0.0.1/")?;
//! let source = StreamSource::connect(
//!     redis.clone(),
//!     StreamConfig::rdi("shop", "public", "categories"),
//!     events.clone(),
//! )
//! .await?;
//! let conn = redis.get_connection_manager().await?;
//! let (engine, report) = Engine::start(conn, source, events, EngineConfig::default()).await?;
//! println!("folded {} rows out of the stream", report.loaded);
//! # drop(engine); Ok(()) }
//! ```

#![warn(missing_docs)]

mod config;
pub mod decode;
mod history;
mod source;

pub use config::StreamConfig;

/// The Redis commands a [`StreamSource`] sends to the Redis holding its
/// stream; it only reads the stream's key.
pub const REDIS_COMMANDS: &[&str] = &["xread", "xrange", "xinfo|stream"];
pub use decode::{DecodeError, DecodeOptions, Decoded, StreamTable, decode_entry};
pub use source::{HistoryLost, StreamSource};
