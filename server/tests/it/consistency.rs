//! Read-your-writes over HTTP: every answer says the applied position, a
//! write says its own commit's, and a read that asks for a position waits
//! for it (504 past its limit, 400 for a position that cannot be read);
//! with the mock and with PostgreSQL's `pg_current_wal_lsn()`.

use std::time::{Duration, Instant};

use prefetch::testing::TestRedis;
use serde_json::Value;

use crate::common::{TestServer, json_of, postgres_client, postgres_database};

/// A change through the API, and the position its answer gives.
async fn update(srv: &TestServer, value: &str) -> String {
    let res = reqwest::Client::new()
        .post(srv.url("/update"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("id=cat-001&field=name&value={value}"))
        .send()
        .await
        .unwrap();
    let position = res
        .headers()
        .get("prefetch-position")
        .expect("a write answers with its position")
        .to_str()
        .unwrap()
        .to_owned();
    let (status, body) = json_of(res).await;
    assert_eq!(status, 200, "{body}");
    position
}

/// `GET path`, waiting for `position` when given, with these headers.
async fn read(srv: &TestServer, path: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut req = reqwest::Client::new().get(srv.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    json_of(req.send().await.unwrap()).await
}

fn name(read: &Value) -> &str {
    read["record"]["name"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_that_asks_for_its_write_position_always_sees_the_write() {
    let srv = TestServer::start().await;
    let mut seen = 0;
    for i in 0..500 {
        let value = format!("own-{i}");
        let at = update(&srv, &value).await;
        let (status, body) = read(
            &srv,
            "/read?id=cat-001",
            &[("Prefetch-Min-Position", at.as_str())],
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(name(&body), value, "write {i} at {at}");
        seen += 1;
    }
    assert_eq!(seen, 500);

    // The wait is what makes it so: with each change held back 30 ms on
    // its way to Redis, a read without it finds the old value, and the
    // same read asking for the position finds the new one.
    let (status, _) = srv.post("/fault", "kind=delay&count=10&ms=30").await;
    assert_eq!(status, 200);
    let mut stale = 0;
    for i in 0..5 {
        let value = format!("plain-{i}");
        update(&srv, &value).await;
        let (_, body) = read(&srv, "/read?id=cat-001", &[]).await;
        stale += usize::from(name(&body) != value);
    }
    assert!(
        stale >= 1,
        "no read found an old value although each change was held back 30 ms"
    );
    for i in 0..5 {
        let value = format!("fenced-{i}");
        let at = update(&srv, &value).await;
        // The query form of the same request.
        let path = format!("/read?id=cat-001&min_position={at}");
        let (status, body) = read(&srv, &path, &[]).await;
        assert_eq!((status, name(&body)), (200, value.as_str()), "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_position_not_reached_in_time_is_a_504_and_a_bad_one_a_400() {
    let srv = TestServer::start().await;
    // Every answer carries the applied position.
    for path in ["/stats", "/read?id=cat-002", "/categories"] {
        let res = reqwest::get(srv.url(path)).await.unwrap();
        let at = res.headers().get("prefetch-position").cloned();
        assert!(
            at.is_some_and(|v| v.to_str().unwrap().parse::<u64>().is_ok()),
            "{path}: no position"
        );
    }
    let (_, paused) = srv.post("/worker", "action=pause").await;
    assert_eq!(paused["worker"], "paused");
    let at = update(&srv, "while-paused").await;
    let started = Instant::now();
    let (status, body) = read(
        &srv,
        "/read?id=cat-001",
        &[("Prefetch-Min-Position", &at), ("Prefetch-Wait-Ms", "300")],
    )
    .await;
    let waited = started.elapsed();
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["wanted"], at.as_str(), "{body}");
    let applied: u64 = body["applied"].as_str().unwrap().parse().unwrap();
    assert!(applied < at.parse::<u64>().unwrap(), "{body}");
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(3),
        "answered after {waited:?}"
    );
    // Resumed, the same request is served.
    let (_, resumed) = srv.post("/worker", "action=resume").await;
    assert_eq!(resumed["worker"], "running");
    let (status, body) = read(&srv, "/read?id=cat-001", &[("Prefetch-Min-Position", &at)]).await;
    assert_eq!((status, name(&body)), (200, "while-paused"), "{body}");

    for (headers, needle) in [
        (vec![("Prefetch-Min-Position", "abc")], "not a position"),
        (
            vec![("Prefetch-Min-Position", "1"), ("Prefetch-Wait-Ms", "soon")],
            "Prefetch-Wait-Ms",
        ),
        (
            vec![
                ("Prefetch-Min-Position", "1"),
                ("Prefetch-Wait-Ms", "20000"),
            ],
            "up to 10000",
        ),
    ] {
        let (status, body) = read(&srv, "/read?id=cat-001", &headers).await;
        assert_eq!(status, 400, "{headers:?}: {body}");
        assert!(
            body["error"].as_str().unwrap_or("").contains(needle),
            "{headers:?}: {body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgresql_commit_read_back_at_its_lsn_is_always_seen() {
    let url = postgres_database("ryw").await;
    let srv = TestServer::start_on(TestRedis::start(), &["--primary", &url]).await;
    let sql = postgres_client(&url).await;
    for i in 0..200 {
        let value = format!("pg-{i}");
        sql.execute(
            "UPDATE categories SET name = $1 WHERE id = 'cat-003'",
            &[&value],
        )
        .await
        .unwrap();
        // What an application does after its commit.
        let lsn: String = sql
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .unwrap()
            .get(0);
        let (status, body) = read(
            &srv,
            "/read?id=cat-003",
            &[("Prefetch-Min-Position", lsn.as_str())],
        )
        .await;
        assert_eq!(
            (status, name(&body)),
            (200, value.as_str()),
            "at {lsn}: {body}"
        );
    }
    // The answers speak PostgreSQL's notation, and a write through the API
    // gives its own commit's LSN.
    let at = update(&srv, "through-the-api").await;
    assert!(at.contains('/'), "{at}");
    let (status, body) = read(&srv, "/read?id=cat-001", &[("Prefetch-Min-Position", &at)]).await;
    assert_eq!((status, name(&body)), (200, "through-the-api"), "{body}");
}
