//! The server with a tables file (`--config`): the shipped example on a
//! real PostgreSQL, read through the reference API; a file the database
//! cannot serve refused at start with its line.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use app::model::{LiveEvent, WriteOrigin};
use prefetch::testing::TestRedis;
use serde_json::Value;

use crate::common::{
    TestServer, free_port, is_cache, postgres_client, postgres_database, spawn_binary_with,
};

const WAIT: Duration = Duration::from_secs(10);

pub(crate) fn example(file: &str) -> String {
    format!("{}/../examples/shop/{file}", env!("CARGO_MANIFEST_DIR"))
}

/// Reads `id` until `done` says yes (at most 10 s).
async fn read_until(srv: &TestServer, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = srv.get(&format!("/read?id={id}")).await;
        assert_eq!(status, 200, "{body}");
        if done(&body) || Instant::now() > deadline {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_shipped_example_is_served_under_its_template_without_what_it_leaves_out() {
    let url = postgres_database("shop").await;
    let schema = example("schema.sql");
    let sql = postgres_client(&url).await;
    sql.batch_execute(&std::fs::read_to_string(&schema).unwrap())
        .await
        .unwrap();
    let tables = example("tables.toml");
    let srv = TestServer::start_on(
        TestRedis::start(),
        &["--primary", &url, "--config", &tables],
    )
    .await;
    let mut redis = srv.redis.conn().await;
    let title: Option<String> = redis::cmd("HGET")
        .arg("product:SKU-00001")
        .arg("title")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(title.as_deref(), Some("Product 1"), "keyed by the template");

    // Three tables in one key space: ids are whole keys.
    let (_, read) = srv.get("/read?id=product:SKU-00001").await;
    assert_eq!(read["hit"], true, "{read}");
    let record = read["record"].as_object().unwrap();
    assert_eq!(record["title"], "Product 1");
    assert_eq!(record["tags"], "{odd}");
    assert!(
        !record.contains_key("cost") && !record.contains_key("name"),
        "{read}"
    );
    let (_, inactive) = srv.get("/read?id=product:SKU-00010").await;
    assert_eq!(inactive["hit"], false, "filtered out: {inactive}");
    let (_, customer) = srv.get("/read?id=customer:7").await;
    assert_eq!(
        customer["record"]["email"], "customer7@example.com",
        "{customer}"
    );
    assert!(
        customer["record"].get("password_hash").is_none(),
        "{customer}"
    );
    // Customers keep their own TTL (`ttl_secs = 600`), the others the
    // server's.
    let ttl = |key: &'static str| {
        let mut redis = redis.clone();
        async move {
            redis::cmd("TTL")
                .arg(key)
                .query_async::<i64>(&mut redis)
                .await
                .unwrap()
        }
    };
    assert!((590..=600).contains(&ttl("customer:7").await));
    assert!(ttl("product:SKU-00001").await > 3000);
    // Order lines are JSON documents: GET answers the typed row.
    let (_, line) = srv.get("/read?id=line:12:3").await;
    assert_eq!(line["hit"], true, "{line}");
    let doc: String = redis::cmd("GET")
        .arg("line:12:3")
        .query_async(&mut redis)
        .await
        .unwrap();
    let doc: Value = serde_json::from_str(&doc).unwrap();
    assert_eq!(doc["quantity"], 4, "{doc}");
    assert_eq!(doc["sku"], "SKU-00088", "{doc}");

    // The dashboard's view: the table's own fields, every row in sync.
    let mut feed = srv.events().await;
    let Some(LiveEvent::Snapshot(state)) = feed.next(WAIT).await else {
        panic!("first event must be a snapshot");
    };
    assert_eq!(state.columns, ["sku", "title", "price", "active", "tags"]);
    let named: Vec<&str> = state
        .primary
        .iter()
        .filter_map(|f| f.get("id").map(String::as_str))
        .collect();
    assert_eq!(named.len(), 900, "every active product, named by its key");
    assert!(named.contains(&"product:SKU-00001") && !named.contains(&"product:SKU-00010"));
    assert!(
        state.cache.iter().all(|e| e.id.starts_with("product:")),
        "the dashboard shows the first table only"
    );

    // psql moves a row out of the filter and another into it.
    sql.batch_execute(
        "UPDATE products SET active = false WHERE sku = 'SKU-00001';
         BEGIN;
         UPDATE products SET active = true, name = 'Back' WHERE sku = 'SKU-00010';
         UPDATE customers SET email = 'new@example.com' WHERE id = 7;
         COMMIT;",
    )
    .await
    .unwrap();
    let gone = read_until(&srv, "product:SKU-00001", |b| b["hit"] == false).await;
    assert_eq!(gone["hit"], false, "{gone}");
    let back = read_until(&srv, "product:SKU-00010", |b| b["hit"] == true).await;
    assert_eq!(back["record"]["title"], "Back", "{back}");
    let (_, customer) = srv.get("/read?id=customer:7").await;
    assert_eq!(customer["record"]["email"], "new@example.com", "{customer}");
    let after: i64 = redis::cmd("TTL")
        .arg("customer:7")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(
        (590..=600).contains(&after),
        "a live write keeps the table's TTL: {after}"
    );
    // On the live feed in commit order.
    feed.expect(WAIT, "the row filtered out, live", |e| {
        is_cache(e, "product:SKU-00001", WriteOrigin::Sync, false)
    })
    .await;
    feed.expect(WAIT, "the row filtered in, live", |e| {
        is_cache(e, "product:SKU-00010", WriteOrigin::Sync, true)
    })
    .await;

    // `GET /tables`: each table, its key template and keys in Redis.
    let (status, tables) = srv.get("/tables").await;
    assert_eq!(status, 200, "{tables}");
    let listed: Vec<(&str, &str, u64)> = tables
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let json = t["name"] == "public.order_lines";
            assert_eq!(t["value"], if json { "json" } else { "hash" }, "{t}");
            assert_eq!(t["rows_exact"], true);
            assert_eq!(t["state"], "running");
            assert!(t["last_snapshot_ms"].as_u64().is_some(), "{t}");
            (
                t["name"].as_str().unwrap(),
                t["key"].as_str().unwrap(),
                t["rows"].as_u64().unwrap(),
            )
        })
        .collect();
    let sql_count = |q: &'static str| {
        let sql = &sql;
        async move {
            sql.query_one(q, &[])
                .await
                .unwrap()
                .get::<_, i64>(0)
                .unsigned_abs()
        }
    };
    assert_eq!(
        listed,
        [
            (
                "public.products",
                "product:{sku}",
                sql_count("SELECT count(*) FROM products WHERE active").await
            ),
            ("public.customers", "customer:{id}", 200),
            ("public.order_lines", "line:{order_id}:{line_no}", 900),
        ]
    );

    for t in tables.as_array().unwrap() {
        let mut keys: Vec<&str> = t.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "applied",
                "hits",
                "key",
                "lag_ms",
                "last_snapshot_ms",
                "misses",
                "name",
                "rows",
                "rows_exact",
                "state",
                "value"
            ],
            "/tables never lists rows"
        );
    }

    // Reads and changes are counted per table: the order lines were read
    // once (a hit) and not changed, the customers read twice and changed
    // once, the products read, missed and changed.
    let counts = |name: &str| {
        let t = tables
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == name)
            .unwrap();
        (
            t["hits"].as_u64().unwrap(),
            t["misses"].as_u64().unwrap(),
            t["applied"].as_u64().unwrap(),
        )
    };
    assert_eq!(counts("public.order_lines"), (1, 0, 0), "{tables}");
    assert_eq!(counts("public.customers"), (2, 0, 1), "{tables}");
    let (hits, misses, applied) = counts("public.products");
    assert!(hits >= 2 && misses >= 1 && applied == 2, "{tables}");
    let (_, stats) = srv.get("/stats").await;
    let named: Vec<&str> = stats["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        named,
        ["public.products", "public.customers", "public.order_lines"],
        "{stats}"
    );
    assert_eq!(stats["tables"][2]["hits"], 1, "{stats}");
    let metrics = reqwest::get(srv.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "prefetch_table_cache_hits_total{table=\"public.order_lines\"} 1",
        "prefetch_table_cache_misses_total{table=\"public.customers\"} 0",
        "prefetch_table_sync_events_applied_total{table=\"public.customers\"} 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} not in\n{metrics}"
        );
    }

    // Each table has a view of its own, paged, with its own fields.
    let mut seen = std::collections::BTreeSet::new();
    let mut path = "/state?table=public.customers".to_owned();
    for pages in 0.. {
        assert!(pages < 20, "paging never ended");
        let (status, view) = srv.get(&path).await;
        assert_eq!(status, 200, "{view}");
        assert_eq!(view["table"], "public.customers");
        assert_eq!(view["tables"].as_array().unwrap().len(), 3);
        assert_eq!(view["columns"], serde_json::json!(["name", "email"]));
        let page = &view["page"];
        assert_eq!(page["table"], "public.customers", "{page}");
        for entry in view["cache"].as_array().unwrap() {
            let id = entry["id"].as_str().unwrap();
            assert!(id.starts_with("customer:"), "{id}");
            seen.insert(id.to_owned());
        }
        for row in view["primary"].as_array().unwrap() {
            assert!(
                row["id"].as_str().unwrap().starts_with("customer:"),
                "{row}"
            );
        }
        match page["next"].as_str() {
            Some(next) => path = format!("/state?table=public.customers&cursor={next}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), 200, "every customer, once, over the pages");
    let page = reqwest::get(srv.url("/?table=public.order_lines"))
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(
        html.contains(r#"data-table="public.order_lines""#)
            && html.contains(r#"aria-current="page""#),
        "the picker marks the table shown"
    );
    let (status, body) = srv.get("/state?table=public.nope").await;
    assert_eq!(status, 400, "{body}");

    // A client of another table's view is told of that table's changes.
    let mut customers =
        crate::common::SseClient::connect(&srv.url("/events?table=public.customers")).await;
    let Some(LiveEvent::Snapshot(state)) = customers.next(WAIT).await else {
        panic!("first event must be a snapshot");
    };
    let shown = state.cache[0].id.clone();
    let n: i64 = shown.trim_start_matches("customer:").parse().unwrap();
    sql.execute("UPDATE customers SET name = 'Renamed' WHERE id = $1", &[&n])
        .await
        .unwrap();
    customers
        .expect(WAIT, "the shown customer's change", |e| {
            matches!(e, LiveEvent::Cache { id, fields: Some(f), .. } if *id == shown && f["name"] == "Renamed")
        })
        .await;

    // One table snapshotted again, the others streaming on: a lost key
    // comes back, an orphan goes.
    let _: () = redis::pipe()
        .cmd("DEL")
        .arg("customer:9")
        .cmd("HSET")
        .arg("customer:9999")
        .arg("name")
        .arg("orphan")
        .query_async(&mut redis)
        .await
        .unwrap();
    let (status, body) = srv.post("/tables/public.customers/resnapshot", "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["table"], "public.customers");
    // 200 rows, but the key Redis reported gone may be back first: the
    // restorer reads it from PostgreSQL 100 ms after the DEL, at a
    // position newer than the snapshot's, which then leaves it be.
    let loaded = body["loaded"].as_u64().unwrap_or_default();
    assert!((199..=200).contains(&loaded), "{body}");
    assert_eq!(body["swept"], 1, "{body}");
    let (_, back) = srv.get("/read?id=customer:9").await;
    assert_eq!(back["hit"], true, "{back}");
    let (_, orphan) = srv.get("/read?id=customer:9999").await;
    assert_eq!(orphan["hit"], false, "{orphan}");
    let (status, body) = srv.post("/tables/public.nope/resnapshot", "").await;
    assert_eq!(status, 404, "{body}");

    // The table is edited in PostgreSQL, not through the demo's API.
    let (status, body) = srv
        .post("/update", "id=product:SKU-00002&field=title&value=x")
        .await;
    assert!((400..500).contains(&status), "{status} {body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("PostgreSQL"),
        "{body}"
    );
    srv.stop().await;
}

#[tokio::test]
async fn a_tables_file_the_database_cannot_serve_stops_the_start_with_its_line() {
    let url = postgres_database("shop_bad").await;
    let sql = postgres_client(&url).await;
    sql.batch_execute(&std::fs::read_to_string(example("schema.sql")).unwrap())
        .await
        .unwrap();
    let dir = std::env::temp_dir().join(format!("prefetch-tables-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.toml");
    std::fs::write(
        &file,
        "# a comment\n[[table]]\ntable = \"products\"\nkey = \"product:{sku}\"\nfilter = \"price > 'x'\"\n",
    )
    .unwrap();
    let path = file.to_string_lossy().into_owned();
    let redis = TestRedis::start();
    let config = <server::Config as clap::Parser>::try_parse_from([
        "server",
        "--redis-url",
        redis.url.as_str(),
        "--primary",
        &url,
        "--config",
        &path,
    ])
    .unwrap();
    let err = match server::start(config, None).await {
        Ok(_) => panic!("a filter PostgreSQL rejects must stop the start"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains(&format!("{path}:2: ")), "{err}");
    assert!(err.contains("invalid input syntax"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// What Redis must hold for the example's three tables, computed from
/// them with the mapping written out by hand.
pub(crate) async fn example_expected(
    sql: &tokio_postgres::Client,
) -> BTreeMap<String, prefetch::Fields> {
    let mut out = BTreeMap::new();
    let queries = [
        (
            "SELECT 'product:' || sku, sku, name, price::text, active::text, tags::text FROM products WHERE active",
            &["sku", "title", "price", "active", "tags"][..],
        ),
        (
            "SELECT 'customer:' || id, id::text, name, email FROM customers",
            &["id", "name", "email"][..],
        ),
    ];
    for (query, fields) in queries {
        for row in sql.query(query, &[]).await.unwrap() {
            let f = fields
                .iter()
                .enumerate()
                .map(|(i, name)| ((*name).to_owned(), row.get::<_, String>(i + 1)))
                .collect();
            out.insert(row.get(0), f);
        }
    }
    // Order lines are JSON documents, their numbers numbers.
    let lines = "SELECT order_id, line_no, customer, sku, quantity FROM order_lines";
    for row in sql.query(lines, &[]).await.unwrap() {
        let (order, line): (i64, i32) = (row.get(0), row.get(1));
        let doc = serde_json::json!({
            "order_id": order, "line_no": line, "customer": row.get::<_, i64>(2),
            "sku": row.get::<_, String>(3), "quantity": row.get::<_, i32>(4),
        });
        let f = [(prefetch::JSON_FIELD.to_owned(), doc.to_string())].into();
        out.insert(format!("line:{order}:{line}"), f);
    }
    out
}

/// Every key of the example's tables in Redis, with its fields.
pub(crate) async fn example_in_redis(redis: &TestRedis) -> BTreeMap<String, prefetch::Fields> {
    let mut conn = redis.conn().await;
    let mut out = BTreeMap::new();
    for prefix in ["product:", "customer:", "line:"] {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}*"))
            .query_async(&mut conn)
            .await
            .unwrap();
        for key in keys {
            let kind: String = redis::cmd("TYPE")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .unwrap();
            if kind == "string" {
                let doc: String = redis::cmd("GET")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                out.insert(key, [(prefetch::JSON_FIELD.to_owned(), doc)].into());
                continue;
            }
            let fields: prefetch::Fields = redis::cmd("HGETALL")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .unwrap();
            let fields: prefetch::Fields = fields
                .into_iter()
                .filter(|(f, _)| !f.starts_with("__"))
                .collect();
            if !fields.is_empty() {
                out.insert(key, fields);
            }
        }
    }
    out
}

/// kill -9 of the server while every table changes, more changes while it
/// is down: after the restart Redis holds exactly the three tables.
#[tokio::test]
async fn three_tables_converge_after_kill_9_mid_stream() {
    let url = postgres_database("shop_kill").await;
    let sql = postgres_client(&url).await;
    sql.batch_execute(&std::fs::read_to_string(example("schema.sql")).unwrap())
        .await
        .unwrap();
    let redis = TestRedis::spawn_own(true);
    let tables = example("tables.toml");
    let flags = ["--primary", url.as_str(), "--config", tables.as_str()];
    let port = free_port();
    let mut server = spawn_binary_with(&redis.url, port, &flags);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (url, stop) = (url.clone(), stop.clone());
        tokio::spawn(async move {
            let sql = postgres_client(&url).await;
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let (sku, customer, order) = (1 + n % 50, 1 + n % 20, 1 + n % 30);
                sql.batch_execute(&format!(
                    "BEGIN;
                     UPDATE products SET price = {n}, active = {active} WHERE sku = 'SKU-{sku:05}';
                     UPDATE customers SET email = 'c{n}@example.com' WHERE id = {customer};
                     UPDATE order_lines SET quantity = {n} WHERE order_id = {order} AND line_no = 1;
                     DELETE FROM order_lines WHERE order_id = {order} AND line_no = 3;
                     INSERT INTO order_lines VALUES ({order}, 3, {customer}, 'SKU-{sku:05}', 1)
                         ON CONFLICT (order_id, line_no) DO UPDATE SET quantity = {n};
                     COMMIT;",
                    active = !n.is_multiple_of(3)
                ))
                .await
                .unwrap();
            }
            n
        })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    server.kill().unwrap(); // SIGKILL
    server.wait().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut server = spawn_binary_with(&redis.url, port, &flags);
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::Relaxed);
    let writes = writer.await.unwrap();
    assert!(writes > 20, "{writes} transactions");
    let want = example_expected(&sql).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = example_in_redis(&redis).await;
        if got == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never converged: {} keys in Redis, {} rows; first difference {:?}",
            got.len(),
            want.len(),
            want.iter().find(|(k, v)| got.get(*k) != Some(v))
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    crate::common::sigterm(server.id());
    let _ = server.wait();
}
