//! The server on a PostgreSQL primary: the reference API answers exactly as
//! with the mock, changes made with SQL reach the live feed, and a server
//! killed with SIGKILL mid-stream converges after a restart with nothing
//! lost and no key ever moving back to an older version.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use app::model::{LiveEvent, WriteOrigin};
use prefetch::Version;
use prefetch::testing::TestRedis;
use serde_json::{Value, json};

use crate::common::{
    TestServer, free_port, postgres_client, postgres_database, sides, spawn_binary_with,
};

/// How long a test waits for something that must happen (generous: CI runs
/// these beside a 1,000,000-row test on two cores).
const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn the_reference_api_answers_exactly_as_with_the_mock() {
    let url = postgres_database("api").await;
    let srv = TestServer::start_on(TestRedis::start(), &["--primary", &url]).await;
    let mock = TestServer::start().await;

    // Same reads, field for field, from both primaries.
    for path in ["/categories", "/read?id=cat-005", "/read?id=cat-404"] {
        let (s1, mut pg) = srv.get(path).await;
        let (s2, mut m) = mock.get(path).await;
        assert_eq!((s1, s2), (200, 200), "{path}");
        for v in [&mut pg, &mut m] {
            if let Some(o) = v.as_object_mut() {
                o.remove("stats");
                o.remove("redis_latency_ms");
                o.remove("ttl_remaining");
            }
        }
        assert_eq!(pg, m, "{path}");
    }
    let (_, read) = srv.get("/read?id=cat-001").await;
    assert_eq!(read["record"]["featured"], "true", "booleans as true/false");

    // Mutations are SQL, with the same answers and errors.
    let (status, body) = srv
        .post("/update", "id=cat-002&field=name&value=Bread")
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["value"], "Bread");
    let (status, body) = srv
        .post("/update", "id=cat-002&field=display_order&value=ten")
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = srv
        .post("/update", "id=cat-002&field=colour&value=red")
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("unknown column"));
    let (status, _) = srv.post("/update", "id=cat-404&field=name&value=x").await;
    assert_eq!(status, 404);
    let (status, body) = srv.post("/add", "id=cat-006&name=Seasonal").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["record"],
        json!({"id": "cat-006", "name": "Seasonal", "display_order": "99", "featured": "false", "parent_id": ""})
    );
    let (status, _) = srv.post("/add", "id=cat-006&name=Again").await;
    assert_eq!(status, 409);
    let (status, _) = srv.post("/delete", "id=cat-003").await;
    assert_eq!(status, 200);
    let (status, _) = srv.post("/delete", "id=cat-003").await;
    assert_eq!(status, 404);

    // The worker carries it all into Redis.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, state) = srv.get("/state").await;
        let (primary, cache) = sides(&state);
        if primary == cache {
            assert_eq!(primary.len(), 5);
            break;
        }
        assert!(Instant::now() < deadline, "cache never matched the table");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, stats) = srv.get("/stats").await;
    assert_eq!(stats["primary_reads_total"], 1, "one snapshot read");
    let (_, state) = srv.get("/state").await;
    assert_eq!(state["source"]["kind"], "postgres");
    let details: Vec<&str> = state["source"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d[0].as_str())
        .collect();
    assert!(
        details.contains(&"PostgreSQL") && details.contains(&"slot"),
        "{details:?}"
    );
}

#[tokio::test]
async fn a_change_made_with_sql_reaches_both_columns_of_the_live_feed_within_a_second() {
    let url = postgres_database("feed").await;
    let srv = TestServer::start_on(TestRedis::start(), &["--primary", &url]).await;
    let mut feed = srv.events().await;
    feed.next(WAIT).await.expect("snapshot");
    let sql = postgres_client(&url).await;
    sql.batch_execute(
        "BEGIN; UPDATE categories SET name = 'From psql' WHERE id = 'cat-004'; \
         INSERT INTO categories (id, name) VALUES ('cat-077', 'Outside'); COMMIT",
    )
    .await
    .unwrap();
    feed.expect(WAIT, "primary update", |e| {
        matches!(e, LiveEvent::Primary { id, fields: Some(f), .. } if id == "cat-004" && f["name"] == "From psql")
    })
    .await;
    feed.expect(WAIT, "cache write", |e| {
        matches!(e, LiveEvent::Cache { id, fields: Some(f), source: WriteOrigin::Sync, .. }
            if id == "cat-077" && f["name"] == "Outside")
    })
    .await;
    sql.batch_execute("TRUNCATE categories").await.unwrap();
    feed.expect(
        WAIT,
        "truncate",
        |e| matches!(e, LiveEvent::Primary { op, .. } if op.as_str() == "truncate"),
    )
    .await;
    feed.expect(WAIT, "cache emptied", |e| {
        matches!(
            e,
            LiveEvent::Cache { fields: None, .. } | LiveEvent::Snapshot(_)
        )
    })
    .await;
}

#[tokio::test]
async fn a_bulk_change_reaches_clients_as_a_snapshot_and_is_never_called_external() {
    // 300 rows in one transaction: more than an event carries row by row,
    // so the hub re-reads the clients' rows; the worker's own writes must
    // not be reported as changes made outside the app meanwhile.
    let url = postgres_database("bulk").await;
    let srv = TestServer::start_on(TestRedis::start(), &["--primary", &url]).await;
    let mut feed = srv.events().await;
    feed.next(WAIT).await.expect("snapshot");
    let sql = postgres_client(&url).await;
    sql.batch_execute(
        "INSERT INTO categories (id, name) \
         SELECT 'bulk-' || lpad(g::text, 3, '0'), 'Bulk ' || g FROM generate_series(1, 300) g",
    )
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut shown = 0;
    while shown < 305 {
        let left = deadline.saturating_duration_since(Instant::now());
        match feed.next(left).await.expect("a snapshot with every row") {
            LiveEvent::Cache {
                id,
                source: WriteOrigin::External,
                ..
            } => panic!("the worker's write of {id} was reported as external"),
            LiveEvent::Snapshot(state) => shown = state.cache.len(),
            _ => {}
        }
    }
    // And for 1.5 s after (stats events keep coming: bounded by time).
    let until = Instant::now() + Duration::from_millis(1500);
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        let Some(ev) = feed.next(left).await else {
            break;
        };
        assert!(
            !matches!(
                ev,
                LiveEvent::Cache {
                    source: WriteOrigin::External,
                    ..
                }
            ),
            "{ev:?}"
        );
    }
}

/// Every record's version, straight from Redis.
async fn versions(conn: &prefetch::Redis, prefix: &str) -> HashMap<String, Version> {
    use prefetch::Connection;
    let mut keys: Vec<String> = Vec::new();
    for mut node in conn.primaries().await.unwrap_or_default() {
        let found: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}*"))
            .query_async(&mut node)
            .await
            .unwrap_or_default();
        keys.extend(found);
    }
    let mut out = HashMap::new();
    for key in keys {
        let v: Option<String> = redis::cmd("HGET")
            .arg(&key)
            .arg("__v")
            .query_async(&mut conn.clone())
            .await
            .unwrap_or(None);
        if let Some(v) = v.and_then(|v| v.parse().ok()) {
            out.insert(key, v);
        }
    }
    out
}

/// Until `stop`, checks every 20 ms that no key under `prefix` moved back
/// to an older version (on every primary of a cluster); returns how many
/// checks it made.
pub(crate) fn watch_versions(
    conn: prefetch::Redis,
    prefix: &'static str,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut seen: HashMap<String, Version> = HashMap::new();
        let mut checks = 0;
        while !stop.load(Ordering::Relaxed) {
            for (key, v) in versions(&conn, prefix).await {
                if let Some(before) = seen.insert(key.clone(), v) {
                    assert!(v >= before, "{key} moved back from {before} to {v}");
                }
            }
            checks += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        checks
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_killed_mid_stream_restarts_and_converges_with_no_key_moving_back() {
    let url = postgres_database("kill9").await;
    let redis = TestRedis::spawn_own(true);
    let flags = ["--primary", url.as_str(), "--cache-prefix", "kill9:"];
    let port = free_port();
    let mut server = spawn_binary_with(&redis.url, port, &flags);

    // Writers keep changing rows; a watcher checks versions never go back.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (url, stop) = (url.clone(), stop.clone());
        tokio::spawn(async move {
            let sql = postgres_client(&url).await;
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let id = format!("k-{:02}", n % 40);
                sql.execute(
                    "INSERT INTO categories (id, name) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET name = excluded.name",
                    &[&id, &format!("v{n}")],
                )
                .await
                .unwrap();
                if n.is_multiple_of(7) {
                    sql.execute("DELETE FROM categories WHERE id = $1", &[&id])
                        .await
                        .unwrap();
                }
            }
            n
        })
    };
    let watcher = watch_versions(redis.redis().await, "kill9:", stop.clone());
    tokio::time::sleep(Duration::from_millis(700)).await;
    server.kill().unwrap(); // SIGKILL
    server.wait().unwrap();
    // Changes while the server is down wait in the replication slot.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut server = spawn_binary_with(&redis.url, port, &flags);
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::Relaxed);
    let writes = writer.await.unwrap();
    assert!(writes > 50, "{writes} writes");
    assert!(watcher.await.unwrap() > 10);

    // Converged: the table and the cache are equal.
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let res = http
            .get(format!("http://127.0.0.1:{port}/state"))
            .send()
            .await
            .unwrap();
        let (_, state): (u16, Value) = crate::common::json_of(res).await;
        let (primary, cache) = sides(&state);
        if primary == cache {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never converged after the restart"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    crate::common::sigterm(server.id());
    let _ = server.wait();
}

/// `name` of `key` in Redis.
async fn cached_name(conn: &mut prefetch::Redis, key: &str) -> Option<String> {
    redis::cmd("HGET")
        .arg(key)
        .arg("name")
        .query_async(conn)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_transaction_cut_by_kill_9_is_sent_again_whole_and_converges() {
    // 200,000 changes in one transaction reach the worker in parts of
    // 4,096; the server is killed after the first parts are in Redis and
    // before the last. The slot must not have moved past the transaction:
    // after the restart every row is there, and no key ever went back.
    const ROWS: i64 = 200_000;
    let url = postgres_database("bigtx").await;
    let sql = postgres_client(&url).await;
    sql.batch_execute(&format!(
        "CREATE TABLE items (id bigint PRIMARY KEY, name text NOT NULL); \
         INSERT INTO items SELECT g, 'Item ' || g FROM generate_series(1, {ROWS}) g;"
    ))
    .await
    .unwrap();
    let redis = TestRedis::spawn_own(true);
    let flags = [
        "--primary",
        url.as_str(),
        "--pg-table",
        "items",
        "--cache-prefix",
        "bigtx:",
    ];
    let port = free_port();
    let mut server = spawn_binary_with(&redis.url, port, &flags);
    let mut conn = redis.redis().await;

    sql.batch_execute("UPDATE items SET name = name || ' v2'")
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while cached_name(&mut conn, "bigtx:1").await.as_deref() != Some("Item 1 v2") {
        assert!(Instant::now() < deadline, "the first part never arrived");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    server.kill().unwrap(); // SIGKILL
    server.wait().unwrap();
    let last = format!("bigtx:{ROWS}");
    assert_eq!(
        cached_name(&mut conn, &last).await,
        Some(format!("Item {ROWS}")),
        "killed too late: the whole transaction was already in Redis"
    );

    let mut server = spawn_binary_with(&redis.url, port, &flags);
    let want = format!("Item {ROWS} v2");
    let deadline = Instant::now() + Duration::from_secs(120);
    while cached_name(&mut conn, &last).await.as_deref() != Some(want.as_str()) {
        assert!(Instant::now() < deadline, "the rest never arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Resumed from the slot: the rest of the transaction came again from
    // PostgreSQL, nothing was loaded (a slot that had moved past it would
    // have needed a fresh snapshot).
    let http = reqwest::Client::new();
    let res = http
        .get(format!("http://127.0.0.1:{port}/stats"))
        .send()
        .await
        .unwrap();
    let (_, stats) = crate::common::json_of(res).await;
    assert_eq!(stats["prefetched"], 0, "{stats}");
    // Every row, checked in Redis against the table.
    let res = http
        .post(format!("http://127.0.0.1:{port}/reconcile"))
        .send()
        .await
        .unwrap();
    let (status, report) = crate::common::json_of(res).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["verified"], ROWS, "{report}");
    let totals = report["totals"].as_object().unwrap();
    assert!(totals.values().all(|v| v == 0), "{report}");
    crate::common::sigterm(server.id());
    let _ = server.wait();
}
