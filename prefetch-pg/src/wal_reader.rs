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
use crate::table::TableInfo;

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
    let mut assembler = Assembler::new(&shared.table());
    let token = shared.cancel.clone();
    loop {
        let event: ChangeEvent = stream.next_event(&token).await?;
        let table = shared.table();
        dispatch(
            shared,
            &sql,
            &table,
            &mut assembler,
            sender,
            event.event_type,
        )
        .await?;
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

/// Hands one message to the assembler.
async fn dispatch(
    shared: &Shared,
    sql: &tokio_postgres::Client,
    table: &TableInfo,
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
        } if *namespace == *table.schema && *relation_name == *table.name => {
            let now = columns
                .iter()
                .map(|c| (c.name.to_string(), c.type_id))
                .collect();
            if assembler.relation(table, now) {
                // A column was added, dropped or retyped: rows in Redis
                // hold the old shape; a fresh snapshot rewrites them all.
                match crate::sql::table_info(sql, &table.schema, &table.name, table.mapping.clone())
                    .await
                {
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
        } if ours(table, &schema, &name) => assembler.insert(table, &data),
        EventType::Update {
            schema,
            table: name,
            old_data,
            new_data,
            ..
        } if ours(table, &schema, &name) && assembler.in_transaction() => {
            let (mut fields, missing) = assembler.update_values(table, &new_data);
            if !missing.is_empty() {
                // Unchanged TOASTed values are not in the stream: read
                // them. A later change of them comes later anyway.
                fill_unchanged(sql, table, &mut fields, &missing).await?;
            }
            assembler.update(table, old_data.as_ref(), fields);
        }
        EventType::Delete {
            schema,
            table: name,
            old_data,
            ..
        } if ours(table, &schema, &name) => assembler.delete(table, &old_data),
        EventType::Truncate { tables, .. } => {
            let names: Vec<&str> = tables.iter().map(|t| &**t).collect();
            assembler.truncate(table, &names);
        }
        EventType::Commit {
            end_lsn,
            commit_timestamp,
            ..
        } => {
            let t = assembler.commit(end_lsn.value(), commit_timestamp.timestamp_micros());
            send_new(sender, t);
        }
        _ => {}
    }
    Ok(())
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

fn ours(table: &TableInfo, schema: &str, name: &str) -> bool {
    *schema == *table.schema && *name == *table.name
}
