//! A table declared in a tables file: its key template, columns, names and
//! row filter, against a real PostgreSQL and a real Redis. What the file
//! leaves out never leaves the database; a row crossing the filter leaves
//! or enters the cache; hostile key values cannot forge keys.

use std::collections::BTreeMap;
use std::time::Duration;

use prefetch::testing::{TestRedis, engine_config};
use prefetch::{Engine, EventBus, Fields};
use prefetch_pg::tables::TablesFile;
use prefetch_pg::{PgConfig, PgError, PgSource};
use tokio_postgres::Client;

use crate::{PgEngine, assert_mirrors, caught_up, connect, database};

const LINES: &str = r#"
[[table]]
table    = "order_lines"
key      = "line:{order_id}:{line_no}"
columns  = ["order_id", "line_no", "sku", "qty", "active"]
rename   = { qty = "quantity" }
filter   = "active"
"#;

/// Order lines: a composite key, a cost and a note that must never reach
/// Redis, and an `active` flag the filter reads (so the replica identity is
/// an index over the key and the flag, as PostgreSQL requires).
pub(crate) const SCHEMA: &str = "
    CREATE TABLE order_lines (
        order_id text NOT NULL, line_no integer NOT NULL,
        sku text, qty integer, cost numeric, note text,
        active boolean NOT NULL DEFAULT true,
        PRIMARY KEY (order_id, line_no));
    CREATE UNIQUE INDEX order_lines_ident ON order_lines (order_id, line_no, active);
    ALTER TABLE order_lines REPLICA IDENTITY USING INDEX order_lines_ident;
    INSERT INTO order_lines VALUES
        ('o1', 1, 'sku-1', 2, 9.99, 'secret-note-1', true),
        ('o1', 2, 'sku-2', 1, 5.00, 'secret-note-2', false),
        ('a:b', 1, 'sku-3', 7, 1.00, 'secret-note-3', true),
        ('{x} %3A', 3, 'sku-4', 4, 2.00, 'secret-note-4', true);";

fn config(url: &str, file: &str) -> PgConfig {
    let spec = TablesFile::parse("tables.toml", file)
        .unwrap()
        .tables
        .remove(0);
    let mut config = PgConfig::new(url, &spec.table);
    config.create_demo_table = false;
    config.heartbeat = Duration::from_millis(200);
    config.tables = vec![spec];
    config
}

async fn declared_engine(redis: &TestRedis, url: &str, file: &str, prefix: &str) -> PgEngine {
    let events = EventBus::default();
    let source = PgSource::connect(config(url, file), events.clone())
        .await
        .expect("source connects");
    let mut engine_config = engine_config("declared");
    engine_config.cache.prefix = prefix.to_owned();
    Engine::start(redis.conn().await, source, events, engine_config)
        .await
        .expect("engine starts")
        .0
}

/// Every key in Redis under `prefix`, with its fields (metadata left out).
async fn redis_rows(redis: &TestRedis, prefix: &str) -> BTreeMap<String, Fields> {
    let mut conn = redis.conn().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut out = BTreeMap::new();
    for key in keys {
        let fields = row_of(&mut conn, &key).await;
        if !fields.is_empty() {
            out.insert(key, fields);
        }
    }
    out
}

/// The fields of the hash at `key`, the cache's metadata left out; a JSON
/// record as its one field `$`.
async fn row_of(conn: &mut impl redis::aio::ConnectionLike, key: &str) -> Fields {
    let kind: String = redis::cmd("TYPE").arg(key).query_async(conn).await.unwrap();
    if kind == "string" {
        let doc: String = redis::cmd("GET").arg(key).query_async(conn).await.unwrap();
        return [(prefetch::JSON_FIELD.to_owned(), doc)].into();
    }
    let fields: Fields = redis::cmd("HGETALL")
        .arg(key)
        .query_async(conn)
        .await
        .unwrap();
    fields
        .into_iter()
        .filter(|(f, _)| !f.starts_with("__"))
        .collect()
}

/// What Redis must hold, computed from the table with the mapping written
/// out by hand (the keys' escapes included).
async fn expected(sql: &Client) -> BTreeMap<String, Fields> {
    let rows = sql
        .query(
            "SELECT order_id, line_no::text, sku, qty::text, active::text FROM order_lines WHERE active",
            &[],
        )
        .await
        .unwrap();
    rows.iter()
        .map(|r| {
            let order: String = r.get(0);
            let escaped = order
                .replace('%', "%25")
                .replace(':', "%3A")
                .replace('{', "%7B")
                .replace('}', "%7D")
                .replace(' ', "%20");
            let line: String = r.get(1);
            let mut fields = Fields::new();
            fields.insert("order_id".into(), order.clone());
            fields.insert("line_no".into(), line.clone());
            for (i, name) in [(2, "sku"), (3, "quantity"), (4, "active")] {
                if let Some(v) = r.get::<_, Option<String>>(i) {
                    fields.insert(name.into(), v);
                }
            }
            (format!("line:{escaped}:{line}"), fields)
        })
        .collect()
}

#[tokio::test]
async fn a_declared_table_holds_its_columns_and_rows_under_its_template_and_follows_the_filter() {
    let url = database("declared").await;
    let sql = connect(&url).await;
    sql.batch_execute(SCHEMA).await.unwrap();
    let redis = TestRedis::start();
    let engine = declared_engine(&redis, &url, LINES, "line:").await;
    assert_eq!(redis_rows(&redis, "line:").await, expected(&sql).await);
    assert!(
        redis_rows(&redis, "line:").await["line:%7Bx%7D%20%253A:3"].contains_key("quantity"),
        "a hostile key value is escaped, the renamed column present"
    );

    // Across the filter both ways, a hostile insert, a change to a column
    // the file leaves out, a delete, and a key change.
    sql.batch_execute(
        "UPDATE order_lines SET active = false WHERE order_id = 'o1' AND line_no = 1;
         UPDATE order_lines SET active = true WHERE order_id = 'o1' AND line_no = 2;
         INSERT INTO order_lines VALUES ('line:o9:1', 1, 'forged', 1, 1, 'secret-note-5', true);
         UPDATE order_lines SET cost = 123.45, note = 'secret-note-6' WHERE order_id = 'a:b';
         DELETE FROM order_lines WHERE order_id = '{x} %3A';
         UPDATE order_lines SET line_no = 5 WHERE order_id = 'a:b';",
    )
    .await
    .unwrap();
    caught_up(&engine, &sql).await;
    let rows = redis_rows(&redis, "line:").await;
    assert_eq!(rows, expected(&sql).await);
    assert!(
        !rows.contains_key("line:o1:1"),
        "filtered out: its key is gone"
    );
    assert!(
        rows.contains_key("line:o1:2"),
        "filtered in: its key is there"
    );
    assert!(rows.contains_key("line:line%3Ao9%3A1:1"));
    assert!(!rows.contains_key("line:a%3Ab:1") && rows.contains_key("line:a%3Ab:5"));
    // Nothing the file leaves out is anywhere in Redis.
    let mut conn = redis.conn().await;
    let all: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .unwrap();
    for key in all {
        let kind: String = redis::cmd("TYPE")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        if kind != "hash" {
            continue;
        }
        let fields: Vec<String> = redis::cmd("HGETALL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        for f in fields {
            assert!(
                !f.starts_with("secret-note") && f != "cost" && f != "note" && f != "123.45",
                "{key} holds {f:?}"
            );
        }
    }
    // The editor's view applies the same mapping: the generic mirror check.
    assert_mirrors(&engine, &sql).await;
    engine.shutdown(Duration::from_secs(2)).await.unwrap();
}

async fn refused(url: &str, file: &str) -> String {
    let err: PgError = PgSource::connect(config(url, file), EventBus::default())
        .await
        .expect_err("the declaration is refused");
    err.to_string()
}

#[tokio::test]
async fn declarations_postgresql_or_the_cache_cannot_serve_are_refused_with_the_line_and_nothing_changes()
 {
    let url = database("refused").await;
    let sql = connect(&url).await;
    sql.batch_execute(
        "CREATE TABLE items (id int PRIMARY KEY, name text, secret text, active boolean NOT NULL);
         INSERT INTO items VALUES (1, 'one', 's', true);",
    )
    .await
    .unwrap();
    let t = |extra: &str| format!("[[table]]\ntable = \"items\"\n{extra}\n");
    for (extra, want) in [
        (
            "key = \"item:{name}\"",
            "exactly the primary key's columns (id)",
        ),
        ("columns = [\"id\", \"nope\"]", "`columns` names \"nope\""),
        ("columns = [\"name\"]", "`columns` leaves out"),
        ("rename = { secret = \"__v\" }", "not a field name"),
        ("filter = \"no_such_column > 1\"", "no_such_column"),
        // The filter reads a column outside the replica identity (the key).
        (
            "filter = \"active\"",
            "ALTER TABLE \"public\".\"items\" REPLICA IDENTITY FULL",
        ),
        (
            "columns = [\"id\", \"name\", \"active\"]\nfilter = \"active\"",
            "CREATE UNIQUE INDEX \"items_prefetch_ident\" ON \"public\".\"items\" (\"id\", \"active\")",
        ),
    ] {
        let err = refused(&url, &t(extra)).await;
        assert!(err.starts_with("tables.toml:1: "), "{extra}: {err}");
        assert!(err.contains(want), "{extra}: {err}");
    }
    // Nothing was left behind: no publication, and the application's own
    // writes still work.
    let publications: i64 = sql
        .query_one("SELECT count(*) FROM pg_publication", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(publications, 0);
    sql.batch_execute("UPDATE items SET name = 'uno' WHERE id = 1; DELETE FROM items WHERE id = 1")
        .await
        .unwrap();
}

const SHOP: &str = r#"
[[table]]
table    = "order_lines"
key      = "line:{order_id}:{line_no}"
columns  = ["order_id", "line_no", "sku", "qty", "active"]
rename   = { qty = "quantity" }
filter   = "active"

[[table]]
table = "products"
key   = "product:{sku}"

[[table]]
table   = "users"
key     = "user:{id}"
columns = ["id", "email"]
value   = "json"
"#;

/// Three declared tables in one engine: one slot, one publication, one
/// key space (ids are whole keys), a foreign key left alone.
pub(crate) async fn shop_engine(redis: &TestRedis, url: &str) -> PgEngine {
    let specs = TablesFile::parse("tables.toml", SHOP).unwrap().tables;
    let mut config = PgConfig::new(url, &specs[0].table);
    config.create_demo_table = false;
    config.heartbeat = Duration::from_millis(200);
    config.tables = specs.clone();
    let events = EventBus::default();
    let source = PgSource::connect(config, events.clone())
        .await
        .expect("source connects");
    let mut engine_config = engine_config("shop");
    engine_config.cache.prefix = prefetch_pg::tables::cache_prefix(&specs);
    engine_config.cache.tables = prefetch_pg::tables::table_prefixes(&specs);
    engine_config.cache.json_tables = prefetch_pg::tables::json_prefixes(&specs);
    Engine::start(redis.conn().await, source, events, engine_config)
        .await
        .expect("engine starts")
        .0
}

/// Every row of the three tables as Redis must hold it, by key.
pub(crate) async fn shop_expected(sql: &Client) -> BTreeMap<String, Fields> {
    let mut out = expected(sql).await;
    for r in sql
        .query("SELECT sku, name, price::text FROM products", &[])
        .await
        .unwrap()
    {
        let sku: String = r.get(0);
        let mut f = Fields::new();
        f.insert("sku".into(), sku.clone());
        f.insert("name".into(), r.get(1));
        f.insert("price".into(), r.get(2));
        out.insert(format!("product:{}", sku.replace(':', "%3A")), f);
    }
    // Users are JSON documents: the id a number, a NULL email `null`.
    for r in sql.query("SELECT id, email FROM users", &[]).await.unwrap() {
        let (id, email): (i32, Option<String>) = (r.get(0), r.get(1));
        let doc = serde_json::json!({"id": id, "email": email}).to_string();
        let f: Fields = [(prefetch::JSON_FIELD.to_owned(), doc)].into();
        out.insert(format!("user:{id}"), f);
    }
    out
}

pub(crate) async fn all_rows(redis: &TestRedis) -> BTreeMap<String, Fields> {
    let mut out = redis_rows(redis, "line:").await;
    out.extend(redis_rows(redis, "product:").await);
    out.extend(redis_rows(redis, "user:").await);
    out
}

#[tokio::test]
async fn three_declared_tables_share_one_slot_and_end_equal_to_their_selects() {
    let url = database("shop").await;
    let sql = connect(&url).await;
    sql.batch_execute(SCHEMA).await.unwrap();
    sql.batch_execute(
        "CREATE TABLE products (sku text PRIMARY KEY, name text, price numeric);
         CREATE TABLE users (id int PRIMARY KEY, email text, password_hash text);
         INSERT INTO products VALUES ('p:1', 'One', 1.50), ('p2', 'Two', 2);
         INSERT INTO users VALUES (1, 'a@x', 'secret-hash-1'), (2, 'b@x', 'secret-hash-2');",
    )
    .await
    .unwrap();
    let redis = TestRedis::start();
    let mut conn = redis.conn().await;
    let _: () = redis::cmd("SET")
        .arg("session:abc")
        .arg("not the cache's")
        .query_async(&mut conn)
        .await
        .unwrap();
    let engine = shop_engine(&redis, &url).await;
    assert_eq!(all_rows(&redis).await, shop_expected(&sql).await);
    let kind: String = redis::cmd("TYPE")
        .arg("user:1")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(kind, "string", "a JSON table's record is a document");

    sql.batch_execute(
        "BEGIN;
         UPDATE products SET price = 9 WHERE sku = 'p2';
         INSERT INTO order_lines VALUES ('o7', 1, 'p2', 3, 1, 'secret-note-7', true);
         UPDATE users SET email = 'c@x', password_hash = 'secret-hash-3' WHERE id = 2;
         COMMIT;
         UPDATE order_lines SET active = false WHERE order_id = 'o1' AND line_no = 1;
         DELETE FROM products WHERE sku = 'p:1';",
    )
    .await
    .unwrap();
    caught_up(&engine, &sql).await;
    assert_eq!(all_rows(&redis).await, shop_expected(&sql).await);

    // A truncate of one table empties that table's keys only (through a
    // fresh snapshot), and a re-prefetch sweeps nothing of another's.
    sql.batch_execute("TRUNCATE users").await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !redis_rows(&redis, "user:").await.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "users' keys still there"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    engine.reprefetch().await.unwrap();
    caught_up(&engine, &sql).await;
    assert_eq!(all_rows(&redis).await, shop_expected(&sql).await);
    let foreign: Option<String> = redis::cmd("GET")
        .arg("session:abc")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(foreign.as_deref(), Some("not the cache's"));
    let ids = engine.cache().ids().await.unwrap();
    assert!(ids.iter().all(|id| !id.starts_with("session:")), "{ids:?}");
    engine.shutdown(Duration::from_secs(2)).await.unwrap();
}

/// One transaction over two tables is applied in one atomic step: each
/// call of the version guard that writes one table's row writes the
/// other's too (seen with `MONITOR`), and a reader that reads both rows at
/// once (`MULTI`) never sees one changed and the other not.
#[tokio::test]
async fn a_transaction_over_two_tables_is_never_seen_half_applied() {
    let url = database("atomic").await;
    let sql = connect(&url).await;
    sql.batch_execute(
        "CREATE TABLE products (sku text PRIMARY KEY, name text, price numeric);
         CREATE TABLE users (id int PRIMARY KEY, email text, password_hash text);
         CREATE TABLE order_lines (order_id text, line_no int, sku text, qty int, active boolean NOT NULL,
             PRIMARY KEY (order_id, line_no));
         CREATE UNIQUE INDEX ol_ident ON order_lines (order_id, line_no, active);
         ALTER TABLE order_lines REPLICA IDENTITY USING INDEX ol_ident;
         INSERT INTO products VALUES ('p1', '0', 0);
         INSERT INTO users VALUES (1, '0', 'h');",
    )
    .await
    .unwrap();
    let redis = TestRedis::start();
    let engine = shop_engine(&redis, &url).await;
    let mut monitor = std::process::Command::new("redis-cli")
        .args(["-p", &redis.port.to_string(), "monitor"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("redis-cli monitor");
    let monitor_out = monitor.stdout.take().unwrap();
    let calls = std::thread::spawn(move || {
        use std::io::BufRead;
        std::io::BufReader::new(monitor_out)
            .lines()
            .map_while(Result::ok)
            .filter(|l| {
                l.contains("\"FCALL\"") && (l.contains("product:p1") || l.contains("user:1"))
            })
            .collect::<Vec<String>>()
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let reader_redis = redis.conn().await;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = done.clone();
    let reader = tokio::spawn(async move {
        let mut conn = reader_redis;
        let mut reads = 0u32;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let (name, doc): (Option<String>, Option<String>) = redis::pipe()
                .atomic()
                .cmd("HGET")
                .arg("product:p1")
                .arg("name")
                .cmd("GET")
                .arg("user:1")
                .query_async(&mut conn)
                .await
                .unwrap();
            let email = doc.map(|d| {
                let v: serde_json::Value = serde_json::from_str(&d).unwrap();
                v["email"].as_str().unwrap_or_default().to_owned()
            });
            assert_eq!(name, email, "half of one transaction after {reads} reads");
            reads += 1;
        }
        reads
    });
    for i in 1..=200 {
        sql.batch_execute(&format!(
            "BEGIN; UPDATE products SET name = '{i}'; UPDATE users SET email = '{i}'; COMMIT;"
        ))
        .await
        .unwrap();
    }
    caught_up(&engine, &sql).await;
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let reads = reader.await.unwrap();
    assert!(reads > 100, "the reader read {reads} times");
    monitor.kill().unwrap();
    let _ = monitor.wait();
    let calls = calls.join().unwrap();
    assert!(calls.len() >= 20, "{} guard calls seen", calls.len());
    for call in &calls {
        assert!(
            call.contains("product:p1") && call.contains("user:1"),
            "one table's write without the other's: {call}"
        );
    }
    let mut conn = redis.conn().await;
    let name: String = redis::cmd("HGET")
        .arg("product:p1")
        .arg("name")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(name, "200");
    engine.shutdown(Duration::from_secs(2)).await.unwrap();
}

/// The three tables on a 3-primary Redis Cluster: their keys spread over
/// the slots, and Redis ends equal to the tables after changes to each
/// (a transaction over several tables is atomic within each slot).
#[tokio::test]
async fn three_declared_tables_on_a_cluster_end_equal_to_their_selects() {
    let url = database("shop_cluster").await;
    let sql = connect(&url).await;
    sql.batch_execute(SCHEMA).await.unwrap();
    sql.batch_execute(
        "CREATE TABLE products (sku text PRIMARY KEY, name text, price numeric);
         CREATE TABLE users (id int PRIMARY KEY, email text, password_hash text);
         INSERT INTO products SELECT 'p' || g, 'n' || g, g FROM generate_series(1, 300) g;
         INSERT INTO users SELECT g, 'u' || g, 'h' FROM generate_series(1, 300) g;",
    )
    .await
    .unwrap();
    let cluster = prefetch::testing::TestCluster::start(3, 0);
    let specs = TablesFile::parse("tables.toml", SHOP).unwrap().tables;
    let mut config = PgConfig::new(&url, &specs[0].table);
    config.create_demo_table = false;
    config.heartbeat = Duration::from_millis(200);
    config.tables = specs.clone();
    let events = EventBus::default();
    let source = PgSource::connect(config, events.clone()).await.unwrap();
    let mut engine_config = engine_config("shop_cluster");
    engine_config.cache.prefix = prefetch_pg::tables::cache_prefix(&specs);
    engine_config.cache.tables = prefetch_pg::tables::table_prefixes(&specs);
    engine_config.cache.json_tables = prefetch_pg::tables::json_prefixes(&specs);
    let (engine, _) = Engine::start(cluster.redis().await, source, events, engine_config)
        .await
        .expect("engine starts on the cluster");
    sql.batch_execute(
        "BEGIN; UPDATE products SET price = price + 1; UPDATE users SET email = email || '!'; COMMIT;
         DELETE FROM users WHERE id % 7 = 0;
         UPDATE order_lines SET active = NOT active;",
    )
    .await
    .unwrap();
    caught_up(&engine, &sql).await;
    let want = shop_expected(&sql).await;
    let mut conn = cluster.conn().await;
    let mut got = BTreeMap::new();
    for id in engine.cache().ids().await.unwrap() {
        let fields = row_of(&mut conn, &id).await;
        got.insert(id, fields);
    }
    assert_eq!(got.len(), want.len());
    assert_eq!(got, want);
    let mut slots: Vec<u16> = got.keys().map(|k| prefetch::slot(k)).collect();
    slots.sort_unstable();
    slots.dedup();
    assert!(slots.len() > 100, "keys in {} slots", slots.len());
    engine.shutdown(Duration::from_secs(2)).await.unwrap();
}

/// A JSON table end to end: the document typed as SPEC.md maps PostgreSQL's
/// types, after the load and after live changes.
#[tokio::test]
async fn a_json_table_holds_typed_documents_in_string_keys() {
    let url = database("json_table").await;
    let sql = connect(&url).await;
    sql.batch_execute(
        "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET timezone TO ''UTC''', current_database()); END $$;
         SET TIME ZONE 'UTC';
         CREATE TABLE events (id bigint PRIMARY KEY, amount numeric, ok boolean, meta jsonb,
             at timestamptz, note text, score float8, secret text);
         INSERT INTO events VALUES
             (1, 12.50, true, '{\"tags\": [\"a\", \"b\"]}', '2024-05-01 10:00:00.5+00', NULL, 1.5, 's');",
    )
    .await
    .unwrap();
    let file = r#"
[[table]]
table   = "events"
key     = "event:{id}"
value   = "json"
columns = ["id", "amount", "ok", "meta", "at", "note", "score"]
rename  = { note = "comment" }
"#;
    let redis = TestRedis::start();
    let mut specs_config = config(&url, file);
    specs_config.heartbeat = Duration::from_millis(200);
    let events = EventBus::default();
    let source = PgSource::connect(specs_config, events.clone())
        .await
        .unwrap();
    let mut ec = engine_config("json_table");
    ec.cache.prefix = "event:".into();
    ec.cache.json_tables = vec!["event:".into()];
    let (engine, _) = Engine::start(redis.conn().await, source, events, ec)
        .await
        .unwrap();
    let mut conn = redis.conn().await;
    let doc = |conn: &mut redis::aio::MultiplexedConnection| {
        let mut conn = conn.clone();
        async move {
            let text: Option<String> = redis::cmd("GET")
                .arg("event:1")
                .query_async(&mut conn)
                .await
                .unwrap();
            text.map(|t| serde_json::from_str::<serde_json::Value>(&t).unwrap())
        }
    };
    let loaded = doc(&mut conn).await.expect("loaded as a document");
    assert_eq!(
        loaded,
        serde_json::json!({
            "id": 1, "amount": "12.50", "ok": true, "meta": {"tags": ["a", "b"]},
            "at": "2024-05-01T10:00:00.5+00:00", "comment": null, "score": 1.5
        })
    );

    sql.batch_execute("UPDATE events SET ok = false, note = 'hi', amount = 3 WHERE id = 1")
        .await
        .unwrap();
    caught_up(&engine, &sql).await;
    let live = doc(&mut conn).await.unwrap();
    assert_eq!(
        (
            live["ok"].clone(),
            live["comment"].clone(),
            live["amount"].clone()
        ),
        (
            serde_json::json!(false),
            serde_json::json!("hi"),
            serde_json::json!("3")
        )
    );
    let read = engine.read("1").await.unwrap();
    assert!(read.lookup.hit(), "read through the cache");
    sql.batch_execute("DELETE FROM events WHERE id = 1")
        .await
        .unwrap();
    caught_up(&engine, &sql).await;
    assert_eq!(doc(&mut conn).await, None);
    engine.shutdown(Duration::from_secs(2)).await.unwrap();
}
