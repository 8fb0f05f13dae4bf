//! One stream entry, as Debezium Server's Redis sink or RDI's collector
//! wrote it, decoded into what it does to one record.
//!
//! Accepted shapes (each detected per entry, so a stream may mix them):
//!
//! - **Message format.** `extended`: fields `key` and `value`, plus record
//!   headers as upper-cased fields (ignored). `compact` (the sink's
//!   default): one field whose *name* is the key JSON and whose value is
//!   the value JSON.
//! - **JSON.** Schema-wrapped (`{"schema": …, "payload": …}`, the Kafka JSON
//!   converter's default) or bare (`schemas.enable=false`, RDI's setting).
//! - **Value.** A change envelope (`before`, `after`, `source`, `op`: `c`
//!   create, `u` update, `r` snapshot read, `d` delete, `t` truncate, `m`
//!   message); a flattened row (the `ExtractNewRecordState` transform, a
//!   `__deleted` field marking deletes); or null, written as the sink's
//!   null marker (`default`): a Kafka tombstone, which deletes the key.
//! - **Column values.** Strings as they are, numbers as their JSON text,
//!   booleans as `true`/`false` (as [`prefetch-pg`] writes them), NULL as an
//!   absent field, objects and arrays as compact JSON. A `precise` decimal
//!   (base64 of the unscaled integer) is decoded when the entry carries its
//!   schema; without a schema it stays base64, so configure
//!   `decimal.handling.mode=string` (RDI does).
//!
//! Records are named by the event key: one key column gives the id as it
//! is, several are joined by [`prefetch::encode_key`]. When the key is not
//! one column called `id`, the record's `id` field is set to that id.
//!
//! [`prefetch-pg`]: https://docs.rs/prefetch-pg
//!
//! With a tables file ([`DecodeOptions::tables`]), one stream may carry
//! several tables (Debezium's `ByLogicalTableRouter`): each entry's table
//! picks its declaration, which names the record by its key template and
//! keeps and renames its columns; tables it does not declare are skipped.
//!
//! | module | what |
//! |---|---|
//! | `values` | column values as text, decimals, ordered objects |
//! | `tables` | several tables in one stream, as a tables file declares them |

mod tables;
mod values;

pub use tables::StreamTable;

use std::collections::HashMap;

use prefetch::{Fields, ID_FIELD, encode_key};
use serde_json::Value;

use values::{Ordered, row_fields, scalar_text};

/// What one entry does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decoded {
    /// The record `id` now holds exactly `fields` (`id` included).
    Upsert {
        /// The record id.
        id: String,
        /// Every column that is not NULL, as text.
        fields: Fields,
    },
    /// The record `id` is gone.
    Delete {
        /// The record id.
        id: String,
    },
    /// Every record of the table is gone (a `TRUNCATE`): every record
    /// whose id starts with `prefix` (every record when it is empty).
    Truncate {
        /// The id prefix of the table's records.
        prefix: String,
    },
    /// Nothing to apply (a logical-decoding message, for example).
    Skip(&'static str),
}

/// Why an entry cannot be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(pub String);

fn bad(why: impl Into<String>) -> DecodeError {
    DecodeError(why.into())
}

/// How entries are read.
#[derive(Clone, Debug)]
pub struct DecodeOptions {
    /// The text the sink writes for a null key or value (its `null.key` and
    /// `null.value` settings; `default` unless changed).
    pub null_marker: String,
    /// Name records by these row columns instead of the event key (for
    /// tables whose key the connector does not send, or a message key
    /// overridden with `message.key.columns`).
    pub id_columns: Option<Vec<String>>,
    /// The tables a tables file declares, when the stream carries several
    /// (empty: one table, named by the event key).
    pub tables: Vec<StreamTable>,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        Self {
            null_marker: "default".into(),
            id_columns: None,
            tables: Vec::new(),
        }
    }
}

/// Decodes one entry, given as its field/value pairs.
///
/// ```
/// use prefetch_cdc::{DecodeOptions, Decoded, decode_entry};
///
/// // Debezium Server, compact format, schemas disabled.
/// let entry = [(
///     r#"{"id":"cat-001"}"#.to_owned(),
///     br#"{"before":null,"after":{"id":"cat-001","name":"Drinks","rank":3},"op":"c"}"#.to_vec(),
/// )];
/// let Decoded::Upsert { id, fields } = decode_entry(&entry, &DecodeOptions::default())? else {
///     unreachable!()
/// };
/// assert_eq!(id, "cat-001");
/// assert_eq!(fields["rank"], "3");
/// # Ok::<(), prefetch_cdc::DecodeError>(())
/// ```
pub fn decode_entry(
    entry: &[(String, Vec<u8>)],
    options: &DecodeOptions,
) -> Result<Decoded, DecodeError> {
    let field = |name: &str| entry.iter().find(|(k, _)| k == name).map(|(_, v)| v);
    let (key, value): (&[u8], &[u8]) = match (field("key"), field("value")) {
        (Some(k), Some(v)) => (k, v),
        _ => match entry {
            [(k, v)] => (k.as_bytes(), v),
            [] => return Err(bad("empty entry")),
            _ => {
                return Err(bad(
                    "neither the extended format (fields key and value) nor the compact one (one field)",
                ));
            }
        },
    };
    let key = parse_key(key, options)?;
    let value = parse_value(value, options)?;
    if options.tables.is_empty() {
        decode(key, value, options)
    } else {
        decode_declared(key, value, &options.tables)
    }
}

/// The event key: its columns in the order the connector sent them.
type Key = Option<Vec<(String, Value)>>;

fn parse_key(raw: &[u8], options: &DecodeOptions) -> Result<Key, DecodeError> {
    if raw == options.null_marker.as_bytes() {
        return Ok(None);
    }
    let doc: Ordered =
        serde_json::from_slice(raw).map_err(|e| bad(format!("key is not JSON: {e}")))?;
    let mut cols = doc.0;
    // Schema-wrapped: {"schema": …, "payload": {…}}; the schema lists the
    // key columns in order.
    if cols.len() == 2
        && let Some(s) = cols.iter().position(|(k, _)| k == "schema")
        && let Some(p) = cols.iter().position(|(k, _)| k == "payload")
    {
        let schema = cols[s].1.take();
        return match cols[p].1.take() {
            Value::Null => Ok(None),
            Value::Object(mut payload) => {
                let order = schema
                    .get("fields")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|f| f.get("field").and_then(Value::as_str));
                let mut out = Vec::with_capacity(payload.len());
                for name in order {
                    if let Some(v) = payload.remove(name) {
                        out.push((name.to_owned(), v));
                    }
                }
                out.extend(payload); // columns the schema did not list
                Ok(Some(out))
            }
            _ => Err(bad("key payload is not an object")),
        };
    }
    Ok(Some(cols))
}

/// A value with the schema of its `after` columns (when schema-wrapped).
struct Parsed {
    payload: Value,
    decimals: HashMap<String, u32>,
}

fn parse_value(raw: &[u8], options: &DecodeOptions) -> Result<Option<Parsed>, DecodeError> {
    if raw == options.null_marker.as_bytes() {
        return Ok(None);
    }
    let doc: Value =
        serde_json::from_slice(raw).map_err(|e| bad(format!("value is not JSON: {e}")))?;
    let Value::Object(mut map) = doc else {
        return match doc {
            Value::Null => Ok(None),
            _ => Err(bad("value is not a JSON object")),
        };
    };
    if map.len() == 2 && map.contains_key("schema") && map.contains_key("payload") {
        let schema = map.remove("schema").unwrap_or(Value::Null);
        let payload = map.remove("payload").unwrap_or(Value::Null);
        if payload.is_null() {
            return Ok(None);
        }
        return Ok(Some(Parsed {
            decimals: decimal_columns(&schema),
            payload,
        }));
    }
    Ok(Some(Parsed {
        payload: Value::Object(map),
        decimals: HashMap::new(),
    }))
}

/// Columns typed `org.apache.kafka.connect.data.Decimal`, with their scale,
/// from an envelope's schema (the `after` struct) or a flattened row's.
fn decimal_columns(schema: &Value) -> HashMap<String, u32> {
    let fields = schema.get("fields").and_then(Value::as_array);
    let row = fields
        .and_then(|f| {
            f.iter()
                .find(|s| s.get("field").and_then(Value::as_str) == Some("after"))
        })
        .and_then(|after| after.get("fields"))
        .and_then(Value::as_array)
        .or(fields);
    let mut out = HashMap::new();
    for col in row.into_iter().flatten() {
        let is_decimal = col.get("name").and_then(Value::as_str)
            == Some("org.apache.kafka.connect.data.Decimal");
        let name = col.get("field").and_then(Value::as_str);
        let scale = col
            .get("parameters")
            .and_then(|p| p.get("scale"))
            .and_then(|s| match s {
                Value::String(s) => s.parse().ok(),
                Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
                _ => None,
            });
        if let (true, Some(name), Some(scale)) = (is_decimal, name, scale) {
            out.insert(name.to_owned(), scale);
        }
    }
    out
}

fn decode(
    key: Key,
    value: Option<Parsed>,
    options: &DecodeOptions,
) -> Result<Decoded, DecodeError> {
    let Some(Parsed { payload, decimals }) = value else {
        // A tombstone: Kafka's "this key is gone".
        return match key_id(key.as_deref(), None, options)? {
            Some(id) => Ok(Decoded::Delete { id }),
            None => Err(bad("a null value with a null key")),
        };
    };
    // An envelope is an object with an `op` and nothing but
    // envelope members; a flattened row is an envelope only if all its
    // columns happen to be named like them.
    const MEMBERS: [&str; 9] = [
        "before",
        "after",
        "source",
        "op",
        "ts_ms",
        "ts_us",
        "ts_ns",
        "transaction",
        "message",
    ];
    let op = payload.get("op").and_then(Value::as_str);
    let envelope = op.is_some()
        && payload
            .as_object()
            .is_some_and(|m| m.keys().all(|k| MEMBERS.contains(&k.as_str())));
    if !envelope {
        // A flattened row (ExtractNewRecordState).
        let deleted = marked_deleted(&payload);
        let id = key_id(key.as_deref(), Some(&payload), options)?
            .ok_or_else(|| bad("no key and no id column"))?;
        return Ok(if deleted {
            Decoded::Delete { id }
        } else {
            Decoded::Upsert {
                fields: row_fields(&payload, &decimals, &id, key.as_deref(), options)?,
                id,
            }
        });
    }
    match op {
        Some("c" | "u" | "r") => {
            let after = payload
                .get("after")
                .filter(|a| a.is_object())
                .ok_or_else(|| bad("an insert or update without an `after` row"))?;
            let id = key_id(key.as_deref(), Some(after), options)?
                .ok_or_else(|| bad("no key and no id column"))?;
            Ok(Decoded::Upsert {
                fields: row_fields(after, &decimals, &id, key.as_deref(), options)?,
                id,
            })
        }
        Some("d") => {
            let before = payload.get("before").filter(|b| b.is_object());
            let id = key_id(key.as_deref(), before, options)?
                .ok_or_else(|| bad("a delete without a key"))?;
            Ok(Decoded::Delete { id })
        }
        Some("t") => Ok(Decoded::Truncate {
            prefix: String::new(),
        }),
        Some("m") => Ok(Decoded::Skip("a logical decoding message")),
        Some(other) => Err(bad(format!("unknown op '{other}'"))),
        None => Err(bad("an envelope without `op`")),
    }
}

/// Whether a flattened row is a delete (`__deleted`, a boolean or the
/// text `true`, as `ExtractNewRecordState` writes it).
fn marked_deleted(row: &Value) -> bool {
    matches!(row.get("__deleted"), Some(Value::Bool(true)))
        || row.get("__deleted").and_then(Value::as_str) == Some("true")
}

/// Debezium's `ByLogicalTableRouter` keeps rows of several tables apart
/// with this key column (`<prefix>.<schema>.<table>`).
const PHYSICAL_TABLE: &str = "__dbz__physicalTableIdentifier";

/// [`decode`] for a stream of several declared tables.
fn decode_declared(
    key: Key,
    value: Option<Parsed>,
    tables: &[StreamTable],
) -> Result<Decoded, DecodeError> {
    let key = key.as_deref();
    let Some(Parsed { payload, decimals }) = value else {
        // A tombstone names its table only through the router's key column.
        let physical = key
            .into_iter()
            .flatten()
            .find(|(c, _)| c == PHYSICAL_TABLE)
            .and_then(|(_, v)| v.as_str());
        let Some(physical) = physical else {
            return Ok(Decoded::Skip(
                "a tombstone (the delete before it named the row)",
            ));
        };
        let mut parts = physical.rsplitn(3, '.');
        let (name, schema) = (parts.next().unwrap_or_default(), parts.next());
        let source = serde_json::json!({"source": {"schema": schema, "table": name}});
        return Ok(match tables::declared(tables, &source)? {
            Some(t) => Decoded::Delete {
                id: tables::deleted(t, None, key)?,
            },
            None => Decoded::Skip("a table the tables file does not declare"),
        });
    };
    let Some(table) = tables::declared(tables, &payload)? else {
        return Ok(Decoded::Skip("a table the tables file does not declare"));
    };
    let op = payload.get("op").and_then(Value::as_str);
    if payload.get("after").is_none() && payload.get("before").is_none() && op.is_none() {
        // A flattened row.
        let deleted = marked_deleted(&payload);
        if deleted {
            return Ok(Decoded::Delete {
                id: tables::deleted(table, Some(&payload), key)?,
            });
        }
        let (id, fields) = tables::upsert(table, &payload, &decimals, key)?;
        return Ok(Decoded::Upsert { id, fields });
    }
    match op {
        Some("c" | "u" | "r") => {
            let after = payload
                .get("after")
                .filter(|a| a.is_object())
                .ok_or_else(|| bad("an insert or update without an `after` row"))?;
            let (id, fields) = tables::upsert(table, after, &decimals, key)?;
            Ok(Decoded::Upsert { id, fields })
        }
        Some("d") => {
            let before = payload.get("before").filter(|b| b.is_object());
            Ok(Decoded::Delete {
                id: tables::deleted(table, before, key)?,
            })
        }
        Some("t") => Ok(Decoded::Truncate {
            prefix: tables::id_prefix(table),
        }),
        Some("m") => Ok(Decoded::Skip("a logical decoding message")),
        Some(other) => Err(bad(format!("unknown op '{other}'"))),
        None => Err(bad("an envelope without `op`")),
    }
}

/// The record id: from the configured columns of `row`, else from the key,
/// else from the row's own `id` column.
fn key_id(
    key: Option<&[(String, Value)]>,
    row: Option<&Value>,
    options: &DecodeOptions,
) -> Result<Option<String>, DecodeError> {
    if let Some(cols) = &options.id_columns {
        // A tombstone, or a delete whose `before` lacks the columns (replica
        // identity DEFAULT keeps only the primary key): name it by the key.
        let row = row.filter(|r| cols.iter().all(|c| r.get(c).is_some_and(|v| !v.is_null())));
        let Some(row) = row else {
            return key_id(key, None, &DecodeOptions::default());
        };
        let parts = cols
            .iter()
            .map(|c| {
                row.get(c)
                    .and_then(scalar_text)
                    .ok_or_else(|| bad(format!("id column '{c}' is missing or NULL")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
        return Ok(Some(encode_key(&parts)));
    }
    if let Some(cols) = key {
        if cols.is_empty() {
            return Err(bad("the key has no columns"));
        }
        let parts = cols
            .iter()
            .map(|(c, v)| scalar_text(v).ok_or_else(|| bad(format!("key column '{c}' is NULL"))))
            .collect::<Result<Vec<_>, _>>()?;
        let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
        return Ok(Some(encode_key(&parts)));
    }
    Ok(row.and_then(|r| r.get(ID_FIELD)).and_then(scalar_text))
}

#[cfg(test)]
mod tests;
