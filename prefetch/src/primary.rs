//! [`Primary`]: what the demo's API and dashboard need from the source of
//! truth besides what the engine needs ([`Source`](crate::Source)): a view
//! of every record, the reference API's mutations, and the reads counter.
//!
//! The engine never calls it. The server holds a primary beside the engine:
//! the mock's own, PostgreSQL's SQL editor, or a read-only view of a change
//! stream (whose mutations are refused with [`Error::ReadOnly`](crate::Error::ReadOnly)).

use std::time::Duration;

use crate::error::Result;
use crate::model::{Record, Version};
use crate::source::BoxFuture;

/// How many records a primary holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RowCount {
    /// The count.
    pub rows: u64,
    /// Whether it is exact (false: an estimate, such as PostgreSQL's
    /// planner statistics for a large table).
    pub exact: bool,
}

/// A source the demo can inspect and edit: what the reference API's
/// mutations and the dashboard's primary column need.
///
/// The views are paged: no call has to hold the whole table.
pub trait Primary: Send + Sync + 'static {
    /// At most `limit` records whose id sorts after `after` (from the first
    /// when `None`), in the primary's key order (not counted as primary
    /// reads: the dashboard's view of the source).
    fn records_after<'a>(
        &'a self,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Record>>>;

    /// The records with these ids that exist, in the primary's key order.
    fn records_for<'a>(&'a self, ids: &'a [String]) -> BoxFuture<'a, Result<Vec<Record>>>;

    /// How many records it holds.
    fn count(&self) -> BoxFuture<'_, Result<RowCount>>;

    /// Every record, in key order: for small tables and tests (a large one
    /// is read a page at a time with [`records_after`](Self::records_after)).
    fn records(&self) -> BoxFuture<'_, Result<Vec<Record>>> {
        self.records_after(None, usize::MAX)
    }

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

    /// Asked right after a mutation returned: a position at or after its
    /// commit, for a reader who waits until the cache has applied it
    /// ([`Engine::wait_applied`](crate::Engine::wait_applied)). `None`
    /// when the primary cannot say (the default).
    fn commit_position(&self) -> BoxFuture<'_, Result<Option<Version>>> {
        Box::pin(async { Ok(None) })
    }

    /// Counted reads (snapshots) since the last reset.
    fn reads(&self) -> u64;

    /// Zeroes the read counter.
    fn reset_reads(&self);

    /// How long a read of the source takes (configured for the mock,
    /// measured for a database).
    fn read_latency(&self) -> Duration;

    /// The fields its records hold, in display order (`None`: the demo's
    /// categories, `id`, `name`, `display_order`, `featured`, `parent_id`).
    fn columns(&self) -> Option<Vec<String>> {
        None
    }

    /// What the ids of its records start with among the cache's ids: empty
    /// when its records are the whole cache; a table's key prefix when
    /// the cache holds several tables and this view shows one.
    fn id_prefix(&self) -> String {
        String::new()
    }

    /// The names of the tables it holds when it holds several (the first
    /// is this view's); empty for one.
    fn tables(&self) -> Vec<String> {
        Vec::new()
    }

    /// The same source seen through its table `name` (`None`: it holds no
    /// table of that name).
    fn view_of(&self, name: &str) -> Option<std::sync::Arc<dyn Primary>> {
        let _ = name;
        None
    }
}
