//! [`Shared`]: what the source, its WAL reader, its heartbeat and its
//! editor share: the connections' addresses, the tables as last read from
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
    /// The tables kept, as last read from the catalog (the first is the
    /// editor's).
    pub(crate) tables: RwLock<Arc<Vec<Arc<TableInfo>>>>,
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
    /// Every table kept.
    pub(crate) fn tables(&self) -> Arc<Vec<Arc<TableInfo>>> {
        Arc::clone(&self.tables.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// The first table: the one the editor shows and edits.
    pub(crate) fn table(&self) -> Arc<TableInfo> {
        Arc::clone(&self.tables()[0])
    }

    /// The table called `schema.name`, if it is kept.
    pub(crate) fn find(&self, schema: &str, name: &str) -> Option<Arc<TableInfo>> {
        self.tables()
            .iter()
            .find(|t| t.schema == schema && t.name == name)
            .cloned()
    }

    /// Keeps `tables` from now on (a tables file read again).
    pub(crate) fn replace_tables(&self, tables: Vec<Arc<TableInfo>>) {
        *self.tables.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(tables);
    }

    /// Sets the status detail `key` to `value`.
    pub(crate) fn set_detail(&self, key: &str, value: String) {
        let mut details = self.details.lock().unwrap_or_else(|p| p.into_inner());
        details.retain(|(k, _)| k != "table" && k != "tables" && k != key);
        let at = details.len().min(1);
        details.insert(at, (key.to_owned(), value));
    }

    /// Replaces the table of the same name with `info`.
    pub(crate) fn set_table(&self, info: TableInfo) {
        let mut tables = self.tables.write().unwrap_or_else(|p| p.into_inner());
        let next: Vec<Arc<TableInfo>> = tables
            .iter()
            .map(|t| {
                if t.schema == info.schema && t.name == info.name {
                    Arc::new(info.clone())
                } else {
                    Arc::clone(t)
                }
            })
            .collect();
        *tables = Arc::new(next);
    }

    /// Reads the tables' columns again (a column was added or dropped).
    pub(crate) async fn refresh_table(&self) -> Result<(), PgError> {
        let client = self.sql.client().await?;
        for table in self.tables().iter() {
            let info =
                sql::table_info(&client, &table.schema, &table.name, table.mapping.clone()).await?;
            if info != **table {
                self.set_table(info);
            }
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
