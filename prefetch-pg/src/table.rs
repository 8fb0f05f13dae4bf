//! The mirrored table as the catalog describes it, and how its rows become
//! records: every column's text form (booleans as `true`/`false`), NULL as
//! an absent field, and an id made from the primary key.

use std::fmt::Write as _;

use prefetch::{Fields, ID_FIELD};
pub use prefetch::{decode_key, encode_key};

use crate::error::PgError;

/// PostgreSQL's `bool` type OID: pgoutput writes `t`/`f`, a `::text` cast
/// writes `true`/`false`; records always hold the latter.
pub const BOOL_OID: u32 = 16;

/// One column of the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    /// Its name.
    pub name: String,
    /// Its type OID.
    pub type_oid: u32,
    /// Its type as SQL (`integer`, `character varying(40)`, …), for casts.
    pub sql_type: String,
}

/// The mirrored table: schema, name, columns and primary key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableInfo {
    /// The schema (`public`).
    pub schema: String,
    /// The table name.
    pub name: String,
    /// Every column, in table order.
    pub columns: Vec<Column>,
    /// The primary key's columns, in key order.
    pub key: Vec<String>,
}

/// `"name"` with embedded quotes doubled: a safe SQL identifier.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `'text'` with embedded quotes doubled: a safe SQL string literal.
pub fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

impl TableInfo {
    /// `"schema"."name"`.
    pub fn qualified(&self) -> String {
        format!("{}.{}", ident(&self.schema), ident(&self.name))
    }

    /// The column called `name`.
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// Whether the records need an `id` field of their own (the key is not
    /// one column called `id`).
    pub fn synthetic_id(&self) -> bool {
        !(self.key.len() == 1 && self.key[0] == ID_FIELD)
    }

    /// Checks that rows of this table can become records.
    pub fn validate(&self) -> Result<(), PgError> {
        if self.key.is_empty() {
            return Err(PgError::Schema(format!(
                "table {} has no primary key; the cache needs one to name its records",
                self.qualified()
            )));
        }
        if self.synthetic_id() && self.column(ID_FIELD).is_some() {
            return Err(PgError::Schema(format!(
                "table {} has a column named 'id' that is not its primary key; records are named by the key",
                self.qualified()
            )));
        }
        if let Some(c) = self.columns.iter().find(|c| c.name.starts_with("__")) {
            return Err(PgError::Schema(format!(
                "column '{}' of {}: names starting with '__' are reserved for the cache",
                c.name,
                self.qualified()
            )));
        }
        Ok(())
    }

    /// `SELECT "c1"::text, "c2"::text, … FROM "s"."t"` (in column order).
    pub fn select_text(&self) -> String {
        let cols: Vec<String> = self
            .columns
            .iter()
            .map(|c| format!("{}::text", ident(&c.name)))
            .collect();
        format!("SELECT {} FROM {}", cols.join(", "), self.qualified())
    }

    /// `"s"."t"."k1", …`: the key columns for an `ORDER BY` after
    /// [`select_text`](Self::select_text). Qualified, because a bare name
    /// would sort by the selected `::text` column of the same name, in text
    /// order (`10` before `9`), not the key's own order.
    pub fn key_order(&self) -> String {
        let table = self.qualified();
        self.key
            .iter()
            .map(|k| format!("{table}.{}", ident(k)))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// A record from values in column order (`None` is NULL), or `None`
    /// when a key column is NULL (impossible for a primary key).
    pub fn record(&self, values: Vec<Option<String>>) -> Option<Fields> {
        let mut fields = Fields::new();
        for (col, value) in self.columns.iter().zip(values) {
            if let Some(v) = value {
                fields.insert(col.name.clone(), v);
            }
        }
        self.finish(fields)
    }

    /// Adds the synthetic `id` when needed; `None` if a key column is absent.
    pub fn finish(&self, mut fields: Fields) -> Option<Fields> {
        if self.synthetic_id() {
            let parts: Option<Vec<&str>> = self
                .key
                .iter()
                .map(|k| fields.get(k).map(String::as_str))
                .collect();
            let id = encode_key(&parts?);
            fields.insert(ID_FIELD.to_owned(), id);
        } else if !fields.contains_key(ID_FIELD) {
            return None;
        }
        Some(fields)
    }

    /// The record id of a row with these key values (in key order).
    pub fn id_of(&self, key_values: &[&str]) -> String {
        encode_key(key_values)
    }

    /// The key values of a record id, in key order.
    pub fn key_of(&self, id: &str) -> Result<Vec<String>, prefetch::Error> {
        let parts = decode_key(id);
        if parts.len() != self.key.len() {
            return Err(prefetch::Error::NotFound(id.to_owned()));
        }
        Ok(parts)
    }

    /// `("k1", "k2") > (CAST($n::text AS t1), …)` over the first `parts`
    /// key columns, numbering parameters from `first`: the rows after a
    /// key in key order.
    pub fn key_after(&self, first: usize, parts: usize) -> String {
        let keys: Vec<&String> = self.key.iter().take(parts.max(1)).collect();
        let cols: Vec<String> = keys.iter().map(|k| ident(k)).collect();
        let values: Vec<String> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let ty = self.column(k).map_or("text", |c| c.sql_type.as_str());
                format!("CAST(${}::text AS {ty})", first + i)
            })
            .collect();
        format!("({}) > ({})", cols.join(", "), values.join(", "))
    }

    /// `"k1" = CAST($n::text AS type) AND …`, numbering parameters from `first`.
    pub fn key_predicate(&self, first: usize) -> String {
        let mut out = String::new();
        for (i, k) in self.key.iter().enumerate() {
            if i > 0 {
                out.push_str(" AND ");
            }
            let ty = self.column(k).map_or("text", |c| c.sql_type.as_str());
            // `$n::text` first: the parameter is always sent as text.
            let _ = write!(out, "{} = CAST(${}::text AS {ty})", ident(k), first + i);
        }
        out
    }
}

/// A column value as pgoutput writes it, in the record's form.
pub fn text_value(type_oid: u32, raw: &str) -> String {
    if type_oid == BOOL_OID {
        match raw {
            "t" => return "true".into(),
            "f" => return "false".into(),
            _ => {}
        }
    }
    raw.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(key: &[&str], cols: &[&str]) -> TableInfo {
        TableInfo {
            schema: "public".into(),
            name: "t".into(),
            columns: cols
                .iter()
                .map(|c| Column {
                    name: (*c).into(),
                    type_oid: if *c == "flag" { BOOL_OID } else { 25 },
                    sql_type: "text".into(),
                })
                .collect(),
            key: key.iter().map(|k| (*k).to_owned()).collect(),
        }
    }

    #[test]
    fn rows_become_records_with_nulls_absent_and_a_synthetic_id_when_needed() {
        let t = table(&["region", "code"], &["region", "code", "name", "flag"]);
        let rec = t
            .record(vec![
                Some("eu".into()),
                Some("42".into()),
                None,
                Some("true".into()),
            ])
            .unwrap();
        assert_eq!(rec.get("id").map(String::as_str), Some("eu:42"));
        assert!(!rec.contains_key("name"), "NULL is an absent field");
        let plain = table(&["id"], &["id", "name"]);
        assert!(!plain.synthetic_id());
        assert_eq!(
            plain
                .record(vec![Some("cat-1".into()), Some("n".into())])
                .unwrap()["id"],
            "cat-1"
        );
        assert_eq!(text_value(BOOL_OID, "t"), "true");
        assert_eq!(text_value(25, "t"), "t");
    }

    #[test]
    fn tables_the_cache_cannot_name_are_refused() {
        assert!(table(&[], &["a"]).validate().is_err());
        assert!(table(&["k"], &["k", "id"]).validate().is_err());
        assert!(table(&["k"], &["k", "__v"]).validate().is_err());
        assert!(table(&["id"], &["id", "x"]).validate().is_ok());
        assert_eq!(
            table(&["a", "b"], &["a", "b"]).key_predicate(2),
            r#""a" = CAST($2::text AS text) AND "b" = CAST($3::text AS text)"#
        );
    }
}
