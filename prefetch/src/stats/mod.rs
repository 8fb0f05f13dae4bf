//! Lock-free counters and a lag histogram, read out as a [`Stats`] value.
//!
//! The read path bumps one atomic per call and the sync worker a handful per
//! batch; nothing here takes a lock, so stats never contend with traffic.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// A point-in-time copy of the cache's counters. Raw values: rounding and
/// units for display belong to whoever shows them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    /// Reads that found the key.
    pub hits: u64,
    /// Reads that did not.
    pub misses: u64,
    /// Records written by (re-)prefetches since the last reset.
    pub prefetched: u64,
    /// Changes applied to Redis (changes superseded within a batch count
    /// once each: their effect is in the newer one).
    pub sync_events_applied: u64,
    /// Changes the version guard refused because Redis already held the
    /// same or a newer version (duplicates, replays, reorders, changes older
    /// than the last snapshot).
    pub sync_events_stale: u64,
    /// Malformed changes (no id, an upsert with no fields) that were
    /// skipped instead of applied.
    pub sync_events_skipped: u64,
    /// Atomic calls the sync path made to apply those changes.
    pub sync_batches: u64,
    /// Failed apply attempts that were retried.
    pub sync_retries: u64,
    /// Time from a source commit to its write being visible in Redis.
    pub sync_lag: LagSummary,
    /// Redis latency of reads through the cache.
    pub read_latency: LagSummary,
    /// Re-prefetches (requested or self-healing) since the last reset.
    pub reprefetches: u64,
    /// Times the engine found Redis without its state and refilled it.
    pub self_heals: u64,
    /// Apply attempts Redis refused for lack of memory (`OOM`); each is
    /// retried, nothing is dropped.
    pub sync_oom_retries: u64,
    /// Times sync came back after being stopped long enough for keys to
    /// expire, and the cache was refilled.
    pub refills: u64,
    /// Changes visible in Redis within 10 ms, 100 ms and 1 s of their
    /// commit in the source (out of `sync_lag.count`).
    pub visible_within: [u64; 3],
    /// Reads that answered with an older value (or a miss) while a newer
    /// change of the key had already been received from the source and not
    /// yet applied.
    pub stale_reads: u64,
    /// Misses by kind: a tombstone said the row was deleted.
    pub misses_deleted: u64,
    /// Misses of ids the source does not have (by the membership filter).
    pub misses_absent: u64,
    /// Misses of ids the source has whose key was gone: repaired in the
    /// background.
    pub misses_lost: u64,
    /// Misses before the membership filter was built.
    pub misses_unknown: u64,
    /// Lost keys written back from the source.
    pub lost_repaired: u64,
    /// Records read from the source to restore a lost key (including the
    /// membership filter's false alarms, which find nothing).
    pub repair_source_reads: u64,
}

/// The bounds of [`Stats::visible_within`], in seconds.
pub const VISIBLE_WITHIN: [f64; 3] = [0.01, 0.1, 1.0];

impl Stats {
    /// `hits / (hits + misses)`, between 0 and 1 (0 when nothing was read).
    pub fn hit_ratio(&self) -> f64 {
        let total = self.hits + self.misses;
        if total == 0 {
            0.0
        } else {
            self.hits as f64 / total as f64
        }
    }
}

/// The reads and changes of one table of a cache of several, since the
/// last reset.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TableStats {
    /// The table's key prefix.
    pub prefix: String,
    /// Reads of its keys that found one.
    pub hits: u64,
    /// Reads of its keys that did not.
    pub misses: u64,
    /// Its changes applied to Redis.
    pub applied: u64,
}

/// A latency distribution: count, mean, median, 99th percentile and maximum.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LagSummary {
    /// Values recorded.
    pub count: u64,
    /// Their mean.
    pub mean: Duration,
    /// Median (histogram bucket midpoint, within 1/16 of the true value).
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Largest value seen.
    pub max: Duration,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) stale_reads: AtomicU64,
    /// Misses by [`MissKind`](crate::MissKind) (in its order).
    pub(crate) miss_kinds: [AtomicU64; 4],
    pub(crate) lost_repaired: AtomicU64,
    pub(crate) repair_source_reads: AtomicU64,
    pub(crate) prefetched: AtomicU64,
    pub(crate) applied: AtomicU64,
    pub(crate) stale: AtomicU64,
    pub(crate) skipped: AtomicU64,
    pub(crate) batches: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) reprefetches: AtomicU64,
    pub(crate) self_heals: AtomicU64,
    pub(crate) refills: AtomicU64,
    pub(crate) oom: AtomicU64,
    pub(crate) lag: LagHistogram,
    /// Redis latency of reads, in microseconds.
    pub(crate) reads: LagHistogram,
    /// Changes per applied batch (the unit is one change, not a µs).
    pub(crate) batch: LagHistogram,
    /// Per table, when the cache holds several.
    pub(crate) tables: PerTable,
}

/// What is counted per table.
#[derive(Clone, Copy, Debug)]
pub(crate) enum TableCount {
    Hit,
    Miss,
    Applied,
}

#[derive(Default)]
struct TableCounters {
    hits: AtomicU64,
    misses: AtomicU64,
    applied: AtomicU64,
}

/// Counters per table key prefix, made on first use: one read lock and
/// one atomic per count (the list of tables is short).
#[derive(Default)]
pub(crate) struct PerTable {
    by_prefix: RwLock<HashMap<String, Arc<TableCounters>>>,
}

impl PerTable {
    /// Counts `n` of `what` for the table among `tables` whose prefix `key`
    /// starts with (nothing when none).
    pub(crate) fn count(&self, tables: &[String], key: &str, what: TableCount, n: u64) {
        let Some(prefix) = tables.iter().find(|t| key.starts_with(t.as_str())) else {
            return;
        };
        let known = self
            .by_prefix
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(prefix)
            .cloned();
        let counters = known.unwrap_or_else(|| {
            let mut map = self.by_prefix.write().unwrap_or_else(|p| p.into_inner());
            Arc::clone(map.entry(prefix.clone()).or_default())
        });
        let counter = match what {
            TableCount::Hit => &counters.hits,
            TableCount::Miss => &counters.misses,
            TableCount::Applied => &counters.applied,
        };
        counter.fetch_add(n, Relaxed);
    }

    /// The counts of each of `tables`, in their order.
    pub(crate) fn snapshot(&self, tables: &[String]) -> Vec<TableStats> {
        let map = self.by_prefix.read().unwrap_or_else(|p| p.into_inner());
        tables
            .iter()
            .map(|prefix| {
                let c = map.get(prefix);
                let load =
                    |f: fn(&TableCounters) -> &AtomicU64| c.map_or(0, |c| f(c).load(Relaxed));
                TableStats {
                    prefix: prefix.clone(),
                    hits: load(|c| &c.hits),
                    misses: load(|c| &c.misses),
                    applied: load(|c| &c.applied),
                }
            })
            .collect()
    }

    fn reset(&self) {
        self.by_prefix
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}

impl Counters {
    pub(crate) fn snapshot(&self) -> Stats {
        Stats {
            hits: self.hits.load(Relaxed),
            misses: self.misses.load(Relaxed),
            prefetched: self.prefetched.load(Relaxed),
            sync_events_applied: self.applied.load(Relaxed),
            sync_events_stale: self.stale.load(Relaxed),
            sync_events_skipped: self.skipped.load(Relaxed),
            sync_batches: self.batches.load(Relaxed),
            sync_retries: self.retries.load(Relaxed),
            sync_lag: self.lag.summary(),
            read_latency: self.reads.summary(),
            reprefetches: self.reprefetches.load(Relaxed),
            self_heals: self.self_heals.load(Relaxed),
            sync_oom_retries: self.oom.load(Relaxed),
            refills: self.refills.load(Relaxed),
            visible_within: {
                let within = self.lag.export(&VISIBLE_WITHIN, 1e-6);
                std::array::from_fn(|i| within.buckets.get(i).map_or(0, |b| b.1))
            },
            stale_reads: self.stale_reads.load(Relaxed),
            misses_deleted: self.miss_kinds[0].load(Relaxed),
            misses_absent: self.miss_kinds[1].load(Relaxed),
            misses_lost: self.miss_kinds[2].load(Relaxed),
            misses_unknown: self.miss_kinds[3].load(Relaxed),
            lost_repaired: self.lost_repaired.load(Relaxed),
            repair_source_reads: self.repair_source_reads.load(Relaxed),
        }
    }

    pub(crate) fn histograms(&self) -> Histograms {
        const SECONDS: [f64; 14] = [
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            5.0,
        ];
        const SIZES: [f64; 10] = [
            1.0, 2.0, 5.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 2000.0, 4096.0,
        ];
        Histograms {
            sync_lag_seconds: self.lag.export(&SECONDS, 1e-6),
            read_seconds: self.reads.export(&SECONDS, 1e-6),
            batch_size: self.batch.export(&SIZES, 1.0),
        }
    }

    pub(crate) fn reset(&self) {
        for c in [
            &self.hits,
            &self.misses,
            &self.prefetched,
            &self.applied,
            &self.stale,
            &self.skipped,
            &self.batches,
            &self.retries,
            &self.reprefetches,
            &self.self_heals,
            &self.refills,
            &self.oom,
            &self.stale_reads,
            &self.lost_repaired,
            &self.repair_source_reads,
        ]
        .into_iter()
        .chain(&self.miss_kinds)
        {
            c.store(0, Relaxed);
        }
        self.lag.reset();
        self.reads.reset();
        self.batch.reset();
        self.tables.reset();
    }
}

/// A distribution read out for export: cumulative counts at upper bounds
/// (the last bound is `+Inf`'s neighbour; the total is `count`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HistogramSnapshot {
    /// Values recorded.
    pub count: u64,
    /// Their sum, in the exported unit.
    pub sum: f64,
    /// `(upper bound, values at or below it)`, ascending.
    pub buckets: Vec<(f64, u64)>,
}

/// The cache's distributions, for metrics.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Histograms {
    /// Source commit to visible in Redis, in seconds.
    pub sync_lag_seconds: HistogramSnapshot,
    /// Redis latency of reads, in seconds.
    pub read_seconds: HistogramSnapshot,
    /// Changes per applied batch.
    pub batch_size: HistogramSnapshot,
}

/// Sub-buckets per power of two: percentiles are exact below 16 µs and within
/// 1/16 (6.25 %) of the true value above.
const SUB_BITS: u32 = 4;
const SUB: u64 = 1 << SUB_BITS;
const BUCKETS: usize = ((64 - SUB_BITS as usize) + 1) * SUB as usize;

/// A log-linear histogram of microsecond values made of atomics, so recording
/// from one task and reading from many needs no lock.
pub(crate) struct LagHistogram {
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    sum_us: AtomicU64,
    max_us: AtomicU64,
}

impl Default for LagHistogram {
    fn default() -> Self {
        Self {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
            max_us: AtomicU64::new(0),
        }
    }
}

fn bucket_of(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    let p = 63 - v.leading_zeros(); // >= SUB_BITS
    let shift = p - SUB_BITS;
    let mantissa = (v >> shift) - SUB; // 0..SUB
    ((shift as u64 + 1) * SUB + mantissa) as usize
}

/// Midpoint of a bucket's value range.
fn bucket_mid(index: usize) -> f64 {
    let group = index as u64 / SUB;
    let sub = index as u64 % SUB;
    if group == 0 {
        return sub as f64;
    }
    let shift = group - 1;
    let low = (SUB + sub) << shift;
    let width = 1u64 << shift;
    low as f64 + (width as f64 - 1.0) / 2.0
}

impl LagHistogram {
    pub(crate) fn record(&self, lag: Duration) {
        let us = u64::try_from(lag.as_micros()).unwrap_or(u64::MAX);
        self.buckets[bucket_of(us)].fetch_add(1, Relaxed);
        self.count.fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
        self.max_us.fetch_max(us, Relaxed);
    }

    /// Cumulative counts at `bounds` (in the exported unit; a recorded value
    /// is `raw * scale` in it), to the precision of the buckets (6.25 %).
    pub(crate) fn export(&self, bounds: &[f64], scale: f64) -> HistogramSnapshot {
        let mut buckets: Vec<(f64, u64)> = bounds.iter().map(|&b| (b, 0)).collect();
        for (i, bucket) in self.buckets.iter().enumerate() {
            let c = bucket.load(Relaxed);
            if c == 0 {
                continue;
            }
            let value = bucket_mid(i) * scale;
            for (bound, total) in buckets.iter_mut() {
                if value <= *bound {
                    *total += c;
                }
            }
        }
        HistogramSnapshot {
            count: self.count.load(Relaxed),
            sum: self.sum_us.load(Relaxed) as f64 * scale,
            buckets,
        }
    }

    /// Count, mean, p50, p99 and max in one pass.
    pub(crate) fn summary(&self) -> LagSummary {
        let [p50, p99] = self.quantiles_us([0.50, 0.99]);
        let us = |v: f64| Duration::from_nanos((v * 1000.0).round() as u64);
        LagSummary {
            count: self.count.load(Relaxed),
            mean: us(self.mean_us()),
            p50: us(p50),
            p99: us(p99),
            max: Duration::from_micros(self.max_us()),
        }
    }

    fn mean_us(&self) -> f64 {
        let n = self.count.load(Relaxed);
        if n == 0 {
            0.0
        } else {
            self.sum_us.load(Relaxed) as f64 / n as f64
        }
    }

    fn max_us(&self) -> u64 {
        self.max_us.load(Relaxed)
    }

    /// Several quantiles from one pass over the buckets (every API reply
    /// carries stats, so this is on the read path). Nothing recorded: zeros.
    fn quantiles_us<const N: usize>(&self, qs: [f64; N]) -> [f64; N] {
        let mut out = [0.0; N];
        let total = self.count.load(Relaxed);
        if total == 0 {
            return out;
        }
        let max = self.max_us() as f64;
        let ranks = qs.map(|q| ((q * total as f64).ceil() as u64).clamp(1, total));
        let mut seen = 0;
        let mut next = 0;
        for (i, bucket) in self.buckets.iter().enumerate() {
            let c = bucket.load(Relaxed);
            if c == 0 {
                continue;
            }
            seen += c;
            while next < N && seen >= ranks[next] {
                // Never report more than the largest value actually seen.
                out[next] = bucket_mid(i).min(max);
                next += 1;
            }
            if next == N {
                return out;
            }
        }
        // Counts raced ahead of the buckets (a concurrent record): use max.
        for o in out.iter_mut().skip(next) {
            *o = max;
        }
        out
    }

    fn reset(&self) {
        for b in self.buckets.iter() {
            b.store(0, Relaxed);
        }
        self.count.store(0, Relaxed);
        self.sum_us.store(0, Relaxed);
        self.max_us.store(0, Relaxed);
    }
}

#[cfg(test)]
mod tests;
