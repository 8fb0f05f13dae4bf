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

use std::collections::HashMap;
use std::fmt;

use prefetch::{Fields, ID_FIELD, RESERVED_FIELD_PREFIX, encode_key};
use serde::Deserialize;
use serde::de::{MapAccess, Visitor};
use serde_json::Value;

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
    /// Every record is gone (a `TRUNCATE` of the table).
    Truncate,
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
}

impl Default for DecodeOptions {
    fn default() -> Self {
        Self {
            null_marker: "default".into(),
            id_columns: None,
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
    decode(key, value, options)
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
        let deleted = matches!(payload.get("__deleted"), Some(Value::Bool(true)))
            || payload.get("__deleted").and_then(Value::as_str) == Some("true");
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
        Some("t") => Ok(Decoded::Truncate),
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

fn row_fields(
    row: &Value,
    decimals: &HashMap<String, u32>,
    id: &str,
    key: Option<&[(String, Value)]>,
    options: &DecodeOptions,
) -> Result<Fields, DecodeError> {
    let Value::Object(cols) = row else {
        return Err(bad("the row is not an object"));
    };
    let mut fields = Fields::new();
    for (name, v) in cols {
        if name.starts_with(RESERVED_FIELD_PREFIX) {
            continue; // added by transforms (__deleted, __op, __table…)
        }
        let text = match (decimals.get(name), v) {
            (Some(scale), Value::String(b64)) => decode_decimal(b64, *scale),
            _ => None,
        };
        if let Some(text) = text.or_else(|| scalar_text(v)) {
            fields.insert(name.clone(), text);
        }
    }
    let named_by_id = match (&options.id_columns, key) {
        (Some(cols), _) => cols.len() == 1 && cols[0] == ID_FIELD,
        (None, Some(k)) => k.len() == 1 && k[0].0 == ID_FIELD,
        (None, None) => true,
    };
    if !named_by_id || !fields.contains_key(ID_FIELD) {
        fields.insert(ID_FIELD.to_owned(), id.to_owned());
    }
    Ok(fields)
}

/// A column value as the text the cache stores; `None` for NULL.
fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        other => Some(other.to_string()),
    }
}

/// Kafka Connect's `Decimal`: base64 of the big-endian two's-complement
/// unscaled value; `None` if it is not that.
fn decode_decimal(b64: &str, scale: u32) -> Option<String> {
    let bytes = base64_decode(b64)?;
    if bytes.is_empty() || bytes.len() > 16 {
        return None;
    }
    let negative = bytes[0] & 0x80 != 0;
    let mut n: i128 = if negative { -1 } else { 0 };
    for b in bytes {
        n = (n << 8) | i128::from(b);
    }
    let digits = n.unsigned_abs().to_string();
    let scale = scale as usize;
    let (int, frac) = if digits.len() > scale {
        digits.split_at(digits.len() - scale)
    } else {
        ("0", digits.as_str())
    };
    let sign = if negative { "-" } else { "" };
    Some(if scale == 0 {
        format!("{sign}{int}")
    } else {
        format!("{sign}{int}.{frac:0>scale$}")
    })
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// A JSON object read with its keys in document order.
struct Ordered(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Ordered {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Ordered;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Ordered, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, Value>()? {
                    out.push((k, v));
                }
                Ok(Ordered(out))
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compact(key: &str, value: &str) -> Vec<(String, Vec<u8>)> {
        vec![(key.to_owned(), value.as_bytes().to_vec())]
    }

    fn extended(key: &str, value: &str) -> Vec<(String, Vec<u8>)> {
        vec![
            ("key".to_owned(), key.as_bytes().to_vec()),
            ("value".to_owned(), value.as_bytes().to_vec()),
            ("TRACE".to_owned(), b"abc".to_vec()),
        ]
    }

    fn opts() -> DecodeOptions {
        DecodeOptions::default()
    }

    #[test]
    fn decimals_decode_from_base64_with_their_scale() {
        // 12.34 at scale 2 is 1234 = 0x04D2 → "BNI="
        assert_eq!(decode_decimal("BNI=", 2).as_deref(), Some("12.34"));
        // -1.5 at scale 1 is -15 = 0xF1 → "8Q=="
        assert_eq!(decode_decimal("8Q==", 1).as_deref(), Some("-1.5"));
        // 0.05 at scale 2 is 5 → "BQ=="
        assert_eq!(decode_decimal("BQ==", 2).as_deref(), Some("0.05"));
        assert_eq!(decode_decimal("BQ==", 0).as_deref(), Some("5"));
        assert_eq!(decode_decimal("!!", 2), None);
    }

    #[test]
    fn a_compact_entry_with_a_bare_envelope_upserts() {
        let d = decode_entry(
            &compact(
                r#"{"id":"cat-001"}"#,
                r#"{"before":null,"after":{"id":"cat-001","name":"Drinks","active":true,"note":null,"rank":3},"source":{"lsn":24023128},"op":"u","ts_ms":1}"#,
            ),
            &opts(),
        )
        .unwrap();
        let Decoded::Upsert { id, fields } = d else {
            panic!("{d:?}")
        };
        assert_eq!(id, "cat-001");
        assert_eq!(fields["active"], "true");
        assert_eq!(fields["rank"], "3");
        assert!(!fields.contains_key("note"), "NULL is an absent field");
        assert_eq!(fields.len(), 4);
    }

    #[test]
    fn composite_keys_keep_the_connectors_column_order() {
        let d = decode_entry(
            &extended(
                r#"{"region":"eu","code":42}"#,
                r#"{"after":{"code":42,"region":"eu","name":"x"},"op":"c"}"#,
            ),
            &opts(),
        )
        .unwrap();
        let Decoded::Upsert { id, fields } = d else {
            panic!("{d:?}")
        };
        assert_eq!(id, "eu:42");
        assert_eq!(fields["id"], "eu:42", "the record carries its id");
    }

    #[test]
    fn schema_wrapped_composite_keys_follow_the_schemas_order() {
        let key = r#"{"schema":{"type":"struct","fields":[{"type":"string","field":"zone"},{"type":"int32","field":"code"}]},"payload":{"code":7,"zone":"eu"}}"#;
        let d = decode_entry(&compact(key, r#"{"op":"d"}"#), &opts()).unwrap();
        assert_eq!(d, Decoded::Delete { id: "eu:7".into() });
    }

    #[test]
    fn deletes_tombstones_and_truncates() {
        let del = extended(
            r#"{"id":7}"#,
            r#"{"before":{"id":7},"after":null,"op":"d"}"#,
        );
        assert_eq!(
            decode_entry(&del, &opts()).unwrap(),
            Decoded::Delete { id: "7".into() }
        );
        let tomb = compact(r#"{"id":7}"#, "default");
        assert_eq!(
            decode_entry(&tomb, &opts()).unwrap(),
            Decoded::Delete { id: "7".into() }
        );
        let trunc = compact("default", r#"{"before":null,"after":null,"op":"t"}"#);
        assert_eq!(decode_entry(&trunc, &opts()).unwrap(), Decoded::Truncate);
        assert!(decode_entry(&compact("default", "default"), &opts()).is_err());
    }

    #[test]
    fn schema_wrapped_json_is_unwrapped_and_its_decimals_decoded() {
        let key = r#"{"schema":{"type":"struct","fields":[{"type":"int32","optional":false,"field":"id"}],"optional":false,"name":"t.public.p.Key"},"payload":{"id":1}}"#;
        let value = r#"{"schema":{"type":"struct","fields":[{"type":"struct","fields":[{"type":"int32","field":"id"},{"type":"bytes","optional":true,"name":"org.apache.kafka.connect.data.Decimal","version":1,"parameters":{"scale":"2","connect.decimal.precision":"10"},"field":"price"}],"optional":true,"name":"t.public.p.Value","field":"before"},{"type":"struct","fields":[{"type":"int32","field":"id"},{"type":"bytes","optional":true,"name":"org.apache.kafka.connect.data.Decimal","version":1,"parameters":{"scale":"2","connect.decimal.precision":"10"},"field":"price"}],"optional":true,"name":"t.public.p.Value","field":"after"},{"type":"string","field":"op"}],"optional":false,"name":"t.public.p.Envelope"},"payload":{"before":null,"after":{"id":1,"price":"BNI="},"op":"r"}}"#;
        let d = decode_entry(&compact(key, value), &opts()).unwrap();
        let Decoded::Upsert { id, fields } = d else {
            panic!("{d:?}")
        };
        assert_eq!(id, "1");
        assert_eq!(fields["price"], "12.34");
    }

    #[test]
    fn flattened_rows_and_their_deleted_marker() {
        let up = compact(
            r#"{"id":"a"}"#,
            r#"{"id":"a","name":"n","__op":"c","__deleted":"false"}"#,
        );
        let Decoded::Upsert { fields, .. } = decode_entry(&up, &opts()).unwrap() else {
            panic!()
        };
        assert_eq!(fields.len(), 2, "transform fields are dropped: {fields:?}");
        let del = compact(r#"{"id":"a"}"#, r#"{"id":"a","__deleted":"true"}"#);
        assert_eq!(
            decode_entry(&del, &opts()).unwrap(),
            Decoded::Delete { id: "a".into() }
        );
    }

    #[test]
    fn configured_id_columns_name_records_by_the_row() {
        let o = DecodeOptions {
            id_columns: Some(vec!["sku".into()]),
            ..opts()
        };
        let e = compact("default", r#"{"after":{"sku":"X-1","name":"n"},"op":"c"}"#);
        let Decoded::Upsert { id, fields } = decode_entry(&e, &o).unwrap() else {
            panic!()
        };
        assert_eq!((id.as_str(), fields["id"].as_str()), ("X-1", "X-1"));
    }

    #[test]
    fn a_flattened_row_with_a_column_called_op_is_still_a_row() {
        let e = compact(r#"{"id":"a"}"#, r#"{"id":"a","op":"buy","after":"noon"}"#);
        let Decoded::Upsert { fields, .. } = decode_entry(&e, &opts()).unwrap() else {
            panic!()
        };
        assert_eq!(fields["op"], "buy");
    }

    #[test]
    fn with_id_columns_tombstones_and_bare_deletes_fall_back_to_the_key() {
        let o = DecodeOptions {
            id_columns: Some(vec!["sku".into()]),
            ..opts()
        };
        let tomb = compact(r#"{"sku":"X-1"}"#, "default");
        assert_eq!(
            decode_entry(&tomb, &o).unwrap(),
            Decoded::Delete { id: "X-1".into() }
        );
        let del = compact(
            r#"{"sku":"X-1"}"#,
            r#"{"before":{"id":7},"after":null,"op":"d"}"#,
        );
        assert_eq!(
            decode_entry(&del, &o).unwrap(),
            Decoded::Delete { id: "X-1".into() }
        );
    }

    #[test]
    fn what_cannot_be_decoded_says_why() {
        for (entry, why) in [
            (compact("{", "{}"), "key is not JSON"),
            (compact(r#"{"id":1}"#, "[1]"), "not a JSON object"),
            (
                compact(r#"{"id":1}"#, r#"{"op":"c"}"#),
                "without an `after`",
            ),
            (
                compact(r#"{"id":1}"#, r#"{"op":"x","after":{}}"#),
                "unknown op",
            ),
            (compact(r#"{"id":null}"#, r#"{"op":"d"}"#), "is NULL"),
            (Vec::new(), "empty entry"),
            (
                vec![("a".into(), b"1".to_vec()), ("b".into(), b"2".to_vec())],
                "neither",
            ),
        ] {
            let e = decode_entry(&entry, &opts()).unwrap_err();
            assert!(e.0.contains(why), "{e} should say {why}");
        }
        assert_eq!(
            decode_entry(&compact("default", r#"{"op":"m","message":{}}"#), &opts()).unwrap(),
            Decoded::Skip("a logical decoding message")
        );
    }
}
