//! A row as a JSON document, for tables declared `value = "json"`: the
//! type mapping of SPEC.md ("Tables").

use prefetch::Fields;
use serde_json::{Map, Number, Value};

const BOOL_OID: u32 = 16;
const INT2: u32 = 21;
const INT4: u32 = 23;
const INT8: u32 = 20;
const OID: u32 = 26;
const FLOAT4: u32 = 700;
const FLOAT8: u32 = 701;
const JSON: u32 = 114;
const JSONB: u32 = 3802;
const TIMESTAMP: u32 = 1114;
const TIMESTAMPTZ: u32 = 1184;

/// The document of a row whose `columns` (name, type OID) have the text
/// forms `fields` holds (a column absent is NULL), each member named by
/// `name_of` (the mapping's rename).
pub(crate) fn document<'c>(
    columns: impl IntoIterator<Item = (&'c str, u32)>,
    fields: &Fields,
    name_of: impl Fn(&str) -> String,
) -> String {
    let mut doc = Map::new();
    for (name, oid) in columns {
        let value = fields
            .get(name)
            .map_or(Value::Null, |text| typed(oid, text));
        doc.insert(name_of(name), value);
    }
    Value::Object(doc).to_string()
}

/// A column's text form as JSON: integers and floats as numbers, booleans,
/// `json`/`jsonb` embedded, timestamps in ISO 8601, the rest (`numeric`
/// included, to stay exact) as strings.
fn typed(oid: u32, text: &str) -> Value {
    let number = match oid {
        INT2 | INT4 | INT8 | OID => text.parse::<i64>().ok().map(Number::from),
        FLOAT4 | FLOAT8 => text.parse::<f64>().ok().and_then(Number::from_f64),
        _ => None,
    };
    if let Some(n) = number {
        return Value::Number(n);
    }
    match oid {
        BOOL_OID => match text {
            "t" | "true" => Value::Bool(true),
            "f" | "false" => Value::Bool(false),
            other => Value::String(other.to_owned()),
        },
        JSON | JSONB => {
            serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
        }
        TIMESTAMP | TIMESTAMPTZ => Value::String(iso8601(text)),
        _ => Value::String(text.to_owned()),
    }
}

/// PostgreSQL's timestamp text (`2024-05-01 10:00:00.5+02`) in ISO 8601
/// (`2024-05-01T10:00:00.5+02:00`).
fn iso8601(text: &str) -> String {
    let mut out = text.replacen(' ', "T", 1);
    // An offset of whole hours (`+02`) gets its minutes.
    let bytes = out.as_bytes();
    let n = bytes.len();
    if n > 3
        && (bytes[n - 3] == b'+' || bytes[n - 3] == b'-')
        && bytes[n - 2].is_ascii_digit()
        && bytes[n - 1].is_ascii_digit()
    {
        out.push_str(":00");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_type_maps_as_the_spec_says() {
        assert_eq!(typed(INT4, "42"), Value::from(42));
        assert_eq!(
            typed(INT8, "-9007199254740993"),
            Value::from(-9_007_199_254_740_993i64)
        );
        assert_eq!(typed(FLOAT8, "1.5"), Value::from(1.5));
        assert_eq!(typed(FLOAT8, "NaN"), Value::from("NaN"), "no JSON number");
        assert_eq!(
            typed(1700, "12.50"),
            Value::from("12.50"),
            "numeric stays exact"
        );
        assert_eq!(typed(BOOL_OID, "t"), Value::Bool(true));
        assert_eq!(typed(BOOL_OID, "false"), Value::Bool(false));
        assert_eq!(
            typed(JSONB, r#"{"a": [1, 2]}"#),
            serde_json::json!({"a": [1, 2]})
        );
        assert_eq!(
            typed(TIMESTAMPTZ, "2024-05-01 10:00:00.5+02"),
            Value::from("2024-05-01T10:00:00.5+02:00")
        );
        assert_eq!(
            typed(TIMESTAMPTZ, "2024-05-01 10:00:00+05:30"),
            Value::from("2024-05-01T10:00:00+05:30")
        );
        assert_eq!(
            typed(TIMESTAMP, "2024-05-01 10:00:00"),
            Value::from("2024-05-01T10:00:00")
        );
        assert_eq!(typed(25, "text"), Value::from("text"));
    }
}
