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

/// `GET /read` of `id`: the answer and its `Prefetch-Miss` header.
async fn read_miss(srv: &TestServer, id: &str) -> (Value, Option<String>) {
    let res = reqwest::get(srv.url(&format!("/read?id={id}")))
        .await
        .unwrap();
    let miss = res
        .headers()
        .get("prefetch-miss")
        .map(|v| v.to_str().unwrap().to_owned());
    let (status, body) = json_of(res).await;
    assert_eq!(status, 200, "{body}");
    (body, miss)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misses_say_why_a_lost_key_comes_back_and_the_stats_show_how_consistent_it_is() {
    let srv = TestServer::start().await;
    let (body, miss) = read_miss(&srv, "cat-002").await;
    assert_eq!((body["hit"].as_bool(), miss), (Some(true), None));
    let (body, miss) = read_miss(&srv, "nope").await;
    assert_eq!(body["hit"], false);
    assert_eq!(miss.as_deref(), Some("absent"));
    let (status, _) = srv.post("/delete", "id=cat-005").await;
    assert_eq!(status, 200);
    srv.engine().settle(Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        read_miss(&srv, "cat-005").await.1.as_deref(),
        Some("deleted")
    );

    // Deleted behind the cache's back: back within a second, before anyone
    // reads it (Redis reports the DEL; nothing here reads through the API).
    let mut conn = srv.redis.conn().await;
    let key = format!("{}cat-004", srv.prefix);
    let deleted: i64 = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(deleted, 1);
    let started = Instant::now();
    loop {
        let name: Option<String> = redis::cmd("HGET")
            .arg(&key)
            .arg("name")
            .query_async(&mut conn)
            .await
            .unwrap();
        if name.is_some() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "cat-004 not back within 1 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!("deleted with DEL, back after {:?}", started.elapsed());
    // Read while lost: the header says so, and it comes back too.
    let key = format!("{}cat-003", srv.prefix);
    let _: i64 = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(read_miss(&srv, "cat-003").await.1.as_deref(), Some("lost"));

    let (_, stats) = srv.get("/stats").await;
    assert_eq!(stats["misses_absent"], 1, "{stats}");
    assert_eq!(stats["misses_deleted"], 1, "{stats}");
    assert_eq!(stats["misses_lost"], 1, "{stats}");
    assert_eq!(stats["stale_reads"], 0, "{stats}");
    assert_eq!(stats["visible_1s_pct"], 100.0, "{stats}");

    // A paused worker: a change waits, reads of its row are stale, and it
    // becomes visible more than a second after its commit.
    let (_, paused) = srv.post("/worker", "action=pause").await;
    assert_eq!(paused["worker"], "paused");
    update(&srv, "held back").await;
    for _ in 0..3 {
        let (body, _) = read_miss(&srv, "cat-001").await;
        assert_ne!(name(&body), "held back");
    }
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    srv.post("/worker", "action=resume").await;
    srv.engine().settle(Duration::from_secs(5)).await.unwrap();
    let (body, _) = read_miss(&srv, "cat-001").await;
    assert_eq!(name(&body), "held back");
    let (_, stats) = srv.get("/stats").await;
    assert_eq!(stats["stale_reads"], 3, "{stats}");
    assert!(stats["stale_read_pct"].as_f64().unwrap() > 0.0, "{stats}");
    assert_eq!(stats["lost_restored"], 2, "{stats}");
    let within_1s = stats["visible_1s_pct"].as_f64().unwrap();
    assert!(within_1s < 100.0, "the held change took > 1 s: {stats}");
    let metrics = reqwest::get(srv.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("prefetch_stale_reads_total 3\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("prefetch_cache_misses_total{kind=\"lost\"} 1\n"),
        "{metrics}"
    );
}

/// On PostgreSQL: unknown ids cost the database nothing, a deleted row
/// says so, and a key deleted again and again while its row changes comes
/// back every time without ever going back in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgresql_lost_keys_come_back_and_never_go_back_in_time() {
    let url = postgres_database("lost").await;
    let srv = TestServer::start_on(TestRedis::start(), &["--primary", &url]).await;
    let sql = postgres_client(&url).await;
    let (_, stats) = srv.get("/stats").await;
    let reads_before = stats["primary_reads_total"].as_u64().unwrap();
    for i in 0..200 {
        let miss = read_miss(&srv, &format!("nope-{i}")).await.1;
        assert_eq!(miss.as_deref(), Some("absent"), "nope-{i}");
    }
    let (_, stats) = srv.get("/stats").await;
    assert_eq!(
        stats["primary_reads_total"].as_u64().unwrap(),
        reads_before,
        "{stats}"
    );

    sql.execute("DELETE FROM categories WHERE id = 'cat-005'", &[])
        .await
        .unwrap();
    let started = Instant::now();
    while read_miss(&srv, "cat-005").await.1.as_deref() != Some("deleted") {
        assert!(started.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A writer changes cat-002 200 times, one every 5 ms or so, while its
    // key is deleted behind the cache's back every 15 ms; readers must only
    // ever see it move on.
    let writer = tokio::spawn(async move {
        for n in 0..200 {
            sql.execute(
                "UPDATE categories SET name = $1 WHERE id = 'cat-002'",
                &[&format!("w-{n:04}")],
            )
            .await
            .unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let mut conn = srv.redis.conn().await;
    let key = format!("{}cat-002", srv.prefix);
    let (mut newest, mut reads, mut deletes) = (String::new(), 0, 0);
    while !writer.is_finished() {
        let n: i64 = redis::cmd("DEL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        deletes += n;
        tokio::time::sleep(Duration::from_millis(15)).await;
        let (body, _) = read_miss(&srv, "cat-002").await;
        let seen = name(&body).to_owned();
        if seen.starts_with("w-") {
            assert!(seen >= newest, "went back from {newest} to {seen}");
            newest = seen;
            reads += 1;
        }
    }
    writer.await.unwrap();
    // Once more with no write to bring it back: only the repair can.
    let _: i64 = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    let started = Instant::now();
    loop {
        let name: Option<String> = redis::cmd("HGET")
            .arg(&key)
            .arg("name")
            .query_async(&mut conn)
            .await
            .unwrap();
        if name.as_deref() == Some("w-0199") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "cat-002 holds {name:?}, not the last write"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A change after the restore still lands: the restored copy was
    // written at a version below every later commit.
    let sql = postgres_client(&url).await;
    sql.execute(
        "UPDATE categories SET name = 'after the restore' WHERE id = 'cat-002'",
        &[],
    )
    .await
    .unwrap();
    let started = Instant::now();
    while name(&read_miss(&srv, "cat-002").await.0) != "after the restore" {
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "a change after the restore was refused"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (_, stats) = srv.get("/stats").await;
    eprintln!(
        "{deletes} deletes, {reads} reads moving forward, {} restored",
        stats["lost_restored"]
    );
    assert!(
        deletes >= 5 && reads >= 5,
        "{deletes} deletes, {reads} reads"
    );
    assert!(stats["lost_restored"].as_u64().unwrap() >= 1, "{stats}");
}
