//! The tables file: which PostgreSQL tables the cache holds and how each
//! becomes keys in Redis (TOML, one `[[table]]` per table).
//!
//! ```toml
//! [[table]]
//! table    = "public.products"   # schema.table; the schema defaults to public
//! key      = "product:{sku}"     # default "<table>:{pk1}:{pk2}…"
//! columns  = ["sku", "name", "price", "active"]  # default: every column
//! rename   = { name = "title" }  # column → field name in Redis
//! filter   = "active"            # SQL boolean over the row
//! ttl_secs = 600                 # default: --ttl-seconds
//! ```
//!
//! [`TablesFile::parse`] checks what it can without a database (the TOML,
//! the templates, keys that could collide between tables); the source
//! checks the rest against the catalog and PostgreSQL itself (columns,
//! the primary key, the filter, the replica identity). Every refusal names
//! the file and the line.
//!
//! ```
//! let file = prefetch_pg::tables::TablesFile::parse(
//!     "tables.toml",
//!     "[[table]]\ntable = \"order_lines\"\nkey = \"line:{order_id}:{line_no}\"\n",
//! )
//! .unwrap();
//! assert_eq!(file.tables[0].key.as_ref().unwrap().prefix(), "line:");
//! ```

use std::collections::BTreeMap;

use prefetch::KeyTemplate;
use serde::Deserialize;
use toml::Spanned;

use crate::error::PgError;
use crate::table::{Mapping, TableInfo};

/// How a table's rows are stored in Redis.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ValueKind {
    /// A hash of the columns' text forms (booleans `true`/`false`, NULL an
    /// absent field).
    #[default]
    Hash,
    /// A JSON document (a string key): integers and floats as numbers,
    /// `numeric` as an exact string, booleans, NULL as `null`,
    /// `json`/`jsonb` embedded, timestamps in ISO 8601, the rest as text.
    Json,
}

/// One `[[table]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableSpec {
    /// `schema.table` or `table` (schema `public`), as written.
    pub table: String,
    /// The key template (`None`: `<table>:{pk1}:{pk2}…`).
    pub key: Option<KeyTemplate>,
    /// How rows are stored.
    pub value: ValueKind,
    /// The columns kept (`None`: every column).
    pub columns: Option<Vec<String>>,
    /// Column → field name in Redis.
    pub rename: BTreeMap<String, String>,
    /// A SQL boolean expression over the row: the rows kept.
    pub filter: Option<String>,
    /// How long a key lives without a change (`None`: the server's TTL).
    pub ttl_secs: Option<u64>,
    /// The line of its `[[table]]`.
    pub line: usize,
    /// `path:line` of its `[[table]]`, for errors found later.
    pub origin: String,
}

impl TableSpec {
    /// A declaration of `table` with every default (as `--pg-table` would
    /// mirror it, but keyed `<table>:{pk…}`).
    pub fn new(table: impl Into<String>) -> Self {
        Self {
            table: table.into(),
            key: None,
            value: ValueKind::Hash,
            columns: None,
            rename: BTreeMap::new(),
            filter: None,
            ttl_secs: None,
            line: 0,
            origin: "(built in)".into(),
        }
    }

    /// The literal text every key of this table starts with: the key
    /// template's, or `<table>:` for the default template.
    pub fn key_prefix(&self) -> String {
        match &self.key {
            Some(k) => k.prefix().to_owned(),
            None => match self.table.strip_prefix("public.") {
                Some(name) => format!("{name}:"),
                None => format!("{}:", self.table),
            },
        }
    }

    /// `(schema, name)`: the schema `public` when the file names none.
    pub fn schema_and_name(&self) -> (String, String) {
        match self.table.split_once('.') {
            Some((s, t)) => (s.to_owned(), t.to_owned()),
            None => ("public".to_owned(), self.table.clone()),
        }
    }

    /// `why`, prefixed with where the table was declared.
    pub fn error(&self, why: impl std::fmt::Display) -> PgError {
        PgError::Schema(format!("{}: {why}", self.origin))
    }
}

/// A parsed tables file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TablesFile {
    /// Where it was read from (for errors).
    pub path: String,
    /// Its tables, in file order.
    pub tables: Vec<TableSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    table: Vec<Spanned<RawTable>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTable {
    table: Spanned<String>,
    key: Option<Spanned<String>>,
    value: Option<Spanned<String>>,
    columns: Option<Vec<String>>,
    #[serde(default)]
    rename: BTreeMap<String, String>,
    filter: Option<Spanned<String>>,
    ttl_secs: Option<Spanned<u64>>,
}

/// The 1-based line of byte offset `at` in `text`.
fn line_of(text: &str, at: usize) -> usize {
    text.get(..at).map_or(1, |t| t.matches('\n').count() + 1)
}

impl TablesFile {
    /// Reads and parses the file at `path`.
    pub fn read(path: &str) -> Result<Self, PgError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| PgError::Schema(format!("{path}: cannot read the tables file: {e}")))?;
        Self::parse(path, &text)
    }

    /// Parses `text` (read from `path`). Refused, with the line: bad TOML,
    /// an unknown setting, a bad key template, `value` other than `hash`,
    /// an empty `columns`, a `ttl_secs` of 0, a table declared twice, and
    /// two tables whose keys could collide.
    pub fn parse(path: &str, text: &str) -> Result<Self, PgError> {
        let at = |offset: usize, why: String| {
            PgError::Schema(format!("{path}:{}: {why}", line_of(text, offset)))
        };
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            let offset = e.span().map_or(0, |s| s.start);
            at(offset, e.message().trim().to_owned())
        })?;
        if raw.table.is_empty() {
            return Err(at(0, "no [[table]] declared".into()));
        }
        let mut tables: Vec<TableSpec> = Vec::new();
        for spanned in raw.table {
            let start = spanned.span().start;
            let t = spanned.into_inner();
            let name = t.table.get_ref().trim().to_owned();
            if name.is_empty() {
                return Err(at(t.table.span().start, "`table` is empty".into()));
            }
            let key = match &t.key {
                Some(k) => Some(
                    KeyTemplate::parse(k.get_ref())
                        .map_err(|e| at(k.span().start, e.to_string()))?,
                ),
                None => None,
            };
            let value = match t
                .value
                .as_ref()
                .map(|v| (v.get_ref().as_str(), v.span().start))
            {
                None | Some(("hash", _)) => ValueKind::Hash,
                Some(("json", _)) => ValueKind::Json,
                Some((other, at_)) => {
                    return Err(at(
                        at_,
                        format!("value = {other:?}: a row is stored as \"hash\" or \"json\""),
                    ));
                }
            };
            if t.columns.as_ref().is_some_and(Vec::is_empty) {
                return Err(at(start, format!("table {name}: `columns` is empty")));
            }
            if let Some(ttl) = &t.ttl_secs
                && *ttl.get_ref() == 0
            {
                return Err(at(ttl.span().start, "ttl_secs must be at least 1".into()));
            }
            let spec = TableSpec {
                table: name,
                key,
                value,
                columns: t.columns,
                rename: t.rename,
                filter: t.filter.map(|f| f.into_inner()),
                ttl_secs: t.ttl_secs.map(|t| t.into_inner()),
                line: line_of(text, start),
                origin: format!("{path}:{}", line_of(text, start)),
            };
            if let Some(other) = tables.iter().find(|o| same_table(&o.table, &spec.table)) {
                return Err(at(
                    start,
                    format!(
                        "table {} is already declared at line {}",
                        spec.table, other.line
                    ),
                ));
            }
            tables.push(spec);
        }
        let file = Self {
            path: path.to_owned(),
            tables,
        };
        file.check_collisions()?;
        Ok(file)
    }

    /// Two tables whose templates could make the same key are refused.
    fn check_collisions(&self) -> Result<(), PgError> {
        for (i, a) in self.tables.iter().enumerate() {
            for b in &self.tables[..i] {
                if let (Some(ka), Some(kb)) = (&a.key, &b.key)
                    && ka.may_collide(kb)
                {
                    return Err(PgError::Schema(format!(
                        "{}:{}: the keys of {} ({ka}) could collide with those of {} ({kb}, line {}): give each table a key prefix of its own",
                        self.path, a.line, a.table, b.table, b.line
                    )));
                }
            }
        }
        Ok(())
    }
}

impl TableSpec {
    /// The mapping of this declaration onto `table` as the catalog
    /// describes it: the default key `<table>:{pk1}:{pk2}…` and every
    /// column unless the file says otherwise.
    pub fn mapping(&self, table: &TableInfo, cache_prefix: &str) -> Result<Mapping, PgError> {
        if table.key.is_empty() {
            return Err(self.error(format!(
                "table {} has no primary key; the cache needs one to name its rows",
                table.label()
            )));
        }
        let template = match &self.key {
            Some(k) => k.clone(),
            None => {
                let name = if table.schema == "public" {
                    table.name.clone()
                } else {
                    format!("{}.{}", table.schema, table.name)
                };
                let cols: Vec<String> = table.key.iter().map(|k| format!("{{{k}}}")).collect();
                KeyTemplate::parse(&format!("{name}:{}", cols.join(":")))
                    .map_err(|e| self.error(e))?
            }
        };
        let columns = match &self.columns {
            Some(cols) => cols.clone(),
            None => table.columns.iter().map(|c| c.name.clone()).collect(),
        };
        if !template.prefix().starts_with(cache_prefix) {
            return Err(self.error(format!(
                "the key template {template} does not start with the cache's prefix {cache_prefix:?}"
            )));
        }
        Ok(Mapping {
            template,
            columns,
            rename: self.rename.clone(),
            filter: self.filter.clone(),
            cache_prefix: cache_prefix.to_owned(),
            origin: self.origin.clone(),
            json: self.value == ValueKind::Json,
        })
    }
}

/// The cache's key prefix for these tables: one table's key prefix, or
/// what the prefixes of several have in common (often nothing).
///
/// ```
/// use prefetch_pg::tables::{TablesFile, cache_prefix};
/// let f = TablesFile::parse("t.toml", "[[table]]\ntable = \"a\"\nkey = \"shop:a:{id}\"\n[[table]]\ntable = \"b\"\nkey = \"shop:b:{id}\"\n").unwrap();
/// assert_eq!(cache_prefix(&f.tables), "shop:");
/// assert_eq!(cache_prefix(&f.tables[..1]), "shop:a:");
/// ```
pub fn cache_prefix(specs: &[TableSpec]) -> String {
    let prefixes: Vec<String> = specs.iter().map(TableSpec::key_prefix).collect();
    let Some((first, rest)) = prefixes.split_first() else {
        return String::new();
    };
    let mut common = first.as_str();
    for p in rest {
        let shared = common
            .char_indices()
            .zip(p.chars())
            .find(|((_, a), b)| a != b)
            .map_or(common.len().min(p.len()), |((i, _), _)| i);
        common = &common[..shared];
    }
    common.to_owned()
}

/// The key prefix of each table, when there are several (the cache then
/// holds the keys under one of them); empty for one table.
pub fn table_prefixes(specs: &[TableSpec]) -> Vec<String> {
    if specs.len() < 2 {
        return Vec::new();
    }
    specs.iter().map(TableSpec::key_prefix).collect()
}

/// The key prefixes of the tables stored as JSON documents (for
/// [`CacheConfig::json_tables`](prefetch::CacheConfig::json_tables)).
pub fn json_prefixes(specs: &[TableSpec]) -> Vec<String> {
    specs
        .iter()
        .filter(|s| s.value == ValueKind::Json)
        .map(TableSpec::key_prefix)
        .collect()
}

/// Whether two names written in the file are the same table.
fn same_table(a: &str, b: &str) -> bool {
    let full = |n: &str| {
        if n.contains('.') {
            n.to_owned()
        } else {
            format!("public.{n}")
        }
    };
    full(a) == full(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(text: &str) -> String {
        TablesFile::parse("t.toml", text).unwrap_err().to_string()
    }

    #[test]
    fn a_full_table_parses() {
        let f = TablesFile::parse(
            "t.toml",
            r#"
# products
[[table]]
table    = "public.products"
key      = "product:{sku}"
value    = "hash"
columns  = ["sku", "name", "active"]
rename   = { name = "title" }
filter   = "active"
ttl_secs = 600

[[table]]
table = "order_lines"
"#,
        )
        .unwrap();
        assert_eq!(f.tables.len(), 2);
        let p = &f.tables[0];
        assert_eq!(p.line, 3);
        assert_eq!(p.key.as_ref().unwrap().as_str(), "product:{sku}");
        assert_eq!(p.rename["name"], "title");
        assert_eq!(p.filter.as_deref(), Some("active"));
        assert_eq!(p.ttl_secs, Some(600));
        assert_eq!(f.tables[1].line, 12);
        assert_eq!(f.tables[1].key, None);
    }

    #[test]
    fn bad_files_are_refused_with_the_line_and_the_reason() {
        for (text, want) in [
            (
                "[[table]]\ntable = \"a\"\nkeys = \"x\"\n",
                "t.toml:3: unknown field `keys`",
            ),
            (
                "[[table]]\ntable = \"a\"\nkey = \"a:{id\"\n",
                "t.toml:3: key template",
            ),
            (
                "[[table]]\ntable = \"a\"\n\nvalue = \"xml\"\n",
                "t.toml:4: value = \"xml\"",
            ),
            (
                "[[table]]\ntable = \"a\"\nttl_secs = 0\n",
                "t.toml:3: ttl_secs",
            ),
            (
                "[[table]]\ntable = \"a\"\ncolumns = []\n",
                "t.toml:1: table a: `columns` is empty",
            ),
            (
                "[[table]]\ntable = \"a\"\n[[table]]\ntable = \"public.a\"\n",
                "t.toml:3: table public.a is already declared at line 1",
            ),
            (
                "[[table]]\ntable = \"a\"\nkey = \"p:{id}\"\n[[table]]\ntable = \"b\"\nkey = \"p:{id}:{x}\"\n",
                "t.toml:4: the keys of b (p:{id}:{x}) could collide with those of a",
            ),
            ("# nothing\n", "no [[table]]"),
            ("[[table]]\ntable = 3\n", "t.toml:2:"),
        ] {
            let err = refused(text);
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }
}
