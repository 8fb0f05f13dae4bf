//! Records and change events.

use std::collections::BTreeMap;
use std::time::{Instant, SystemTime};

use crate::error::{Error, Result};

/// The field of a record that holds its id.
pub const ID_FIELD: &str = "id";

/// Longest id accepted, in bytes.
pub const MAX_ID_LEN: usize = 256;
/// Longest field name accepted, in bytes.
pub const MAX_FIELD_LEN: usize = 128;
/// Longest field value accepted, in bytes.
pub const MAX_VALUE_LEN: usize = 64 * 1024;

/// A record's fields, ordered by name so that hashes, diffs and JSON are
/// deterministic.
pub type Fields = BTreeMap<String, String>;

/// A record of the primary: string fields, one of which (`id`) names it.
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

    pub(crate) fn set(&mut self, field: String, value: String) {
        self.fields.insert(field, value);
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

/// Checks an id from untrusted input and returns it trimmed.
///
/// Ids are binary-safe in Redis, so glob characters, `:`, spaces inside and
/// any Unicode are accepted and stored exactly; only what cannot be an id
/// (empty, whitespace only, control characters, longer than [`MAX_ID_LEN`])
/// is refused.
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
/// disagree with its key); add a new record instead.
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

/// What a change does to one record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    /// The record now has exactly these fields (insert or update).
    Upsert(Fields),
    /// The record no longer exists.
    Delete,
}

/// One change event from the primary, as a change-data-capture feed would
/// deliver it: every upsert carries the record's complete new state, so
/// applying the last event for a key is enough to bring that key up to date.
#[derive(Clone, Debug)]
pub struct Change {
    /// Position in the primary's change stream (1-based; 0 for events made
    /// by hand with [`Change::upsert`] / [`Change::delete`]).
    pub seq: u64,
    /// The record's id.
    pub id: String,
    /// Upsert or delete.
    pub kind: ChangeKind,
    /// Wall-clock time of the mutation, for display.
    pub timestamp: SystemTime,
    /// Monotonic time of the mutation; sync lag is measured from here.
    pub emitted_at: Instant,
}

impl Change {
    /// An upsert made by hand (not from a primary), stamped now.
    pub fn upsert(id: impl Into<String>, fields: Fields) -> Self {
        Self::new(0, id.into(), ChangeKind::Upsert(fields))
    }

    /// A delete made by hand (not from a primary), stamped now.
    pub fn delete(id: impl Into<String>) -> Self {
        Self::new(0, id.into(), ChangeKind::Delete)
    }

    pub(crate) fn new(seq: u64, id: String, kind: ChangeKind) -> Self {
        Self {
            seq,
            id,
            kind,
            timestamp: SystemTime::now(),
            emitted_at: Instant::now(),
        }
    }

    /// `"upsert"` or `"delete"`, as the reference demos name them.
    pub fn op(&self) -> &'static str {
        match self.kind {
            ChangeKind::Upsert(_) => "upsert",
            ChangeKind::Delete => "delete",
        }
    }

    /// True when the event cannot be applied: no id, or an upsert without
    /// fields (`HSET` needs at least one).
    pub fn is_malformed(&self) -> bool {
        self.id.is_empty() || matches!(&self.kind, ChangeKind::Upsert(f) if f.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_trimmed_and_odd_but_legal_ids_accepted() {
        assert_eq!(validate_id("  cat-001 ").ok(), Some("cat-001"));
        for ok in ["a*b", "a?b", "a[b", "a:b", "a b", "ünï"] {
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
    fn the_id_field_cannot_be_updated() {
        assert!(validate_field("id", "x").is_err());
        assert!(validate_field("", "x").is_err());
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
    fn upserts_without_fields_are_malformed() {
        assert!(Change::upsert("a", Fields::new()).is_malformed());
        assert!(Change::delete("").is_malformed());
        assert!(!Change::delete("a").is_malformed());
    }
}
