//! Snapshot and stream: gap-free under concurrent writers, 10,000 mixed
//! transactions, restarts of everything, idle heartbeats.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use prefetch::testing::{TestRedis, both_sides_of};
use prefetch::{Primary, Source};

use crate::{assert_mirrors, caught_up, connect, database, engine};

/// Random-looking but replayable ids and values.
fn mix(n: u64) -> u64 {
    n.wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407)
        >> 33
}

async fn writer(url: String, stop: Arc<AtomicBool>, seed: u64) -> u64 {
    let sql = connect(&url).await;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let r = mix(seed * 1_000_003 + n);
        let id = format!("w-{:03}", r % 300);
        let stmt = match r % 4 {
            0 => sql
                .execute(
                    "INSERT INTO categories (id, name) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET name = excluded.name",
                    &[&id, &format!("ins {n}")],
                )
                .await,
            1 => sql
                .execute("DELETE FROM categories WHERE id = $1", &[&id])
                .await,
            _ => sql
                .execute(
                    "UPDATE categories SET name = $2, display_order = display_order + 1 WHERE id = $1",
                    &[&id, &format!("upd {n}")],
                )
                .await,
        };
        stmt.expect("writer statement");
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_taken_while_writers_run_ends_equal_to_select_star() {
    let url = database("snapwrite").await;
    let sql = connect(&url).await;
    // The table first, with rows; writers start before the slot exists.
    let events = prefetch::EventBus::default();
    drop(crate::source(&url, "categories", &events).await);
    sql.batch_execute(
        "INSERT INTO categories (id, name) SELECT 'w-' || lpad(g::text, 3, '0'), 'seed' FROM generate_series(0, 299) g ON CONFLICT DO NOTHING",
    )
    .await
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..3)
        .map(|s| tokio::spawn(writer(url.clone(), stop.clone(), s)))
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let redis = TestRedis::start();
    let (engine, report) = engine(&redis, &url, "categories", "snapwrite").await;
    assert!(report.loaded > 0, "loaded from the slot's snapshot");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut writes = 0;
    for w in writers {
        writes += w.await.unwrap();
    }
    assert!(writes > 100, "writers ran ({writes} statements)");
    assert_mirrors(&engine, &sql).await;
    assert_eq!(
        engine.source().editor().reads(),
        1,
        "the slot's own snapshot"
    );
    engine.shutdown(Duration::from_secs(2)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_mixed_transactions_stream_in_and_redis_equals_the_table() {
    let url = database("tenk").await;
    let redis = TestRedis::start();
    let (engine, _) = engine(&redis, &url, "categories", "tenk").await;
    let sql = connect(&url).await;
    let mut statements = 0;
    for t in 0..10_000u64 {
        let r = mix(t);
        let id = format!("m-{:03}", r % 400);
        // Some transactions hold several statements.
        let body = match r % 5 {
            0 => format!(
                "INSERT INTO categories (id, name, featured) VALUES ('{id}', 'n{t}', {}) ON CONFLICT (id) DO NOTHING",
                t % 2 == 0
            ),
            1 => format!("DELETE FROM categories WHERE id = '{id}'"),
            2 => format!(
                "BEGIN; UPDATE categories SET name = 'a{t}' WHERE id = '{id}'; \
                 INSERT INTO categories (id, name) VALUES ('x-{t}', 'x') ON CONFLICT DO NOTHING; \
                 DELETE FROM categories WHERE id = 'x-{}'; COMMIT",
                t.saturating_sub(7)
            ),
            _ => format!(
                "UPDATE categories SET name = 'u{t}', display_order = {} WHERE id = '{id}'",
                t % 97
            ),
        };
        sql.batch_execute(&body).await.unwrap();
        statements += 1;
    }
    assert_eq!(statements, 10_000);
    assert_mirrors(&engine, &sql).await;
    let stats = engine.stats();
    assert!(stats.cache.sync_events_applied > 2_000, "{stats:?}");
    engine.shutdown(Duration::from_secs(2)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_restarted_resumes_from_the_slot_with_changes_made_while_it_was_down() {
    let url = database("resume").await;
    let redis = TestRedis::spawn_own(true);
    let (engine1, first) = engine(&redis, &url, "categories", "resume").await;
    assert_eq!(first.loaded, 5);
    let sql = connect(&url).await;
    sql.batch_execute("UPDATE categories SET name = 'before' WHERE id = 'cat-001'")
        .await
        .unwrap();
    assert_mirrors(&engine1, &sql).await;
    let prefix = engine1.cache().prefix().to_owned();
    engine1.shutdown(Duration::from_secs(2)).await.unwrap();
    engine1.source().close();
    drop(engine1);
    // Changes while nothing reads the slot.
    sql.batch_execute(
        "UPDATE categories SET name = 'while down' WHERE id = 'cat-002'; \
         DELETE FROM categories WHERE id = 'cat-003'; \
         INSERT INTO categories (id, name) VALUES ('cat-009', 'New')",
    )
    .await
    .unwrap();
    let events = prefetch::EventBus::default();
    let source = crate::source(&url, "categories", &events).await;
    let mut config = prefetch::testing::engine_config("resume");
    config.cache.prefix = prefix;
    let (engine2, second) = prefetch::Engine::start(redis.conn().await, source, events, config)
        .await
        .unwrap();
    assert_eq!(second.version, None, "resumed from the slot, no reload");
    assert_mirrors(&engine2, &sql).await;
    assert_eq!(engine2.source().editor().reads(), 0);
    engine2.shutdown(Duration::from_secs(2)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_is_refilled_from_postgresql() {
    let url = database("rediswipe").await;
    let mut redis = TestRedis::spawn_own(false);
    let events = prefetch::EventBus::default();
    let source = crate::source(&url, "categories", &events).await;
    let (engine, _) = prefetch::Engine::start(
        redis.manager().await,
        source,
        events,
        prefetch::testing::engine_config("rediswipe"),
    )
    .await
    .unwrap();
    let sql = connect(&url).await;
    sql.batch_execute("UPDATE categories SET name = 'x' WHERE id = 'cat-004'")
        .await
        .unwrap();
    redis.kill();
    redis.restart();
    sql.batch_execute("UPDATE categories SET name = 'y' WHERE id = 'cat-005'")
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (primary, cache) = both_sides_of(&engine, &engine.source().editor()).await;
        if primary == cache {
            break;
        }
        assert!(Instant::now() < deadline, "not refilled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(engine.stats().cache.self_heals >= 1);
    assert_eq!(engine.source().editor().reads(), 2, "start + the refill");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_restarted_under_load_the_source_reconnects_and_resumes() {
    // A server of its own: the restart would cut every other test's
    // connections to the shared one.
    let own = std::sync::Arc::new(std::sync::Mutex::new(
        tokio::task::spawn_blocking(prefetch_pg::launcher::PostgresServer::start)
            .await
            .unwrap()
            .expect("a private PostgreSQL"),
    ));
    let url = own.lock().unwrap().url("postgres");
    let redis = TestRedis::start();
    let (engine, _) = engine(&redis, &url, "categories", "pgrestart").await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (url, stop) = (url.clone(), stop.clone());
        tokio::spawn(async move {
            let mut ok = 0u64;
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let sql = match tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
                    Ok((c, conn)) => {
                        tokio::spawn(conn);
                        c
                    }
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                for _ in 0..50 {
                    n += 1;
                    let id = format!("l-{:02}", n % 50);
                    if sql
                        .execute(
                            "INSERT INTO categories (id, name) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET name = excluded.name",
                            &[&id, &format!("v{n}")],
                        )
                        .await
                        .is_ok()
                    {
                        ok += 1;
                    } else {
                        break;
                    }
                }
            }
            ok
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let restarted = std::sync::Arc::clone(&own);
    tokio::task::spawn_blocking(move || {
        restarted
            .lock()
            .unwrap()
            .restart()
            .expect("PostgreSQL comes back");
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop.store(true, Ordering::Relaxed);
    let ok = load.await.unwrap();
    assert!(ok > 50, "writes before and after the restart ({ok})");
    let sql = connect(&url).await;
    assert_mirrors(&engine, &sql).await;
    assert!(engine.source().status().connected);
    engine.shutdown(Duration::from_secs(2)).await.unwrap();
    engine.source().close();
    drop(engine);
    tokio::task::spawn_blocking(move || drop(own))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_heartbeats_keep_lag_low_and_advance_the_slot() {
    let url = database("idle").await;
    let redis = TestRedis::start();
    let (engine, _) = engine(&redis, &url, "categories", "idle").await;
    let sql = connect(&url).await;
    let slot = engine.source().slot().to_owned();
    let before = confirmed(&sql, &slot).await;
    // Other tables keep writing WAL; ours is idle.
    sql.batch_execute(
        "CREATE TABLE other (n int); INSERT INTO other SELECT generate_series(1, 1000)",
    )
    .await
    .unwrap();
    let mark: i64 = sql
        .query_one("SELECT (pg_current_wal_lsn() - '0/0')::int8", &[])
        .await
        .unwrap()
        .get(0);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = confirmed(&sql, &slot).await;
    assert!(
        after > before && after >= mark,
        "the slot moved past the WAL written while the table was idle ({before} -> {after}, mark {mark})"
    );
    let stats = engine.stats();
    assert!(
        stats.behind < Duration::from_secs(2),
        "lag behind the source while idle: {:?}",
        stats.behind
    );
    caught_up(&engine, &sql).await;
}

async fn confirmed(sql: &tokio_postgres::Client, slot: &str) -> i64 {
    sql.query_one(
        "SELECT (confirmed_flush_lsn - '0/0')::int8 FROM pg_replication_slots WHERE slot_name = $1",
        &[&slot],
    )
    .await
    .unwrap()
    .get(0)
}

/// PostgreSQL stopped past the TTL: TTL renewal is suspended (the source is
/// disconnected), so the keys expire; PostgreSQL back: the cache refills by
/// itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_stopped_past_the_ttl_keys_expire_and_come_back_with_it() {
    let own = std::sync::Arc::new(std::sync::Mutex::new(
        tokio::task::spawn_blocking(prefetch_pg::launcher::PostgresServer::start)
            .await
            .unwrap()
            .expect("a private PostgreSQL"),
    ));
    let url = own.lock().unwrap().url("postgres");
    let redis = TestRedis::start();
    let mut config = prefetch::testing::engine_config("pgttl");
    config.cache.ttl = Duration::from_secs(3);
    let (engine, report) = crate::engine_with(&redis, &url, "categories", config).await;
    assert_eq!(report.loaded, 5);
    let stopped = std::sync::Arc::clone(&own);
    tokio::task::spawn_blocking(move || stopped.lock().unwrap().stop())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(8);
    while !engine.ids().await.unwrap().is_empty() {
        assert!(
            Instant::now() < deadline,
            "keys did not expire with PostgreSQL down ({:?})",
            engine.renewal()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!engine.renewal().active);
    let restarted = std::sync::Arc::clone(&own);
    tokio::task::spawn_blocking(move || {
        restarted
            .lock()
            .unwrap()
            .restart()
            .expect("PostgreSQL comes back")
    })
    .await
    .unwrap();
    let sql = connect(&url).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while engine.ids().await.unwrap().len() < 5 {
        assert!(
            Instant::now() < deadline,
            "no refill after PostgreSQL came back ({:?})",
            engine.renewal()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_mirrors(&engine, &sql).await;
    assert_eq!(engine.stats().cache.refills, 1);
    engine.shutdown(Duration::from_secs(2)).await.unwrap();
    engine.source().close();
    drop(engine);
    tokio::task::spawn_blocking(move || drop(own))
        .await
        .unwrap();
}
