//! The server following a change stream written as RDI's collector writes
//! it: the reference API answers exactly as with the mock, stream entries
//! reach both columns of the live feed, and the demo's mutations answer a
//! clear 409 (the stream is read-only here).

use std::time::Duration;

use app::model::{LiveEvent, WriteOrigin};
use prefetch::testing::TestRedis;
use serde_json::{Value, json};

use crate::common::{TestServer, is_cache};

const SECOND: Duration = Duration::from_secs(1);
/// How long a test waits for something that must happen (generous: CI runs
/// these beside a 1,000,000-row test on two cores).
const WAIT: Duration = Duration::from_secs(10);
const STREAM: &str = "data:shop.public.categories";

/// One entry as RDI writes it: `extended`, JSON without schemas; the row as
/// PostgreSQL types it (a number, a boolean).
fn rdi_entry(op: &str, id: &str, after: Value) -> Vec<(String, String)> {
    let value = json!({
        "before": null,
        "after": after,
        "source": {"connector": "postgresql", "name": "shop", "db": "shop", "schema": "public",
                   "table": "categories", "snapshot": if op == "r" { "true" } else { "false" },
                   "lsn": 24023128, "txId": 771},
        "op": op,
        "ts_ms": 1_732_700_000_000u64,
    });
    vec![
        ("key".into(), json!({ "id": id }).to_string()),
        ("value".into(), value.to_string()),
    ]
}

async fn xadd(redis: &TestRedis, entry: &[(String, String)]) {
    let mut conn = redis.conn().await;
    let mut cmd = redis::cmd("XADD");
    cmd.arg(STREAM).arg("*");
    for (k, v) in entry {
        cmd.arg(k).arg(v);
    }
    let _: String = cmd.query_async(&mut conn).await.unwrap();
}

/// The mock's seed rows, written into the stream as the collector's
/// initial snapshot.
async fn seed(redis: &TestRedis) {
    for r in prefetch::seed_records() {
        let f = r.fields();
        let after = json!({
            "id": f["id"],
            "name": f["name"],
            "display_order": f["display_order"].parse::<i64>().unwrap(),
            "featured": f["featured"] == "true",
            "parent_id": f["parent_id"],
        });
        xadd(redis, &rdi_entry("r", &f["id"], after)).await;
    }
}

#[tokio::test]
async fn a_server_on_an_rdi_stream_answers_like_the_mock_and_stays_live() {
    let redis = TestRedis::start();
    seed(&redis).await;
    let primary = format!("stream:{STREAM}");
    let srv = TestServer::start_on(redis, &["--primary", &primary]).await;
    let mock = TestServer::start().await;

    for path in ["/categories", "/read?id=cat-005", "/read?id=cat-404"] {
        let (s1, mut ours) = srv.get(path).await;
        let (s2, mut m) = mock.get(path).await;
        assert_eq!((s1, s2), (200, 200), "{path}");
        for v in [&mut ours, &mut m] {
            if let Some(o) = v.as_object_mut() {
                o.remove("stats");
                o.remove("redis_latency_ms");
                o.remove("ttl_remaining");
            }
        }
        assert_eq!(ours, m, "{path}");
    }

    let mut feed = srv.events().await;
    feed.next(WAIT).await.expect("snapshot");
    let renamed = json!({"id": "cat-004", "name": "From the stream", "display_order": 4,
                         "featured": false, "parent_id": ""});
    xadd(&srv.redis, &rdi_entry("u", "cat-004", renamed)).await;
    feed.expect(WAIT, "primary update", |e| {
        matches!(e, LiveEvent::Primary { id, fields: Some(f), .. }
            if id == "cat-004" && f["name"] == "From the stream")
    })
    .await;
    feed.expect(WAIT, "cache write", |e| {
        matches!(e, LiveEvent::Cache { id, fields: Some(f), source: WriteOrigin::Sync, .. }
            if id == "cat-004" && f["name"] == "From the stream")
    })
    .await;
    let (_, read) = srv.get("/read?id=cat-004").await;
    assert_eq!(read["record"]["name"], "From the stream");

    // The stream is read-only here: a clear 409, nothing changed.
    for (path, form) in [
        ("/update", "id=cat-001&field=name&value=x"),
        ("/add", "id=cat-100&name=New"),
        ("/delete", "id=cat-001"),
    ] {
        let (status, body) = srv.post(path, form).await;
        assert_eq!(status, 409, "{path}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains(STREAM),
            "{path}: {body}"
        );
    }
    let (_, read) = srv.get("/read?id=cat-001").await;
    assert_eq!(read["record"]["name"], "Beverages");
    srv.stop().await;
    mock.stop().await;
}

#[tokio::test]
async fn a_trimmed_stream_stops_the_server_with_a_clear_error_unless_allowed() {
    let redis = TestRedis::start();
    seed(&redis).await;
    let mut conn = redis.conn().await;
    let _: i64 = redis::cmd("XTRIM")
        .arg(STREAM)
        .arg("MAXLEN")
        .arg(2)
        .query_async(&mut conn)
        .await
        .unwrap();
    let primary = format!("stream:{STREAM}");
    let config = <server::Config as clap::Parser>::try_parse_from([
        "server",
        "--redis-url",
        redis.url.as_str(),
        "--primary",
        primary.as_str(),
    ])
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let Err(e) = server::start(config, Some(listener)).await else {
        panic!("a trimmed stream must not start silently");
    };
    assert!(e.to_string().contains("lost 3 entries"), "{e}");
    assert!(
        e.to_string().contains("--stream-allow-trimmed"),
        "the flag that lifts it: {e}"
    );

    let srv = TestServer::start_on(redis, &["--primary", &primary, "--stream-allow-trimmed"]).await;
    let (_, cats) = srv.get("/categories").await;
    assert_eq!(cats["cache_ids"], json!(["cat-004", "cat-005"]), "{cats}");
    srv.stop().await;
}

#[tokio::test]
async fn dead_letters_are_listed_and_replayed_from_the_api() {
    let redis = TestRedis::start();
    seed(&redis).await;
    let primary = format!("stream:{STREAM}");
    let srv = TestServer::start_on(
        redis,
        &[
            "--primary",
            &primary,
            "--pipeline",
            "dlq",
            "--pipeline-partitions",
            "1",
        ],
    )
    .await;
    let (status, body) = srv.get("/dead-letters").await;
    assert_eq!(
        (status, &body["enabled"], &body["count"]),
        (200, &json!(true), &json!(0)),
        "{body}"
    );

    // A poison entry in the feed lands in the dead letters with its reason.
    let mut conn = srv.redis.conn().await;
    let feed = "prefetch:{dlq}:cdc:p00";
    let _: String = redis::cmd("XADD")
        .arg(feed)
        .arg("*")
        .arg("v")
        .arg("0:1:0")
        .arg("changes")
        .arg("{broken")
        .query_async(&mut conn)
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + 5 * SECOND;
    let body = loop {
        let (_, body) = srv.get("/dead-letters").await;
        if body["count"] == 1 {
            break body;
        }
        assert!(std::time::Instant::now() < deadline, "never buried: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let reason = body["letters"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("not the feed's JSON"), "{reason}");

    // A sound transaction buried after too many deliveries replays cleanly.
    let version = prefetch::Version::new(u64::from(u32::MAX) << 16, 0).to_string();
    let changes = json!([{"id": "cat-001", "op": "u", "v": version,
        "after": {"id": "cat-001", "name": "Replayed", "display_order": "1",
                  "featured": "true", "parent_id": ""}}]);
    let _: String = redis::cmd("XADD")
        .arg("prefetch:{dlq}:dlq")
        .arg("*")
        .arg("__reason")
        .arg("delivered 6 times without being acknowledged")
        .arg("__stream")
        .arg(feed)
        .arg("__id")
        .arg("1-0")
        .arg("v")
        .arg(&version)
        .arg("changes")
        .arg(changes.to_string())
        .query_async(&mut conn)
        .await
        .unwrap();
    let (status, body) = srv.post("/dead-letters/replay", "").await;
    assert_eq!((status, &body["replayed"]), (200, &json!(2)), "{body}");
    let deadline = std::time::Instant::now() + 5 * SECOND;
    loop {
        let (_, read) = srv.get("/read?id=cat-001").await;
        if read["record"]["name"] == "Replayed" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "replay never applied: {read}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The poison comes back to the dead letters; nothing else does.
    let deadline = std::time::Instant::now() + 5 * SECOND;
    loop {
        let (_, body) = srv.get("/dead-letters").await;
        if body["count"] == 1 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    srv.stop().await;

    // Without a pipeline there is nothing to replay: a clear 409.
    let plain = TestServer::start().await;
    let (status, body) = plain.post("/dead-letters/replay", "").await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("--pipeline"),
        "{body}"
    );
    let (_, body) = plain.get("/dead-letters").await;
    assert_eq!(body["enabled"], false);
    plain.stop().await;
}

/// A write as another replica of the pipeline makes it: through the cache
/// core directly, no engine event.
async fn apply_elsewhere(srv: &TestServer, change: prefetch::Change) {
    srv.engine()
        .cache()
        .apply_batch(&[change], None)
        .await
        .unwrap();
}

/// Makes the write `change(attempt)` until the feed reports a row event
/// `want` accepts; an event `wrong` accepts fails at once. A snapshot
/// meanwhile means the write was folded into a resync (a fresh pipeline's
/// first snapshot makes every replica re-prefetch once, at a moment of its
/// own), so the write is made again, as a new one.
async fn until_reported(
    srv: &TestServer,
    feed: &mut crate::common::SseClient,
    what: &str,
    change: impl Fn(u64) -> prefetch::Change,
    want: impl Fn(&LiveEvent) -> bool,
    wrong: impl Fn(&LiveEvent) -> bool,
) {
    for attempt in 0..5 {
        apply_elsewhere(srv, change(attempt)).await;
        let deadline = std::time::Instant::now() + WAIT;
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match feed.next(left).await {
                Some(ev) if want(&ev) => return,
                Some(ev) if wrong(&ev) => panic!("{what}: {ev:?}"),
                Some(LiveEvent::Snapshot(_)) => break,
                Some(_) => continue,
                None => panic!("no {what} event within {WAIT:?}"),
            }
        }
    }
    panic!("{what}: a resync after each of 5 writes");
}

fn elsewhere(attempt: u64) -> prefetch::Change {
    let fields: prefetch::Fields = [
        ("id", "cat-002".to_owned()),
        ("name", format!("Elsewhere {attempt}")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    prefetch::Change::upsert(
        "cat-002",
        fields,
        prefetch::Version::new(u64::MAX - 100 + attempt, 0),
    )
}

/// Writes another replica of a pipeline applied reach this replica only
/// through keyspace notifications; they carry the applier's version (and a
/// delete leaves a tombstone), so the feed labels them as sync. A plain
/// `DEL` from outside stays an outside write.
#[tokio::test]
async fn writes_another_replica_applied_are_labelled_sync() {
    let redis = TestRedis::start();
    seed(&redis).await;
    let primary = format!("stream:{STREAM}");
    let srv = TestServer::start_on(redis, &["--primary", &primary, "--pipeline", "lbl"]).await;
    let mut feed = srv.events().await;
    feed.next(WAIT).await.expect("snapshot");
    until_reported(
        &srv,
        &mut feed,
        "upsert applied elsewhere",
        elsewhere,
        |e| is_cache(e, "cat-002", WriteOrigin::Sync, true),
        |e| is_cache(e, "cat-002", WriteOrigin::External, true),
    )
    .await;
    let gone = ["cat-003", "cat-005", "cat-001", "cat-002", "cat-003"];
    until_reported(
        &srv,
        &mut feed,
        "delete applied elsewhere",
        |a| {
            prefetch::Change::delete(
                gone[a as usize],
                prefetch::Version::new(u64::MAX - 9 + a, 0),
            )
        },
        |e| {
            gone.iter()
                .any(|id| is_cache(e, id, WriteOrigin::Sync, false))
        },
        |e| {
            gone.iter()
                .any(|id| is_cache(e, id, WriteOrigin::External, false))
        },
    )
    .await;
    let mut conn = srv.redis.conn().await;
    let _: i64 = redis::cmd("DEL")
        .arg(format!("{}cat-004", srv.prefix))
        .query_async(&mut conn)
        .await
        .unwrap();
    feed.expect(WAIT, "outside delete", |e| {
        is_cache(e, "cat-004", WriteOrigin::External, false)
    })
    .await;
    srv.stop().await;
}

/// The same label when the hub learns of the write by re-reading rows (by
/// polling here: a Redis that refuses CONFIG gives no keyspace
/// notifications; also when a notification came before the client that
/// shows the row was counted): every path that reports a change tells the
/// applier's writes from an outside one.
#[tokio::test]
async fn writes_another_replica_applied_are_labelled_sync_when_polled_too() {
    let redis = TestRedis::spawn_with(false, &["--rename-command", "CONFIG", ""]);
    seed(&redis).await;
    let primary = format!("stream:{STREAM}");
    let srv = TestServer::start_on(redis, &["--primary", &primary, "--pipeline", "lblp"]).await;
    let mut feed = srv.events().await;
    feed.next(WAIT).await.expect("snapshot");
    until_reported(
        &srv,
        &mut feed,
        "polled upsert applied elsewhere",
        elsewhere,
        |e| is_cache(e, "cat-002", WriteOrigin::Sync, true),
        |e| is_cache(e, "cat-002", WriteOrigin::External, true),
    )
    .await;
    srv.stop().await;
}

#[tokio::test]
async fn a_pipeline_on_a_primary_private_to_one_process_is_refused() {
    let redis = TestRedis::start();
    for primary in ["mock", "postgres"] {
        let config = <server::Config as clap::Parser>::try_parse_from([
            "server",
            "--redis-url",
            redis.url.as_str(),
            "--primary",
            primary,
            "--pipeline",
            "p",
        ])
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let Err(e) = server::start(config, Some(listener)).await else {
            panic!("--pipeline on {primary} must be refused");
        };
        assert!(e.to_string().contains("every replica shares"), "{e}");
    }
}

/// Entries of several tables routed into one stream (Debezium's
/// `ByLogicalTableRouter`), each naming its table in `source`.
fn routed(table: &str, op: &str, key: Value, before: Value, after: Value) -> Vec<(String, String)> {
    let value = json!({
        "before": before, "after": after, "op": op, "ts_ms": 1_732_700_000_000u64,
        "source": {"connector": "postgresql", "name": "shop", "db": "shop", "schema": "public", "table": table},
    });
    vec![
        ("key".into(), key.to_string()),
        ("value".into(), value.to_string()),
    ]
}

async fn xadd_to(redis: &TestRedis, stream: &str, entry: &[(String, String)]) {
    let mut conn = redis.conn().await;
    let mut cmd = redis::cmd("XADD");
    cmd.arg(stream).arg("*");
    for (k, v) in entry {
        cmd.arg(k).arg(v);
    }
    let _: String = cmd.query_async(&mut conn).await.unwrap();
}

#[tokio::test]
async fn one_stream_of_several_tables_is_mapped_by_the_tables_file() {
    const ALL: &str = "shop.all";
    let redis = TestRedis::start();
    for (sku, name) in [("p1", "One"), ("p:2", "Two")] {
        let after = json!({"sku": sku, "name": name, "price": "1.50", "cost": "0.90"});
        xadd_to(
            &redis,
            ALL,
            &routed("products", "r", json!({"sku": sku}), Value::Null, after),
        )
        .await;
    }
    for id in [1, 2] {
        let after = json!({"id": id, "email": format!("u{id}@x"), "password_hash": "secret"});
        xadd_to(
            &redis,
            ALL,
            &routed("users", "r", json!({"id": id}), Value::Null, after),
        )
        .await;
    }
    let orders = json!({"id": 9, "total": 3});
    xadd_to(
        &redis,
        ALL,
        &routed("orders", "r", json!({"id": 9}), Value::Null, orders),
    )
    .await;
    let dir = std::env::temp_dir().join(format!("prefetch-stream-tables-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("tables.toml");
    std::fs::write(
        &file,
        "[[table]]\ntable = \"products\"\nkey = \"product:{sku}\"\ncolumns = [\"sku\", \"name\", \"price\"]\nrename = { name = \"title\" }\nttl_secs = 600\n\n\
         [[table]]\ntable = \"public.users\"\nkey = \"user:{id}\"\ncolumns = [\"id\", \"email\"]\nvalue = \"json\"\n",
    )
    .unwrap();
    let primary = format!("stream:{ALL}");
    let path = file.to_string_lossy().into_owned();
    let srv = TestServer::start_on(redis, &["--primary", &primary, "--config", &path]).await;

    let (_, p) = srv.get("/read?id=product:p%253A2").await;
    assert_eq!(p["hit"], true, "the key template, the value escaped: {p}");
    assert_eq!(p["record"]["title"], "Two", "{p}");
    assert!(
        p["record"].get("cost").is_none() && p["record"].get("name").is_none(),
        "{p}"
    );
    let (_, u) = srv.get("/read?id=user:1").await;
    assert_eq!(u["record"]["email"], "u1@x", "{u}");
    assert!(u["record"].get("password_hash").is_none(), "{u}");
    let mut conn = srv.redis.conn().await;
    let doc: String = redis::cmd("GET")
        .arg("user:1")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        doc, r#"{"email":"u1@x","id":1}"#,
        "a JSON table: the row as typed"
    );
    let ttl: i64 = redis::cmd("TTL")
        .arg("product:p1")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!((590..=600).contains(&ttl), "the table's own TTL: {ttl}");
    let orders: Vec<String> = redis::cmd("KEYS")
        .arg("orders*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        orders.is_empty(),
        "a table the file does not declare: {orders:?}"
    );
    let (_, tables) = srv.get("/tables").await;
    let names: Vec<&str> = tables
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["public.products", "public.users"], "{tables}");

    // Live: an update of one table, then a truncate of the other.
    let after = json!({"id": 2, "email": "new@x", "password_hash": "secret"});
    xadd_to(
        &srv.redis,
        ALL,
        &routed("users", "u", json!({"id": 2}), Value::Null, after),
    )
    .await;
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (_, u) = srv.get("/read?id=user:2").await;
        if u["record"]["email"] == "new@x" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the update never arrived: {u}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    xadd_to(
        &srv.redis,
        ALL,
        &routed(
            "products",
            "t",
            json!({"sku": "x"}),
            Value::Null,
            Value::Null,
        ),
    )
    .await;
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let left: Vec<String> = redis::cmd("KEYS")
            .arg("product:*")
            .query_async(&mut conn)
            .await
            .unwrap();
        if left.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "products still there: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, u) = srv.get("/read?id=user:1").await;
    assert_eq!(
        u["hit"], true,
        "a truncate of products leaves the users: {u}"
    );
    srv.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
