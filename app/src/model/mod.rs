//! Wire types: one set of serde types for the JSON API, the live feed and
//! the browser. The server-only conversions from `prefetch` types sit
//! behind the `ssr` feature.
//!
//! | module | what |
//! |---|---|
//! | `api` | the JSON API's answers |
//! | `live` | the live feed's events and the dashboard's state |
//! | `ssr` | conversions from `prefetch` types (feature `ssr`) |

mod api;
mod live;

pub use api::*;
pub use live::*;

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
    /// TTL renewal: `on`, or why it is suspended (keys then expire).
    #[serde(default)]
    pub ttl_renewal: String,
    /// Refills after sync was stopped long enough for keys to expire.
    #[serde(default)]
    pub refills: u64,
    /// Consistency: the share of changes visible in Redis within 10 ms,
    /// 100 ms and 1 s of their commit (100 when none was measured yet).
    #[serde(default)]
    pub visible_10ms_pct: f64,
    #[serde(default)]
    pub visible_100ms_pct: f64,
    #[serde(default)]
    pub visible_1s_pct: f64,
    /// Reads that found an older value than a change already received from
    /// the source, and their share of all reads.
    #[serde(default)]
    pub stale_reads: u64,
    #[serde(default)]
    pub stale_read_pct: f64,
    /// Misses by why: a tombstone, an id the source does not have, a key
    /// lost while the source has the row.
    #[serde(default)]
    pub misses_deleted: u64,
    #[serde(default)]
    pub misses_absent: u64,
    #[serde(default)]
    pub misses_lost: u64,
    /// Lost keys written back from the source.
    #[serde(default)]
    pub lost_restored: u64,
    /// Each table's reads and changes, when the cache holds several.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tables: Vec<TableStatsDto>,
}

/// The field `name` of a record as the dashboard shows it.
///
/// The field itself, or, for a record stored as a JSON document (its one
/// field `$`), that member of the document (a string as it is, anything
/// else as JSON).
pub fn field_of(fields: &Fields, name: &str) -> Option<String> {
    if let Some(v) = fields.get(name) {
        return Some(v.clone());
    }
    let doc = fields.get("$")?;
    let value: serde_json::Value = serde_json::from_str(doc).ok()?;
    match value.get(name)? {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// A record's fields as the API answers them: a JSON document's members
/// (strings as they are, `null` absent, anything else as JSON), or the
/// fields themselves.
pub fn shown_fields(fields: Fields) -> Fields {
    let document = match fields.get("$") {
        Some(doc) if fields.len() == 1 => serde_json::from_str::<serde_json::Value>(doc).ok(),
        _ => None,
    };
    match document {
        // NULL is an absent field, as in a hash.
        Some(serde_json::Value::Object(members)) => members
            .into_iter()
            .filter_map(|(k, v)| match v {
                serde_json::Value::Null => None,
                serde_json::Value::String(s) => Some((k, s)),
                other => Some((k, other.to_string())),
            })
            .collect(),
        _ => fields,
    }
}

/// One table's reads and changes since the last reset.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableStatsDto {
    /// `schema.name`.
    pub name: String,
    pub hits: u64,
    pub misses: u64,
    /// Its changes applied to Redis.
    pub applied: u64,
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
    /// Sync came back after keys could have expired.
    Refill,
    /// One table of several was snapshotted again.
    Table,
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
mod ssr;

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
