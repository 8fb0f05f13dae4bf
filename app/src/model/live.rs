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
    /// A lost key (deleted outside the app, expired, evicted) written back
    /// from the primary.
    Restored,
}

impl WriteOrigin {
    pub fn as_str(self) -> &'static str {
        match self {
            WriteOrigin::Sync => "sync",
            WriteOrigin::Admin => "admin",
            WriteOrigin::External => "external",
            WriteOrigin::Expired => "expired",
            WriteOrigin::Renewed => "renewed",
            WriteOrigin::Restored => "restored",
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
    /// The page shown (`None`: the whole table, which is small).
    #[serde(default)]
    pub page: Option<PageDto>,
    /// The fields shown beside the id, in order (empty: the demo's).
    #[serde(default)]
    pub columns: Vec<String>,
    /// The tables the cache holds, when several (the first is the
    /// default view).
    #[serde(default)]
    pub tables: Vec<String>,
    /// The table shown, when not the first.
    #[serde(default)]
    pub table: Option<String>,
}

/// Which rows a dashboard, a `/state` call or a live-feed client shows: the
/// whole table when it is small, else one page.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewDto {
    /// A page of the cached keys from this cursor (`0:0`: the first).
    #[serde(default)]
    pub cursor: Option<String>,
    /// Only ids starting with this (a search; implies a page).
    #[serde(default)]
    pub query: Option<String>,
    /// A page of the primary's records after this id (the API's paging).
    #[serde(default)]
    pub after: Option<String>,
    /// Which table, when the cache holds several (`None`: the first).
    #[serde(default)]
    pub table: Option<String>,
}

impl ViewDto {
    /// The query string that asks for this view (`?cursor=…&q=…`), empty
    /// for the default view.
    pub fn query_string(&self) -> String {
        let mut parts = Vec::new();
        for (name, value) in [
            ("table", &self.table),
            ("cursor", &self.cursor),
            ("q", &self.query),
            ("after", &self.after),
        ] {
            if let Some(v) = value.as_deref().filter(|v| !v.is_empty()) {
                parts.push(format!("{name}={}", encode_component(v)));
            }
        }
        if parts.is_empty() {
            String::new()
        } else {
            format!("?{}", parts.join("&"))
        }
    }
}

/// `application/x-www-form-urlencoded` escaping of one value.
fn encode_component(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(char::from(b));
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// One page of a large table.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageDto {
    /// What the page is ordered by: `cache` (the cached keys, in `SCAN`
    /// order, from a cursor) or `primary` (the primary's key order).
    pub order: String,
    /// Where this page starts (a cursor, or the id it follows; empty: the
    /// first page).
    pub start: String,
    /// Where the next page starts, if there is one.
    pub next: Option<String>,
    /// The search, if any.
    pub query: String,
    /// Rows asked for per page.
    pub size: usize,
    /// Keys in Redis (`DBSIZE`): the cache's keys and whatever else the
    /// database holds.
    pub cache_keys: u64,
    /// Records in the primary.
    pub primary_rows: u64,
    /// Whether `primary_rows` is exact (false: the database's estimate).
    pub primary_exact: bool,
    /// The table shown, when the cache holds several and it is not the
    /// first.
    #[serde(default)]
    pub table: Option<String>,
}

impl PageDto {
    /// The view that shows this page again (the live feed's URL).
    pub fn view(&self) -> ViewDto {
        let start = Some(self.start.clone()).filter(|s| !s.is_empty());
        if self.order == PageDto::PRIMARY {
            ViewDto {
                after: start,
                table: self.table.clone(),
                ..ViewDto::default()
            }
        } else {
            ViewDto {
                cursor: start,
                query: Some(self.query.clone()).filter(|q| !q.is_empty()),
                after: None,
                table: self.table.clone(),
            }
        }
    }

    /// The view of the next page, if there is one.
    pub fn next_view(&self) -> Option<ViewDto> {
        let next = self.next.clone()?;
        Some(
            PageDto {
                start: next,
                ..self.clone()
            }
            .view(),
        )
    }

    /// `order` of a page of the primary's records (`?after=`).
    pub const PRIMARY: &'static str = "primary";
    /// `order` of a page of the cached keys (`?cursor=`).
    pub const CACHE: &'static str = "cache";
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
