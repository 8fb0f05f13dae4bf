//! Several tables in one stream: each entry's table (the envelope's
//! `source.schema`/`source.table`, or the `__schema`/`__table` fields a
//! flattening transform adds) picks the declared table that names its
//! key, keeps its columns and renames them, as a tables file declares.

use std::collections::BTreeMap;
use std::collections::HashMap;

use prefetch::{Fields, KeyTemplate, RESERVED_FIELD_PREFIX, escape_key_value};
use serde_json::Value;

use super::values::{decode_decimal, scalar_text};
use super::{DecodeError, bad};

/// One table of a stream that carries several, as a tables file declares
/// it.
#[derive(Clone, Debug)]
pub struct StreamTable {
    /// Its schema (`public` when the file names none).
    pub schema: String,
    /// Its name.
    pub name: String,
    /// The key template; `None`: the table's key prefix then the event
    /// key's columns, joined by `:`.
    pub template: Option<KeyTemplate>,
    /// What every key of the table starts with.
    pub prefix: String,
    /// The columns kept (`None`: all).
    pub columns: Option<Vec<String>>,
    /// Column → field name, for the columns renamed.
    pub rename: BTreeMap<String, String>,
    /// The cache's key prefix: a record's id is its key less this.
    pub cache_prefix: String,
    /// Rows stored as JSON documents (`value = "json"`): the record is
    /// its one field [`prefetch::JSON_FIELD`], the row's kept columns with
    /// their JSON values (NULL as `null`, decimals as exact strings).
    pub json: bool,
}

impl StreamTable {
    fn is(&self, schema: Option<&str>, name: &str) -> bool {
        self.name == name && schema.is_none_or(|s| s == self.schema)
    }

    /// The record id of a row of this table, from its column values and
    /// the event key's.
    fn id(
        &self,
        row: &HashMap<String, String>,
        key: Option<&[(String, Value)]>,
    ) -> Result<String, DecodeError> {
        let keyed: HashMap<&str, String> = key
            .into_iter()
            .flatten()
            .filter_map(|(c, v)| Some((c.as_str(), scalar_text(v)?)))
            .collect();
        let value = |c: &str| row.get(c).or_else(|| keyed.get(c)).map(String::as_str);
        let rendered = match &self.template {
            Some(t) => t.render(value),
            None => {
                let cols = key.ok_or_else(|| {
                    bad(format!("{}: no event key to name the row by", self.name))
                })?;
                let parts: Option<Vec<String>> = cols
                    .iter()
                    .filter(|(c, _)| !c.starts_with(RESERVED_FIELD_PREFIX))
                    .map(|(c, _)| value(c).map(escape_key_value))
                    .collect();
                parts.map(|p| format!("{}{}", self.prefix, p.join(":")))
            }
        };
        let key = rendered
            .ok_or_else(|| bad(format!("{}: a key column is missing or NULL", self.name)))?;
        Ok(key
            .strip_prefix(self.cache_prefix.as_str())
            .unwrap_or(&key)
            .to_owned())
    }

    /// The row's fields as the table keeps them: its columns, renamed.
    fn fields(&self, row: HashMap<String, String>) -> Fields {
        row.into_iter()
            .filter(|(c, _)| self.columns.as_ref().is_none_or(|cols| cols.contains(c)))
            .map(|(c, v)| (self.rename.get(&c).cloned().unwrap_or(c), v))
            .collect()
    }
}

/// The table an entry's change belongs to: `(schema, name)`.
pub(super) fn table_of(payload: &Value) -> Option<(Option<&str>, &str)> {
    fn text(v: Option<&Value>) -> Option<&str> {
        v.and_then(Value::as_str)
    }
    if let Some(source) = payload.get("source")
        && let Some(name) = text(source.get("table"))
    {
        return Some((text(source.get("schema")), name));
    }
    let name = text(payload.get("__table")).or_else(|| text(payload.get("__source_table")))?;
    let schema = text(payload.get("__schema")).or_else(|| text(payload.get("__source_schema")));
    Some((schema, name))
}

/// The declared table of `payload`'s change, or why there is none (`Ok(None)`:
/// a table the file does not declare, skipped).
pub(super) fn declared<'t>(
    tables: &'t [StreamTable],
    payload: &Value,
) -> Result<Option<&'t StreamTable>, DecodeError> {
    let (schema, name) = table_of(payload).ok_or_else(|| {
        bad("the entry names no table (source.table, or __table from the flattening transform's add.fields), and the tables file declares several")
    })?;
    Ok(tables.iter().find(|t| t.is(schema, name)))
}

/// A row's column values as text (decimals decoded by their schema).
fn texts(row: &Value, decimals: &HashMap<String, u32>) -> HashMap<String, String> {
    let Value::Object(cols) = row else {
        return HashMap::new();
    };
    cols.iter()
        .filter(|(name, _)| !name.starts_with(RESERVED_FIELD_PREFIX))
        .filter_map(|(name, v)| {
            let text = match (decimals.get(name), v) {
                (Some(scale), Value::String(b64)) => decode_decimal(b64, *scale),
                _ => None,
            };
            Some((name.clone(), text.or_else(|| scalar_text(v))?))
        })
        .collect()
}

/// An upsert of `row` of `table`: its id and fields.
pub(super) fn upsert(
    table: &StreamTable,
    row: &Value,
    decimals: &HashMap<String, u32>,
    key: Option<&[(String, Value)]>,
) -> Result<(String, Fields), DecodeError> {
    let values = texts(row, decimals);
    let id = table.id(&values, key)?;
    if table.json {
        return Ok((id, document(table, row, decimals)));
    }
    Ok((id, table.fields(values)))
}

/// A JSON table's record: the row's kept columns, renamed, with their JSON
/// values as the connector typed them.
fn document(table: &StreamTable, row: &Value, decimals: &HashMap<String, u32>) -> Fields {
    let mut doc = serde_json::Map::new();
    if let Value::Object(cols) = row {
        for (name, v) in cols {
            let kept = table.columns.as_ref().is_none_or(|c| c.contains(name));
            if name.starts_with(RESERVED_FIELD_PREFIX) || !kept {
                continue;
            }
            let v = match (decimals.get(name), v) {
                (Some(scale), Value::String(b64)) => {
                    decode_decimal(b64, *scale).map_or_else(|| v.clone(), Value::String)
                }
                _ => v.clone(),
            };
            doc.insert(
                table
                    .rename
                    .get(name)
                    .cloned()
                    .unwrap_or_else(|| name.clone()),
                v,
            );
        }
    }
    [(
        prefetch::JSON_FIELD.to_owned(),
        Value::Object(doc).to_string(),
    )]
    .into()
}

/// The id of the row of `table` a delete names (its `before` row, when
/// there is one, and the event key).
pub(super) fn deleted(
    table: &StreamTable,
    before: Option<&Value>,
    key: Option<&[(String, Value)]>,
) -> Result<String, DecodeError> {
    let values = before
        .map(|b| texts(b, &HashMap::new()))
        .unwrap_or_default();
    table.id(&values, key)
}

/// The id prefix of the records of `table` (what a `TRUNCATE` of it removes).
pub(super) fn id_prefix(table: &StreamTable) -> String {
    table
        .prefix
        .strip_prefix(table.cache_prefix.as_str())
        .unwrap_or(&table.prefix)
        .to_owned()
}
