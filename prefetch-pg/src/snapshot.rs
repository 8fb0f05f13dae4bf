//! An exact snapshot: a replication slot created inside a `REPEATABLE READ`
//! transaction with `USE_SNAPSHOT` makes that transaction see the database
//! exactly at the slot's consistent point, and the tables are read from a
//! cursor in it, one after the other, chunk by chunk.
//!
//! Every transaction that commits after the consistent point is decoded
//! from the slot (or from an older slot, which has already passed it), so
//! the snapshot and the stream meet with no gap. A plain read with
//! `pg_current_wal_lsn()` as its version would not be exact: a transaction
//! whose commit record precedes that LSN can still be invisible to it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use pg_walstream::{Lsn, PgReplicationConnection};
use prefetch::Record;

use crate::error::PgError;
use crate::table::{TableInfo, ident, literal};

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// Rows fetched per round trip.
pub const FETCH_ROWS: usize = 5000;

/// A snapshot transaction holding its cursor; committed when read through.
pub struct SlotSnapshot {
    conn: Option<PgReplicationConnection>,
    /// The slot's consistent point: the snapshot shows exactly every
    /// transaction committed before it.
    pub consistent_point: u64,
    /// Rows in the tables as of the consistent point.
    pub rows: u64,
    tables: Vec<Arc<TableInfo>>,
    /// The table the open cursor reads.
    reading: usize,
}

impl std::fmt::Debug for SlotSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotSnapshot")
            .field("consistent_point", &Lsn(self.consistent_point).to_string())
            .finish_non_exhaustive()
    }
}

/// `repl_url` with `replication=database` and an application name.
pub fn replication_url(url: &str, application_name: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}replication=database&application_name={application_name}")
}

impl SlotSnapshot {
    /// Creates `slot` (temporary or not) with `USE_SNAPSHOT` and opens a
    /// cursor over the first of `tables` at its consistent point. Waits at most `wait`
    /// for transactions that were already running (slot creation waits for
    /// them); then fails with [`PgError::SlotBlocked`], naming them, and
    /// makes sure the slot is not created behind its back.
    pub async fn begin(
        url: &str,
        sql: &tokio_postgres::Client,
        slot: &str,
        temporary: bool,
        tables: Vec<Arc<TableInfo>>,
        wait: Duration,
    ) -> Result<Self, PgError> {
        let app = format!(
            "prefetch_snapshot_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut conn = PgReplicationConnection::connect_async(&replication_url(url, &app)).await?;
        conn.exec_async("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await?;
        let create = format!(
            "CREATE_REPLICATION_SLOT {} {}LOGICAL pgoutput (SNAPSHOT 'use')",
            ident(slot),
            if temporary { "TEMPORARY " } else { "" }
        );
        let created = match tokio::time::timeout(wait, conn.exec_async(&create)).await {
            Ok(result) => result?,
            Err(_) => {
                drop(conn);
                // The walsender keeps waiting after we give up and would
                // create the slot later: end it first.
                let _ = sql
                    .execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
                        &[&app],
                    )
                    .await;
                return Err(PgError::SlotBlocked {
                    slot: slot.to_owned(),
                    waited: wait,
                    blockers: blockers(sql).await,
                });
            }
        };
        let consistent_point = created
            .get_value(0, 1)
            .and_then(|lsn| lsn.parse::<Lsn>().ok())
            .ok_or_else(|| {
                PgError::Protocol("CREATE_REPLICATION_SLOT returned no consistent point".into())
            })?
            .value();
        let mut rows = 0u64;
        for table in &tables {
            let count = conn
                .exec_async(&format!("SELECT count(*) FROM {}", table.from_clause()))
                .await?;
            rows += count
                .get_value(0, 0)
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
        }
        let Some(first) = tables.first() else {
            return Err(PgError::Schema("a snapshot of no table".into()));
        };
        conn.exec_async(&declare(first)).await?;
        Ok(Self {
            conn: Some(conn),
            consistent_point,
            rows,
            tables,
            reading: 0,
        })
    }

    /// The next chunk of records, or `None` once the table is read through
    /// (the transaction is then committed).
    pub async fn next_chunk(&mut self) -> Result<Option<Vec<Record>>, PgError> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(None);
        };
        let (result, rows) = loop {
            let result = conn
                .exec_async(&format!("FETCH {FETCH_ROWS} FROM prefetch_snapshot"))
                .await?;
            let rows = result.ntuples();
            if rows > 0 {
                break (result, rows);
            }
            // This table is read through: the next one, or the end.
            conn.exec_async("CLOSE prefetch_snapshot").await?;
            self.reading += 1;
            match self.tables.get(self.reading) {
                Some(next) => {
                    conn.exec_async(&declare(next)).await?;
                }
                None => {
                    conn.exec_async("COMMIT").await?;
                    self.conn = None;
                    return Ok(None);
                }
            }
        };
        let Some(table) = self.tables.get(self.reading) else {
            return Ok(None);
        };
        let cols = i32::try_from(table.selected().len()).unwrap_or(i32::MAX);
        let mut out = Vec::with_capacity(usize::try_from(rows).unwrap_or(0));
        for r in 0..rows {
            let values = (0..cols).map(|c| result.get_value(r, c)).collect();
            if let Some(record) = table.record(values) {
                out.push(record);
            }
        }
        Ok(Some(out))
    }
}

/// The cursor over one table's rows, as the snapshot reads them.
fn declare(table: &TableInfo) -> String {
    format!(
        "DECLARE prefetch_snapshot NO SCROLL CURSOR FOR {}",
        table.select_text()
    )
}

/// The transactions in the way of a slot creation, as one line.
async fn blockers(sql: &tokio_postgres::Client) -> String {
    let rows = sql
        .query(
            "SELECT pid, coalesce(state, ''), coalesce(extract(epoch FROM now() - xact_start)::int, 0), \
             left(coalesce(query, ''), 80) FROM pg_stat_activity \
             WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid() ORDER BY xact_start LIMIT 5",
            &[],
        )
        .await;
    match rows {
        Ok(rows) if !rows.is_empty() => {
            let list: Vec<String> = rows
                .iter()
                .map(|r| {
                    let pid: i32 = r.get(0);
                    let state: String = r.get(1);
                    let secs: i32 = r.get(2);
                    let query: String = r.get(3);
                    format!("pid {pid} ({state}, open {secs} s: {})", literal(&query))
                })
                .collect();
            format!(
                "finish or cancel these transactions and start again: {}",
                list.join("; ")
            )
        }
        Ok(_) => "no transaction is running any more; start again".into(),
        Err(e) => format!("(cannot list them: {e})"),
    }
}
