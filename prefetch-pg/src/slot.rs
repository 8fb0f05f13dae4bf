//! The replication slot: found or created at start (the first start's
//! slot hands the initial load its own snapshot), temporary slots for the
//! exact snapshots of re-prefetches, and the queries on
//! `pg_replication_slots`.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use pg_walstream::Lsn;
use prefetch::Version;
use tokio_postgres::Client;

use crate::error::PgError;
use crate::shared::Shared;
use crate::snapshot::SlotSnapshot;
use crate::sql;
use crate::table::TableInfo;

/// The slot's confirmed position (`None`: no such slot).
pub async fn slot_confirmed(c: &Client, slot: &str) -> Result<Option<u64>, PgError> {
    let row = c
        .query_opt(
            "SELECT (confirmed_flush_lsn - '0/0')::int8 FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await?;
    Ok(row
        .and_then(|r| r.get::<_, Option<i64>>(0))
        .map(|v| v.unsigned_abs()))
}

/// Creates the slot without a snapshot (the engine takes its own).
pub async fn create_slot(c: &Client, slot: &str) -> Result<u64, PgError> {
    let row = c
        .query_one(
            "SELECT (lsn - '0/0')::int8 FROM pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&slot],
        )
        .await?;
    Ok(row.get::<_, i64>(0).unsigned_abs())
}

/// Opens the slot for a start: when it does not exist yet, creates it with
/// its snapshot (returned, to serve as the initial load; the stream then
/// starts at its consistent point); when it exists, PostgreSQL resends
/// everything after its confirmed position, which covers what Redis lacks
/// when Redis holds at least that (`applied`). Returns whether the engine
/// may resume from `applied`, and the held snapshot.
pub(crate) async fn open(
    shared: &Shared,
    applied: Option<Version>,
    wait: Duration,
) -> Result<(bool, Option<SlotSnapshot>), PgError> {
    let client = shared.sql.client().await?;
    match slot_confirmed(&client, &shared.slot).await? {
        None => {
            let snap = SlotSnapshot::begin(
                &shared.url,
                &client,
                &shared.slot,
                false,
                shared.tables().to_vec(),
                wait,
            )
            .await?;
            tracing::info!(slot = %shared.slot, consistent_point = %Lsn(snap.consistent_point), "created the replication slot");
            Ok((false, Some(snap)))
        }
        Some(confirmed) => {
            tracing::info!(slot = %shared.slot, confirmed = %Lsn(confirmed), "the replication slot exists");
            Ok((applied.is_some_and(|p| confirmed <= p.commit), None))
        }
    }
}

/// A snapshot through a temporary slot of its own, exact at its
/// consistent point.
pub(crate) async fn temporary_snapshot(
    shared: &Shared,
    tables: Vec<Arc<TableInfo>>,
    wait: Duration,
) -> Result<SlotSnapshot, PgError> {
    let client = shared.sql.client().await?;
    let temp = sql::object_name(&[
        "prefetch_snap",
        &std::process::id().to_string(),
        &SNAPSHOTS.fetch_add(1, Relaxed).to_string(),
    ]);
    SlotSnapshot::begin(&shared.url, &client, &temp, true, tables, wait).await
}

static SNAPSHOTS: AtomicU64 = AtomicU64::new(0);
