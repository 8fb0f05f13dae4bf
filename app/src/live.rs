//! `use_live_state()`: the dashboard's state as signals, seeded from the
//! server-rendered snapshot and kept current by the `/events` feed.
//!
//! On the server (SSR) the state is just the snapshot. In the browser an
//! `EventSource` streams [`LiveEvent`]s into [`LiveState::apply`]; the browser
//! reconnects by itself after a dropped stream, and a closed one is reopened
//! after a second. Every connect starts with a full snapshot, so nothing
//! missed while disconnected is lost.

use std::collections::{BTreeMap, VecDeque};

use leptos::prelude::*;

use crate::model::*;

/// Most recent feed entries kept for the event log.
pub const LOG_CAPACITY: usize = 150;

/// State of the connection to the live feed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Connection {
    /// Rendered on the server, or the page has not connected yet.
    Connecting,
    /// Receiving events.
    Live,
    /// The stream dropped; the browser is retrying.
    Reconnecting,
}

impl Connection {
    pub fn as_str(self) -> &'static str {
        match self {
            Connection::Connecting => "connecting",
            Connection::Live => "live",
            Connection::Reconnecting => "disconnected",
        }
    }
}

/// One line of the event log.
#[derive(Clone, Debug, PartialEq)]
pub struct LogEntry {
    /// Monotonic number, for keyed rendering.
    pub n: u64,
    pub at_ms: i64,
    pub source: &'static str,
    pub op: &'static str,
    pub id: String,
    pub detail: String,
}

/// How one id compares between the primary and the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowStatus {
    /// Cached exactly as in the primary.
    Ok,
    /// Cached, but different from the primary.
    Stale,
    /// In the primary, not in the cache.
    Missing,
    /// In the cache, not in the primary.
    Orphaned,
    /// In neither (a row on its way out).
    Gone,
}

impl RowStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RowStatus::Ok => "ok",
            RowStatus::Stale => "stale",
            RowStatus::Missing => "missing",
            RowStatus::Orphaned => "orphaned",
            RowStatus::Gone => "gone",
        }
    }

    /// The status of an id with these two sides (the `id` field left out:
    /// it names the row, and a declared table's hash need not hold it).
    pub fn of(primary: Option<&Fields>, cached: Option<&Fields>) -> Self {
        let same = |p: &Fields, c: &Fields| {
            let data = |f: &Fields| f.iter().filter(|(k, _)| *k != "id").count();
            data(p) == data(c) && p.iter().all(|(k, v)| k == "id" || c.get(k) == Some(v))
        };
        match (primary, cached) {
            (Some(p), Some(c)) if same(p, c) => RowStatus::Ok,
            (Some(_), Some(_)) => RowStatus::Stale,
            (Some(_), None) => RowStatus::Missing,
            (None, Some(_)) => RowStatus::Orphaned,
            (None, None) => RowStatus::Gone,
        }
    }
}

/// One point of the live chart (one per second, the last minute kept).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Sample {
    /// Sync lag p50 and p99, read latency p99 (ms).
    pub lag_p50: f64,
    pub lag_p99: f64,
    pub read_p99: f64,
    /// Changes applied per second since the previous sample.
    pub applied_per_s: f64,
    applied_total: u64,
}

/// Samples kept for the chart.
pub const CHART_POINTS: usize = 60;

/// The live dashboard state. `Copy`: every field is an arena signal.
#[derive(Clone, Copy)]
pub struct LiveState {
    pub primary: RwSignal<BTreeMap<String, Fields>>,
    pub cache: RwSignal<BTreeMap<String, CacheEntryDto>>,
    pub stats: RwSignal<StatsDto>,
    pub worker: RwSignal<WorkerStateDto>,
    pub source: RwSignal<SourceDto>,
    pub external: RwSignal<ExternalWatch>,
    pub prefix: RwSignal<String>,
    pub ttl_seconds: RwSignal<u64>,
    pub connection: RwSignal<Connection>,
    pub log: RwSignal<VecDeque<LogEntry>>,
    /// The last reconciliation.
    pub reconcile: RwSignal<Option<ReconcileResponse>>,
    /// Whether fault injection is enabled on this server.
    pub faults: RwSignal<bool>,
    /// The page shown (`None`: the whole table, which is small).
    pub page: RwSignal<Option<PageDto>>,
    /// The fields shown beside the id, in order.
    pub columns: RwSignal<Vec<String>>,
    /// The tables the cache holds, when several, and the one shown.
    pub tables: RwSignal<(Vec<String>, Option<String>)>,
    /// The chart's points, oldest first.
    pub samples: RwSignal<VecDeque<Sample>>,
    /// Per-id change counters; a row flashes whenever its counter moves.
    pub changes: RwSignal<BTreeMap<String, u32>>,
    /// The server's clock as the browser estimates it, ticking.
    pub now_ms: RwSignal<i64>,
    /// Server clock minus browser clock, from the last snapshot.
    #[cfg_attr(not(feature = "hydrate"), allow(dead_code))]
    clock_offset_ms: RwSignal<i64>,
    log_seq: RwSignal<u64>,
}

impl LiveState {
    /// State equal to `snapshot` (what the server rendered).
    pub fn new(snapshot: &DashboardState) -> Self {
        let state = Self {
            primary: RwSignal::new(BTreeMap::new()),
            cache: RwSignal::new(BTreeMap::new()),
            stats: RwSignal::new(StatsDto::default()),
            worker: RwSignal::new(WorkerStateDto::Running),
            source: RwSignal::new(SourceDto::default()),
            external: RwSignal::new(snapshot.external),
            prefix: RwSignal::new(String::new()),
            ttl_seconds: RwSignal::new(0),
            connection: RwSignal::new(Connection::Connecting),
            log: RwSignal::new(VecDeque::new()),
            reconcile: RwSignal::new(None),
            faults: RwSignal::new(false),
            page: RwSignal::new(None),
            columns: RwSignal::new(Vec::new()),
            tables: RwSignal::new((Vec::new(), None)),
            samples: RwSignal::new(VecDeque::new()),
            changes: RwSignal::new(BTreeMap::new()),
            now_ms: RwSignal::new(snapshot.server_time_ms),
            clock_offset_ms: RwSignal::new(0),
            log_seq: RwSignal::new(0),
        };
        state.load(snapshot.clone());
        state
    }

    fn load(&self, s: DashboardState) {
        self.primary.set(
            s.primary
                .into_iter()
                .filter_map(|f| Some((f.get("id")?.clone(), f)))
                .collect(),
        );
        self.cache
            .set(s.cache.into_iter().map(|e| (e.id.clone(), e)).collect());
        self.worker.set(s.stats.worker);
        self.stats.set(s.stats);
        self.source.set(s.source);
        self.external.set(s.external);
        self.prefix.set(s.prefix);
        self.ttl_seconds.set(s.ttl_seconds);
        self.reconcile.set(s.reconcile);
        self.faults.set(s.faults);
        self.page.set(s.page);
        self.tables.set((s.tables, s.table));
        self.columns.set(if s.columns.is_empty() {
            CATEGORY_FIELDS[1..]
                .iter()
                .map(|f| (*f).to_owned())
                .collect()
        } else {
            s.columns
        });
    }

    /// Adds a chart point from the current counters.
    pub fn sample(&self) {
        let stats = self.stats.get_untracked();
        self.samples.update(|points| {
            let previous = points
                .back()
                .map_or(stats.sync_events_applied, |p| p.applied_total);
            points.push_back(Sample {
                lag_p50: stats.sync_lag_ms_p50,
                lag_p99: stats.sync_lag_ms_p99,
                read_p99: stats.read_latency_ms_p99,
                applied_per_s: stats.sync_events_applied.saturating_sub(previous) as f64,
                applied_total: stats.sync_events_applied,
            });
            while points.len() > CHART_POINTS {
                points.pop_front();
            }
        });
    }

    /// Applies one feed event.
    pub fn apply(&self, event: LiveEvent) {
        match event {
            LiveEvent::Snapshot(s) => {
                let keys = s.cache.len();
                self.sync_clock(s.server_time_ms);
                self.load(*s);
                self.push_log("feed", "snapshot", "", format!("{keys} keys cached"));
            }
            LiveEvent::Primary { op, id, fields, .. } => {
                self.primary.update(|p| match (op, fields) {
                    (OpDto::Truncate, _) => p.clear(),
                    (_, Some(f)) => {
                        p.insert(id.clone(), f);
                    }
                    (_, None) => {
                        p.remove(&id);
                    }
                });
                self.touch(&id);
                self.push_log("primary", op.as_str(), &id, String::new());
            }
            LiveEvent::Cache {
                id,
                fields,
                expires_at_ms,
                source,
                lag_ms,
            } => self.apply_cache(id, fields, expires_at_ms, source, lag_ms),
            LiveEvent::Cleared { deleted } => {
                let ids: Vec<String> = self.cache.with_untracked(|c| c.keys().cloned().collect());
                self.cache.set(BTreeMap::new());
                for id in &ids {
                    self.touch(id);
                }
                self.push_log("admin", "clear", "", format!("{deleted} keys deleted"));
            }
            LiveEvent::Prefetched {
                loaded,
                swept,
                elapsed_ms,
                reason,
            } => {
                let source = match reason {
                    PrefetchReasonDto::SelfHeal | PrefetchReasonDto::Refill => "heal",
                    PrefetchReasonDto::Start
                    | PrefetchReasonDto::Requested
                    | PrefetchReasonDto::Table => "admin",
                };
                let detail = format!(
                    "{loaded} records, {swept} swept, in {} ms",
                    fixed(elapsed_ms, 1)
                );
                self.push_log(source, "prefetch", "", detail);
            }
            LiveEvent::StateLost { reason } => {
                self.push_log("heal", "state lost", "", reason);
            }
            LiveEvent::Stats(stats) => {
                if self.worker.get_untracked() != stats.worker {
                    self.worker.set(stats.worker);
                }
                self.stats.set(stats);
            }
            LiveEvent::Source(source) => self.source.set(source),
            LiveEvent::Reconciled(report) => self.apply_reconciled(report),
            LiveEvent::Fault { kind, id, outcome } => {
                self.log_fault(&kind, &id, outcome.as_deref())
            }
            LiveEvent::Worker { state } => {
                self.push_log("sync", state.as_str(), "", "worker state".into());
                self.worker.set(state);
            }
        }
    }

    fn apply_cache(
        &self,
        id: String,
        fields: Option<Fields>,
        expires_at_ms: Option<i64>,
        source: WriteOrigin,
        lag_ms: Option<f64>,
    ) {
        let op = if fields.is_some() { "write" } else { "delete" };
        self.cache.update(|c| match fields {
            Some(fields) => {
                c.insert(
                    id.clone(),
                    CacheEntryDto {
                        id: id.clone(),
                        fields,
                        expires_at_ms,
                    },
                );
            }
            None => {
                c.remove(&id);
            }
        });
        if source == WriteOrigin::Renewed {
            return; // only the TTL moved: nothing to flash or log
        }
        self.touch(&id);
        let detail = lag_ms
            .map(|l| format!("lag {} ms", fixed(l, 2)))
            .unwrap_or_default();
        self.push_log(source.as_str(), op, &id, detail);
    }

    fn apply_reconciled(&self, report: ReconcileResponse) {
        let found = report.totals.drift();
        self.push_log(
            "reconcile",
            if report.repaired > 0 {
                "repair"
            } else {
                "check"
            },
            "",
            format!(
                "{} checked, {found} drifted, {} repaired",
                report.checked, report.repaired
            ),
        );
        self.reconcile.set(Some(report));
    }

    fn log_fault(&self, kind: &str, id: &str, outcome: Option<&str>) {
        let detail = match outcome {
            Some("stale") => "refused by the version guard".to_owned(),
            Some(o) => o.to_owned(),
            None => "never applied".to_owned(),
        };
        let op = match kind {
            "dropped" => "dropped",
            "duplicated" => "duplicated",
            _ => "reordered",
        };
        self.push_log("fault", op, id, detail);
    }

    fn touch(&self, id: &str) {
        self.changes
            .update(|c| *c.entry(id.to_owned()).or_default() += 1);
    }

    fn push_log(&self, source: &'static str, op: &'static str, id: &str, detail: String) {
        let n = self.log_seq.get_untracked() + 1;
        self.log_seq.set(n);
        let entry = LogEntry {
            n,
            at_ms: self.server_clock(),
            source,
            op,
            id: id.to_owned(),
            detail,
        };
        self.log.update(|log| {
            log.push_front(entry);
            log.truncate(LOG_CAPACITY);
        });
    }

    #[cfg_attr(not(feature = "hydrate"), allow(unused_variables))]
    fn sync_clock(&self, server_time_ms: i64) {
        #[cfg(feature = "hydrate")]
        {
            let offset = server_time_ms - js_sys::Date::now() as i64;
            self.clock_offset_ms.set(offset);
            self.now_ms.set(server_time_ms);
        }
    }

    /// The server's clock as of this moment (the snapshot time on the server).
    fn server_clock(&self) -> i64 {
        #[cfg(feature = "hydrate")]
        {
            js_sys::Date::now() as i64 + self.clock_offset_ms.get_untracked()
        }
        #[cfg(not(feature = "hydrate"))]
        {
            self.now_ms.get_untracked()
        }
    }

    /// Seconds of TTL left for a key expiring at `expires_at_ms` (-1: none).
    pub fn ttl_left(&self, expires_at_ms: Option<i64>) -> i64 {
        match expires_at_ms {
            Some(at) => ((at - self.now_ms.get()) as f64 / 1000.0).ceil().max(0.0) as i64,
            None => -1,
        }
    }

    /// Status of one id.
    pub fn status_of(&self, id: &str) -> RowStatus {
        self.primary.with(|p| {
            self.cache
                .with(|c| RowStatus::of(p.get(id), c.get(id).map(|e| &e.fields)))
        })
    }

    /// Every id in the primary or the cache, sorted.
    pub fn all_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.primary.with(|p| p.keys().cloned().collect());
        self.cache.with(|c| ids.extend(c.keys().cloned()));
        ids.sort();
        ids.dedup();
        ids
    }
}

/// Creates the dashboard state from the server's snapshot and, in the
/// browser, connects it to the live feed and starts the TTL clock.
pub fn use_live_state(snapshot: &DashboardState) -> LiveState {
    let state = LiveState::new(snapshot);
    #[cfg(feature = "hydrate")]
    {
        Effect::new(move |_| {
            browser::connect(state);
            browser::start_clock(state);
        });
    }
    state
}

#[cfg(feature = "hydrate")]
mod browser;
