//! One declared table snapshotted again while every table keeps
//! streaming: its keys are repaired and its orphans swept, no reader of a
//! key that exists throughout ever misses, and no other table's key is
//! touched.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use prefetch::testing::TestRedis;

use crate::declared::{SCHEMA, all_rows, shop_engine, shop_expected};
use crate::{caught_up, connect, database};

const USERS: i32 = 3000;

#[tokio::test]
async fn a_resnapshot_of_one_table_under_load_repairs_it_shows_no_miss_and_touches_no_other() {
    let url = database("resnap").await;
    let sql = connect(&url).await;
    sql.batch_execute(SCHEMA).await.unwrap();
    sql.batch_execute(&format!(
        "CREATE TABLE products (sku text PRIMARY KEY, name text, price numeric);
         CREATE TABLE users (id int PRIMARY KEY, email text, password_hash text);
         INSERT INTO products SELECT 'p' || i, 'P' || i, i FROM generate_series(1, 300) i;
         INSERT INTO users SELECT i, i || '@x', 'h' FROM generate_series(1, {USERS}) i;"
    ))
    .await
    .unwrap();
    let redis = TestRedis::start();
    let engine = Arc::new(shop_engine(&redis, &url).await);
    let mut conn = redis.conn().await;

    // Break the users' side of the cache (a JSON table) as an operator might
    // find it: a document changed by hand, a key lost, two orphans (one with
    // an old version beside it, one written outside the pipeline).
    let _: () = redis::pipe()
        .cmd("SET")
        .arg("user:5")
        .arg(r#"{"email":"wrong","id":5}"#)
        .cmd("DEL")
        .arg("user:7")
        .cmd("SET")
        .arg("user:99999")
        .arg(r#"{"id":99999}"#)
        .cmd("SET")
        .arg("__pf:u:{user:99999}")
        .arg("0:1:0 00")
        .cmd("SET")
        .arg("user:99998")
        .arg(r#"{"id":99998}"#)
        .query_async(&mut conn)
        .await
        .unwrap();

    // Writers on both tables, and readers of keys that exist throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (url, stop) = (url.clone(), Arc::clone(&stop));
        tokio::spawn(async move {
            let sql = connect(&url).await;
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) && n < 5000 {
                n += 1;
                let (p, u) = (1 + n % 300, 10 + n % 2000);
                sql.batch_execute(&format!(
                    "BEGIN; UPDATE products SET price = {n} WHERE sku = 'p{p}';
                     UPDATE users SET email = 'w{n}@x' WHERE id = {u}; COMMIT;"
                ))
                .await
                .unwrap();
            }
            n
        })
    };
    let misses = Arc::new(AtomicU64::new(0));
    let reader = {
        let (stop, misses) = (Arc::clone(&stop), Arc::clone(&misses));
        let mut conn = redis.conn().await;
        tokio::spawn(async move {
            let mut reads = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for key in [
                    "user:10",
                    "user:500",
                    "user:2999",
                    "product:p1",
                    "product:p300",
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
            }
            reads
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let report = engine.resnapshot("public.users", "user:").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let commits = writer.await.unwrap();
    let reads = reader.await.unwrap();
    caught_up(&*engine, &sql).await;

    assert!(commits > 0 && reads > 0, "{commits} commits, {reads} reads");
    assert_eq!(
        misses.load(Ordering::Relaxed),
        0,
        "a key that exists throughout was missed"
    );
    assert_eq!(report.swept, 2, "the two orphans, and nothing else");
    assert!(
        report.loaded > 0 && report.loaded <= USERS as usize,
        "{report:?}"
    );
    assert_eq!(all_rows(&redis).await, shop_expected(&sql).await);
    // Only the users were written at the snapshot's version.
    let version = report.version.unwrap().to_string();
    for key in ["product:p1", "product:p150", "line:o1:1"] {
        let v: Option<String> = redis::cmd("HGET")
            .arg(key)
            .arg("__v")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_ne!(
            v.as_deref(),
            Some(version.as_str()),
            "{key} written by the resnapshot"
        );
    }
    let unknown = engine.resnapshot("public.nope", "nope:").await.unwrap_err();
    assert!(unknown.to_string().contains("public.nope"), "{unknown}");
    Arc::into_inner(engine)
        .unwrap()
        .shutdown(Duration::from_secs(2))
        .await
        .unwrap();
}
