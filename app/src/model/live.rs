//! The live feed's events and the dashboard's state.

use serde::{Deserialize, Serialize};

use super::{
    Fields, OpDto, PrefetchReasonDto, ReconcileResponse, SourceDto, StatsDto, WorkerStateDto,
};

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
    /// TTL renewal extended the key's TTL (sync is healthy).
    Renewed,
}

impl WriteOrigin {
    pub fn as_str(self) -> &'static str {
        match self {
            WriteOrigin::Sync => "sync",
            WriteOrigin::Admin => "admin",
            WriteOrigin::External => "external",
            WriteOrigin::Expired => "expired",
            WriteOrigin::Renewed => "renewed",
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
