//! Value types at the bottom of the crate: records, versions, changes,
//! source transactions, the worker's state, and input validation.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::error::{Error, Result};

/// The field of a record that holds its id.
pub const ID_FIELD: &str = "id";

/// Field names starting with this are the cache's own metadata (the
/// version and content hash stored beside each record); they never reach a
/// reader and cannot be written by a source.
pub const RESERVED_FIELD_PREFIX: &str = "__";

/// Longest id accepted, in bytes.
pub const MAX_ID_LEN: usize = 256;
/// Longest field name accepted, in bytes.
pub const MAX_FIELD_LEN: usize = 128;
/// Longest field value accepted, in bytes.
pub const MAX_VALUE_LEN: usize = 64 * 1024;

/// A record's fields, ordered by name so that hashes, diffs and JSON are
/// deterministic.
pub type Fields = BTreeMap<String, String>;

/// A record of the source: string fields, one of which (`id`) names it.
///
/// A record may lack an id (malformed input from a change feed); such records
/// are skipped by [`PrefetchCache::bulk_load`](crate::PrefetchCache::bulk_load).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Record {
    fields: Fields,
}

impl Record {
    /// A record holding exactly `fields`.
    pub fn new(fields: Fields) -> Self {
        Self { fields }
    }

    /// The record's id: its non-empty `id` field.
    pub fn id(&self) -> Option<&str> {
        self.fields
            .get(ID_FIELD)
            .map(String::as_str)
            .filter(|id| !id.is_empty())
    }

    /// One field's value.
    pub fn get(&self, field: &str) -> Option<&str> {
        self.fields.get(field).map(String::as_str)
    }

    /// All fields.
    pub fn fields(&self) -> &Fields {
        &self.fields
    }

    /// All fields, by value.
    pub fn into_fields(self) -> Fields {
        self.fields
    }

    /// Sets one field.
    pub fn set(&mut self, field: impl Into<String>, value: impl Into<String>) {
        self.fields.insert(field.into(), value.into());
    }
}

impl From<Fields> for Record {
    fn from(fields: Fields) -> Self {
        Self { fields }
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Record {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Self {
            fields: iter
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }
}

/// A position in a source's change stream, and so the version of every
/// cached key: the commit position of the source transaction that wrote it,
/// then the change's place inside that transaction.
///
/// Versions are totally ordered, field by field. A write reaches Redis only
/// when its version is newer than the one stored with the key, so
/// duplicates, replays, reorders and competing appliers cannot move a key
/// back in time. Any 64-bit `commit` is exact: in Redis the version is
/// stored as three integers below 2<sup>32</sup> (Lua numbers are doubles).
///
/// ```
/// use prefetch::Version;
///
/// let a = Version::new(u64::MAX - 1, 7);
/// let b = Version::new(u64::MAX, 0);
/// assert!(a < b);
/// assert_eq!(a.to_string().parse::<Version>(), Ok(a));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    /// The commit position (an LSN, a sequence number, a stream offset).
    pub commit: u64,
    /// The change's place inside its transaction.
    pub ord: u32,
}

impl Version {
    /// The lowest version: older than anything a source produces.
    pub const ZERO: Version = Version { commit: 0, ord: 0 };

    /// A version from its parts.
    pub const fn new(commit: u64, ord: u32) -> Self {
        Self { commit, ord }
    }
}

/// `hi:lo:ord`, the form stored in Redis: the commit's high and low 32 bits
/// and the ordinal, each a decimal integer below 2<sup>32</sup>.
impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}",
            self.commit >> 32,
            self.commit & 0xFFFF_FFFF,
            self.ord
        )
    }
}

/// The [`Version`] text is not `hi:lo:ord` with each part below 2<sup>32</sup>.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not a version (expected hi:lo:ord)")]
pub struct ParseVersionError;

impl FromStr for Version {
    type Err = ParseVersionError;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let mut parts = s.split(':').map(|p| {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(ParseVersionError);
            }
            p.parse::<u32>().map_err(|_| ParseVersionError)
        });
        let (Some(hi), Some(lo), Some(ord), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(ParseVersionError);
        };
        Ok(Version::new((u64::from(hi?) << 32) | u64::from(lo?), ord?))
    }
}

/// Checks an id from untrusted input and returns it trimmed.
///
/// Ids are binary-safe in Redis, so glob characters, `:`, braces, spaces
/// inside and any Unicode are accepted and stored exactly; only what cannot
/// be an id (empty, whitespace only, control characters, longer than
/// [`MAX_ID_LEN`]) is refused.
///
/// ```
/// assert_eq!(prefetch::validate_id("  cat-001 ").ok(), Some("cat-001"));
/// assert!(prefetch::validate_id("a\nb").is_err());
/// ```
pub fn validate_id(raw: &str) -> Result<&str> {
    let id = raw.trim();
    if id.is_empty() {
        return Err(Error::InvalidId("id must not be empty".into()));
    }
    if id.len() > MAX_ID_LEN {
        return Err(Error::InvalidId(format!(
            "id is longer than {MAX_ID_LEN} bytes"
        )));
    }
    if id.chars().any(char::is_control) {
        return Err(Error::InvalidId(
            "id must not contain control characters".into(),
        ));
    }
    Ok(id)
}

/// Checks a field name and value from untrusted input.
///
/// The `id` field cannot be changed in place (that would make the hash
/// disagree with its key); add a new record instead. Names starting with
/// `__` belong to the cache's metadata.
pub fn validate_field(field: &str, value: &str) -> Result<()> {
    if field.is_empty() {
        return Err(Error::InvalidField("field name must not be empty".into()));
    }
    if field.len() > MAX_FIELD_LEN {
        return Err(Error::InvalidField(format!(
            "field name is longer than {MAX_FIELD_LEN} bytes"
        )));
    }
    if field.chars().any(char::is_control) {
        return Err(Error::InvalidField(
            "field name must not contain control characters".into(),
        ));
    }
    if field.starts_with(RESERVED_FIELD_PREFIX) {
        return Err(Error::InvalidField(format!(
            "field names starting with '{RESERVED_FIELD_PREFIX}' are reserved for the cache"
        )));
    }
    if field == ID_FIELD {
        return Err(Error::InvalidField("the id field cannot be changed".into()));
    }
    if value.len() > MAX_VALUE_LEN {
        return Err(Error::InvalidField(format!(
            "value of '{field}' is longer than {MAX_VALUE_LEN} bytes"
        )));
    }
    Ok(())
}

/// A record id from a key: its one value, or the values joined by `:`
/// with `\` and `:` escaped (a composite key), so the id decodes back.
///
/// ```
/// use prefetch::{decode_key, encode_key};
/// assert_eq!(encode_key(&["a:b", "c\\d"]), "a\\:b:c\\\\d");
/// assert_eq!(decode_key("a\\:b:c\\\\d"), vec!["a:b", "c\\d"]);
/// assert_eq!(encode_key(&["only:one"]), "only:one");
/// ```
pub fn encode_key(parts: &[&str]) -> String {
    if let [one] = parts {
        return (*one).to_owned();
    }
    let mut out = String::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            out.push(':');
        }
        for c in p.chars() {
            if c == ':' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
    }
    out
}

/// The parts of a composite-key id (see [`encode_key`]); a single part
/// when it holds no unescaped `:`.
pub fn decode_key(id: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut escaped = false;
    for c in id.chars() {
        if escaped {
            if let Some(last) = parts.last_mut() {
                last.push(c);
            }
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == ':' {
            parts.push(String::new());
        } else if let Some(last) = parts.last_mut() {
            last.push(c);
        }
    }
    parts
}

/// Whether a change creates or removes a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// Insert or update: the record now has exactly the given fields.
    Upsert,
    /// The record no longer exists.
    Delete,
    /// Every record is gone.
    Truncate,
}

impl Op {
    /// `"upsert"`, `"delete"` or `"truncate"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Upsert => "upsert",
            Op::Delete => "delete",
            Op::Truncate => "truncate",
        }
    }
}

/// What a change does to one record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    /// The record now has exactly these fields (insert or update). Shared,
    /// so that the worker, the event feed and every dashboard see one copy.
    Upsert(Arc<Fields>),
    /// The record no longer exists.
    Delete,
    /// Every record older than this change is gone (a `TRUNCATE` of the
    /// source table); the change's id is not used.
    Truncate,
}

impl ChangeKind {
    /// Upsert, delete or truncate.
    pub fn op(&self) -> Op {
        match self {
            ChangeKind::Upsert(_) => Op::Upsert,
            ChangeKind::Delete => Op::Delete,
            ChangeKind::Truncate => Op::Truncate,
        }
    }

    /// The new fields of an upsert.
    pub fn fields(&self) -> Option<&Arc<Fields>> {
        match self {
            ChangeKind::Upsert(f) => Some(f),
            ChangeKind::Delete | ChangeKind::Truncate => None,
        }
    }
}

/// One change to one record, as a change-data-capture feed delivers it.
///
/// Every upsert carries the record's complete new state, so applying the
/// newest change of a key is enough to bring that key up to date.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// The record's id.
    pub id: String,
    /// Upsert or delete.
    pub kind: ChangeKind,
    /// Where the change sits in the source's history.
    pub version: Version,
}

impl Change {
    /// An upsert of `id` to exactly `fields`, at `version`.
    pub fn upsert(id: impl Into<String>, fields: Fields, version: Version) -> Self {
        Self {
            id: id.into(),
            kind: ChangeKind::Upsert(Arc::new(fields)),
            version,
        }
    }

    /// A delete of `id`, at `version`.
    pub fn delete(id: impl Into<String>, version: Version) -> Self {
        Self {
            id: id.into(),
            kind: ChangeKind::Delete,
            version,
        }
    }

    /// The removal of every record, at `version`.
    pub fn truncate(version: Version) -> Self {
        Self {
            id: String::new(),
            kind: ChangeKind::Truncate,
            version,
        }
    }

    /// Upsert or delete.
    pub fn op(&self) -> Op {
        self.kind.op()
    }

    /// True when the change cannot be applied: no id, an upsert without
    /// fields (`HSET` needs at least one), or a field name the cache reserves.
    pub fn is_malformed(&self) -> bool {
        match &self.kind {
            ChangeKind::Truncate => false,
            ChangeKind::Delete => self.id.is_empty(),
            ChangeKind::Upsert(f) => {
                self.id.is_empty()
                    || f.is_empty()
                    || f.keys().any(|k| k.starts_with(RESERVED_FIELD_PREFIX))
            }
        }
    }
}

/// One committed source transaction: its changes, applied to Redis together
/// in one atomic call, and its position.
///
/// `position` is at least the version of every change inside and below the
/// version of anything committed later; once the transaction is durable in
/// Redis the engine stores it there and acknowledges it to the source. A
/// transaction without changes is a heartbeat: it moves the position and
/// measures lag on an idle source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transaction {
    /// The transaction's place in the source's history.
    pub position: Version,
    /// Wall-clock commit time at the source; sync lag is measured from here.
    pub committed_at: SystemTime,
    /// The changes, in the order the source made them.
    pub changes: Vec<Change>,
}

impl Transaction {
    /// A transaction committed now.
    pub fn new(position: Version, changes: Vec<Change>) -> Self {
        Self {
            position,
            committed_at: SystemTime::now(),
            changes,
        }
    }
}

/// What the sync worker is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerState {
    /// Applying changes as they arrive (or waiting for the next one).
    Running,
    /// Parked by a pause; no apply in flight; changes queue up.
    Paused,
    /// The last attempt failed; the batch is kept and retried after a delay.
    Retrying {
        /// Failed attempts so far for the current batch.
        attempt: u32,
    },
    /// The task has ended.
    Stopped,
}

impl WorkerState {
    /// `running`, `paused`, `retrying` or `stopped`.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Running => "running",
            WorkerState::Paused => "paused",
            WorkerState::Retrying { .. } => "retrying",
            WorkerState::Stopped => "stopped",
        }
    }
}

/// What a reconciliation (see `Engine::reconcile`) found (ids sorted) and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Records compared (source rows plus keys only Redis had).
    pub checked: usize,
    /// In the source, not in Redis.
    pub missing: Vec<String>,
    /// In Redis, not in the source.
    pub orphaned: Vec<String>,
    /// Redis holds an older version the pipeline wrote: a change was lost.
    pub stale: Vec<String>,
    /// Redis holds something the pipeline did not write.
    pub changed_outside: Vec<String>,
    /// Differences that resolved on a recheck (changes under way).
    pub in_flight: Vec<String>,
    /// Keys written or removed to repair the differences.
    pub repaired: usize,
    /// Keys found correct, whose TTL was refreshed.
    pub verified: usize,
    /// The snapshot's version.
    pub version: Version,
    /// Snapshot read + comparison + recheck + repair.
    pub elapsed: Duration,
}

impl ReconcileReport {
    /// Whether Redis matched the source (in-flight changes aside).
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty()
            && self.orphaned.is_empty()
            && self.stale.is_empty()
            && self.changed_outside.is_empty()
    }

    /// The number of findings of each kind, by the kind's name.
    pub fn counts(&self) -> [(&'static str, usize); 5] {
        [
            ("missing", self.missing.len()),
            ("orphaned", self.orphaned.len()),
            ("stale", self.stale.len()),
            ("changed_outside", self.changed_outside.len()),
            ("in_flight", self.in_flight.len()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_trimmed_and_odd_but_legal_ids_accepted() {
        assert_eq!(validate_id("  cat-001 ").ok(), Some("cat-001"));
        for ok in ["a*b", "a?b", "a[b", "a:b", "a b", "ünï", "{x}", "a}b"] {
            assert_eq!(validate_id(ok).ok(), Some(ok));
        }
    }

    #[test]
    fn empty_control_and_overlong_ids_are_refused() {
        for bad in ["", "   ", "a\nb", "a\0b", &"x".repeat(MAX_ID_LEN + 1)] {
            assert!(
                matches!(validate_id(bad), Err(Error::InvalidId(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn unusable_field_names_and_overlong_values_are_refused() {
        assert!(validate_field("id", "x").is_err());
        assert!(validate_field("", "x").is_err());
        assert!(validate_field("__v", "x").is_err());
        assert!(validate_field("name", &"v".repeat(MAX_VALUE_LEN + 1)).is_err());
        assert!(validate_field("name", "").is_ok());
    }

    #[test]
    fn a_record_without_an_id_has_none() {
        let r: Record = [("name", "x")].into_iter().collect();
        assert_eq!(r.id(), None);
        let r: Record = [("id", "")].into_iter().collect();
        assert_eq!(r.id(), None);
    }

    #[test]
    fn upserts_without_fields_or_with_reserved_fields_are_malformed() {
        let v = Version::ZERO;
        assert!(Change::upsert("a", Fields::new(), v).is_malformed());
        assert!(Change::delete("", v).is_malformed());
        assert!(!Change::delete("a", v).is_malformed());
        let reserved: Fields = [("__v".to_owned(), "1".to_owned())].into();
        assert!(Change::upsert("a", reserved, v).is_malformed());
    }

    #[test]
    fn versions_order_by_commit_then_ordinal_and_round_trip_as_text() {
        let cases = [
            Version::ZERO,
            Version::new(1, 0),
            Version::new(1, 1),
            Version::new((1 << 32) - 1, u32::MAX),
            Version::new(1 << 32, 0),
            Version::new((1 << 53) - 1, 2),
            Version::new(1 << 53, 0),
            Version::new((1 << 53) + 1, 0),
            Version::new(u64::MAX, u32::MAX),
        ];
        for w in cases.windows(2) {
            assert!(w[0] < w[1], "{:?} < {:?}", w[0], w[1]);
        }
        for v in cases {
            assert_eq!(v.to_string().parse::<Version>(), Ok(v));
        }
        assert_eq!(Version::new(1 << 32 | 5, 9).to_string(), "1:5:9");
        for bad in [
            "",
            "1:2",
            "1:2:3:4",
            "a:b:c",
            "1:2:4294967296",
            "-1:0:0",
            "+1:0:0",
        ] {
            assert!(bad.parse::<Version>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn composite_keys_round_trip_whatever_they_hold() {
        for parts in [
            vec!["a", "b"],
            vec!["a:b", "c"],
            vec!["\\", ":"],
            vec!["", ""],
            vec!["x\\:y", "z"],
        ] {
            assert_eq!(decode_key(&encode_key(&parts)), parts, "{parts:?}");
        }
    }
}
