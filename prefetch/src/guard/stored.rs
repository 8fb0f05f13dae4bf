//! The storage format: what a record's hash holds besides the record
//! (`__v`, its version; `__h`, a hash of the fields as written; `__del`,
//! a tombstone kept inside the hash) and where a record's tombstone lives.

use crate::keys::{KeySpace, Tombstone};
use crate::model::{Fields, Version};

/// Metadata field: the version of the change that wrote the hash.
pub(crate) const VERSION_FIELD: &str = "__v";

/// Metadata field: the content hash of the fields as written.
pub(crate) const HASH_FIELD: &str = "__h";

/// Metadata field: present on a tombstone kept inside the record's hash.
pub(crate) const DELETED_FIELD: &str = "__del";

/// A record hash as stored, split into the record and its metadata.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Stored {
    pub(crate) fields: Fields,
    pub(crate) version: Option<Version>,
    pub(crate) hash: Option<u64>,
    pub(crate) deleted: bool,
}

impl Stored {
    /// Splits what `HGETALL` returned.
    pub(crate) fn split(mut raw: Fields) -> Self {
        let version = raw.remove(VERSION_FIELD).and_then(|v| v.parse().ok());
        let hash = raw.remove(HASH_FIELD).and_then(|h| content_of(&h));
        let deleted = raw.remove(DELETED_FIELD).is_some();
        raw.retain(|k, _| !k.starts_with(crate::model::RESERVED_FIELD_PREFIX));
        Self {
            fields: raw,
            version,
            hash,
            deleted,
        }
    }

    /// The record, if this is one (not missing, not a tombstone).
    pub(crate) fn into_record_fields(self) -> Option<Fields> {
        (!self.deleted && !self.fields.is_empty()).then_some(self.fields)
    }
}

/// A 64-bit FNV-1a hash of the fields, each name and value length-prefixed,
/// in name order: the same record always hashes the same, on any machine.
///
/// ```
/// use prefetch::{Fields, content_hash};
///
/// let a: Fields = [("id".into(), "x".into()), ("n".into(), "1".into())].into();
/// let mut b = a.clone();
/// assert_eq!(content_hash(&a), content_hash(&b));
/// b.insert("n".into(), "2".into());
/// assert_ne!(content_hash(&a), content_hash(&b));
/// ```
pub fn content_hash(fields: &Fields) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    let mut eat = |bytes: &[u8]| {
        let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        for b in len.to_le_bytes().iter().chain(bytes) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(PRIME);
        }
    };
    for (k, v) in fields {
        eat(k.as_bytes());
        eat(v.as_bytes());
    }
    h
}

/// A 64-bit FNV-1a hash of the field names alone (length-prefixed, in
/// order): two records with the same names can overwrite each other's hash
/// field by field, without a `DEL` first.
fn names_hash(fields: &Fields) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    for k in fields.keys() {
        for b in (k.len() as u64).to_le_bytes().iter().chain(k.as_bytes()) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(PRIME);
        }
    }
    h
}

/// The text stored in a record's `__h` field.
///
/// Its [`content_hash`] (16 hex digits), then a hash of its field names
/// alone (16 more): the apply function compares the names part to skip the
/// `DEL` before an update that keeps the same fields. The version guard
/// stores it after the record's version (30 decimal digits).
///
/// ```
/// let fields = [("id".to_owned(), "a".to_owned())].into();
/// let h = prefetch::hash_text(&fields);
/// assert_eq!(h.len(), 32);
/// assert_eq!(h[..16], format!("{:016x}", prefetch::content_hash(&fields)));
/// ```
pub fn hash_text(fields: &Fields) -> String {
    format!("{:016x}{:016x}", content_hash(fields), names_hash(fields))
}

/// A version's 30 decimal digits (the commit's 20, the ordinal's 10,
/// zero-padded): the form the version guard compares as a string, which
/// orders as the versions do.
pub(crate) fn version_key(version: Version) -> String {
    format!("{:020}{:010}", version.commit, version.ord)
}

/// What a record's `__h` holds as the version guard writes it: the
/// version's 30 digits, then [`hash_text`]. The guard reads it with one
/// `HGET` and compares it with a write's whole (parsing `__v`'s
/// `hi:lo:ord` would cost it as much as a Redis command).
pub(crate) fn guard_text(fields: &Fields, version: Version) -> String {
    let mut text = version_key(version);
    text.push_str(&hash_text(fields));
    text
}

/// The content hash in a stored `__h`: after the version's 30 digits, or
/// first (as written before the version moved into it).
fn content_of(h: &str) -> Option<u64> {
    let at = if h.len() == 62 { 30 } else { 0 };
    u64::from_str_radix(h.get(at..at + 16)?, 16).ok()
}

/// The field-names part of a [`guard_text`]: the version guard compares it
/// with the stored one to skip the `DEL` before an update.
pub(crate) fn names_of(guard_text: &str) -> &str {
    guard_text.get(46..).unwrap_or_default()
}

/// The one field of a record stored as a JSON document: the document
/// itself (a string key; its version and `__h` in its tombstone key).
pub const JSON_FIELD: &str = "$";

impl Stored {
    /// A JSON record as stored: the document (`None`: no key) and its
    /// tombstone key's text (`"<version> <__h>"` beside a document,
    /// `"<version>"` once deleted).
    pub(crate) fn json(doc: Option<String>, sidecar: Option<&str>) -> Self {
        let (version, hash) = sidecar_parts(sidecar);
        Self {
            fields: doc
                .map(|d| [(JSON_FIELD.to_owned(), d)].into())
                .unwrap_or_default(),
            version,
            hash,
            deleted: false,
        }
    }
}

/// The version and content hash in a JSON record's tombstone key.
fn sidecar_parts(sidecar: Option<&str>) -> (Option<Version>, Option<u64>) {
    let Some(text) = sidecar else {
        return (None, None);
    };
    let (version, hash) = text.split_once(' ').unwrap_or((text, ""));
    (version.parse().ok(), content_of(hash))
}

/// The document a JSON record's fields make: their `$` field when that is
/// all they hold (a source that typed the row), else an object of their
/// text values.
pub(crate) fn json_document(fields: &Fields) -> String {
    match fields.get(JSON_FIELD) {
        Some(doc) if fields.len() == 1 => doc.clone(),
        _ => serde_json::to_string(fields).unwrap_or_else(|_| "{}".to_owned()),
    }
}

/// The tombstone key to pass beside `data_key` (the data key itself when
/// the tombstone lives in the hash).
pub(crate) fn tomb_key(keys: &KeySpace, data_key: &str) -> String {
    match keys.tombstone(data_key) {
        Tombstone::Key(t) => t,
        Tombstone::InHash => data_key.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_is_split_from_the_record() {
        let raw: Fields = [
            ("id", "a"),
            ("n", "1"),
            ("__v", "0:7:2"),
            ("__h", "00000000000000ff000000000badf00d"),
            ("__x", "future"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let s = Stored::split(raw);
        assert_eq!(s.fields.len(), 2);
        assert_eq!(s.version, Some(Version::new(7, 2)));
        assert_eq!(s.hash, Some(255));
        assert!(!s.deleted);
        let tomb: Fields = [
            ("__v".to_owned(), "0:1:0".to_owned()),
            ("__del".to_owned(), "1".to_owned()),
        ]
        .into();
        assert_eq!(Stored::split(tomb).into_record_fields(), None);
    }

    #[test]
    fn the_content_hash_depends_on_names_and_values_not_on_their_boundaries() {
        let a: Fields = [("ab".to_owned(), "c".to_owned())].into();
        let b: Fields = [("a".to_owned(), "bc".to_owned())].into();
        assert_ne!(content_hash(&a), content_hash(&b));
        assert_eq!(hash_text(&a).len(), 32);
        // The names part: equal for equal names, whatever the values.
        let c: Fields = [("ab".to_owned(), "zzz".to_owned())].into();
        assert_eq!(hash_text(&a)[16..], hash_text(&c)[16..]);
        assert_ne!(hash_text(&a)[..16], hash_text(&c)[..16]);
        assert_ne!(hash_text(&a)[16..], hash_text(&b)[16..]);
    }
}
