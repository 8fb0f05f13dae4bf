//! The WAL reader: one logical replication session at a time on the slot,
//! each `pgoutput` message handed to the transaction [`Assembler`], each
//! committed transaction pushed into the change feed; a failed session is
//! retried with backoff from the slot's confirmed position.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use pg_walstream::{
    ChangeEvent, EventType, LogicalReplicationStream, ReplicationStreamConfig, StreamingMode,
};
use prefetch::ChangeSender;

use crate::decode::{Assembler, fill_unchanged};
use crate::error::PgError;
use crate::shared::Shared;

/// Runs sessions until cancelled; a failed session is retried with backoff,
/// from the slot's confirmed position.
pub(crate) async fn run(shared: Arc<Shared>, sender: ChangeSender) {
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

/// Connects to the slot (recreating it, and asking for a fresh snapshot,
/// when it was dropped meanwhile) and streams from its confirmed position.
async fn connect(shared: &Arc<Shared>) -> Result<LogicalReplicationStream, PgError> {
    let sql = shared.sql.client().await?;
    if crate::slot::slot_confirmed(&sql, &shared.slot)
        .await?
        .is_none()
    {
        // Dropped while we were away: a new slot starts from now, so the
        // engine must load a fresh snapshot to cover what it missed.
        let at = crate::slot::create_slot(&sql, &shared.slot).await?;
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
    Ok(stream)
}

async fn session(shared: &Arc<Shared>, sender: &ChangeSender) -> Result<(), PgError> {
    let mut stream = connect(shared).await?;
    let sql = shared.sql.client().await?;
    let mut assembler = Assembler::new(&shared.tables());
    let token = shared.cancel.clone();
    loop {
        let event: ChangeEvent = stream.next_event(&token).await?;
        dispatch(shared, &sql, &mut assembler, sender, event.event_type).await?;
        send_new(sender, assembler.take_part());
        stream.maybe_send_feedback().await;
        // Back-pressure: while the worker is behind (or paused), stop
        // reading; PostgreSQL keeps the rest in the slot. Feedback goes on,
        // so the connection stays alive.
        while sender.backlog() >= FEED_LIMIT && !token.is_cancelled() {
            sender.wait_below(FEED_LIMIT, Duration::from_secs(1)).await;
            stream.maybe_send_feedback().await;
        }
    }
}

/// Changes the feed holds, unacknowledged, before the reader waits.
const FEED_LIMIT: usize = 4 * crate::decode::PART_CHANGES;

/// Hands one message to the assembler (row messages of tables the cache
/// does not keep are left out; their transactions still move the
/// position).
async fn dispatch(
    shared: &Shared,
    sql: &tokio_postgres::Client,
    assembler: &mut Assembler,
    sender: &ChangeSender,
    event: EventType,
) -> Result<(), PgError> {
    match event {
        EventType::Begin {
            final_lsn,
            commit_timestamp,
            ..
        } => assembler.begin(final_lsn.value(), commit_timestamp.timestamp_micros()),
        EventType::Relation {
            namespace,
            relation_name,
            columns,
            ..
        } => {
            if let Some(table) = shared.find(&namespace, &relation_name) {
                let now = columns
                    .iter()
                    .map(|c| (c.name.to_string(), c.type_id))
                    .collect();
                relation(shared, sql, assembler, &table, now).await;
            }
        }
        EventType::Insert {
            schema,
            table: name,
            data,
            ..
        } => {
            if let Some(table) = shared.find(&schema, &name) {
                assembler.insert(&table, &data);
            }
        }
        EventType::Update {
            schema,
            table: name,
            old_data,
            new_data,
            ..
        } => {
            if let Some(table) = shared
                .find(&schema, &name)
                .filter(|_| assembler.in_transaction())
            {
                update(sql, assembler, &table, old_data.as_ref(), &new_data).await?;
            }
        }
        EventType::Delete {
            schema,
            table: name,
            old_data,
            ..
        } => {
            if let Some(table) = shared.find(&schema, &name) {
                assembler.delete(&table, &old_data);
            }
        }
        EventType::Truncate { tables, .. } => truncate(shared, assembler, &tables),
        EventType::Commit {
            end_lsn,
            commit_timestamp,
            ..
        } => send_new(
            sender,
            assembler.commit(end_lsn.value(), commit_timestamp.timestamp_micros()),
        ),
        _ => {}
    }
    Ok(())
}

/// An `Update` of a row of `table` (its new values completed with the
/// unchanged TOASTed ones, which the stream leaves out: they are read; a
/// later change of them comes later anyway).
async fn update(
    sql: &tokio_postgres::Client,
    assembler: &mut Assembler,
    table: &crate::table::TableInfo,
    old: Option<&pg_walstream::RowData>,
    new: &pg_walstream::RowData,
) -> Result<(), PgError> {
    let (mut fields, missing) = assembler.update_values(table, new);
    if !missing.is_empty() {
        fill_unchanged(sql, table, &mut fields, &missing).await?;
    }
    assembler.update(table, old, fields);
    Ok(())
}

/// A `Relation` message for `table`: when its columns differ from what the
/// rows in Redis were made of (a column added, dropped or retyped), the
/// table is read again from the catalog and a fresh snapshot is asked for.
async fn relation(
    shared: &Shared,
    sql: &tokio_postgres::Client,
    assembler: &mut Assembler,
    table: &crate::table::TableInfo,
    columns: Vec<(String, u32)>,
) {
    if !assembler.relation(table, columns) {
        return;
    }
    match crate::sql::table_info(sql, &table.schema, &table.name, table.mapping.clone()).await {
        Ok(info) => shared.set_table(info),
        Err(e) => tracing::warn!(error = %e, "cannot re-read the table's columns"),
    }
    tracing::info!(table = %table.qualified(), "the table's columns changed; asking for a fresh snapshot");
    shared.resync.fetch_add(1, Relaxed);
}

/// A `TRUNCATE` of `truncated` (`schema.name`s): with one table kept, a
/// sweep of the cache at its version; with several, a fresh snapshot (a
/// sweep would empty the other tables' keys too), which leaves the
/// truncated table's keys older than it and sweeps them.
fn truncate(shared: &Shared, assembler: &mut Assembler, truncated: &[std::sync::Arc<str>]) {
    let names: Vec<&str> = truncated.iter().map(|t| &**t).collect();
    let tables = shared.tables();
    match tables.as_slice() {
        [one] => assembler.truncate(one, &names),
        several => {
            let ours = several
                .iter()
                .any(|t| names.contains(&format!("{}.{}", t.schema, t.name).as_str()));
            if ours {
                tracing::info!(tables = ?names, "a kept table was truncated; asking for a fresh snapshot");
                shared.resync.fetch_add(1, Relaxed);
            }
        }
    }
}

/// Sends `tx` unless the feed already holds it: after a reconnect
/// PostgreSQL resends from the confirmed position.
fn send_new(sender: &ChangeSender, tx: Option<prefetch::Transaction>) {
    if let Some(tx) = tx
        && sender.head().is_none_or(|head| tx.position > head)
    {
        sender.send(tx);
    }
}
