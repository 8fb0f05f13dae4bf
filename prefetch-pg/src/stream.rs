//! The reader: decodes the slot's `pgoutput` stream into committed
//! [`Transaction`]s and pushes them into the change feed.
//!
//! One transaction per commit, its changes versioned `(commit LSN, n)` with
//! `n` counting from 1 (a snapshot at the same LSN is `(lsn, 0)`, older),
//! its position `(end LSN, 0)`: below anything committed later, and exactly
//! what PostgreSQL wants acknowledged. Transactions that touch other tables,
//! and the heartbeat messages, become transactions without changes: they
//! move the position, so the slot never pins WAL while the table is idle,
//! and they measure lag.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, SystemTime};

use pg_walstream::{
    ChangeEvent, ColumnValue, EventType, LogicalReplicationStream, ReplicationStreamConfig,
    RowData, StreamingMode,
};
use prefetch::{Change, ChangeSender, Fields, Transaction, Version};

use crate::error::PgError;
use crate::source::Shared;
use crate::table::{TableInfo, ident, text_value};

/// Prefix of the heartbeat messages (`pg_logical_emit_message`).
pub const HEARTBEAT_PREFIX: &str = "prefetch.hb";

/// Runs sessions until cancelled; a failed session is retried with backoff,
/// from the slot's confirmed position.
pub async fn run(shared: Arc<Shared>, sender: ChangeSender) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let outcome = tokio::select! {
            _ = shared.cancel.cancelled() => return,
            r = session(&shared, &sender) => r,
        };
        shared.connected.store(false, Relaxed);
        match outcome {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "replication stream failed; reconnecting");
            }
        }
        tokio::select! {
            _ = shared.cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

struct TxBuild {
    commit: u64,
    ord: u32,
    changes: Vec<Change>,
}

impl TxBuild {
    fn version(&mut self) -> Version {
        self.ord = self.ord.saturating_add(1);
        Version::new(self.commit, self.ord)
    }
}

async fn session(shared: &Arc<Shared>, sender: &ChangeSender) -> Result<(), PgError> {
    let sql = shared.sql.client().await?;
    if crate::sql::slot_confirmed(&sql, &shared.slot)
        .await?
        .is_none()
    {
        // Dropped while we were away: a new slot starts from now, so the
        // engine must load a fresh snapshot to cover what it missed.
        let at = crate::sql::create_slot(&sql, &shared.slot).await?;
        tracing::warn!(slot = %shared.slot, lsn = %pg_walstream::Lsn(at), "replication slot was gone; recreated it, asking for a fresh snapshot");
        shared.resync.fetch_add(1, Relaxed);
    }
    let config = ReplicationStreamConfig::builder(shared.slot.clone(), shared.publication.clone())
        .with_protocol_version(1)
        .with_streaming_mode(StreamingMode::Off)
        .with_messages(true)
        .with_feedback_interval(Duration::from_millis(200))
        .with_existing_slot_required(true);
    let url = crate::snapshot::replication_url(&shared.url, "prefetch_stream");
    let mut stream = LogicalReplicationStream::new(&url, config).await?;
    let acked = shared.acked.load(Relaxed);
    if acked > 0 {
        stream.shared_lsn_feedback.update_applied_lsn(acked);
    }
    *shared.feedback.lock().unwrap_or_else(|p| p.into_inner()) =
        Some(Arc::clone(&stream.shared_lsn_feedback));
    stream.start(None).await?;
    shared.connected.store(true, Relaxed);
    tracing::info!(slot = %shared.slot, "streaming changes from PostgreSQL");

    let mut types: HashMap<String, u32> = shared
        .table()
        .columns
        .iter()
        .map(|c| (c.name.clone(), c.type_oid))
        .collect();
    let mut tx: Option<TxBuild> = None;
    let token = shared.cancel.clone();
    loop {
        let event: ChangeEvent = stream.next_event(&token).await?;
        let table = shared.table();
        match event.event_type {
            EventType::Begin { final_lsn, .. } => {
                tx = Some(TxBuild {
                    commit: final_lsn.value(),
                    ord: 0,
                    changes: Vec::new(),
                });
            }
            EventType::Relation {
                namespace,
                relation_name,
                columns,
                ..
            } if *namespace == *table.schema && *relation_name == *table.name => {
                let now: Vec<(String, u32)> = columns
                    .iter()
                    .map(|c| (c.name.to_string(), c.type_id))
                    .collect();
                let known: Vec<(String, u32)> = table
                    .columns
                    .iter()
                    .map(|c| (c.name.clone(), c.type_oid))
                    .collect();
                types = now.iter().cloned().collect();
                if now != known {
                    // A column was added, dropped or retyped: rows in Redis
                    // hold the old shape; a fresh snapshot rewrites them all.
                    match crate::sql::table_info(&sql, &table.schema, &table.name).await {
                        Ok(info) => shared.set_table(info),
                        Err(e) => tracing::warn!(error = %e, "cannot re-read the table's columns"),
                    }
                    tracing::info!(table = %table.qualified(), "the table's columns changed; asking for a fresh snapshot");
                    shared.resync.fetch_add(1, Relaxed);
                }
            }
            EventType::Insert {
                schema,
                table: name,
                data,
                ..
            } if ours(&table, &schema, &name) => {
                if let (Some(tx), Some(fields)) = (tx.as_mut(), row_fields(&table, &types, &data)) {
                    let v = tx.version();
                    push_upsert(tx, fields, v);
                }
            }
            EventType::Update {
                schema,
                table: name,
                old_data,
                new_data,
                ..
            } if ours(&table, &schema, &name) => {
                let Some(tx) = tx.as_mut() else { continue };
                let mut fields = decode(&types, &new_data);
                let missing: Vec<&str> = table
                    .columns
                    .iter()
                    .filter(|c| new_data.get(&c.name).is_none())
                    .map(|c| c.name.as_str())
                    .collect();
                if !missing.is_empty() {
                    // Unchanged TOASTed values are not in the stream: read
                    // them. A later change of them comes later anyway.
                    fill_unchanged(&sql, &table, &mut fields, &missing).await?;
                }
                if let Some(old) = old_data {
                    let old_key: Option<Vec<String>> = table
                        .key
                        .iter()
                        .map(|k| value_text(&types, k, old.get(k)?))
                        .collect();
                    let new_key: Option<Vec<&String>> =
                        table.key.iter().map(|k| fields.get(k)).collect();
                    if let (Some(old_key), Some(new_key)) = (old_key, new_key)
                        && old_key.iter().collect::<Vec<_>>() != new_key
                    {
                        let parts: Vec<&str> = old_key.iter().map(String::as_str).collect();
                        let v = tx.version();
                        tx.changes.push(Change::delete(table.id_of(&parts), v));
                    }
                }
                if let Some(fields) = table.finish(fields) {
                    let v = tx.version();
                    push_upsert(tx, fields, v);
                }
            }
            EventType::Delete {
                schema,
                table: name,
                old_data,
                ..
            } if ours(&table, &schema, &name) => {
                let Some(tx) = tx.as_mut() else { continue };
                let key: Option<Vec<String>> = table
                    .key
                    .iter()
                    .map(|k| value_text(&types, k, old_data.get(k)?))
                    .collect();
                if let Some(key) = key {
                    let parts: Vec<&str> = key.iter().map(String::as_str).collect();
                    let v = tx.version();
                    tx.changes.push(Change::delete(table.id_of(&parts), v));
                }
            }
            EventType::Truncate { tables, .. } => {
                let qualified = format!("{}.{}", table.schema, table.name);
                if let Some(tx) = tx.as_mut()
                    && tables.iter().any(|t| **t == *qualified)
                {
                    let v = tx.version();
                    tx.changes.push(Change::truncate(v));
                }
            }
            EventType::Commit {
                end_lsn,
                commit_timestamp,
                ..
            } => {
                if let Some(done) = tx.take() {
                    let position = Version::new(end_lsn.value(), 0);
                    // After a reconnect PostgreSQL resends from the confirmed
                    // position; what the feed already holds is not sent twice.
                    if sender.head().is_none_or(|head| position > head) {
                        let mut t = Transaction::new(position, done.changes);
                        t.committed_at = system_time(commit_timestamp.timestamp_micros());
                        sender.send(t);
                    }
                }
            }
            _ => {}
        }
        stream.maybe_send_feedback().await;
    }
}

fn ours(table: &TableInfo, schema: &str, name: &str) -> bool {
    *schema == *table.schema && *name == *table.name
}

fn system_time(micros: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_micros(micros.max(0).unsigned_abs())
}

fn value_text(types: &HashMap<String, u32>, column: &str, value: &ColumnValue) -> Option<String> {
    if value.is_null() {
        return None;
    }
    let raw = value.as_str()?;
    Some(text_value(types.get(column).copied().unwrap_or(0), raw))
}

/// The columns present in a row, as record fields (NULL absent).
fn decode(types: &HashMap<String, u32>, row: &RowData) -> Fields {
    row.iter()
        .filter_map(|(name, value)| Some((name.to_string(), value_text(types, name, value)?)))
        .collect()
}

fn row_fields(table: &TableInfo, types: &HashMap<String, u32>, row: &RowData) -> Option<Fields> {
    table.finish(decode(types, row))
}

fn push_upsert(tx: &mut TxBuild, fields: Fields, version: Version) {
    let id = fields.get(prefetch::ID_FIELD).cloned().unwrap_or_default();
    tx.changes.push(Change::upsert(id, fields, version));
}

/// Reads `missing` columns of the row whose key `fields` holds.
async fn fill_unchanged(
    sql: &tokio_postgres::Client,
    table: &TableInfo,
    fields: &mut Fields,
    missing: &[&str],
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
                fields.insert((*c).to_owned(), v);
            }
        }
    }
    Ok(())
}
