//! [`Primary`]: what the demo's API and dashboard need from the source of
//! truth besides what the engine needs ([`Source`](crate::Source)): a view
//! of every record, the reference API's mutations, and the reads counter.
//!
//! The engine never calls it. The server holds a primary beside the engine:
//! the mock's own, PostgreSQL's SQL editor, or a read-only view of a change
//! stream (whose mutations are refused with [`Error::ReadOnly`](crate::Error::ReadOnly)).

use std::time::Duration;

use crate::error::Result;
use crate::model::Record;
use crate::source::BoxFuture;

/// A source the demo can inspect and edit: what the reference API's
/// mutations and the dashboard's primary column need.
pub trait Primary: Send + Sync + 'static {
    /// Every record, sorted by id: the dashboard's view of the source
    /// (not counted as a primary read).
    fn records(&self) -> BoxFuture<'_, Result<Vec<Record>>>;

    /// Sets one field of an existing record; returns its new state.
    fn update_field<'a>(
        &'a self,
        id: &'a str,
        field: &'a str,
        value: &'a str,
    ) -> BoxFuture<'a, Result<Record>>;

    /// Inserts a new record; returns it as stored.
    fn add(&self, record: Record) -> BoxFuture<'_, Result<Record>>;

    /// Removes a record; returns its (trimmed) id.
    fn delete<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<String>>;

    /// Counted reads (snapshots) since the last reset.
    fn reads(&self) -> u64;

    /// Zeroes the read counter.
    fn reset_reads(&self);

    /// How long a read of the source takes (configured for the mock,
    /// measured for a database).
    fn read_latency(&self) -> Duration;
}
