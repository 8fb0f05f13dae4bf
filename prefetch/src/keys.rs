//! Key naming: `{prefix}{id}` for records, and the cache's own bookkeeping
//! keys beside them, all pure functions.
//!
//! Bookkeeping lives under `__pf:`, outside any record prefix, so a
//! `SCAN MATCH {prefix}*` lists records and nothing else:
//!
//! | key | what |
//! |---|---|
//! | `{prefix}{id}` | the record: a hash of its fields plus `__v` (version) and `__h` (content hash, then field-names hash) |
//! | `__pf:t:{data key}` | tombstone of a deleted record whose key carries a `{hash tag}` |
//! | `__pf:u:{{data key}}` | tombstone of a deleted record whose key carries none |
//! | `__pf:m:{prefix}` | the cache's state: source id, applied position, version floor |
//! | `__pf:s:{tag}{prefix}` | on a Redis Cluster, the source and floor again, once per slot (`tag` hashes to it) |
//! | `__pf:w:{tag}{prefix}` | the snapshot window's log (`tag` hashes to the state's slot): versions of the writes applied while a snapshot is taken and written |
//! | `__pf:ws:{tag}{prefix}` | on a Redis Cluster, that log once per slot |
//!
//! A tombstone hashes to the same Redis Cluster slot as its record, so one
//! call can read and write both. A key containing `}` without a hash tag has
//! no such twin; its tombstone is kept inside the record's own hash instead.

use std::sync::{Arc, RwLock};

pub use crate::slots::{SLOTS, hash_tag, slot, slot_tag};

/// Characters that are special in Redis glob patterns (`SCAN MATCH`, `KEYS`).
const GLOB_SPECIAL: &[char] = &['*', '?', '[', ']', '\\', '^', '-'];

/// Prefix of every bookkeeping key; no record prefix may start with it.
pub const RESERVED_KEY_PREFIX: &str = "__pf:";

/// Escapes `s` so that, used inside a Redis glob pattern, it matches itself
/// literally.
///
/// ```
/// assert_eq!(prefetch::escape_glob("cache:*:"), "cache:\\*:");
/// ```
pub fn escape_glob(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    for c in s.chars() {
        if GLOB_SPECIAL.contains(&c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Where a record's tombstone lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tombstone {
    /// A key of its own, in the record's cluster slot.
    Key(String),
    /// Inside the record's hash (keys with `}` but no hash tag).
    InHash,
}

/// The key space of one cache: its prefix and the derived names.
///
/// A cache of several tables has one key prefix per table: its records are
/// the keys under one of them (`prefix` is then what they share, often
/// nothing, and a record's id is its key less that).
///
/// Clones share the set of tables: a table added to or removed from one
/// ([`add_table`](Self::add_table), [`remove_table`](Self::remove_table))
/// is added to or removed from all.
#[derive(Clone, Debug)]
pub struct KeySpace {
    prefix: String,
    pattern: String,
    meta: String,
    /// What the state's keys are named after (fixed at creation, whatever
    /// tables come and go later).
    state: String,
    tables: Arc<RwLock<Arc<Vec<String>>>>,
    /// Whether the key space was made of tables (only then can they change).
    multi: bool,
}

impl KeySpace {
    /// A key space for `prefix` (which may be empty or hold glob characters).
    pub fn new(prefix: impl Into<String>) -> Self {
        let prefix = prefix.into();
        let pattern = format!("{}*", escape_glob(&prefix));
        let meta = format!("{RESERVED_KEY_PREFIX}m:{prefix}");
        Self {
            state: prefix.clone(),
            prefix,
            pattern,
            meta,
            tables: Arc::default(),
            multi: false,
        }
    }

    /// A key space of several tables, whose keys start with one of
    /// `tables` (each under `prefix`, which they all start with): a key
    /// under `prefix` and none of them is not a record of this cache. The
    /// state is named after the tables too, so two caches of different
    /// tables under one prefix keep theirs apart.
    ///
    /// ```
    /// let ks = prefetch::KeySpace::with_tables("", ["product:", "line:"]);
    /// assert_eq!(ks.id_of("line:o1:1"), Some("line:o1:1"));
    /// assert_eq!(ks.id_of("session:abc"), None);
    /// assert_eq!(ks.key("product:p1"), "product:p1");
    /// ```
    pub fn with_tables<T: Into<String>>(
        prefix: impl Into<String>,
        tables: impl IntoIterator<Item = T>,
    ) -> Self {
        let mut ks = Self::new(prefix);
        let tables: Vec<String> = tables.into_iter().map(Into::into).collect();
        if !tables.is_empty() {
            ks.state = format!("{}|{}", ks.prefix, tables.join("|"));
            ks.meta = format!("{RESERVED_KEY_PREFIX}m:{}", ks.state);
            ks.tables = Arc::new(RwLock::new(Arc::new(tables)));
            ks.multi = true;
        }
        ks
    }

    /// What the state's keys are named after: the prefix, and the tables
    /// there were at creation when there are several.
    pub(crate) fn state_name(&self) -> &str {
        &self.state
    }

    /// The key prefixes of the tables, when there are several (empty: every
    /// key under [`prefix`](Self::prefix) is a record).
    pub fn tables(&self) -> Arc<Vec<String>> {
        Arc::clone(&self.tables.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Holds the keys under `table` (a key prefix under
    /// [`prefix`](Self::prefix)) as records too, from now on. Only a key
    /// space made of tables ([`with_tables`](Self::with_tables)) can take
    /// one more; the state keeps its name.
    ///
    /// ```
    /// let ks = prefetch::KeySpace::with_tables("", ["product:", "line:"]);
    /// let meta = ks.meta_key().to_owned();
    /// ks.add_table("user:").unwrap();
    /// assert_eq!(ks.id_of("user:1"), Some("user:1"));
    /// assert_eq!(ks.meta_key(), meta);
    /// assert!(ks.remove_table("user:"));
    /// assert_eq!(ks.id_of("user:1"), None);
    /// assert!(prefetch::KeySpace::new("c:").add_table("c:x:").is_err());
    /// ```
    pub fn add_table(&self, table: &str) -> crate::Result<()> {
        if !self.multi {
            return Err(crate::Error::InvalidConfig(
                "a cache of one table cannot take another while it runs; restart it with every table".into(),
            ));
        }
        self.check_table(table)?;
        let mut tables = self.tables.write().unwrap_or_else(|p| p.into_inner());
        if let Some(other) = tables
            .iter()
            .find(|t| t.starts_with(table) || table.starts_with(t.as_str()))
        {
            return Err(crate::Error::InvalidConfig(format!(
                "the keys under {table:?} and {other:?} could be the same"
            )));
        }
        let mut next = (**tables).clone();
        next.push(table.to_owned());
        *tables = Arc::new(next);
        Ok(())
    }

    /// Stops holding the keys under `table` as records; returns whether it
    /// was held.
    pub fn remove_table(&self, table: &str) -> bool {
        let mut tables = self.tables.write().unwrap_or_else(|p| p.into_inner());
        if !tables.iter().any(|t| t == table) {
            return false;
        }
        let next: Vec<String> = tables.iter().filter(|t| *t != table).cloned().collect();
        *tables = Arc::new(next);
        true
    }

    /// The prefix every record key starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The Redis key for `id`.
    pub fn key(&self, id: &str) -> String {
        let mut key = String::with_capacity(self.prefix.len() + id.len());
        key.push_str(&self.prefix);
        key.push_str(id);
        key
    }

    /// The id inside `key`, or `None` when `key` is not a record of this
    /// cache (another prefix, or bookkeeping under an empty prefix).
    pub fn id_of<'k>(&self, key: &'k str) -> Option<&'k str> {
        if key.starts_with(RESERVED_KEY_PREFIX) && !self.prefix.starts_with(RESERVED_KEY_PREFIX) {
            return None;
        }
        if self.multi {
            let tables = self.tables.read().unwrap_or_else(|p| p.into_inner());
            if !tables.iter().any(|t| key.starts_with(t.as_str())) {
                return None;
            }
        }
        key.strip_prefix(self.prefix.as_str())
    }

    /// `SCAN MATCH` pattern matching every key under the prefix (with
    /// several tables, also keys that are not records: check each with
    /// [`id_of`](Self::id_of)).
    pub fn scan_pattern(&self) -> &str {
        &self.pattern
    }

    /// The key holding this cache's state (source, position, floor).
    pub fn meta_key(&self) -> &str {
        &self.meta
    }

    /// On a Redis Cluster, the key in `slot` holding this cache's source and
    /// floor, so that one call can check them beside the slot's records.
    ///
    /// ```
    /// let ks = prefetch::KeySpace::new("cache:");
    /// let key = ks.slot_meta_key(7);
    /// assert_eq!(prefetch::slot(&key), 7);
    /// assert!(ks.id_of(&key).is_none());
    /// ```
    pub fn slot_meta_key(&self, slot: u16) -> String {
        format!(
            "{RESERVED_KEY_PREFIX}s:{{{}}}{}",
            slot_tag(slot),
            self.state_name()
        )
    }

    /// The log of the snapshot window beside the state at
    /// [`meta_key`](Self::meta_key): the versions of the writes applied
    /// while a snapshot is being taken and written, so that a snapshot
    /// write never lands on a key a newer change reached before it was
    /// removed.
    ///
    /// It carries a hash tag of the state's own slot, so that one call can
    /// name both on a Redis Cluster too.
    ///
    /// ```
    /// let ks = prefetch::KeySpace::new("cache:a}b");
    /// assert_eq!(prefetch::slot(&ks.window_key()), prefetch::slot(ks.meta_key()));
    /// ```
    pub fn window_key(&self) -> String {
        format!(
            "{RESERVED_KEY_PREFIX}w:{{{}}}{}",
            slot_tag(slot(&self.meta)),
            self.state_name()
        )
    }

    /// On a Redis Cluster, the window's log in `slot`, beside
    /// [`slot_meta_key`](Self::slot_meta_key).
    ///
    /// ```
    /// let ks = prefetch::KeySpace::new("cache:");
    /// assert_eq!(prefetch::slot(&ks.slot_window_key(7)), 7);
    /// ```
    pub fn slot_window_key(&self, slot: u16) -> String {
        format!(
            "{RESERVED_KEY_PREFIX}ws:{{{}}}{}",
            slot_tag(slot),
            self.state_name()
        )
    }

    /// Where the tombstone of the record at `data_key` lives.
    ///
    /// ```
    /// use prefetch::{KeySpace, Tombstone};
    ///
    /// let ks = KeySpace::new("cache:");
    /// assert_eq!(ks.tombstone("cache:a"), Tombstone::Key("__pf:u:{cache:a}".into()));
    /// assert_eq!(ks.tombstone("cache:{t}a"), Tombstone::Key("__pf:t:cache:{t}a".into()));
    /// assert_eq!(ks.tombstone("cache:a}"), Tombstone::InHash);
    /// ```
    pub fn tombstone(&self, data_key: &str) -> Tombstone {
        if hash_tag(data_key).is_some() {
            // The tag is the first `{…}`, and the marker has no braces, so
            // the tombstone's tag is the record's.
            Tombstone::Key(format!("{RESERVED_KEY_PREFIX}t:{data_key}"))
        } else if !data_key.contains('}') {
            // No tag: the whole key becomes the tombstone's tag, which then
            // hashes exactly like the key itself.
            Tombstone::Key(format!("{RESERVED_KEY_PREFIX}u:{{{data_key}}}"))
        } else {
            Tombstone::InHash
        }
    }

    /// `SCAN MATCH` patterns covering every tombstone key of this cache
    /// (one pair per table when there are several).
    pub fn tombstone_patterns(&self) -> Vec<String> {
        let tables = self.tables();
        let prefixes: Vec<&str> = if self.multi {
            tables.iter().map(String::as_str).collect()
        } else {
            vec![self.prefix.as_str()]
        };
        prefixes
            .into_iter()
            .flat_map(|prefix| {
                let p = escape_glob(prefix);
                [
                    format!("{RESERVED_KEY_PREFIX}t:{p}*"),
                    format!("{RESERVED_KEY_PREFIX}u:{{{p}*"),
                ]
            })
            .collect()
    }

    /// Checks that the prefix does not collide with the bookkeeping keys,
    /// and that every table's key prefix lies under it.
    pub fn validate(&self) -> crate::Result<()> {
        if self.prefix.starts_with(RESERVED_KEY_PREFIX) {
            return Err(crate::Error::InvalidConfig(format!(
                "the key prefix must not start with '{RESERVED_KEY_PREFIX}' (reserved for the cache's bookkeeping)"
            )));
        }
        for t in self.tables().iter() {
            self.check_table(t)?;
        }
        Ok(())
    }

    fn check_table(&self, t: &str) -> crate::Result<()> {
        if !t.starts_with(self.prefix.as_str())
            || t.starts_with(RESERVED_KEY_PREFIX)
            || t.is_empty()
        {
            return Err(crate::Error::InvalidConfig(format!(
                "a table's key prefix {t:?} must be non-empty, lie under {:?} and not start with '{RESERVED_KEY_PREFIX}'",
                self.prefix
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_tables_own_only_their_keys_and_state_of_their_own() {
        let a = KeySpace::with_tables("shop:", ["shop:a:", "shop:b:"]);
        let b = KeySpace::with_tables("shop:", ["shop:a:", "shop:c:"]);
        assert_eq!(a.id_of("shop:a:1"), Some("a:1"));
        assert_eq!(a.id_of("shop:c:1"), None);
        assert_eq!(a.key("b:2"), "shop:b:2");
        assert_eq!(a.scan_pattern(), "shop:*");
        assert_ne!(a.meta_key(), b.meta_key());
        assert_ne!(a.slot_meta_key(3), b.slot_meta_key(3));
        assert_ne!(a.window_key(), b.window_key());
        assert_eq!(
            a.tombstone_patterns(),
            [
                "__pf:t:shop:a:*",
                "__pf:u:{shop:a:*",
                "__pf:t:shop:b:*",
                "__pf:u:{shop:b:*"
            ]
        );
        assert!(
            KeySpace::with_tables("shop:", ["other:"])
                .validate()
                .is_err()
        );
        assert_eq!(
            KeySpace::new("p:").meta_key(),
            "__pf:m:p:",
            "one table: as before"
        );
    }

    #[test]
    fn plain_prefix_gets_a_trailing_star() {
        assert_eq!(
            KeySpace::new("cache:category:").scan_pattern(),
            "cache:category:*"
        );
    }

    #[test]
    fn glob_characters_in_the_prefix_are_escaped() {
        let ks = KeySpace::new("a*b?c[d]e\\f");
        assert_eq!(ks.scan_pattern(), "a\\*b\\?c\\[d\\]e\\\\f*");
    }

    #[test]
    fn keys_round_trip_through_id_of() {
        let ks = KeySpace::new("p:");
        let key = ks.key("cat 1/é");
        assert_eq!(key, "p:cat 1/é");
        assert_eq!(ks.id_of(&key), Some("cat 1/é"));
        assert_eq!(ks.id_of("other:cat"), None);
        let empty = KeySpace::new("");
        assert_eq!(empty.id_of("x"), Some("x"));
        assert_eq!(empty.id_of("__pf:m:"), None, "bookkeeping is not a record");
    }

    #[test]
    fn a_tombstone_key_always_lands_in_its_records_cluster_slot() {
        let ks = KeySpace::new("c:");
        let ids = [
            "a", "cat-001", "{x}", "{x}y", "a{b}c", "a{b", "a{}b", "{}", "{{a}}", "a{b{c}d", "}",
            "a}b", "{}a}", "é{ü}", "x{y}z{w}",
        ];
        let mut in_hash = 0;
        for id in ids {
            let key = ks.key(id);
            match ks.tombstone(&key) {
                Tombstone::Key(t) => {
                    assert_eq!(slot(&t), slot(&key), "{key} vs {t}");
                    assert!(
                        ks.id_of(&t).is_none(),
                        "a tombstone is never listed as a record"
                    );
                }
                Tombstone::InHash => {
                    in_hash += 1;
                    assert!(key.contains('}') && hash_tag(&key).is_none(), "{key}");
                }
            }
        }
        assert_eq!(
            in_hash, 5,
            "only keys with '}}' and no tag keep it in the hash"
        );
    }

    #[test]
    fn distinct_records_never_share_a_tombstone_key() {
        let ks = KeySpace::new("");
        let ids = ["x{y", "{x{y}", "a", "{a}", "u:{a}", "t:a"];
        let mut seen = std::collections::BTreeSet::new();
        for id in ids {
            if let Tombstone::Key(t) = ks.tombstone(&ks.key(id)) {
                assert!(seen.insert(t.clone()), "{id} collides on {t}");
            }
        }
    }

    #[test]
    fn reserved_prefixes_are_refused() {
        assert!(KeySpace::new("__pf:x").validate().is_err());
        assert!(KeySpace::new("cache:").validate().is_ok());
    }
}
