//! The engine's counters, for `GET /metrics`, in the Prometheus/OpenMetrics text
//! format, read from the engine at scrape time (nothing is counted twice).
//!
//! Names are prefixed `prefetch_`, in base units, and mirror RDI's where
//! they have a twin: `prefetch_source_connected` (RDI `Connected`),
//! `prefetch_source_behind_seconds` (`MilliSecondsBehindSource`),
//! `prefetch_sync_lag_seconds` (`rdi_stream_event_latency_ms`),
//! `prefetch_sync_events_applied_total` / `…_rejected_total`
//! (`processed_records_total` / `rejected_records_total`),
//! `prefetch_sync_batch_size` (`rdi_processor_batch_size`).

use std::time::UNIX_EPOCH;

use app::api::ServerContext;
use prefetch::HistogramSnapshot;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

/// Reads the engine on every scrape.
#[derive(Debug)]
pub struct EngineCollector {
    ctx: ServerContext,
}

/// A registry holding the engine's collector.
pub fn registry(ctx: ServerContext) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(EngineCollector { ctx }));
    registry
}

fn counter(enc: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let m = ConstCounter::new(v);
    m.encode(enc.encode_descriptor(name, help, None, m.metric_type())?)
}

fn gauge(enc: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: f64) -> std::fmt::Result {
    let m = ConstGauge::new(v);
    m.encode(enc.encode_descriptor(name, help, None, m.metric_type())?)
}

fn histogram(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    h: &HistogramSnapshot,
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
    m.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
        h.sum,
        h.count,
        &per_bucket(h),
        None,
    )
}

/// The engine's cumulative counts as the encoder takes them: each bucket's
/// own count (the encoder adds them up), ending with `+Inf`.
fn per_bucket(h: &HistogramSnapshot) -> Vec<(f64, u64)> {
    let mut below = 0;
    let mut out: Vec<(f64, u64)> = h
        .buckets
        .iter()
        .map(|&(bound, cumulative)| {
            let own = cumulative.saturating_sub(below);
            below = below.max(cumulative);
            (bound, own)
        })
        .collect();
    if out.last().is_none_or(|(bound, _)| bound.is_finite()) {
        out.push((f64::INFINITY, h.count.saturating_sub(below)));
    }
    out
}

/// The histograms' names and help.
type Named = (&'static str, &'static str);
const LAG: Named = (
    "prefetch_sync_lag_seconds",
    "Source commit to visible in Redis.",
);
const VISIBILITY: Named = (
    "prefetch_visibility_seconds",
    "Consistency SLI: source commit (its own timestamp) to the atomic write in Redis; the same measurements as prefetch_sync_lag_seconds.",
);
const BATCH: Named = ("prefetch_sync_batch_size", "Changes per applied batch.");
const READ: Named = (
    "prefetch_read_seconds",
    "Redis latency of reads through the cache.",
);

/// The plain counters of the cache and the worker: name, help, value.
#[rustfmt::skip]
fn counters_of(c: &prefetch::Stats) -> [(&'static str, &'static str, u64); 10] {
    [
        ("prefetch_reads", "Reads through the cache (hits and misses).", c.hits + c.misses),
        ("prefetch_stale_reads", "Reads that found an older value (or a miss) while a newer change of the key had been received from the source and not yet applied.", c.stale_reads),
        ("prefetch_lost_keys_restored", "Lost keys (the source has the row, the key was gone) written back from the source.", c.lost_repaired),
        ("prefetch_repair_source_reads", "Records read from the source to restore lost keys, the membership filter's false alarms included.", c.repair_source_reads),
        ("prefetch_sync_events_applied", "Changes applied to Redis.", c.sync_events_applied),
        ("prefetch_sync_events_stale", "Changes the version guard refused: Redis held the same or a newer version.", c.sync_events_stale),
        ("prefetch_sync_events_rejected", "Malformed changes skipped (no id, an upsert with no fields).", c.sync_events_skipped),
        ("prefetch_sync_batches", "Atomic calls that applied changes.", c.sync_batches),
        ("prefetch_sync_retries", "Failed apply attempts, each retried.", c.sync_retries),
        ("prefetch_sync_oom_retries", "Apply attempts Redis refused at maxmemory, each retried.", c.sync_oom_retries),
    ]
}

impl EngineCollector {
    /// The cache's and the sync worker's counters and histograms.
    fn sync_series(
        &self,
        e: &mut DescriptorEncoder<'_>,
        c: &prefetch::Stats,
        h: &prefetch::Histograms,
    ) -> std::fmt::Result {
        counter(
            e,
            "prefetch_cache_hits",
            "Reads that found the key.",
            c.hits,
        )?;
        self.miss_series(e, c)?;
        let counters = counters_of(c);
        for (name, help, v) in counters {
            counter(e, name, help, v)?;
        }
        let histograms = [
            (LAG, &h.sync_lag_seconds),
            (VISIBILITY, &h.sync_lag_seconds),
            (BATCH, &h.batch_size),
            (READ, &h.read_seconds),
        ];
        for ((name, help), v) in histograms {
            histogram(e, name, help, v)?;
        }
        Ok(())
    }

    /// Misses by `kind`; `unknown` also holds reads made below the
    /// engine's read (unclassified), so the kinds add up to every miss.
    fn miss_series(&self, e: &mut DescriptorEncoder<'_>, c: &prefetch::Stats) -> std::fmt::Result {
        let classified = c.misses_deleted + c.misses_absent + c.misses_lost;
        let kinds = [
            ("deleted", c.misses_deleted),
            ("absent", c.misses_absent),
            ("lost", c.misses_lost),
            ("unknown", c.misses.saturating_sub(classified)),
        ];
        let mut family = e.encode_descriptor(
            "prefetch_cache_misses",
            "Reads that did not find the key, by why: deleted (a tombstone), absent (not in the source), lost (in the source, key gone), unknown (not classified).",
            None,
            MetricType::Counter,
        )?;
        for (kind, n) in kinds {
            ConstCounter::new(n).encode(family.encode_family(&[("kind", kind)])?)?;
        }
        Ok(())
    }

    /// The source's, the worker's and Redis memory's figures.
    fn engine_series(
        &self,
        e: &mut DescriptorEncoder<'_>,
        s: &prefetch::EngineStats,
    ) -> std::fmt::Result {
        gauge(
            e,
            "prefetch_sync_backlog",
            "Changes the source produced that are not yet in Redis.",
            s.backlog as f64,
        )?;
        gauge(
            e,
            "prefetch_source_behind_seconds",
            "How far Redis is behind the source (0 when nothing waits).",
            s.behind.as_secs_f64(),
        )?;
        gauge(
            e,
            "prefetch_source_connected",
            "1 when the source is reachable.",
            if s.source.connected { 1.0 } else { 0.0 },
        )?;
        counter(
            e,
            "prefetch_source_reads",
            "Snapshots read from the source.",
            self.ctx.primary.reads(),
        )?;
        gauge(
            e,
            "prefetch_worker_running",
            "1 while the sync worker applies changes (0: paused, retrying or stopped).",
            if s.worker == prefetch::WorkerState::Running {
                1.0
            } else {
                0.0
            },
        )?;
        counter(
            e,
            "prefetch_reprefetches",
            "Re-prefetches (requested or self-healing).",
            s.cache.reprefetches,
        )?;
        counter(
            e,
            "prefetch_self_heals",
            "Times Redis had lost the cache's state and it was refilled.",
            s.cache.self_heals,
        )?;
        self.renewal_series(e, s)?;
        gauge(
            e,
            "prefetch_membership_filter_bytes",
            "Memory of the filter of ids the source has (what tells a lost key from an absent id).",
            self.ctx.engine.cache().membership().bytes as f64,
        )?;
        let memory = s.memory.clone().unwrap_or_default();
        gauge(
            e,
            "prefetch_redis_memory_used_bytes",
            "Redis used_memory.",
            memory.used as f64,
        )?;
        gauge(
            e,
            "prefetch_redis_memory_budget_bytes",
            "maxmemory less the headroom (0: no limit).",
            memory.budget as f64,
        )?;
        Ok(())
    }

    /// TTL renewal and the refills after sync was stopped.
    fn renewal_series(
        &self,
        e: &mut DescriptorEncoder<'_>,
        s: &prefetch::EngineStats,
    ) -> std::fmt::Result {
        gauge(
            e,
            "prefetch_ttl_renewal_active",
            "1 while cached keys' TTLs are renewed (0: sync is not healthy, keys expire).",
            if s.renewal.active { 1.0 } else { 0.0 },
        )?;
        counter(
            e,
            "prefetch_ttl_renewed_keys",
            "Keys whose TTL renewal extended.",
            s.renewal.renewed,
        )?;
        counter(
            e,
            "prefetch_refills",
            "Refills after sync was stopped long enough for keys to expire.",
            s.cache.refills,
        )?;
        Ok(())
    }

    /// What the last reconciliation found.
    fn reconcile_series(&self, e: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        let last = self.ctx.engine.last_reconcile();
        let mut drift = e.encode_descriptor(
            "prefetch_drift_keys",
            "Differences the last reconciliation found, by kind.",
            None,
            MetricType::Gauge,
        )?;
        for (kind, n) in last.as_ref().map(|(_, r)| r.counts()).unwrap_or([
            ("missing", 0),
            ("orphaned", 0),
            ("stale", 0),
            ("changed_outside", 0),
            ("in_flight", 0),
        ]) {
            let labels = [("kind", kind)];
            ConstGauge::new(n as f64).encode(drift.encode_family(&labels)?)?;
        }
        let (at, took) = last
            .map(|(at, r)| {
                (
                    at.duration_since(UNIX_EPOCH)
                        .map(|d| d.as_secs_f64())
                        .unwrap_or(0.0),
                    r.elapsed.as_secs_f64(),
                )
            })
            .unwrap_or((0.0, 0.0));
        gauge(
            e,
            "prefetch_reconcile_last_timestamp_seconds",
            "When the last reconciliation finished (0: never).",
            at,
        )?;
        gauge(
            e,
            "prefetch_reconcile_duration_seconds",
            "How long the last reconciliation took.",
            took,
        )?;
        Ok(())
    }
}

/// A per-table counter family: its name, help, and value of a table.
type Family = (
    &'static str,
    &'static str,
    fn(&app::model::TableStatsDto) -> u64,
);

impl EngineCollector {
    /// Reads and changes per table, labelled `table`, when the cache holds
    /// several (none for one: the totals are that table's).
    fn table_series(&self, e: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        let rows = self.ctx.table_stats();
        if rows.is_empty() {
            return Ok(());
        }
        let families: [Family; 3] = [
            (
                "prefetch_table_cache_hits",
                "Reads of the table's keys that found one.",
                |s| s.hits,
            ),
            (
                "prefetch_table_cache_misses",
                "Reads of the table's keys that did not.",
                |s| s.misses,
            ),
            (
                "prefetch_table_sync_events_applied",
                "The table's changes applied to Redis.",
                |s| s.applied,
            ),
        ];
        for (name, help, value) in families {
            let mut family = e.encode_descriptor(name, help, None, MetricType::Counter)?;
            for t in &rows {
                let labels = [("table", t.name.as_str())];
                ConstCounter::new(value(t)).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

impl Collector for EngineCollector {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> std::fmt::Result {
        let engine = &self.ctx.engine;
        let s = engine.stats();
        let h = engine.cache().histograms();
        self.sync_series(&mut enc, &s.cache, &h)?;
        self.engine_series(&mut enc, &s)?;
        self.reconcile_series(&mut enc)?;
        self.table_series(&mut enc)
    }
}
