//! [`Shared`]: what the source, its WAL reader, its heartbeat and its
//! editor share: the connections' addresses, the table as last read from
//! the catalog, the slot, and the counters they report.

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, RwLock};

use pg_walstream::{CancellationToken, SharedLsnFeedback};

use crate::error::PgError;
use crate::sql::{self, Sql};
use crate::table::TableInfo;

/// State shared by the source, its reader, its heartbeat and its editor.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) url: String,
    pub(crate) sql: Sql,
    pub(crate) slot: String,
    pub(crate) publication: String,
    pub(crate) table: RwLock<Arc<TableInfo>>,
    pub(crate) cancel: CancellationToken,
    pub(crate) connected: AtomicBool,
    /// The newest position acknowledged (an LSN).
    pub(crate) acked: AtomicU64,
    pub(crate) resync: AtomicU64,
    pub(crate) feedback: Mutex<Option<Arc<SharedLsnFeedback>>>,
    pub(crate) details: Mutex<Vec<(String, String)>>,
    /// Snapshots read (the demo's "primary reads").
    pub(crate) reads: AtomicU64,
    /// How long the last one took to start, in microseconds.
    pub(crate) read_latency_us: AtomicU64,
}

impl Shared {
    pub(crate) fn table(&self) -> Arc<TableInfo> {
        Arc::clone(&self.table.read().unwrap_or_else(|p| p.into_inner()))
    }

    pub(crate) fn set_table(&self, info: TableInfo) {
        *self.table.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(info);
    }

    /// Reads the table's columns again (a column was added or dropped).
    pub(crate) async fn refresh_table(&self) -> Result<(), PgError> {
        let table = self.table();
        let client = self.sql.client().await?;
        let info =
            sql::table_info(&client, &table.schema, &table.name, table.mapping.clone()).await?;
        if info != *table {
            self.set_table(info);
        }
        Ok(())
    }
}

/// Whether a statement failed because a column it names no longer exists.
pub(crate) fn undefined_column(e: &PgError) -> bool {
    match e {
        PgError::Sql(e) => e.as_db_error().is_some_and(|d| d.code().code() == "42703"),
        PgError::Replication(e) => e.to_string().contains("does not exist"),
        _ => false,
    }
}
