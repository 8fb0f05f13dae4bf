//! PostgreSQL as the source of truth of a [`prefetch`] cache: a table kept
//! in Redis by logical replication, with the built-in `pgoutput` plugin.
//!
//! [`PgSource`] implements [`prefetch::Source`]; beside it, [`PgEditor`]
//! implements [`prefetch::Primary`] (so the demo's API and dashboard can
//! inspect and edit the table with SQL):
//!
//! - **Initial load** from the replication slot's own snapshot: the slot is
//!   created with `USE_SNAPSHOT` inside a `REPEATABLE READ` transaction, so
//!   the table is read exactly as of the slot's consistent point and the
//!   stream starts right after it.
//! - **Versions**: a change is versioned by its transaction's commit LSN and
//!   its place in the transaction; a snapshot by its consistent point.
//! - **Acknowledged after the write**: the slot's confirmed position moves
//!   only once Redis holds the transaction, so after any crash PostgreSQL
//!   resends from what Redis has (duplicates are refused by the guard).
//! - **Heartbeats** (`pg_logical_emit_message`) every second keep the slot
//!   moving on an idle table and measure lag.
//! - **Edge cases**: `TRUNCATE` (a sweep at its version), NULLs (absent
//!   fields), composite keys (ids joined with `:`), unchanged TOAST values
//!   (read back), added or dropped columns (a fresh snapshot), a dropped
//!   slot (recreated, then a fresh snapshot), a long transaction blocking
//!   slot creation (a bounded wait and an error naming it).
//!
//! Replication goes through [`pg_walstream`] with its `libpq` backend (the
//! crate's default TLS stack does not resolve against every registry), the
//! rest through `tokio-postgres`. The `launcher` feature adds a private
//! PostgreSQL for demos and tests.
//!
//! # Layout
//!
//! | module | what |
//! |---|---|
//! | `error` | [`PgError`] |
//! | `table` | a table's columns and key, rows as records, SQL quoting |
//! | `json` | a row as a JSON document, typed by its columns |
//! | `mapping` | how a declared table's rows become records, checked against the table |
//! | `tables` | the tables file: which tables, their keys, columns, names, filters |
//! | `shared` | what the source, its reader, heartbeat and editor share |
//! | `tls` | the SQL connection's TLS, from the URL's libpq parameters (`sslmode`, `sslrootcert`, `sslcert`, `sslkey`) |
//! | `sql` | catalog queries, the demo table, the publication |
//! | `slot` | the replication slot: found or created, temporary slots |
//! | `snapshot` | an exact snapshot through a slot's `USE_SNAPSHOT` |
//! | `decode` | the transaction assembler: one method per `pgoutput` message |
//! | `heartbeat` | messages through the slot that keep it moving |
//! | `wal_reader` | the replication session feeding the assembler |
//! | `editor` | [`PgEditor`]: the demo's SQL view and edits |
//! | `reload` | a tables file read again: tables added and removed while streaming |
//! | `source` | [`PgSource`]: the [`prefetch::Source`] |
//! | `launcher` | a private PostgreSQL (feature `launcher`) |
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use prefetch::{Engine, EngineConfig, EventBus};
//! use prefetch_pg::{PgConfig, PgSource};
//!
//! let events = EventBus::default();
//! let source = PgSource::connect(
//!     PgConfig::new("postgres://postgres@127.0.0.1:5432/shop", "categories"),
//!     events.clone(),
//! )
//! .await?;
//! let conn = redis::Client::open("redis://127.0.0.1/")?.get_connection_manager().await?;
//! let (engine, report) = Engine::start(conn, source, events, EngineConfig::default()).await?;
//! println!("loaded {} rows", report.loaded);
//! # drop(engine); Ok(()) }
//! ```

#![warn(missing_docs)]

mod error;
mod json;
mod mapping;
pub mod table;
pub mod tables;

mod shared;
mod sql;
mod tls;

mod slot;
mod snapshot;

mod decode;
mod heartbeat;
mod wal_reader;

mod editor;
mod reload;
mod source;

#[cfg(feature = "launcher")]
pub mod launcher;

pub use editor::PgEditor;
pub use error::PgError;
pub use heartbeat::HEARTBEAT_PREFIX;
pub use reload::TablesChange;
pub use source::{PgConfig, PgSource};
pub use sql::run_script;
