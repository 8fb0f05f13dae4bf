//! The server-side conversions from `prefetch` types (feature `ssr`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::*;
use prefetch::{CachedEntry, EngineStats, Op, PrefetchReason, SourceStatus, Ttl, WorkerState};

/// Milliseconds with microsecond precision: how every duration leaves
/// the server.
pub fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

/// Milliseconds since the epoch.
pub fn epoch_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn round(x: f64, decimals: i32) -> f64 {
    let m = 10f64.powi(decimals);
    (x * m).round() / m
}

impl StatsDto {
    /// The wire form of the engine's counters plus the primary's reads.
    pub fn new(s: EngineStats, primary_reads: u64, primary_read_latency: Duration) -> Self {
        let c = &s.cache;
        let ms2 = |d: Duration| round(d.as_secs_f64() * 1000.0, 2);
        StatsDto {
            hits: c.hits,
            misses: c.misses,
            hit_rate_pct: round(100.0 * c.hit_ratio(), 1),
            prefetched: c.prefetched,
            sync_events_applied: c.sync_events_applied,
            sync_lag_ms_avg: ms2(c.sync_lag.mean),
            primary_reads_total: primary_reads,
            primary_read_latency_ms: u64::try_from(primary_read_latency.as_millis())
                .unwrap_or(u64::MAX),
            sync_lag_ms_p50: ms2(c.sync_lag.p50),
            sync_lag_ms_p99: ms2(c.sync_lag.p99),
            sync_lag_ms_max: ms2(c.sync_lag.max),
            sync_events_stale: c.sync_events_stale,
            sync_events_skipped: c.sync_events_skipped,
            sync_batches: c.sync_batches,
            sync_retries: c.sync_retries,
            sync_backlog: s.backlog as u64,
            reprefetches: c.reprefetches,
            self_heals: c.self_heals,
            source_connected: s.source.connected,
            source_behind_ms: millis(s.behind),
            sync_oom_retries: c.sync_oom_retries,
            read_latency_ms_p50: ms2(c.read_latency.p50),
            read_latency_ms_p99: ms2(c.read_latency.p99),
            memory_used_bytes: s.memory.as_ref().map_or(0, |m| m.used),
            memory_budget_bytes: s.memory.as_ref().map_or(0, |m| m.budget),
            worker: s.worker.into(),
            ttl_renewal: match (&s.renewal.active, &s.renewal.suspended) {
                (true, _) => "on".to_owned(),
                (false, Some(why)) => format!("suspended: {why}"),
                (false, None) => "off".to_owned(),
            },
            refills: c.refills,
            visible_10ms_pct: share(c.visible_within[0], c.sync_lag.count),
            visible_100ms_pct: share(c.visible_within[1], c.sync_lag.count),
            visible_1s_pct: share(c.visible_within[2], c.sync_lag.count),
            stale_reads: c.stale_reads,
            stale_read_pct: if c.hits + c.misses == 0 {
                0.0
            } else {
                round(100.0 * c.stale_reads as f64 / (c.hits + c.misses) as f64, 2)
            },
            misses_deleted: c.misses_deleted,
            misses_absent: c.misses_absent,
            misses_lost: c.misses_lost,
            lost_restored: c.lost_repaired,
            tables: Vec::new(),
        }
    }
}

/// `part` of `whole` in percent, two decimals; 100 when nothing was
/// measured (no change has been late yet).
fn share(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        100.0
    } else {
        round(100.0 * part.min(whole) as f64 / whole as f64, 2)
    }
}

impl From<WorkerState> for WorkerStateDto {
    fn from(s: WorkerState) -> Self {
        match s {
            WorkerState::Running => WorkerStateDto::Running,
            WorkerState::Paused => WorkerStateDto::Paused,
            WorkerState::Retrying { .. } => WorkerStateDto::Retrying,
            WorkerState::Stopped => WorkerStateDto::Stopped,
        }
    }
}

impl From<Op> for OpDto {
    fn from(op: Op) -> Self {
        match op {
            Op::Upsert => OpDto::Upsert,
            Op::Delete => OpDto::Delete,
            Op::Truncate => OpDto::Truncate,
        }
    }
}

impl From<PrefetchReason> for PrefetchReasonDto {
    fn from(r: PrefetchReason) -> Self {
        match r {
            PrefetchReason::Start => PrefetchReasonDto::Start,
            PrefetchReason::Requested => PrefetchReasonDto::Requested,
            PrefetchReason::SelfHeal => PrefetchReasonDto::SelfHeal,
            PrefetchReason::Refill => PrefetchReasonDto::Refill,
            PrefetchReason::Table => PrefetchReasonDto::Table,
        }
    }
}

impl From<&SourceStatus> for SourceDto {
    fn from(s: &SourceStatus) -> Self {
        SourceDto {
            kind: s.kind.clone(),
            connected: s.connected,
            details: s.details.clone(),
        }
    }
}

impl ReconcileResponse {
    /// The wire form of a report that finished at `at`.
    pub fn new(r: &prefetch::ReconcileReport, at: SystemTime) -> Self {
        Self {
            checked: r.checked,
            missing: r.missing.clone(),
            orphaned: r.orphaned.clone(),
            stale: r.stale.clone(),
            changed_outside: r.changed_outside.clone(),
            in_flight: r.in_flight.clone(),
            repaired: r.repaired,
            verified: r.verified,
            elapsed_ms: millis(r.elapsed),
            at_ms: epoch_ms(at),
            totals: DriftTotalsDto {
                missing: r.totals.missing,
                orphaned: r.totals.orphaned,
                stale: r.totals.stale,
                changed_outside: r.totals.changed_outside,
                in_flight: r.totals.in_flight,
            },
            exact: r.exact,
        }
    }
}

impl From<prefetch::PendingFaults> for PendingFaultsDto {
    fn from(p: prefetch::PendingFaults) -> Self {
        Self {
            drop: p.drop,
            duplicate: p.duplicate,
            reorder: p.reorder,
            delay: p.delay,
            outage_ms: u64::try_from(p.outage.as_millis()).unwrap_or(u64::MAX),
        }
    }
}

impl CacheEntryDto {
    /// The dashboard form of a cached entry, its TTL read at `now_ms`.
    pub fn from_entry(e: CachedEntry, now_ms: i64) -> Self {
        CacheEntryDto {
            id: e.id,
            fields: e.fields,
            expires_at_ms: expires_at(e.ttl, now_ms),
        }
    }
}

/// Absolute expiry of a key whose TTL was `ttl` at `now_ms`.
pub fn expires_at(ttl: Ttl, now_ms: i64) -> Option<i64> {
    match ttl {
        Ttl::Seconds(s) => Some(now_ms + i64::try_from(s).unwrap_or(i64::MAX / 2000) * 1000),
        Ttl::Persistent | Ttl::Missing => None,
    }
}
