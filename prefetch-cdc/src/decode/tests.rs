//! What each entry shape decodes to.

use super::values::decode_decimal;
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
    assert_eq!(
        decode_entry(&trunc, &opts()).unwrap(),
        Decoded::Truncate {
            prefix: String::new()
        }
    );
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

/// Two declared tables: products keyed `product:{sku}` with `name` renamed
/// and `cost` left out; users by default (`users:` and the event key).
fn shop() -> DecodeOptions {
    DecodeOptions {
        tables: vec![
            StreamTable {
                schema: "public".into(),
                name: "products".into(),
                template: Some(prefetch::KeyTemplate::parse("product:{sku}").unwrap()),
                prefix: "product:".into(),
                columns: Some(vec!["sku".into(), "name".into(), "price".into()]),
                rename: [("name".to_owned(), "title".to_owned())].into(),
                cache_prefix: String::new(),
                json: false,
            },
            StreamTable {
                schema: "public".into(),
                name: "users".into(),
                template: None,
                prefix: "users:".into(),
                columns: None,
                rename: Default::default(),
                cache_prefix: String::new(),
                json: true,
            },
        ],
        ..DecodeOptions::default()
    }
}

#[test]
fn each_entry_of_a_stream_of_several_tables_is_named_and_shaped_by_its_table() {
    let d = decode_entry(
        &compact(
            r#"{"sku":"a:1"}"#,
            r#"{"after":{"sku":"a:1","name":"One","price":"1.50","cost":"0.90"},"source":{"schema":"public","table":"products"},"op":"c"}"#,
        ),
        &shop(),
    )
    .unwrap();
    let Decoded::Upsert { id, fields } = d else {
        panic!("{d:?}")
    };
    assert_eq!(id, "product:a%3A1", "the template, the value escaped");
    assert_eq!(fields.get("title").map(String::as_str), Some("One"));
    assert!(
        !fields.contains_key("cost") && !fields.contains_key("name") && !fields.contains_key("id")
    );

    // A composite event key, no template: the table's prefix and the key.
    let d = decode_entry(
        &compact(
            r#"{"org":7,"id":2,"__dbz__physicalTableIdentifier":"shop.public.users"}"#,
            r#"{"after":{"org":7,"id":2,"email":"b@x"},"source":{"schema":"public","table":"users"},"op":"u"}"#,
        ),
        &shop(),
    )
    .unwrap();
    assert!(
        matches!(&d, Decoded::Upsert { id, .. } if id == "users:7:2"),
        "{d:?}"
    );

    // A delete names the row by its `before` and the key.
    let d = decode_entry(
        &compact(
            r#"{"sku":"p2"}"#,
            r#"{"before":{"sku":"p2"},"after":null,"source":{"schema":"public","table":"products"},"op":"d"}"#,
        ),
        &shop(),
    )
    .unwrap();
    assert_eq!(
        d,
        Decoded::Delete {
            id: "product:p2".into()
        }
    );
}

#[test]
fn flattened_rows_truncates_tombstones_and_other_tables_of_a_shared_stream() {
    // A flattened row names its table with `__table` (add.fields=table).
    let d = decode_entry(
        &compact(
            r#"{"sku":"p3"}"#,
            r#"{"sku":"p3","name":"Three","__table":"products","__deleted":"false"}"#,
        ),
        &shop(),
    )
    .unwrap();
    assert!(
        matches!(&d, Decoded::Upsert { id, fields } if id == "product:p3" && fields["title"] == "Three"),
        "{d:?}"
    );

    // A truncate removes that table's records only.
    let d = decode_entry(
        &compact(
            r#"{"sku":"x"}"#,
            r#"{"source":{"schema":"public","table":"products"},"op":"t"}"#,
        ),
        &shop(),
    )
    .unwrap();
    assert_eq!(
        d,
        Decoded::Truncate {
            prefix: "product:".into()
        }
    );

    // The router's tombstone names its table in the key.
    let d = decode_entry(
        &compact(
            r#"{"org":7,"id":2,"__dbz__physicalTableIdentifier":"shop.public.users"}"#,
            "default",
        ),
        &shop(),
    )
    .unwrap();
    assert_eq!(
        d,
        Decoded::Delete {
            id: "users:7:2".into()
        }
    );

    // A table the file does not declare is skipped; an entry naming no
    // table is an error that says what is missing.
    let d = decode_entry(
        &compact(
            r#"{"id":1}"#,
            r#"{"after":{"id":1},"source":{"schema":"public","table":"orders"},"op":"c"}"#,
        ),
        &shop(),
    )
    .unwrap();
    assert!(matches!(d, Decoded::Skip(_)), "{d:?}");
    let e = decode_entry(
        &compact(r#"{"id":1}"#, r#"{"after":{"id":1},"op":"c"}"#),
        &shop(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("names no table"), "{e}");
}
