//! The heartbeat: every second a transactional message through the slot
//! (`pg_logical_emit_message`), so the slot keeps moving (it never pins WAL
//! while the table is idle) and lag stays measurable; and the slot's
//! confirmed position and retained WAL for the dashboard.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::shared::Shared;

/// Prefix of the heartbeat messages (`pg_logical_emit_message`).
pub const HEARTBEAT_PREFIX: &str = "prefetch.hb";

/// Every `every`: a transactional heartbeat message through the slot, and
/// the slot's confirmed position and retained WAL for the dashboard.
pub(crate) async fn heartbeat(shared: Arc<Shared>, every: Duration) {
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(50)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shared.cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let client = match shared.sql.client().await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "heartbeat: cannot connect");
                continue;
            }
        };
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis().to_string())
            .unwrap_or_default();
        if let Err(e) = client
            .execute(
                "SELECT pg_logical_emit_message(true, $1, $2)",
                &[&HEARTBEAT_PREFIX, &now_ms],
            )
            .await
        {
            tracing::debug!(error = %e, "heartbeat failed");
            continue;
        }
        let status = client
            .query_opt(
                "SELECT confirmed_flush_lsn::text, (pg_current_wal_lsn() - confirmed_flush_lsn)::int8 \
                 FROM pg_replication_slots WHERE slot_name = $1",
                &[&shared.slot],
            )
            .await;
        if let Ok(Some(row)) = status {
            let confirmed: Option<String> = row.get(0);
            let retained: Option<i64> = row.get(1);
            let mut details = shared.details.lock().unwrap_or_else(|p| p.into_inner());
            details.retain(|(k, _)| k != "confirmed" && k != "retained");
            details.push(("confirmed".into(), confirmed.unwrap_or_default()));
            details.push((
                "retained".into(),
                format!("{} KiB", retained.unwrap_or(0).max(0) / 1024),
            ));
        }
    }
}
