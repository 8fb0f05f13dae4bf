//! The mirrored table as the catalog describes it, and how its rows become
//! records.
//!
//! Every column's text form (booleans as `true`/`false`), NULL as an absent
//! field, and an id made from the primary key; or, for a table declared in
//! a tables file, its [`Mapping`]: a key template, the columns selected,
//! their names in Redis and a row filter.

use std::fmt::Write as _;
use std::sync::Arc;

use prefetch::{Fields, ID_FIELD, Record};

pub use crate::mapping::Mapping;
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
    /// How a declared table's rows become records (`None`: every column,
    /// named by the primary key, as the demo's table).
    pub mapping: Option<Arc<Mapping>>,
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

    /// `schema.name` as people write it (not quoted): the table's name in
    /// the API, the dashboard and the log.
    pub fn label(&self) -> String {
        format!("{}.{}", self.schema, self.name)
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
        if self.mapping.is_none() && self.synthetic_id() && self.column(ID_FIELD).is_some() {
            return Err(PgError::Schema(format!(
                "table {} has a column named 'id' that is not its primary key; records are named by the key",
                self.qualified()
            )));
        }
        if let Some(m) = &self.mapping {
            let name = self.label();
            m.validate(&name, |c| self.column(c).is_some(), &self.key)?;
        }
        if let Some(c) = self.selected().iter().find(|c| c.name.starts_with("__")) {
            return Err(PgError::Schema(format!(
                "column '{}' of {}: names starting with '__' are reserved for the cache",
                c.name,
                self.qualified()
            )));
        }
        Ok(())
    }

    /// The columns records are made of, in table order: every one, or
    /// those a mapping selects (what the stream sends).
    pub fn selected(&self) -> Vec<&Column> {
        match &self.mapping {
            Some(m) => self
                .columns
                .iter()
                .filter(|c| m.columns.contains(&c.name))
                .collect(),
            None => self.columns.iter().collect(),
        }
    }

    /// What every id of this table's records starts with, in the cache's
    /// ids: empty, unless the cache holds several tables.
    pub fn id_prefix(&self) -> &str {
        self.mapping.as_ref().map_or("", |m| {
            m.template
                .prefix()
                .strip_prefix(m.cache_prefix.as_str())
                .unwrap_or_default()
        })
    }

    /// The field names records hold, in column order (renamed by a
    /// mapping).
    pub fn field_names(&self) -> Vec<String> {
        self.selected()
            .iter()
            .map(|c| {
                self.mapping
                    .as_ref()
                    .and_then(|m| m.rename.get(&c.name))
                    .unwrap_or(&c.name)
                    .clone()
            })
            .collect()
    }

    /// `"c1"::text, "c2"::text, …` over the [`selected`](Self::selected)
    /// columns.
    pub fn select_list(&self) -> String {
        let cols: Vec<String> = self
            .selected()
            .iter()
            .map(|c| format!("{}::text", ident(&c.name)))
            .collect();
        cols.join(", ")
    }

    /// `"s"."t"`, with ` WHERE (filter)` when a mapping filters rows.
    pub fn from_clause(&self) -> String {
        match self.mapping.as_ref().and_then(|m| m.filter.as_ref()) {
            Some(f) => format!("{} WHERE ({f})", self.qualified()),
            None => self.qualified(),
        }
    }

    /// `SELECT "c1"::text, … FROM "s"."t"` over the selected columns and
    /// the rows the filter keeps.
    pub fn select_text(&self) -> String {
        format!("SELECT {} FROM {}", self.select_list(), self.from_clause())
    }

    /// [`select_text`](Self::select_text) with `condition` too.
    pub fn select_where(&self, condition: &str) -> String {
        let joiner = if self.mapping.as_ref().is_some_and(|m| m.filter.is_some()) {
            " AND "
        } else {
            " WHERE "
        };
        format!("{}{joiner}{condition}", self.select_text())
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

    /// A record from values in [`selected`](Self::selected) column order
    /// (`None` is NULL), or `None` when a key column is NULL (impossible
    /// for a primary key).
    pub fn record(&self, values: Vec<Option<String>>) -> Option<Record> {
        let mut fields = Fields::new();
        for (col, value) in self.selected().into_iter().zip(values) {
            if let Some(v) = value {
                fields.insert(col.name.clone(), v);
            }
        }
        self.finish(fields)
    }

    /// The record of a row's column values: named by the key template and
    /// renamed by a mapping, else with the synthetic `id` when needed;
    /// `None` if a key column is absent.
    pub fn finish(&self, mut fields: Fields) -> Option<Record> {
        if let Some(m) = &self.mapping {
            let key = m.template.render(|c| fields.get(c).map(String::as_str))?;
            let id = m.id_of_key(&key)?;
            if m.json {
                let name = |c: &str| m.rename.get(c).cloned().unwrap_or_else(|| c.to_owned());
                let columns = self
                    .selected()
                    .into_iter()
                    .map(|c| (c.name.as_str(), c.type_oid));
                let doc = crate::json::document(columns, &fields, name);
                return Some(Record::with_id(
                    id,
                    [(prefetch::JSON_FIELD.to_owned(), doc)].into(),
                ));
            }
            for (from, to) in &m.rename {
                if let Some(v) = fields.remove(from) {
                    fields.insert(to.clone(), v);
                }
            }
            return Some(Record::with_id(id, fields));
        }
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
        Some(Record::new(fields))
    }

    /// The record id of a row with these key values (in key order).
    pub fn id_of(&self, key_values: &[&str]) -> String {
        match &self.mapping {
            Some(m) => {
                let value = |c: &str| {
                    let i = self.key.iter().position(|k| k == c)?;
                    key_values.get(i).copied()
                };
                let key = m.template.render(value).unwrap_or_default();
                m.id_of_key(&key).unwrap_or_default()
            }
            None => encode_key(key_values),
        }
    }

    /// The key values of a record id, in key order.
    pub fn key_of(&self, id: &str) -> Result<Vec<String>, prefetch::Error> {
        let not_found = || prefetch::Error::NotFound(id.to_owned());
        if let Some(m) = &self.mapping {
            let key = format!("{}{id}", m.cache_prefix);
            let values = m.template.values_of(&key).ok_or_else(not_found)?;
            let columns = m.template.columns();
            return self
                .key
                .iter()
                .map(|k| {
                    let i = columns.iter().position(|c| c == k).ok_or_else(not_found)?;
                    Ok(values[i].clone())
                })
                .collect();
        }
        let parts = decode_key(id);
        if parts.len() != self.key.len() {
            return Err(not_found());
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
    use prefetch::KeyTemplate;

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
            mapping: None,
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
        assert_eq!(rec.id(), Some("eu:42"));
        assert_eq!(rec.get("id"), Some("eu:42"));
        assert_eq!(rec.get("name"), None, "NULL is an absent field");
        let plain = table(&["id"], &["id", "name"]);
        assert!(!plain.synthetic_id());
        assert_eq!(
            plain
                .record(vec![Some("cat-1".into()), Some("n".into())])
                .unwrap()
                .get("id"),
            Some("cat-1")
        );
        assert_eq!(text_value(BOOL_OID, "t"), "true");
        assert_eq!(text_value(25, "t"), "t");
    }

    #[test]
    fn a_mapping_names_rows_by_the_template_and_keeps_only_what_it_selects() {
        let mut t = table(
            &["region", "code"],
            &["region", "code", "name", "secret", "id"],
        );
        t.mapping = Some(Arc::new(Mapping {
            template: KeyTemplate::parse("item:{region}:{code}").unwrap(),
            columns: vec!["code".into(), "region".into(), "name".into(), "id".into()],
            rename: [
                ("name".to_owned(), "title".to_owned()),
                ("id".to_owned(), "ext_id".to_owned()),
            ]
            .into(),
            filter: Some("name <> ''".into()),
            cache_prefix: "item:".into(),
            origin: "t.toml:1".into(),
            json: false,
        }));
        t.validate().unwrap();
        assert_eq!(
            t.select_text(),
            r#"SELECT "region"::text, "code"::text, "name"::text, "id"::text FROM "public"."t" WHERE (name <> '')"#
        );
        assert!(t.select_where("x").ends_with("WHERE (name <> '') AND x"));
        let rec = t
            .record(vec![
                Some("e:u".into()),
                Some("4 2".into()),
                Some("n".into()),
                Some("7".into()),
            ])
            .unwrap();
        assert_eq!(rec.id(), Some("e%3Au:4%202"));
        assert_eq!(rec.get("title"), Some("n"));
        assert_eq!(rec.get("name"), None);
        assert_eq!(
            rec.get("ext_id"),
            Some("7"),
            "the table's own id column, renamed"
        );
        let mut unrenamed = t.clone();
        if let Some(m) = unrenamed.mapping.as_mut() {
            Arc::make_mut(m).rename.remove("id");
        }
        assert!(unrenamed.validate().is_err(), "a non-key field called id");
        assert_eq!(t.key_of("e%3Au:4%202").unwrap(), ["e:u", "4 2"]);
        assert_eq!(t.id_of(&["e:u", "4 2"]), "e%3Au:4%202");
        assert!(t.key_of("e:u:42").is_err());
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
