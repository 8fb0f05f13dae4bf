//! Changes and the source transactions that carry them.

use std::sync::Arc;
use std::time::SystemTime;

use super::{Fields, RESERVED_FIELD_PREFIX, Version};

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

    /// The removal of every record whose id starts with `prefix` (one
    /// table's, of several; every record when empty), at `version`.
    pub fn truncate_within(prefix: impl Into<String>, version: Version) -> Self {
        Self {
            id: prefix.into(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upserts_without_fields_or_with_reserved_fields_are_malformed() {
        let v = Version::ZERO;
        assert!(Change::upsert("a", Fields::new(), v).is_malformed());
        assert!(Change::delete("", v).is_malformed());
        assert!(!Change::delete("a", v).is_malformed());
        let reserved: Fields = [("__v".to_owned(), "1".to_owned())].into();
        assert!(Change::upsert("a", reserved, v).is_malformed());
    }
}
