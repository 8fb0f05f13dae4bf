//! Wire types: one set of serde types for the JSON API, the live feed and
//! the browser. The server-only conversions from `prefetch` types sit at the
//! bottom behind the `ssr` feature.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A record's fields by name.
pub type Fields = BTreeMap<String, String>;

/// Fields the demo's category records carry, in display order.
pub const CATEGORY_FIELDS: [&str; 5] = ["id", "name", "display_order", "featured", "parent_id"];

/// Fields the UI offers to update (the id cannot change).
pub const UPDATABLE_FIELDS: [&str; 4] = ["name", "display_order", "featured", "parent_id"];

/// Cache and primary counters, with the reference demos' keys first.
/// Rounded here, at the edge: the core hands out raw counts and durations.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StatsDto {
    pub hits: u64,
    pub misses: u64,
    pub hit_rate_pct: f64,
    pub prefetched: u64,
    pub sync_events_applied: u64,
    pub sync_lag_ms_avg: f64,
    pub primary_reads_total: u64,
    pub primary_read_latency_ms: u64,
    pub sync_lag_ms_p50: f64,
    pub sync_lag_ms_p99: f64,
    pub sync_lag_ms_max: f64,
    /// Changes the version guard refused: Redis already held the same or
    /// a newer version.
    pub sync_events_stale: u64,
    pub sync_events_skipped: u64,
    pub sync_batches: u64,
    pub sync_retries: u64,
    pub sync_backlog: u64,
    pub reprefetches: u64,
    /// Times Redis had lost the cache's state and it was refilled.
    pub self_heals: u64,
    pub source_connected: bool,
    /// How far Redis is behind the source (0 when nothing waits).
    pub source_behind_ms: f64,
    /// Apply attempts Redis refused at `maxmemory` (each retried).
    pub sync_oom_retries: u64,
    /// Redis latency of reads through the cache, p50 and p99.
    pub read_latency_ms_p50: f64,
    pub read_latency_ms_p99: f64,
    /// Redis `used_memory`, and the cache's budget (0: no limit).
    pub memory_used_bytes: u64,
    pub memory_budget_bytes: u64,
    pub worker: WorkerStateDto,
}

/// What the sync worker is doing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerStateDto {
    #[default]
    Running,
    Paused,
    Retrying,
    Stopped,
}

impl WorkerStateDto {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerStateDto::Running => "running",
            WorkerStateDto::Paused => "paused",
            WorkerStateDto::Retrying => "retrying",
            WorkerStateDto::Stopped => "stopped",
        }
    }
}

/// Upsert, delete, or truncate (every record gone).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpDto {
    Upsert,
    Delete,
    Truncate,
}

impl OpDto {
    pub fn as_str(self) -> &'static str {
        match self {
            OpDto::Upsert => "upsert",
            OpDto::Delete => "delete",
            OpDto::Truncate => "truncate",
        }
    }
}

/// Why the cache was (re-)loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrefetchReasonDto {
    Start,
    Requested,
    SelfHeal,
}

/// The source of truth, as the dashboard header shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceDto {
    /// `mock`, `postgres`, …
    pub kind: String,
    pub connected: bool,
    /// Labelled facts (server version, slot, confirmed position, …).
    pub details: Vec<(String, String)>,
}

/// `GET /dead-letters`: the change feed's dead letters.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DeadLettersResponse {
    /// Whether this server is a replica of a pipeline (`--pipeline`).
    pub enabled: bool,
    /// How many dead letters the feed holds.
    pub count: u64,
    /// The oldest of them (up to 100): entry id and reason.
    pub letters: Vec<DeadLetterDto>,
}

/// One dead letter.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DeadLetterDto {
    /// Its id in the dead-letter stream.
    pub id: String,
    /// Why it could not be applied.
    pub reason: String,
}

/// `POST /dead-letters/replay`: how many entries went back into the feed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReplayResponse {
    /// Entries put back (each applies only where it is newer).
    pub replayed: usize,
}

/// `POST /reconcile` and the drift panel: what the last reconciliation
/// found, ids sorted.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReconcileResponse {
    pub checked: usize,
    pub missing: Vec<String>,
    pub orphaned: Vec<String>,
    pub stale: Vec<String>,
    pub changed_outside: Vec<String>,
    pub in_flight: Vec<String>,
    pub repaired: usize,
    /// Keys found correct (their TTL was refreshed).
    pub verified: usize,
    pub elapsed_ms: f64,
    /// When it finished (server clock, ms since the epoch).
    pub at_ms: i64,
}

/// `POST /fault`: what is now queued for the sync worker.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FaultResponse {
    pub kind: String,
    pub pending: PendingFaultsDto,
}

/// Faults still to come.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PendingFaultsDto {
    pub drop: u32,
    pub duplicate: u32,
    pub reorder: u32,
    pub delay: u32,
    pub outage_ms: u64,
}

/// `POST /worker`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkerResponse {
    pub worker: WorkerStateDto,
}

/// `GET /categories`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CategoriesResponse {
    pub cache_ids: Vec<String>,
    pub primary_ids: Vec<String>,
}

/// `GET /read?id=`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReadResponse {
    pub id: String,
    pub record: Option<Fields>,
    pub hit: bool,
    pub redis_latency_ms: f64,
    /// Redis `TTL` semantics: seconds left, -1 no expiry, -2 missing.
    pub ttl_remaining: i64,
    pub stats: StatsDto,
}

/// `POST /update`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UpdateResponse {
    pub id: String,
    pub field: String,
    pub value: String,
    pub stats: StatsDto,
}

/// `POST /add`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AddResponse {
    pub id: String,
    pub record: Fields,
    pub stats: StatsDto,
}

/// `POST /delete`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeleteResponse {
    pub id: String,
    pub stats: StatsDto,
}

/// `POST /invalidate`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InvalidateResponse {
    pub id: String,
    pub deleted: bool,
    pub stats: StatsDto,
}

/// `POST /clear`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClearResponse {
    pub deleted: usize,
    pub stats: StatsDto,
}

/// `POST /reprefetch`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReprefetchResponse {
    pub loaded: usize,
    /// Keys removed because the snapshot no longer had them.
    pub swept: usize,
    pub elapsed_ms: f64,
    pub stats: StatsDto,
}

/// One cached key as the dashboard shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CacheEntryDto {
    pub id: String,
    pub fields: Fields,
    /// Server wall-clock time (ms since the epoch) the key expires at, or
    /// `None` when it has no expiry.
    pub expires_at_ms: Option<i64>,
}

/// Where a cache change came from (the `source` of a cache event).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WriteOrigin {
    /// The sync worker applied a primary change.
    Sync,
    /// An admin action (invalidate, clear, re-prefetch).
    Admin,
    /// Someone changed the key outside the app (e.g. `redis-cli`).
    External,
    /// Redis expired the key (its safety-net TTL ran out).
    Expired,
}

impl WriteOrigin {
    pub fn as_str(self) -> &'static str {
        match self {
            WriteOrigin::Sync => "sync",
            WriteOrigin::Admin => "admin",
            WriteOrigin::External => "external",
            WriteOrigin::Expired => "expired",
        }
    }
}

/// How the server notices cache changes made outside the app.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExternalWatch {
    /// Redis keyspace notifications (immediate).
    Keyspace,
    /// Notifications could not be enabled: a periodic diff of the cache.
    Polling,
}

/// Everything the dashboard shows, at one moment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DashboardState {
    /// Primary records by id.
    pub primary: Vec<Fields>,
    pub source: SourceDto,
    /// Cached records by id.
    pub cache: Vec<CacheEntryDto>,
    pub stats: StatsDto,
    pub prefix: String,
    pub ttl_seconds: u64,
    pub external: ExternalWatch,
    /// Server wall-clock time of the snapshot (ms since the epoch).
    pub server_time_ms: i64,
    /// The last reconciliation, if any.
    pub reconcile: Option<ReconcileResponse>,
    /// Whether the fault-injection endpoints are enabled.
    pub faults: bool,
}

/// One message of the live feed (`GET /events`), shared by the server and
/// the WASM client.
///
/// Serialised as JSON, externally tagged:
/// `{"worker": {"state": "paused"}}`. (Internal tagging would make serde
/// buffer every message before decoding it, and cost WASM size.)
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LiveEvent {
    /// The full current state: sent on connect and whenever a client must
    /// resynchronise (it fell behind, or the whole cache was reloaded).
    Snapshot(Box<DashboardState>),
    /// A primary mutation, in commit order.
    Primary {
        /// The change's version (`hi:lo:ord`).
        version: String,
        op: OpDto,
        id: String,
        /// The record's new fields (`None` for a delete).
        fields: Option<Fields>,
        at_ms: i64,
    },
    /// A cache key was written or deleted.
    Cache {
        id: String,
        /// The key's fields now (`None`: deleted).
        fields: Option<Fields>,
        expires_at_ms: Option<i64>,
        source: WriteOrigin,
        /// Time from the primary mutation to the write (sync writes only).
        lag_ms: Option<f64>,
    },
    /// Every key under the prefix was deleted.
    Cleared { deleted: usize },
    /// The cache was (re-)loaded from a snapshot (a snapshot of the
    /// dashboard follows).
    Prefetched {
        loaded: usize,
        swept: usize,
        elapsed_ms: f64,
        reason: PrefetchReasonDto,
    },
    /// Redis had lost the cache's state; a refill follows.
    StateLost { reason: String },
    /// Counters changed.
    Stats(StatsDto),
    /// The source's status changed.
    Source(SourceDto),
    /// A reconciliation finished.
    Reconciled(ReconcileResponse),
    /// An injected fault did something to one change: `kind` is dropped,
    /// duplicated or reordered; `outcome` what the version guard did
    /// (`applied`, `stale`, or `None`: never applied).
    Fault {
        kind: String,
        id: String,
        outcome: Option<String>,
    },
    /// The sync worker changed state.
    Worker { state: WorkerStateDto },
}

/// `x` with exactly `decimals` decimals (at most 6), e.g. `fixed(0.1234, 3)`
/// is `"0.123"`. Integer arithmetic on purpose: `{:.3}` would pull the core
/// float formatter (tens of KB) into the WASM.
pub fn fixed(x: f64, decimals: u32) -> String {
    if !x.is_finite() {
        return "–".into();
    }
    let decimals = decimals.min(6);
    let scale = 10i64.pow(decimals);
    let scaled = (x * scale as f64).round() as i64;
    let sign = if scaled < 0 { "-" } else { "" };
    let scaled = scaled.unsigned_abs();
    let (whole, frac) = (scaled / scale as u64, scaled % scale as u64);
    if decimals == 0 {
        format!("{sign}{whole}")
    } else {
        format!("{sign}{whole}.{frac:0width$}", width = decimals as usize)
    }
}

/// Checks the value of one category field, so that the add form and
/// `POST /update` accept the same things. Fields outside the category schema
/// are free-form.
pub fn validate_category_field(field: &str, value: &str) -> Result<(), String> {
    match field {
        "name" if value.trim().is_empty() => Err("'name' must not be empty.".into()),
        "display_order" if value.trim().parse::<i64>().is_err() => Err(format!(
            "'display_order' must be an integer, got '{value}'."
        )),
        "featured" if value != "true" && value != "false" => Err(format!(
            "'featured' must be 'true' or 'false', got '{value}'."
        )),
        _ => Ok(()),
    }
}

#[cfg(feature = "ssr")]
mod ssr {
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
            }
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
}

#[cfg(feature = "ssr")]
pub use ssr::{epoch_ms, expires_at, millis};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_events_are_externally_tagged_json() {
        let ev = LiveEvent::Worker {
            state: WorkerStateDto::Paused,
        };
        let json = serde_json::to_string(&ev).unwrap();
        assert_eq!(json, r#"{"worker":{"state":"paused"}}"#);
        let back: LiveEvent = serde_json::from_str(&json).unwrap();
        assert_eq!(back, ev);
        let stats = LiveEvent::Stats(StatsDto::default());
        let json = serde_json::to_string(&stats).unwrap();
        assert!(json.starts_with(r#"{"stats":{"hits":0"#), "{json}");
    }

    #[test]
    fn fixed_point_formatting_matches_the_float_formatter() {
        for (x, d) in [
            (0.0, 2),
            (0.1234, 3),
            (1.005, 2),
            (66.66, 1),
            (12345.6789, 2),
            (-2.5, 1),
            (3.0, 0),
        ] {
            assert_eq!(fixed(x, d), format!("{x:.*}", d as usize), "{x} {d}");
        }
        assert_eq!(fixed(f64::NAN, 2), "–");
    }

    #[test]
    fn category_fields_are_checked_like_the_add_form() {
        assert!(validate_category_field("display_order", "12").is_ok());
        assert!(validate_category_field("display_order", "twelve").is_err());
        assert!(validate_category_field("featured", "yes").is_err());
        assert!(validate_category_field("name", "  ").is_err());
        assert!(validate_category_field("colour", "anything").is_ok());
    }
}
