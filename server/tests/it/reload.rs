//! The tables file read again while the server runs: a table added by
//! `SIGHUP` under write load, one removed by `POST /tables/reload`, a bad
//! file refused with its line and nothing changed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prefetch::testing::TestRedis;
use serde_json::Value;

use crate::common::{
    free_port, json_of, postgres_client, postgres_database, signal, spawn_binary_with,
};
use crate::tables::{example, example_expected, example_in_redis};

/// The example's file up to its third table, and that table's block.
fn example_split() -> (String, String) {
    let text = std::fs::read_to_string(example("tables.toml")).unwrap();
    let at = text.find("[[table]]\ntable = \"order_lines\"").unwrap();
    (text[..at].to_owned(), text[at..].to_owned())
}

async fn keys(conn: &mut redis::aio::MultiplexedConnection, pattern: &str) -> usize {
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(pattern)
        .query_async(conn)
        .await
        .unwrap();
    keys.len()
}

async fn post(port: u16, path: &str) -> (u16, Value) {
    let res = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}{path}"))
        .send()
        .await
        .unwrap();
    json_of(res).await
}

/// Asserts `got` is `want`, naming the first difference.
fn same(got: &Rows, want: &Rows, what: &str) {
    let first = want
        .iter()
        .find(|(k, v)| got.get(*k) != Some(v))
        .map(|(k, v)| format!("{k}: want {v:?}, got {:?}", got.get(k)))
        .or_else(|| {
            got.keys()
                .find(|k| !want.contains_key(*k))
                .map(|k| format!("{k} should not be there"))
        });
    assert!(
        first.is_none(),
        "{what}: {} keys, {} rows; {}",
        got.len(),
        want.len(),
        first.unwrap_or_default()
    );
}

type Rows = std::collections::BTreeMap<String, prefetch::Fields>;

async fn count(sql: &tokio_postgres::Client, query: &str) -> usize {
    let n: i64 = sql.query_one(query, &[]).await.unwrap().get(0);
    usize::try_from(n).unwrap()
}

#[tokio::test]
async fn tables_come_and_go_without_a_restart_and_the_others_never_miss_or_lag() {
    let url = postgres_database("shop_reload").await;
    let sql = postgres_client(&url).await;
    sql.batch_execute(&std::fs::read_to_string(example("schema.sql")).unwrap())
        .await
        .unwrap();
    let dir = std::env::temp_dir().join(format!("prefetch-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("tables.toml");
    let (two, lines) = example_split();
    std::fs::write(&file, &two).unwrap();
    let path = file.to_string_lossy().into_owned();
    let redis = TestRedis::start();
    let port = free_port();
    let flags = ["--primary", url.as_str(), "--config", path.as_str()];
    let mut server = spawn_binary_with(&redis.url, port, &flags);
    let mut conn = redis.conn().await;
    assert_eq!(keys(&mut conn, "line:*").await, 0, "not declared yet");

    // A writer that waits for each customer change to reach Redis (its
    // commit -> visible time), and changes order lines too; a reader of
    // keys that exist throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let worst_us = Arc::new(AtomicU64::new(0));
    let writer = {
        let (url, stop, worst_us) = (url.clone(), stop.clone(), worst_us.clone());
        let mut conn = redis.conn().await;
        tokio::spawn(async move {
            let sql = postgres_client(&url).await;
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) && n < 20_000 {
                n += 1;
                let (customer, order) = (1 + n % 200, 1 + n % 300);
                sql.batch_execute(&format!(
                    "BEGIN;
                     UPDATE customers SET name = 'w{n}' WHERE id = {customer};
                     UPDATE order_lines SET quantity = {n} WHERE order_id = {order} AND line_no = 1;
                     COMMIT;"
                ))
                .await
                .unwrap();
                let committed = Instant::now();
                loop {
                    let name: Option<String> = redis::cmd("HGET")
                        .arg(format!("customer:{customer}"))
                        .arg("name")
                        .query_async(&mut conn)
                        .await
                        .unwrap();
                    if name.as_deref() == Some(format!("w{n}").as_str()) {
                        break;
                    }
                    assert!(
                        committed.elapsed() < Duration::from_secs(10),
                        "w{n} never arrived"
                    );
                    tokio::time::sleep(Duration::from_micros(500)).await;
                }
                let us = u64::try_from(committed.elapsed().as_micros()).unwrap_or(u64::MAX);
                worst_us.fetch_max(us, Ordering::Relaxed);
            }
            n
        })
    };
    let misses = Arc::new(AtomicU64::new(0));
    let reader = {
        let (stop, misses) = (stop.clone(), misses.clone());
        let mut conn = redis.conn().await;
        tokio::spawn(async move {
            let mut reads = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for key in [
                    "product:SKU-00002",
                    "product:SKU-00901",
                    "customer:1",
                    "customer:200",
                ] {
                    let exists: bool = redis::cmd("EXISTS")
                        .arg(key)
                        .query_async(&mut conn)
                        .await
                        .unwrap();
                    reads += 1;
                    if !exists {
                        misses.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            reads
        })
    };

    // SIGHUP with the third table appended.
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::write(&file, format!("{two}{lines}")).unwrap();
    signal(server.id(), libc::SIGHUP);
    let rows = count(&sql, "SELECT count(*) FROM order_lines").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while keys(&mut conn, "line:*").await < rows {
        assert!(Instant::now() < deadline, "the added table never arrived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let (commits, reads) = (writer.await.unwrap(), reader.await.unwrap());
    assert!(
        commits > 50 && reads > 100,
        "{commits} commits, {reads} reads"
    );
    assert_eq!(
        misses.load(Ordering::Relaxed),
        0,
        "a reader of another table missed"
    );
    let worst = Duration::from_micros(worst_us.load(Ordering::Relaxed));
    eprintln!(
        "table added by SIGHUP: {commits} commits of another table meanwhile, worst commit -> visible {worst:?}, {reads} reads, no miss"
    );
    assert!(
        worst < Duration::from_secs(1),
        "another table's change took {worst:?} to reach Redis"
    );
    let want = example_expected(&sql).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while example_in_redis(&redis).await != want {
        assert!(Instant::now() < deadline, "never equal to the three tables");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, tables) = json_of(
        reqwest::get(format!("http://127.0.0.1:{port}/tables"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(tables.as_array().unwrap().len(), 3, "{tables}");
    sql.execute(
        "UPDATE order_lines SET quantity = 777 WHERE order_id = 5 AND line_no = 2",
        &[],
    )
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // A JSON table (the example's order lines): the document.
        let doc: Option<String> = redis::cmd("GET")
            .arg("line:5:2")
            .query_async(&mut conn)
            .await
            .unwrap();
        if doc.is_some_and(|d| d.contains(r#""quantity":777"#)) {
            break;
        }
        assert!(Instant::now() < deadline, "the added table does not stream");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A file PostgreSQL cannot serve changes nothing and names its line.
    std::fs::write(
        &file,
        format!("{two}{lines}\n[[table]]\ntable = \"nope\"\nkey = \"nope:{{id}}\"\n"),
    )
    .unwrap();
    let (status, body) = post(port, "/tables/reload").await;
    assert_eq!(status, 400, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains(&format!("{path}:")) && error.contains("nope"),
        "{body}"
    );
    let want = example_expected(&sql).await;
    same(
        &example_in_redis(&redis).await,
        &want,
        "a refused file changed something",
    );

    // A table declared differently is refused: a running server adds and
    // removes tables, it does not change one.
    let changed =
        format!("{two}{lines}").replace("filter   = \"active\"", "filter   = \"price > 1\"");
    assert_ne!(changed, format!("{two}{lines}"));
    std::fs::write(&file, &changed).unwrap();
    let (status, body) = post(port, "/tables/reload").await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("declared differently"),
        "{body}"
    );

    // POST /tables/reload without the customers: their keys go, and their
    // changes no longer reach Redis; the others stay whole.
    let all = format!("{two}{lines}");
    let from = all.find("[[table]]\ntable   = \"customers\"").unwrap();
    let to = from + 1 + all[from + 1..].find("[[table]]").unwrap();
    let without = format!("{}{}", &all[..from], &all[to..]);
    assert!(!without.contains("customers"), "{without}");
    std::fs::write(&file, &without).unwrap();
    let (status, body) = post(port, "/tables/reload").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["removed"][0]["table"], "public.customers", "{body}");
    assert_eq!(body["removed"][0]["deleted"], 200, "{body}");
    assert_eq!(body["added"], serde_json::json!([]), "{body}");
    assert_eq!(keys(&mut conn, "customer:*").await, 0);
    sql.execute("UPDATE customers SET name = 'after' WHERE id = 1", &[])
        .await
        .unwrap();
    sql.execute(
        "UPDATE products SET price = 1234 WHERE sku = 'SKU-00002'",
        &[],
    )
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let p: Option<String> = redis::cmd("HGET")
            .arg("product:SKU-00002")
            .arg("price")
            .query_async(&mut conn)
            .await
            .unwrap();
        if p.as_deref() == Some("1234.00") || p.as_deref() == Some("1234") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "products stopped streaming: {p:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        keys(&mut conn, "customer:*").await,
        0,
        "a removed table's change reached Redis"
    );
    let mut want = example_expected(&sql).await;
    want.retain(|k, _| !k.starts_with("customer:"));
    same(&example_in_redis(&redis).await, &want, "after the removal");
    crate::common::sigterm(server.id());
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
