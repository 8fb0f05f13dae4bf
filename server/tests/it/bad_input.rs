//! Bad input through every API path: each case gets its documented 4xx JSON
//! error, or is accepted and stored exactly (it round-trips through Redis
//! unchanged). No case panics, and a rejected case changes neither the
//! primary nor the cache.
//!
//! | # | request | answer |
//! |---|---|---|
//! | 1 | `GET /read` (no id) | 400 Missing 'id' |
//! | 2 | `GET /read?id=` | 400 Missing 'id' |
//! | 3 | `GET /read?id=%20%20` (spaces) | 400 Missing 'id' |
//! | 4 | `GET /read?id=%09` (tab) | 400 Missing 'id' |
//! | 5 | `GET /read?id=a%00b` (NUL) | 400 control characters |
//! | 6 | `GET /read?id=a%0Ab` (newline) | 400 control characters |
//! | 7 | `GET /read?id=` + 257 × `x` | 400 longer than 256 bytes |
//! | 8 | `GET /read?id=a*b` | 200 miss for `a*b` |
//! | 9 | `GET /read?id=a%3Fb` (`a?b`) | 200 miss for `a?b` |
//! | 10 | `GET /read?id=a[b` | 200 miss for `a[b` |
//! | 11 | `GET /read?id=%ZZ` (malformed escape) | 400, as in a body |
//! | 12 | `GET /read?id=%FF` (not UTF-8) | 400 malformed request |
//! | 57 | `POST /add` id `%FF` (not UTF-8) | 400 malformed request |
//! | 13 | `GET /read?id=a&id=b` (repeated key) | 400 malformed request |
//! | 14 | `POST /update` (empty body) | 400 Missing 'id' or 'field' |
//! | 15 | `POST /update` id only | 400 Missing 'id' or 'field' |
//! | 16 | `POST /update` empty field | 400 Missing 'id' or 'field' |
//! | 17 | `POST /update` no id | 400 Missing 'id' or 'field' |
//! | 18 | `POST /update` blank id | 400 Missing 'id' or 'field' |
//! | 19 | `POST /update` unknown id | 404 Unknown category |
//! | 20 | `POST /update` field `id` | 400 the id field cannot be changed |
//! | 21 | `POST /update` display_order `abc` | 400 must be an integer |
//! | 22 | `POST /update` display_order `1.5` | 400 must be an integer |
//! | 23 | `POST /update` featured `TRUE` | 400 'true' or 'false' |
//! | 24 | `POST /update` blank name | 400 must not be empty |
//! | 25 | `POST /update` field with a newline | 400 control characters |
//! | 26 | `POST /update` 129-byte field name | 400 longer than 128 bytes |
//! | 27 | `POST /update` 70 KB value | 400 longer than 65536 bytes |
//! | 28 | `POST /update` 1 MB value | 413 too large |
//! | 29 | `POST /update` JSON body, `application/json` | 415 form-urlencoded |
//! | 30 | `POST /update` form body as `text/plain` | 415 form-urlencoded |
//! | 31 | `POST /update` name `Café ☕ 東京 🍞` | 200, stored exactly |
//! | 32 | `POST /update` name with newline and tab | 200, stored exactly |
//! | 33 | `POST /update` new field `na*m?e[1]:x` | 200, stored exactly |
//! | 34 | `POST /add` id `cat*1` | 200, stored exactly |
//! | 35 | `POST /add` id `cat 2` (inner space) | 200, stored exactly |
//! | 36 | `POST /add` id `катег-ü` | 200, stored exactly |
//! | 37 | `POST /add` id `a:b:c` | 200, stored exactly |
//! | 38 | `POST /add` existing id | 409 already exists |
//! | 39 | `POST /add` no id | 400 Missing 'id' or 'name' |
//! | 40 | `POST /add` blank name | 400 Missing 'id' or 'name' |
//! | 41 | `POST /add` display_order `ten` | 400 must be an integer |
//! | 42 | `POST /add` featured `1` | 400 'true' or 'false' |
//! | 43 | `POST /add` parent_id with a newline | 400 control characters |
//! | 44 | `POST /add` id with a newline | 400 control characters |
//! | 45 | `POST /delete` no id | 400 Missing 'id' |
//! | 46 | `POST /delete` unknown id | 404 Unknown category |
//! | 47 | `POST /invalidate` empty id | 400 Missing 'id' |
//! | 48 | `POST /invalidate` never-cached id | 200, `deleted: false` |
//! | 49 | `GET /update` | 405 |
//! | 50 | `PUT /add` | 405 |
//! | 51 | `DELETE /delete` | 405 |
//! | 52 | `POST /read` | 405 |
//! | 53 | `GET /nope` | 404 Not found |
//! | 54 | `POST /nope` | 404 Not found |
//! | 55 | `GET /read/extra` | 404 Not found |
//! | 56 | `POST /update` with `Content-Type: multipart/form-data` | 415 form-urlencoded |
//! | 58 | `GET /read?id=%` (a lone `%`) | 400, as in a body |
//! | 59 | `POST /update` value `100%` unescaped | 400 percent-encoding |
//! | 60 | `POST /reset` with a JSON body (takes no input) | 200, body ignored |
//! | 61 | `POST /reconcile` repair `maybe` | 400 'true' or 'false' |
//! | 62 | `POST /fault` kind `explode` | 400 names the kinds |
//! | 63 | `POST /fault` count `0` | 400 a whole number from 1 |
//! | 64 | `POST /fault` ms `-5` | 400 a whole number from 1 |
//! | 65 | `POST /worker` action `explode` | 400 pause or resume |

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::common::{TestServer, json_of};
use serde_json::Value;

static PANICS: AtomicUsize = AtomicUsize::new(0);

enum Expect {
    /// Rejected with this status and a message containing the needle;
    /// nothing changes.
    Reject(u16, &'static str),
    /// Accepted (200) with no state change expected (reads, misses).
    Ok,
    /// Accepted and stored: reading `id` gives `field` = `value` exactly.
    Stored {
        id: String,
        field: String,
        value: String,
    },
}

struct Case {
    n: usize,
    method: &'static str,
    path: String,
    content_type: Option<&'static str>,
    body: String,
    expect: Expect,
}

fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn cases() -> Vec<Case> {
    use Expect::*;
    let get = |n, path: &str, expect| Case {
        n,
        method: "GET",
        path: path.to_owned(),
        content_type: None,
        body: String::new(),
        expect,
    };
    let post = |n, path: &str, body: String, expect| Case {
        n,
        method: "POST",
        path: path.to_owned(),
        content_type: Some("application/x-www-form-urlencoded"),
        body,
        expect,
    };
    let stored = |id: &str, field: &str, value: &str| Stored {
        id: id.to_owned(),
        field: field.to_owned(),
        value: value.to_owned(),
    };
    let upd = |id: &str, field: &str, value: &str| {
        form(&[("id", id), ("field", field), ("value", value)])
    };
    let add = |pairs: &[(&str, &str)]| form(pairs);
    let unicode = "Café ☕ 東京 🍞";
    vec![
        get(1, "/read", Reject(400, "Missing 'id'")),
        get(2, "/read?id=", Reject(400, "Missing 'id'")),
        get(3, "/read?id=%20%20", Reject(400, "Missing 'id'")),
        get(4, "/read?id=%09", Reject(400, "Missing 'id'")),
        get(5, "/read?id=a%00b", Reject(400, "control characters")),
        get(6, "/read?id=a%0Ab", Reject(400, "control characters")),
        get(
            7,
            &format!("/read?id={}", "x".repeat(257)),
            Reject(400, "longer than 256"),
        ),
        get(8, "/read?id=a*b", Ok),
        get(9, "/read?id=a%3Fb", Ok),
        get(10, "/read?id=a[b", Ok),
        get(11, "/read?id=%ZZ", Reject(400, "percent-encoding")),
        get(12, "/read?id=%FF", Reject(400, "Malformed request")),
        post(
            57,
            "/add",
            "id=%FF&name=x".into(),
            Reject(400, "Malformed request"),
        ),
        get(13, "/read?id=a&id=b", Reject(400, "Malformed request")),
        post(
            14,
            "/update",
            String::new(),
            Reject(400, "Missing 'id' or 'field'"),
        ),
        post(
            15,
            "/update",
            form(&[("id", "cat-001")]),
            Reject(400, "Missing 'id' or 'field'"),
        ),
        post(
            16,
            "/update",
            upd("cat-001", "", "x"),
            Reject(400, "Missing 'id' or 'field'"),
        ),
        post(
            17,
            "/update",
            form(&[("field", "name"), ("value", "x")]),
            Reject(400, "Missing 'id' or 'field'"),
        ),
        post(
            18,
            "/update",
            upd("   ", "name", "x"),
            Reject(400, "Missing 'id' or 'field'"),
        ),
        post(
            19,
            "/update",
            upd("cat-404", "name", "x"),
            Reject(404, "Unknown category 'cat-404'"),
        ),
        post(
            20,
            "/update",
            upd("cat-001", "id", "cat-009"),
            Reject(400, "id field cannot be changed"),
        ),
        post(
            21,
            "/update",
            upd("cat-001", "display_order", "abc"),
            Reject(400, "must be an integer"),
        ),
        post(
            22,
            "/update",
            upd("cat-001", "display_order", "1.5"),
            Reject(400, "must be an integer"),
        ),
        post(
            23,
            "/update",
            upd("cat-001", "featured", "TRUE"),
            Reject(400, "'true' or 'false'"),
        ),
        post(
            24,
            "/update",
            upd("cat-001", "name", "  "),
            Reject(400, "must not be empty"),
        ),
        post(
            25,
            "/update",
            upd("cat-001", "a\nb", "x"),
            Reject(400, "control characters"),
        ),
        post(
            26,
            "/update",
            upd("cat-001", &"f".repeat(129), "x"),
            Reject(400, "longer than 128"),
        ),
        post(
            27,
            "/update",
            upd("cat-001", "note", &"v".repeat(70_000)),
            Reject(400, "longer than 65536"),
        ),
        post(
            28,
            "/update",
            upd("cat-001", "note", &"v".repeat(1 << 20)),
            Reject(413, "too large"),
        ),
        Case {
            n: 29,
            method: "POST",
            path: "/update".into(),
            content_type: Some("application/json"),
            body: r#"{"id":"cat-001","field":"name","value":"json"}"#.into(),
            expect: Reject(415, "application/x-www-form-urlencoded"),
        },
        Case {
            n: 30,
            method: "POST",
            path: "/update".into(),
            content_type: Some("text/plain"),
            body: upd("cat-001", "name", "plain"),
            expect: Reject(415, "application/x-www-form-urlencoded"),
        },
        post(
            31,
            "/update",
            upd("cat-002", "name", unicode),
            stored("cat-002", "name", unicode),
        ),
        post(
            32,
            "/update",
            upd("cat-003", "name", "line1\nline2\ttab"),
            stored("cat-003", "name", "line1\nline2\ttab"),
        ),
        post(
            33,
            "/update",
            upd("cat-004", "na*m?e[1]:x", "v"),
            stored("cat-004", "na*m?e[1]:x", "v"),
        ),
        post(
            34,
            "/add",
            add(&[("id", "cat*1"), ("name", "Star")]),
            stored("cat*1", "name", "Star"),
        ),
        post(
            35,
            "/add",
            add(&[("id", "cat 2"), ("name", "Space")]),
            stored("cat 2", "name", "Space"),
        ),
        post(
            36,
            "/add",
            add(&[("id", "катег-ü"), ("name", "Юникод")]),
            stored("катег-ü", "name", "Юникод"),
        ),
        post(
            37,
            "/add",
            add(&[("id", "a:b:c"), ("name", "Colon")]),
            stored("a:b:c", "name", "Colon"),
        ),
        post(
            38,
            "/add",
            add(&[("id", "cat-001"), ("name", "Dup")]),
            Reject(409, "already exists"),
        ),
        post(
            39,
            "/add",
            add(&[("name", "NoId")]),
            Reject(400, "Missing 'id' or 'name'"),
        ),
        post(
            40,
            "/add",
            add(&[("id", "x1"), ("name", " ")]),
            Reject(400, "Missing 'id' or 'name'"),
        ),
        post(
            41,
            "/add",
            add(&[("id", "x2"), ("name", "N"), ("display_order", "ten")]),
            Reject(400, "must be an integer"),
        ),
        post(
            42,
            "/add",
            add(&[("id", "x3"), ("name", "N"), ("featured", "1")]),
            Reject(400, "'true' or 'false'"),
        ),
        post(
            43,
            "/add",
            add(&[("id", "x4"), ("name", "N"), ("parent_id", "a\nb")]),
            Reject(400, "control characters"),
        ),
        post(
            44,
            "/add",
            add(&[("id", "x\n5"), ("name", "N")]),
            Reject(400, "control characters"),
        ),
        post(45, "/delete", String::new(), Reject(400, "Missing 'id'")),
        post(
            46,
            "/delete",
            form(&[("id", "cat-404")]),
            Reject(404, "Unknown category"),
        ),
        post(
            47,
            "/invalidate",
            form(&[("id", "")]),
            Reject(400, "Missing 'id'"),
        ),
        post(48, "/invalidate", form(&[("id", "never-cached")]), Ok),
        get(49, "/update", Reject(405, "Method not allowed")),
        Case {
            n: 50,
            method: "PUT",
            path: "/add".into(),
            content_type: None,
            body: String::new(),
            expect: Reject(405, "Method not allowed"),
        },
        Case {
            n: 51,
            method: "DELETE",
            path: "/delete".into(),
            content_type: None,
            body: String::new(),
            expect: Reject(405, "Method not allowed"),
        },
        post(
            52,
            "/read",
            String::new(),
            Reject(405, "Method not allowed"),
        ),
        get(53, "/nope", Reject(404, "Not found")),
        post(54, "/nope", String::new(), Reject(404, "Not found")),
        get(55, "/read/extra", Reject(404, "Not found")),
        Case {
            n: 56,
            method: "POST",
            path: "/update".into(),
            content_type: Some("multipart/form-data; boundary=x"),
            body: "--x--".into(),
            expect: Reject(415, "application/x-www-form-urlencoded"),
        },
        get(58, "/read?id=%", Reject(400, "percent-encoding")),
        post(
            59,
            "/update",
            "id=cat-001&field=name&value=100%".into(),
            Reject(400, "percent-encoding"),
        ),
        Case {
            n: 60,
            method: "POST",
            path: "/reset".into(),
            content_type: Some("application/json"),
            body: r#"{"anything": true}"#.into(),
            expect: Ok,
        },
        post(
            61,
            "/reconcile",
            "repair=maybe".into(),
            Reject(400, "'repair' must be 'true' or 'false'"),
        ),
        post(
            62,
            "/fault",
            "kind=explode".into(),
            Reject(400, "'kind' must be drop, duplicate"),
        ),
        post(
            63,
            "/fault",
            "kind=drop&count=0".into(),
            Reject(400, "'count' must be a whole number from 1"),
        ),
        post(
            64,
            "/fault",
            "kind=delay&ms=-5".into(),
            Reject(400, "'ms' must be a whole number from 1"),
        ),
        post(
            65,
            "/worker",
            "action=explode".into(),
            Reject(400, "'action' must be pause or resume"),
        ),
    ]
}

/// Primary records and cached fields (TTLs left out: they tick).
async fn state(srv: &TestServer) -> Value {
    srv.engine().settle(Duration::from_secs(2)).await.unwrap();
    let (_, state) = srv.get("/state").await;
    let cache: Vec<Value> = state["cache"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| serde_json::json!([e["id"], e["fields"]]))
        .collect();
    serde_json::json!({"primary": state["primary"], "cache": cache})
}

#[tokio::test]
async fn every_bad_input_gets_a_clear_answer_and_changes_nothing() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        default_hook(info);
    }));
    let srv = TestServer::start().await;
    let http = reqwest::Client::new();
    let all = cases();
    assert!(all.len() >= 40);
    for case in all {
        let before = state(&srv).await;
        let mut req = http
            .request(
                reqwest::Method::from_bytes(case.method.as_bytes()).unwrap(),
                srv.url(&case.path),
            )
            .body(case.body.clone());
        if let Some(ct) = case.content_type {
            req = req.header("content-type", ct);
        }
        let res = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("case {}: no answer: {e}", case.n));
        let (status, body) = json_of(res).await;
        match case.expect {
            Expect::Reject(want, needle) => {
                assert_eq!(status, want, "case {}: {body}", case.n);
                let message = body["error"].as_str().unwrap_or_default();
                assert!(
                    message.contains(needle),
                    "case {}: {message:?} lacks {needle:?}",
                    case.n
                );
                assert_eq!(
                    state(&srv).await,
                    before,
                    "case {}: a rejected request changed state",
                    case.n
                );
            }
            Expect::Ok => assert_eq!(status, 200, "case {}: {body}", case.n),
            Expect::Stored { id, field, value } => {
                assert_eq!(status, 200, "case {}: {body}", case.n);
                srv.engine().settle(Duration::from_secs(2)).await.unwrap();
                let (status, read) = srv.get(&format!("/read?id={}", enc(&id))).await;
                assert_eq!(status, 200);
                assert_eq!(read["hit"], true, "case {}: {read}", case.n);
                assert_eq!(
                    read["record"][&field],
                    value.as_str(),
                    "case {}: round trip",
                    case.n
                );
                assert_eq!(read["id"], id.as_str());
            }
        }
    }
    // The server is still healthy, and nothing panicked anywhere.
    let (status, _) = srv.get("/categories").await;
    assert_eq!(status, 200);
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "a handler panicked");
}

#[tokio::test]
async fn odd_but_legal_ids_survive_clear_and_reprefetch() {
    let srv = TestServer::start().await;
    for id in ["cat*1", "a?b", "a[b]c", "катег-ü", "x:y"] {
        let (status, body) = srv
            .post("/add", &form(&[("id", id), ("name", "odd")]))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    srv.engine().settle(Duration::from_secs(2)).await.unwrap();
    let (_, body) = srv.post("/clear", "").await;
    assert_eq!(body["deleted"], 10);
    let (_, body) = srv.post("/reprefetch", "").await;
    assert_eq!(body["loaded"], 10);
    let (_, cats) = srv.get("/categories").await;
    assert_eq!(cats["cache_ids"], cats["primary_ids"]);
}
