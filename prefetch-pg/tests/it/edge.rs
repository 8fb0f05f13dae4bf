//! The Debezium-style edge cases, one test each: TOAST, TRUNCATE, composite
//! keys, NULLs, added and dropped columns, a long transaction in the way of
//! slot creation, a dropped slot, and the demo's mutations as SQL.

use std::time::{Duration, Instant};

use prefetch::testing::{TestRedis, both_sides_of};
use prefetch::{Primary, Record};

use crate::{assert_mirrors, connect, database, engine};

#[tokio::test]
async fn an_update_that_leaves_a_toasted_value_alone_keeps_it_in_the_cache() {
    let url = database("toast").await;
    let sql = connect(&url).await;
    sql.batch_execute(
        "CREATE TABLE docs (id text PRIMARY KEY, title text, body text); \
         ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL;",
    )
    .await
    .unwrap();
    let redis = TestRedis::start();
    let (engine, _) = engine(&redis, &url, "docs", "toast").await;
    // Incompressible and long: stored out of line (TOAST).
    let body: String = (0..20_000u32)
        .map(|i| char::from(b'a' + ((i.wrapping_mul(2654435761) >> 13) % 26) as u8))
        .collect();
    sql.execute(
        "INSERT INTO docs (id, title, body) VALUES ('d1', 'first', $1)",
        &[&body],
    )
    .await
    .unwrap();
    sql.batch_execute("UPDATE docs SET title = 'second' WHERE id = 'd1'")
        .await
        .unwrap();
    assert_mirrors(&engine, &sql).await;
    let cached = engine.cache().get("d1").await.unwrap().record.unwrap();
    assert_eq!(cached.get("title"), Some("second"));
    assert_eq!(
        cached.get("body").map(str::len),
        Some(20_000),
        "the unchanged TOAST value"
    );
}

#[tokio::test]
async fn truncate_empties_the_cache_and_later_rows_stay() {
    let url = database("truncate").await;
    let redis = TestRedis::start();
    let (engine, _) = engine(&redis, &url, "categories", "truncate").await;
    let sql = connect(&url).await;
    sql.batch_execute(
        "BEGIN; TRUNCATE categories; INSERT INTO categories (id, name) VALUES ('after', 'A'); COMMIT; \
         INSERT INTO categories (id, name) VALUES ('later', 'L');",
    )
    .await
    .unwrap();
    assert_mirrors(&engine, &sql).await;
    assert_eq!(engine.cache().ids().await.unwrap(), vec!["after", "later"]);
}

#[tokio::test]
async fn composite_keys_and_nulls_become_ids_and_absent_fields() {
    let url = database("composite").await;
    let sql = connect(&url).await;
    sql.batch_execute(
        "CREATE TABLE prices (region text, sku int, price numeric, note text, PRIMARY KEY (region, sku)); \
         INSERT INTO prices VALUES ('eu:west', 1, 9.99, NULL), ('us', 2, 5, 'x');",
    )
    .await
    .unwrap();
    let redis = TestRedis::start();
    let (engine, report) = engine(&redis, &url, "prices", "composite").await;
    assert_eq!(report.loaded, 2);
    sql.batch_execute(
        "UPDATE prices SET price = 10.50 WHERE region = 'eu:west' AND sku = 1; \
         UPDATE prices SET sku = 3 WHERE region = 'us';",
    )
    .await
    .unwrap();
    assert_mirrors(&engine, &sql).await;
    let ids = engine.cache().ids().await.unwrap();
    assert_eq!(
        ids,
        vec!["eu\\:west:1", "us:3"],
        "a key change moves the record"
    );
    let eu = engine
        .cache()
        .get("eu\\:west:1")
        .await
        .unwrap()
        .record
        .unwrap();
    assert_eq!(eu.get("price"), Some("10.50"));
    assert_eq!(eu.get("note"), None, "NULL is an absent field");
    // The demo's mutations work on it too.
    let rec = engine
        .source()
        .editor()
        .update_field("us:3", "note", "changed")
        .await
        .unwrap();
    assert_eq!(rec.get("note"), Some("changed"));
    engine
        .source()
        .editor()
        .delete("eu\\:west:1")
        .await
        .unwrap();
    assert_mirrors(&engine, &sql).await;
}

#[tokio::test]
async fn an_added_or_dropped_column_reaches_every_cached_row() {
    let url = database("columns").await;
    let redis = TestRedis::start();
    let (engine, _) = engine(&redis, &url, "categories", "columns").await;
    let sql = connect(&url).await;
    sql.batch_execute("ALTER TABLE categories ADD COLUMN colour text NOT NULL DEFAULT 'blue'")
        .await
        .unwrap();
    // The new shape reaches the stream with the next change of the table.
    sql.batch_execute("UPDATE categories SET name = 'Drinks' WHERE id = 'cat-001'")
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (primary, cache) = both_sides_of(&engine, &engine.source().editor()).await;
        if primary == cache && cache.values().all(|f| f.get("colour").is_some()) {
            break;
        }
        assert!(Instant::now() < deadline, "rows never got the new column");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sql.batch_execute(
        "ALTER TABLE categories DROP COLUMN parent_id; UPDATE categories SET name = 'Bread' WHERE id = 'cat-002'",
    )
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (primary, cache) = both_sides_of(&engine, &engine.source().editor()).await;
        if primary == cache && cache.values().all(|f| f.get("parent_id").is_none()) {
            break;
        }
        assert!(Instant::now() < deadline, "rows kept the dropped column");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_long_transaction_blocking_slot_creation_is_a_bounded_wait_and_a_clear_error() {
    let url = database("blocked").await;
    let events = prefetch::EventBus::default();
    let mut config = prefetch_pg::PgConfig::new(&url, "categories");
    config.slot_wait = Duration::from_millis(800);
    let source = prefetch_pg::PgSource::connect(config, events.clone())
        .await
        .unwrap();
    // A write transaction left open (it has an xid).
    let blocker = connect(&url).await;
    blocker
        .batch_execute("BEGIN; UPDATE categories SET name = 'held' WHERE id = 'cat-001';")
        .await
        .unwrap();
    let redis = TestRedis::start();
    let started = Instant::now();
    let err = prefetch::Engine::start(
        redis.conn().await,
        source,
        events,
        prefetch::testing::engine_config("blocked"),
    )
    .await
    .expect_err("slot creation is blocked");
    assert!(started.elapsed() < Duration::from_secs(5), "bounded wait");
    let message = err.to_string();
    assert!(
        message.contains("waited") && message.contains("pid"),
        "{message}"
    );
    blocker.batch_execute("ROLLBACK").await.unwrap();
    // The abandoned attempt left no slot behind.
    let sql = connect(&url).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let slots: i64 = sql
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE database = current_database()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(slots, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_slot_is_recreated_and_the_cache_reloaded() {
    let url = database("dropslot").await;
    let redis = TestRedis::start();
    let (engine, _) = engine(&redis, &url, "categories", "dropslot").await;
    let sql = connect(&url).await;
    let slot = engine.source().slot().to_owned();
    // Terminate the stream and drop its slot, as an operator might.
    sql.execute(
        "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1 AND active_pid IS NOT NULL",
        &[&slot],
    )
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if sql
            .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
            .await
            .is_ok()
        {
            break;
        }
        assert!(Instant::now() < deadline, "could not drop the slot");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Changes while no slot exists: only a fresh snapshot can bring them.
    sql.batch_execute("UPDATE categories SET name = 'lost?' WHERE id = 'cat-003'")
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (primary, cache) = both_sides_of(&engine, &engine.source().editor()).await;
        if primary == cache {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never reloaded after the slot came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        engine.source().editor().reads() >= 2,
        "a fresh snapshot was taken"
    );
    assert_mirrors(&engine, &sql).await;
}

#[tokio::test]
async fn the_demo_mutations_become_sql_with_clear_errors() {
    let url = database("mutations").await;
    let redis = TestRedis::start();
    let (engine, _) = engine(&redis, &url, "categories", "mutations").await;
    let src = engine.source().editor();
    let rec = src
        .update_field("cat-002", "featured", "false")
        .await
        .unwrap();
    assert_eq!(rec.get("featured"), Some("false"));
    let err = src
        .update_field("cat-002", "display_order", "ten")
        .await
        .unwrap_err();
    assert!(matches!(err, prefetch::Error::InvalidField(_)), "{err}");
    let err = src
        .update_field("cat-002", "colour", "red")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("unknown column"), "{err}");
    let err = src.update_field("cat-404", "name", "x").await.unwrap_err();
    assert!(matches!(err, prefetch::Error::NotFound(_)), "{err}");
    let new: Record = [
        ("id", "cat-006"),
        ("name", "Seasonal"),
        ("display_order", "6"),
        ("featured", "false"),
        ("parent_id", ""),
    ]
    .into_iter()
    .collect();
    let added = src.add(new.clone()).await.unwrap();
    assert_eq!(
        added, new,
        "a row reads back exactly as the mock would hold it"
    );
    let err = src.add(new).await.unwrap_err();
    assert!(
        matches!(err, prefetch::Error::AlreadyExists(ref id) if id == "cat-006"),
        "{err}"
    );
    src.delete("cat-006").await.unwrap();
    assert!(matches!(
        src.delete("cat-006").await.unwrap_err(),
        prefetch::Error::NotFound(_)
    ));
    let sql = connect(&url).await;
    assert_mirrors(&engine, &sql).await;
}

#[tokio::test]
async fn reconciliation_against_postgresql_names_each_drift_and_repair_converges() {
    use prefetch::Fault;
    use redis::AsyncCommands;

    let url = database("drift").await;
    let redis = TestRedis::start();
    let (engine, faults) = crate::faulty_engine(&redis, &url, "categories", "drift").await;
    let sql = connect(&url).await;
    let mut conn = redis.conn().await;
    let key = |id: &str| engine.cache().key(id);
    // stale: the worker loses one change on the way.
    faults.inject(Fault::Drop(1));
    sql.batch_execute("UPDATE categories SET name = 'Bread' WHERE id = 'cat-002'")
        .await
        .unwrap();
    crate::caught_up(&engine, &sql).await;
    // missing, orphaned and changed outside: written to Redis behind its back.
    let _: () = conn.del(key("cat-001")).await.unwrap();
    let _: () = conn.hset(key("ghost"), "id", "ghost").await.unwrap();
    let _: () = conn.hset(key("cat-003"), "name", "vandal").await.unwrap();

    let report = engine.reconcile(false).await.unwrap();
    assert_eq!(report.missing, ["cat-001"]);
    assert_eq!(report.orphaned, ["ghost"]);
    assert_eq!(report.stale, ["cat-002"]);
    assert_eq!(report.changed_outside, ["cat-003"]);
    assert!(report.in_flight.is_empty(), "{report:?}");
    assert!(
        report.elapsed < Duration::from_secs(5),
        "{:?}",
        report.elapsed
    );

    // Repair while PostgreSQL keeps changing: the guard orders both.
    let writes = {
        let sql = connect(&url).await;
        tokio::spawn(async move {
            for i in 0..50i32 {
                sql.execute(
                    "UPDATE categories SET display_order = $1 WHERE id = 'cat-004'",
                    &[&i],
                )
                .await
                .unwrap();
            }
        })
    };
    let repaired = engine.reconcile(true).await.unwrap();
    assert_eq!(repaired.repaired, 4, "{repaired:?}");
    writes.await.unwrap();
    assert_mirrors(&engine, &sql).await;
    assert!(engine.reconcile(false).await.unwrap().is_clean());
}

/// Replicas started at once on a fresh database all create the demo table
/// (one at a time): none fails on the catalog's unique index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sources_starting_at_once_on_a_fresh_database_all_create_the_demo_table() {
    let url = database("race").await;
    let starts = (0..8).map(|i| {
        let url = url.clone();
        tokio::spawn(async move {
            let mut config = prefetch_pg::PgConfig::new(&url, "public.categories");
            config.slot = Some(format!("race_{i}"));
            prefetch_pg::PgSource::connect(config, prefetch::EventBus::default()).await
        })
    });
    for (i, start) in futures::future::join_all(starts)
        .await
        .into_iter()
        .enumerate()
    {
        if let Err(e) = start.unwrap() {
            panic!("replica {i} could not start: {e}");
        }
    }
    let sql = connect(&url).await;
    let rows: i64 = sql
        .query_one("SELECT count(*) FROM categories", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 5);
}
