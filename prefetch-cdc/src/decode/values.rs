//! Column values: a row's fields as text, decimals from their schema,
//! JSON objects kept in their order.

use std::collections::HashMap;
use std::fmt;

use prefetch::{Fields, ID_FIELD, RESERVED_FIELD_PREFIX};
use serde::Deserialize;
use serde::de::{MapAccess, Visitor};
use serde_json::Value;

use super::{DecodeError, DecodeOptions, bad};

pub(super) fn row_fields(
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
pub(super) fn scalar_text(v: &Value) -> Option<String> {
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
pub(super) fn decode_decimal(b64: &str, scale: u32) -> Option<String> {
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
pub(super) struct Ordered(pub(super) Vec<(String, Value)>);

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
