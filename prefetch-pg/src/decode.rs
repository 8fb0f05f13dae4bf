//! The transaction assembler: `pgoutput` messages in, committed
//! [`Transaction`]s out, one method per message kind (the way readyset and
//! materialize keep the WAL reader apart from decoding).
//!
//! One transaction per commit, its changes versioned `(commit LSN, n)` with
//! `n` counting from 1 (a snapshot at the same LSN is `(lsn, 0)`, older),
//! its position `(end LSN, 0)`: below anything committed later, and exactly
//! what PostgreSQL wants acknowledged. Transactions that touch other tables,
//! and the heartbeat messages, become transactions without changes: they
//! move the position, so the slot never pins WAL while the table is idle,
//! and they measure lag.
//!
//! A transaction larger than [`PART_CHANGES`] goes out in parts as it
//! arrives (PostgreSQL sends a transaction only once it has committed), so
//! that a million-row `UPDATE` is never held whole: each part's position is
//! its last change's version `(commit LSN, n)`, after everything committed
//! before and before the transaction's own end. Acknowledging a part does
//! not move the slot (see the source's `ack`): after a restart PostgreSQL
//! sends the whole transaction again and the version guard refuses what
//! Redis already holds.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use pg_walstream::{ColumnValue, RowData};
use prefetch::{Change, Fields, Record, Transaction, Version};

use crate::error::PgError;
use crate::table::{TableInfo, ident, text_value};

/// The transaction being assembled.
struct Building {
    commit: u64,
    ord: u32,
    changes: Vec<Change>,
    committed_at: SystemTime,
}

/// Changes a transaction part holds at most.
pub(crate) const PART_CHANGES: usize = 4096;

impl Building {
    fn version(&mut self) -> Version {
        self.ord = self.ord.saturating_add(1);
        Version::new(self.commit, self.ord)
    }

    fn upsert(&mut self, record: Record) {
        let id = record.id().unwrap_or_default().to_owned();
        let v = self.version();
        self.changes
            .push(Change::upsert(id, record.into_fields(), v));
    }

    fn delete(&mut self, table: &TableInfo, key: &[String]) {
        let parts: Vec<&str> = key.iter().map(String::as_str).collect();
        let v = self.version();
        self.changes.push(Change::delete(table.id_of(&parts), v));
    }
}

/// Assembles the tables' changes into transactions. The caller hands it
/// the table as currently known with every message (the catalog may have
/// been read again since).
#[derive(Default)]
pub(crate) struct Assembler {
    /// Per table (`schema.name`): column name → type OID, as the last
    /// `Relation` message said.
    types: HashMap<String, HashMap<String, u32>>,
    tx: Option<Building>,
}

/// `schema.name`, the assembler's name for a table.
fn name_of(table: &TableInfo) -> String {
    format!("{}.{}", table.schema, table.name)
}

impl Assembler {
    /// Starts with the tables' columns as the catalog says.
    pub(crate) fn new(tables: &[std::sync::Arc<TableInfo>]) -> Self {
        Self {
            types: tables
                .iter()
                .map(|t| {
                    let columns = t
                        .selected()
                        .into_iter()
                        .map(|c| (c.name.clone(), c.type_oid))
                        .collect();
                    (name_of(t), columns)
                })
                .collect(),
            tx: None,
        }
    }

    /// Whether a transaction is being assembled (changes outside one are
    /// ignored).
    pub(crate) fn in_transaction(&self) -> bool {
        self.tx.is_some()
    }

    /// `Begin`: a transaction that commits at `final_lsn`, at
    /// `commit_micros` (Unix microseconds).
    pub(crate) fn begin(&mut self, final_lsn: u64, commit_micros: i64) {
        self.tx = Some(Building {
            commit: final_lsn,
            ord: 0,
            changes: Vec::new(),
            committed_at: unix_micros(commit_micros),
        });
    }

    /// The changes assembled so far as a part of the transaction, once
    /// there are [`PART_CHANGES`] of them (see the module docs).
    pub(crate) fn take_part(&mut self) -> Option<Transaction> {
        let tx = self
            .tx
            .as_mut()
            .filter(|tx| tx.changes.len() >= PART_CHANGES)?;
        let mut part = Transaction::new(
            Version::new(tx.commit, tx.ord),
            std::mem::take(&mut tx.changes),
        );
        part.committed_at = tx.committed_at;
        Some(part)
    }

    /// `Relation` for the table: its columns as the stream will send them.
    /// Returns whether they differ from what `table` says (a column was
    /// added, dropped or retyped: the rows in Redis hold the old shape).
    pub(crate) fn relation(&mut self, table: &TableInfo, columns: Vec<(String, u32)>) -> bool {
        let known: Vec<(String, u32)> = table
            .selected()
            .into_iter()
            .map(|c| (c.name.clone(), c.type_oid))
            .collect();
        let changed = columns != known;
        self.types
            .insert(name_of(table), columns.into_iter().collect());
        changed
    }

    /// `Insert` of a row of the table.
    pub(crate) fn insert(&mut self, table: &TableInfo, row: &RowData) {
        let record = table.finish(self.decode(table, row));
        if let (Some(tx), Some(record)) = (self.tx.as_mut(), record) {
            tx.upsert(record);
        }
    }

    /// `Update` of a row of the table: its new values (`missing` lists the
    /// columns the stream left out: unchanged TOASTed values, which the
    /// caller reads back with [`fill_unchanged`]); a key that changed also
    /// deletes the old key's record.
    pub(crate) fn update_values(&self, table: &TableInfo, new: &RowData) -> (Fields, Vec<String>) {
        let fields = self.decode(table, new);
        let missing = table
            .selected()
            .into_iter()
            .filter(|c| new.get(&c.name).is_none())
            .map(|c| c.name.clone())
            .collect();
        (fields, missing)
    }

    /// Completes an `Update` with the row's full values.
    pub(crate) fn update(&mut self, table: &TableInfo, old: Option<&RowData>, fields: Fields) {
        let old_key = old.and_then(|old| self.key(table, old));
        let Some(tx) = self.tx.as_mut() else { return };
        let record = table.finish(fields);
        if let Some(old_key) = old_key {
            let parts: Vec<&str> = old_key.iter().map(String::as_str).collect();
            if record.as_ref().and_then(Record::id) != Some(table.id_of(&parts).as_str()) {
                tx.delete(table, &old_key);
            }
        }
        if let Some(record) = record {
            tx.upsert(record);
        }
    }

    /// `Delete` of a row of the table (its key from the old values).
    pub(crate) fn delete(&mut self, table: &TableInfo, old: &RowData) {
        let key = self.key(table, old);
        if let (Some(tx), Some(key)) = (self.tx.as_mut(), key) {
            tx.delete(table, &key);
        }
    }

    /// `Truncate` of some tables (`truncated`) when the cache holds one
    /// table, `ours`: it empties the cache.
    pub(crate) fn truncate(&mut self, ours: &TableInfo, truncated: &[&str]) {
        let qualified = name_of(ours);
        if let Some(tx) = self.tx.as_mut()
            && truncated.iter().any(|t| *t == qualified)
        {
            let v = tx.version();
            tx.changes.push(Change::truncate(v));
        }
    }

    /// `Commit`: the transaction, positioned at `end_lsn`, committed at
    /// `commit_micros` (Unix microseconds).
    pub(crate) fn commit(&mut self, end_lsn: u64, commit_micros: i64) -> Option<Transaction> {
        let done = self.tx.take()?;
        let mut t = Transaction::new(Version::new(end_lsn, 0), done.changes);
        t.committed_at = unix_micros(commit_micros);
        Some(t)
    }

    /// The table's key in a row (`None` when a key column is missing or
    /// NULL).
    fn key(&self, table: &TableInfo, row: &RowData) -> Option<Vec<String>> {
        let types = self.types.get(&name_of(table));
        table
            .key
            .iter()
            .map(|k| value_text(types, k, row.get(k)?))
            .collect()
    }

    /// The columns present in a row, as record fields (NULL absent).
    fn decode(&self, table: &TableInfo, row: &RowData) -> Fields {
        let types = self.types.get(&name_of(table));
        row.iter()
            .filter_map(|(name, value)| Some((name.to_string(), value_text(types, name, value)?)))
            .collect()
    }
}

/// A value as the record holds it, given its table's column types.
fn value_text(
    types: Option<&HashMap<String, u32>>,
    column: &str,
    value: &ColumnValue,
) -> Option<String> {
    if value.is_null() {
        return None;
    }
    let raw = value.as_str()?;
    let oid = types.and_then(|t| t.get(column)).copied().unwrap_or(0);
    Some(text_value(oid, raw))
}

fn unix_micros(micros: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_micros(micros.max(0).unsigned_abs())
}

/// Reads `missing` columns of the row whose key `fields` holds.
pub(crate) async fn fill_unchanged(
    sql: &tokio_postgres::Client,
    table: &TableInfo,
    fields: &mut Fields,
    missing: &[String],
) -> Result<(), PgError> {
    let Some(key) = table
        .key
        .iter()
        .map(|k| fields.get(k).cloned())
        .collect::<Option<Vec<String>>>()
    else {
        return Ok(());
    };
    let cols: Vec<String> = missing
        .iter()
        .map(|c| format!("{}::text", ident(c)))
        .collect();
    let query = format!(
        "SELECT {} FROM {} WHERE {}",
        cols.join(", "),
        table.qualified(),
        table.key_predicate(1)
    );
    let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = key
        .iter()
        .map(|k| k as &(dyn tokio_postgres::types::ToSql + Sync))
        .collect();
    if let Some(row) = sql.query_opt(&query, &params).await? {
        for (i, c) in missing.iter().enumerate() {
            if let Some(v) = row.get::<_, Option<String>>(i) {
                fields.insert(c.clone(), v);
            }
        }
    }
    Ok(())
}
