//! [`Mapping`]: how the rows of a table declared in a tables file become
//! records (key template, columns, names, filter), and its checks against
//! the table.

use std::collections::BTreeMap;

use prefetch::{ID_FIELD, KeyTemplate};

use crate::error::PgError;

/// How the rows of a table declared in a tables file become records.
///
/// The projection and the filter are PostgreSQL's own (the publication's
/// column list and row filter), so the stream carries nothing else; the
/// snapshot and the editor's view select the same.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// The key template; its columns are the primary key's. A record's id
    /// is its key less the template's literal prefix (the cache's prefix).
    pub template: KeyTemplate,
    /// The columns kept, in table order.
    pub columns: Vec<String>,
    /// Column → field name in Redis, for the columns renamed.
    pub rename: BTreeMap<String, String>,
    /// A SQL boolean expression over the row: the rows kept.
    pub filter: Option<String>,
    /// The cache's key prefix, which every key of the template starts
    /// with: a record's id is its key less this.
    pub cache_prefix: String,
    /// Where the table was declared (`file:line`), for errors.
    pub origin: String,
    /// Rows stored as JSON documents (`value = "json"`), not hashes.
    pub json: bool,
}

impl Mapping {
    /// A mapping must name columns the table has, key rows by exactly the
    /// primary key, and rename to names no other field has.
    pub(crate) fn validate(
        &self,
        name: &str,
        has_column: impl Fn(&str) -> bool,
        primary_key: &[String],
    ) -> Result<(), PgError> {
        let m = self;
        let bad = |why: String| Err(PgError::Schema(format!("table {name}: {why}")));
        for c in &m.columns {
            if !has_column(c) {
                return bad(format!(
                    "`columns` names {c:?}, which the table does not have"
                ));
            }
        }
        let mut key: Vec<&str> = primary_key.iter().map(String::as_str).collect();
        let mut named = m.template.columns();
        for c in &named {
            if !m.columns.iter().any(|s| s == c) {
                return bad(format!(
                    "the key template names {c:?}, which `columns` leaves out"
                ));
            }
        }
        key.sort_unstable();
        named.sort_unstable();
        if key != named {
            return bad(format!(
                "the key template must name exactly the primary key's columns ({}), so that each row has one key and a delete can name it",
                primary_key.join(", ")
            ));
        }
        let id_field = |c: &String| m.rename.get(c).unwrap_or(c) == ID_FIELD;
        if m.columns.iter().any(id_field) && primary_key != [ID_FIELD] {
            return bad(format!(
                "a field called {ID_FIELD:?} that is not the whole key would hide the row's name on the dashboard; rename it (rename = {{ id = \"…\" }})"
            ));
        }
        for (from, to) in &m.rename {
            if !m.columns.contains(from) {
                return bad(format!(
                    "`rename` names {from:?}, which `columns` leaves out"
                ));
            }
            if to.is_empty() || to.starts_with("__") {
                return bad(format!(
                    "`rename` of {from:?}: {to:?} is not a field name the cache can use"
                ));
            }
            let clash = m
                .columns
                .iter()
                .any(|c| c != from && c == to && !m.rename.contains_key(c))
                || m.rename.iter().any(|(f, t)| f != from && t == to);
            if clash {
                return bad(format!(
                    "`rename` of {from:?}: another field is already called {to:?}"
                ));
            }
        }
        Ok(())
    }

    /// The id of the row with this key (`None`: not under the prefix).
    pub(crate) fn id_of_key(&self, key: &str) -> Option<String> {
        key.strip_prefix(self.cache_prefix.as_str())
            .map(str::to_owned)
    }
}
