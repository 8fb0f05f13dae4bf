//! The reference-compatible JSON API over HTTP: every path, its success
//! shape, and each documented error status, against a real redis-server.

use std::time::Duration;

use crate::common::{TestServer, json_of};
use prefetch::testing::TestRedis;
use serde_json::{Value, json};

const STATS_KEYS: [&str; 8] = [
    "hits",
    "misses",
    "hit_rate_pct",
    "prefetched",
    "sync_events_applied",
    "sync_lag_ms_avg",
    "primary_reads_total",
    "primary_read_latency_ms",
];

fn assert_stats(v: &Value) {
    for key in STATS_KEYS {
        assert!(
            v.get(key).is_some_and(|x| x.is_number()),
            "stats key {key} in {v}"
        );
    }
}

fn assert_error(status: u16, body: &Value, expected_status: u16, needle: &str) {
    assert_eq!(status, expected_status, "{body}");
    let message = body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error message: {body}"));
    assert!(
        message.contains(needle),
        "{message:?} should mention {needle:?}"
    );
    assert_eq!(
        body.as_object().map(|o| o.len()),
        Some(1),
        "only the error key: {body}"
    );
}

async fn settle(srv: &TestServer) {
    srv.engine().settle(Duration::from_secs(2)).await.unwrap();
}

#[tokio::test]
async fn categories_lists_both_sides_sorted() {
    let srv = TestServer::start().await;
    let (status, body) = srv.get("/categories").await;
    assert_eq!(status, 200);
    let ids = json!(["cat-001", "cat-002", "cat-003", "cat-004", "cat-005"]);
    assert_eq!(body, json!({"cache_ids": ids, "primary_ids": ids}));
    // Byte for byte the reference answer: no page, no `next`, no `Link`.
    let res = reqwest::get(srv.url("/categories")).await.unwrap();
    assert!(
        res.headers().get("link").is_none(),
        "a small table has one page"
    );
    let ids = r#"["cat-001","cat-002","cat-003","cat-004","cat-005"]"#;
    assert_eq!(
        res.text().await.unwrap(),
        format!(r#"{{"cache_ids":{ids},"primary_ids":{ids}}}"#)
    );
}

#[tokio::test]
async fn read_answers_hits_misses_and_bad_ids() {
    let srv = TestServer::start().await;
    let (status, body) = srv.get("/read?id=cat-005").await;
    assert_eq!(status, 200);
    assert_eq!(body["id"], "cat-005");
    assert_eq!(body["hit"], true);
    assert_eq!(
        body["record"],
        json!({"id": "cat-005", "name": "Specialty Cheeses", "display_order": "5",
               "featured": "false", "parent_id": "cat-002"})
    );
    assert!(body["redis_latency_ms"].as_f64().unwrap() > 0.0);
    let ttl = body["ttl_remaining"].as_i64().unwrap();
    assert!((3590..=3600).contains(&ttl), "ttl {ttl}");
    assert_stats(&body["stats"]);
    assert_eq!(body["stats"]["hits"], 1);

    let (status, body) = srv.get("/read?id=cat-404").await;
    assert_eq!(status, 200, "a miss is not an error");
    assert_eq!(
        (body["hit"].clone(), body["record"].clone()),
        (json!(false), Value::Null)
    );
    assert_eq!(body["ttl_remaining"], -2);
    assert_eq!(body["stats"]["misses"], 1);

    let (status, body) = srv.get("/read").await;
    assert_error(status, &body, 400, "Missing 'id'");
    let (status, body) = srv.get("/read?id=").await;
    assert_error(status, &body, 400, "Missing 'id'");
    let (status, body) = srv.get("/read?id=%20%20").await;
    assert_error(status, &body, 400, "Missing 'id'");
    let (status, body) = srv.get("/read?id=a%0Ab").await;
    assert_error(status, &body, 400, "control characters");
    assert_eq!(srv.primary().reads(), 1, "reads never reach the primary");
}

#[tokio::test]
async fn stats_carries_the_reference_keys() {
    let srv = TestServer::start().await;
    let (status, body) = srv.get("/stats").await;
    assert_eq!(status, 200);
    assert_stats(&body);
    assert_eq!(body["prefetched"], 5);
    assert_eq!(body["primary_reads_total"], 1);
    assert_eq!(body["primary_read_latency_ms"], 0);
}

#[tokio::test]
async fn update_changes_the_primary_and_the_worker_carries_it_to_the_cache() {
    let srv = TestServer::start().await;
    let (status, body) = srv
        .post("/update", "id=cat-001&field=name&value=Drinks")
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (&body["id"], &body["field"], &body["value"]),
        (&json!("cat-001"), &json!("name"), &json!("Drinks"))
    );
    assert_stats(&body["stats"]);
    settle(&srv).await;
    let (_, read) = srv.get("/read?id=cat-001").await;
    assert_eq!(read["record"]["name"], "Drinks");

    // An empty value is a value (parent_id "" means top level).
    let (status, _) = srv
        .post("/update", "id=cat-005&field=parent_id&value=")
        .await;
    assert_eq!(status, 200);

    let (status, body) = srv.post("/update", "id=cat-404&field=name&value=x").await;
    assert_error(status, &body, 404, "Unknown category 'cat-404'");
    let (status, body) = srv.post("/update", "id=cat-001&value=x").await;
    assert_error(status, &body, 400, "Missing 'id' or 'field'");
    let (status, body) = srv.post("/update", "").await;
    assert_error(status, &body, 400, "Missing 'id' or 'field'");
    let (status, body) = srv
        .post("/update", "id=cat-001&field=display_order&value=soon")
        .await;
    assert_error(status, &body, 400, "display_order");
    let (status, body) = srv
        .post("/update", "id=cat-001&field=featured&value=maybe")
        .await;
    assert_error(status, &body, 400, "featured");
    let (status, body) = srv
        .post("/update", "id=cat-001&field=id&value=cat-999")
        .await;
    assert_error(status, &body, 400, "id field cannot be changed");
    settle(&srv).await;
    let (_, read) = srv.get("/read?id=cat-001").await;
    assert_eq!(
        read["record"]["name"], "Drinks",
        "rejected updates change nothing"
    );
}

#[tokio::test]
async fn add_fills_the_reference_defaults_and_refuses_duplicates() {
    let srv = TestServer::start().await;
    let (status, body) = srv.post("/add", "id=cat-006&name=Seasonal").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], "cat-006");
    assert_eq!(
        body["record"],
        json!({"id": "cat-006", "name": "Seasonal", "display_order": "99",
               "featured": "false", "parent_id": ""})
    );
    assert_stats(&body["stats"]);
    settle(&srv).await;
    let (_, read) = srv.get("/read?id=cat-006").await;
    assert_eq!(read["hit"], true);

    let (status, body) = srv.post("/add", "id=cat-006&name=Again").await;
    assert_error(status, &body, 409, "already exists");
    let (status, body) = srv.post("/add", "id=cat-007").await;
    assert_error(status, &body, 400, "Missing 'id' or 'name'");
    let (status, body) = srv.post("/add", "name=NoId").await;
    assert_error(status, &body, 400, "Missing 'id' or 'name'");
    let (status, body) = srv
        .post("/add", "id=cat-007&name=X&display_order=seven")
        .await;
    assert_error(status, &body, 400, "display_order");
    let (status, body) = srv.post("/add", "id=cat-007&name=X&featured=yes").await;
    assert_error(status, &body, 400, "featured");
    let (_, cats) = srv.get("/categories").await;
    assert_eq!(
        cats["primary_ids"].as_array().unwrap().len(),
        6,
        "rejected adds add nothing"
    );
}

#[tokio::test]
async fn delete_removes_from_the_primary_and_then_the_cache() {
    let srv = TestServer::start().await;
    let (status, body) = srv.post("/delete", "id=cat-004").await;
    assert_eq!(status, 200);
    assert_eq!(body["id"], "cat-004");
    assert_stats(&body["stats"]);
    settle(&srv).await;
    let (_, cats) = srv.get("/categories").await;
    assert!(
        !cats["primary_ids"]
            .as_array()
            .unwrap()
            .contains(&json!("cat-004"))
    );
    assert!(
        !cats["cache_ids"]
            .as_array()
            .unwrap()
            .contains(&json!("cat-004"))
    );
    let (status, body) = srv.post("/delete", "id=cat-004").await;
    assert_error(status, &body, 404, "Unknown category");
    let (status, body) = srv.post("/delete", "").await;
    assert_error(status, &body, 400, "Missing 'id'");
}

#[tokio::test]
async fn invalidate_reports_whether_a_key_was_deleted() {
    let srv = TestServer::start().await;
    let (status, body) = srv.post("/invalidate", "id=cat-002").await;
    assert_eq!(status, 200);
    assert_eq!(
        (&body["id"], &body["deleted"]),
        (&json!("cat-002"), &json!(true))
    );
    assert_stats(&body["stats"]);
    let (_, body) = srv.post("/invalidate", "id=cat-002").await;
    assert_eq!(body["deleted"], false);
    let (_, read) = srv.get("/read?id=cat-002").await;
    assert_eq!(read["hit"], false);
    let (status, body) = srv.post("/invalidate", "id=").await;
    assert_error(status, &body, 400, "Missing 'id'");
}

#[tokio::test]
async fn clear_then_reprefetch_restores_everything_with_one_primary_read() {
    let srv = TestServer::start().await;
    let (status, body) = srv.post("/clear", "").await;
    assert_eq!(status, 200);
    assert_eq!(body["deleted"], 5);
    assert_stats(&body["stats"]);
    let (_, cats) = srv.get("/categories").await;
    assert_eq!(cats["cache_ids"], json!([]));

    let (status, body) = srv.post("/reprefetch", "").await;
    assert_eq!(status, 200);
    assert_eq!(body["loaded"], 5);
    assert!(body["elapsed_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(body["stats"]["primary_reads_total"], 2);
    let (_, cats) = srv.get("/categories").await;
    assert_eq!(cats["cache_ids"], cats["primary_ids"]);
}

#[tokio::test]
async fn reset_zeroes_cache_counters_and_primary_reads() {
    let srv = TestServer::start().await;
    srv.get("/read?id=cat-001").await;
    srv.get("/read?id=nope").await;
    let (status, body) = srv.post("/reset", "").await;
    assert_eq!(status, 200);
    assert_stats(&body);
    for key in ["hits", "misses", "prefetched", "primary_reads_total"] {
        assert_eq!(body[key], 0, "{key}");
    }
    assert_eq!(body["primary_read_latency_ms"], 0);
}

#[tokio::test]
async fn wrong_methods_get_405_json() {
    let srv = TestServer::start().await;
    for (method, path) in [
        ("GET", "/update"),
        ("GET", "/add"),
        ("GET", "/delete"),
        ("GET", "/invalidate"),
        ("GET", "/clear"),
        ("GET", "/reprefetch"),
        ("GET", "/reset"),
        ("POST", "/read"),
        ("POST", "/stats"),
        ("POST", "/categories"),
        ("DELETE", "/clear"),
        ("PUT", "/update"),
    ] {
        let (status, body) = srv.request(method, path).await;
        assert_error(status, &body, 405, "Method not allowed");
    }
}

#[tokio::test]
async fn head_answers_like_get_without_a_body_on_every_get_path() {
    let srv = TestServer::start().await;
    let http = reqwest::Client::new();
    for path in [
        "/",
        "/index.html",
        "/categories",
        "/read?id=cat-001",
        "/stats",
        "/state",
        "/favicon.svg",
        "/nope",
    ] {
        let get = http.get(srv.url(path)).send().await.unwrap();
        let head = http.head(srv.url(path)).send().await.unwrap();
        assert_eq!(head.status(), get.status(), "HEAD {path}");
        assert_eq!(
            head.headers().get("content-type"),
            get.headers().get("content-type"),
            "HEAD {path}"
        );
        assert!(
            head.bytes().await.unwrap().is_empty(),
            "HEAD {path} has no body"
        );
    }
}

#[tokio::test]
async fn endpoints_that_take_no_input_ignore_any_body() {
    let srv = TestServer::start().await;
    let http = reqwest::Client::new();
    for path in ["/reset", "/reprefetch", "/clear"] {
        let res = http
            .post(srv.url(path))
            .header("content-type", "application/json")
            .body(r#"{"ignored": [1, 2, 3]}"#)
            .send()
            .await
            .unwrap();
        let (status, body) = json_of(res).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    // Those that do take input still insist on a form.
    let res = http
        .post(srv.url("/invalidate"))
        .header("content-type", "application/json")
        .body(r#"{"id": "cat-001"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 415);
}

#[tokio::test]
async fn malformed_percent_encoding_is_refused_alike_in_query_and_body() {
    let srv = TestServer::start().await;
    for bad in ["%", "%ZZ", "%FF", "a%2"] {
        let (status, body) = srv.get(&format!("/read?id={bad}")).await;
        assert_error(status, &body, 400, "percent-encoding");
        let (status, body) = srv.post("/invalidate", &format!("id={bad}")).await;
        assert_error(status, &body, 400, "percent-encoding");
    }
    let (status, body) = srv.get("/read?id=100%25").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], "100%");
}

#[tokio::test]
async fn oversized_bodies_get_413_json_and_change_nothing() {
    let srv = TestServer::start().await;
    let big = format!("id=cat-001&field=name&value={}", "x".repeat(1024 * 1024));
    let (status, body) = srv.post("/update", &big).await;
    assert_error(status, &body, 413, "too large");
    settle(&srv).await;
    let (_, read) = srv.get("/read?id=cat-001").await;
    assert_eq!(read["record"]["name"], "Beverages");
}

/// A 413 leaves the body unread, so the connection cannot carry another
/// request: the answer says `Connection: close` and the server closes it,
/// while an ordinary answer keeps the connection open.
#[tokio::test]
async fn a_413_closes_its_connection_and_an_ordinary_answer_does_not() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let srv = TestServer::start().await;
    let addr = srv.base.trim_start_matches("http://").to_owned();
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    tcp.write_all(b"GET /stats HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf))
        .await
        .expect("an answer to GET /stats")
        .unwrap();
    let ok = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
    assert!(ok.starts_with("http/1.1 200"), "{ok}");
    assert!(!ok.contains("connection: close"), "{ok}");

    // The same connection, kept alive: a body announced over the limit (it
    // is refused before any of it is read, so none is sent).
    let head = format!(
        "POST /update HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n",
        2 * 1024 * 1024
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut reply))
        .await
        .expect("the server closes the connection after a 413")
        .unwrap();
    let reply = String::from_utf8_lossy(&reply).to_ascii_lowercase();
    assert!(reply.starts_with("http/1.1 413"), "{reply}");
    assert!(reply.contains("connection: close"), "{reply}");
    assert!(reply.contains("too large"), "{reply}");
}

/// A body with no announced length is cut off at the limit (413); a body
/// whose chunked framing breaks is a bad request (400), not "too large".
#[tokio::test]
async fn a_chunked_body_over_the_limit_gets_413_and_a_broken_one_400() {
    use tokio::io::AsyncWriteExt;
    let srv = TestServer::start().await;
    let addr = srv.base.trim_start_matches("http://").to_owned();
    let answer = |mut tcp: tokio::net::TcpStream| async move {
        use tokio::io::AsyncReadExt;
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut got))
            .await
            .expect("an answer, then a close")
            .unwrap();
        String::from_utf8_lossy(&got).to_ascii_lowercase()
    };
    let head = "POST /update HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n";

    // 160 KiB in 16 KiB chunks, never announced as a whole.
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    tcp.write_all(head.as_bytes()).await.unwrap();
    let chunk = format!("4000\r\n{}\r\n", "x".repeat(0x4000));
    for _ in 0..10 {
        if tcp.write_all(chunk.as_bytes()).await.is_err() {
            break; // the server answered and closed already
        }
    }
    let _ = tcp.write_all(b"0\r\n\r\n").await;
    let reply = answer(tcp).await;
    assert!(reply.starts_with("http/1.1 413"), "{reply}");
    assert!(reply.contains("too large"), "{reply}");

    // A chunk size that is not hexadecimal.
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(b"5\r\nid=ca\r\nzz\r\n").await.unwrap();
    let reply = answer(tcp).await;
    assert!(reply.starts_with("http/1.1 400"), "{reply}");
    assert!(reply.contains("body ended"), "{reply}");
    settle(&srv).await;
    let (_, read) = srv.get("/read?id=cat-001").await;
    assert_eq!(read["record"]["name"], "Beverages");
}

#[tokio::test]
async fn unknown_paths_get_404_json() {
    let srv = TestServer::start().await;
    for path in ["/nope", "/api/read", "/read/", "/pkg/missing.js"] {
        let (status, body) = srv.get(path).await;
        assert_error(status, &body, 404, "Not found");
    }
}

#[tokio::test]
async fn the_page_is_rendered_with_the_current_state_at_both_paths() {
    let srv = TestServer::start().await;
    srv.post("/update", "id=cat-003&field=name&value=Dry%20Goods")
        .await;
    settle(&srv).await;
    for path in ["/", "/index.html"] {
        let res = reqwest::get(srv.url(path)).await.unwrap();
        assert_eq!(res.status().as_u16(), 200);
        let ctype = res.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(ctype.starts_with("text/html"), "{ctype}");
        let html = res.text().await.unwrap();
        assert!(
            html.contains(r#"data-id="cat-003" data-status="ok""#),
            "row state in SSR HTML"
        );
        assert!(html.contains("Dry Goods"), "current values in SSR HTML");
        assert!(html.contains(r#"<form id="read-form" action="/read" method="get""#));
        assert!(
            html.contains(r#"action="/update" method="post""#),
            "forms work without WASM"
        );
    }
}

#[tokio::test]
async fn a_form_post_without_javascript_redirects_back_to_the_page() {
    let srv = TestServer::start().await;
    let res = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(srv.url("/update"))
        .header("accept", "text/html,application/xhtml+xml")
        .header("referer", srv.url("/"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("id=cat-001&field=name&value=Form")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 302);
    let location = res.headers()["location"].to_str().unwrap();
    assert!(
        location.starts_with(&srv.url("/")),
        "back to the page, got {location}"
    );
    settle(&srv).await;
    let (_, read) = srv.get("/read?id=cat-001").await;
    assert_eq!(read["record"]["name"], "Form");
}

#[tokio::test]
async fn redis_down_gives_503_json_and_the_server_recovers() {
    let redis = TestRedis::spawn_own(false);
    let srv = TestServer::start_on(redis, &[]).await;
    let (status, _) = srv.get("/read?id=cat-001").await;
    assert_eq!(status, 200);

    let mut srv = srv;
    srv.redis.kill();
    for (method, path) in [
        ("GET", "/read?id=cat-001"),
        ("GET", "/categories"),
        ("POST", "/invalidate"),
    ] {
        let res = reqwest::Client::new()
            .request(
                reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                srv.url(path),
            )
            .header("content-type", "application/x-www-form-urlencoded")
            .body("id=cat-001")
            .send()
            .await
            .unwrap();
        let (status, body) = json_of(res).await;
        assert_error(status, &body, 503, "Redis is unavailable");
    }
    let (status, body) = srv.post("/reprefetch", "").await;
    assert_error(status, &body, 503, "Redis is unavailable");
    // Mutations still land in the primary and wait for Redis.
    let (status, _) = srv
        .post("/update", "id=cat-001&field=name&value=queued")
        .await;
    assert_eq!(status, 200);

    srv.redis.restart();
    // The restarted Redis is empty; the queued change arrives by itself and
    // a re-prefetch brings back the rest.
    srv.engine().settle(Duration::from_secs(5)).await.unwrap();
    // A reader connection whose reconnects ran out during the outage
    // fails its next command and reconnects: the server is back within a
    // request or two, not necessarily on the first.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    let body = loop {
        let (status, body) = srv.get("/read?id=cat-001").await;
        if status == 200 {
            break body;
        }
        assert_error(status, &body, 503, "Redis is unavailable");
        assert!(std::time::Instant::now() < deadline, "no recovery: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(body["record"]["name"], "queued");
    let (status, body) = srv.post("/reprefetch", "").await;
    assert_eq!(status, 200, "{body}");
    let (_, cats) = srv.get("/categories").await;
    assert_eq!(cats["cache_ids"], cats["primary_ids"]);
}

#[tokio::test]
async fn a_form_posted_without_javascript_is_redirected_back_with_its_error() {
    let srv = TestServer::start().await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    // What a browser without JavaScript sends for the add form.
    let post_form = |referer: String, body: &'static str| {
        http.post(srv.url("/add"))
            .header("accept", "text/html")
            .header("referer", referer)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
    };
    let page = srv.url("/");
    let res = post_form(page.clone(), "id=cat-001&name=Again&display_order=1")
        .await
        .unwrap();
    assert_eq!(res.status(), 303, "a redirect the browser follows");
    let location = res.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with(&page) && location.contains("__err="));
    assert_eq!(
        srv.primary().records().await.unwrap().len(),
        5,
        "nothing added"
    );

    let html = http
        .get(&location)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let status_bar = html
        .split_once(r#"id="status""#)
        .map(|(_, rest)| &rest[..rest.find("</div>").unwrap_or(rest.len())])
        .unwrap_or_default();
    assert!(status_bar.contains(r#"data-kind="error""#), "{status_bar}");
    assert!(
        status_bar.contains("cat-001") && status_bar.contains("already exists."),
        "{status_bar}"
    );

    // Succeeding, it redirects back to the page without the error.
    let res = post_form(location, "id=cat-006&name=Seasonal&display_order=6")
        .await
        .unwrap();
    assert_eq!(res.status(), 302);
    let back = res.headers()["location"].to_str().unwrap();
    assert_eq!(back.trim_end_matches('?'), page, "the error is gone");
}

/// Connections the Redis behind `srv` has open.
async fn redis_clients(srv: &TestServer) -> usize {
    let mut conn = srv.redis.conn().await;
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut conn)
        .await
        .unwrap();
    list.lines().count()
}

#[tokio::test]
async fn several_http_loops_each_read_on_their_own_connection_and_serve_everyone() {
    let one = TestServer::start().await;
    let three = TestServer::start_on(TestRedis::start(), &["--http-threads", "3"]).await;
    assert_eq!(
        redis_clients(&three).await,
        redis_clients(&one).await + 2,
        "each HTTP loop opens one Redis connection of its own"
    );
    one.stop().await;

    // Many connections at once: the loops share the listener.
    let reads = (0..60).map(|i| {
        let url = three.url(&format!("/read?id=cat-00{}", 1 + i % 5));
        async move {
            let res = reqwest::Client::new().get(url).send().await.unwrap();
            json_of(res).await
        }
    });
    for (status, body) in futures::future::join_all(reads).await {
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["hit"], true, "{body}");
    }
    let (_, stats) = three.get("/stats").await;
    assert_eq!(stats["hits"], 60, "every loop counts into the same stats");

    // A change posted on one connection reaches a live-feed client on
    // another, whichever loops serve them.
    let mut feed = three.events().await;
    feed.next(Duration::from_secs(1)).await.expect("snapshot");
    three
        .post("/update", "id=cat-002&field=name&value=Looped")
        .await;
    feed.expect(
        Duration::from_secs(1),
        "primary upsert",
        |e| matches!(e, app::model::LiveEvent::Primary { id, .. } if id == "cat-002"),
    )
    .await;

    let started = std::time::Instant::now();
    three.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "every loop stopped within the shutdown budget"
    );
}

#[tokio::test]
async fn a_server_dropped_without_shutdown_stops_serving() {
    let redis = TestRedis::start();
    let prefix = prefetch::testing::prefix("drop");
    let config = <server::Config as clap::Parser>::try_parse_from([
        "server",
        "--redis-url",
        redis.url.as_str(),
        "--cache-prefix",
        prefix.as_str(),
    ])
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let running = server::start(config, Some(listener)).await.unwrap();
    let addr = running.addr;
    let res = reqwest::get(format!("http://{addr}/stats")).await.unwrap();
    assert_eq!(res.status().as_u16(), 200);
    drop(res);
    drop(running);
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while std::net::TcpStream::connect(addr).is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "the HTTP loops kept serving after the server was dropped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
