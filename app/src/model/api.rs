//! The JSON API's answers, one type per endpoint.

use serde::{Deserialize, Serialize};

use super::{Fields, StatsDto, WorkerStateDto};

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
    /// How many of each kind there were (the lists hold the first 1,000).
    #[serde(default)]
    pub totals: DriftTotalsDto,
    /// Whether keys only Redis holds were found exactly (false above
    /// 200,000 rows, where a Bloom filter decides).
    #[serde(default)]
    pub exact: bool,
}

/// How many findings of each kind a reconciliation made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriftTotalsDto {
    pub missing: usize,
    pub orphaned: usize,
    pub stale: usize,
    pub changed_outside: usize,
    pub in_flight: usize,
}

impl DriftTotalsDto {
    /// Differences that are drift (in-flight changes aside).
    pub fn drift(&self) -> usize {
        self.missing + self.orphaned + self.stale + self.changed_outside
    }
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

/// `GET /categories`: the reference answer up to 1,000 records.
///
/// Above, a page of the primary's ids (`?after=ID` for the next) and which
/// of them are cached, with `next` (and a `Link` header) naming where the
/// next page starts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CategoriesResponse {
    pub cache_ids: Vec<String>,
    pub primary_ids: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
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
