//! Records: string fields, one of which (`id`) names the record, and the
//! checks untrusted ids and fields go through.

use std::collections::BTreeMap;

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
    id: Option<String>,
}

impl Record {
    /// A record holding exactly `fields`, named by its `id` field.
    pub fn new(fields: Fields) -> Self {
        Self { fields, id: None }
    }

    /// A record named `id` holding exactly `fields` (which need no `id`
    /// field: a row whose key comes from a template).
    ///
    /// ```
    /// let r = prefetch::Record::with_id("product:a1", Default::default());
    /// assert_eq!(r.id(), Some("product:a1"));
    /// assert!(r.fields().is_empty());
    /// ```
    pub fn with_id(id: impl Into<String>, fields: Fields) -> Self {
        Self {
            fields,
            id: Some(id.into()),
        }
    }

    /// The record's id: the one it was made with, else its non-empty `id`
    /// field.
    pub fn id(&self) -> Option<&str> {
        self.id
            .as_deref()
            .or_else(|| self.fields.get(ID_FIELD).map(String::as_str))
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
        Self::new(fields)
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Record {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Self::new(
            iter.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
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
