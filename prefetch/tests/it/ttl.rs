//! TTL renewal: a row that does not change stays cached while sync is
//! healthy; when sync stops, keys expire after their TTL (the safety net);
//! when sync comes back, the cache refills by itself.

use std::time::{Duration, Instant};

use prefetch::testing::{TestRedis, converged_within, engine_config, mock_engine_with};
use prefetch::{Connection, Engine, EngineConfig, Event, MockPrimary, PrefetchReason};

const TTL: Duration = Duration::from_secs(3);

fn config(test: &str, renew: bool) -> EngineConfig {
    let mut config = engine_config(test);
    config.cache.ttl = TTL;
    config.renew_ttls = renew;
    config
}

async fn cached<C: Connection>(engine: &Engine<MockPrimary, C>) -> usize {
    engine.ids().await.unwrap().len()
}

/// With a 3 s TTL and no writes for 10 s, every key is still there.
async fn quiet_keys_stay<C: Connection>(conn: C, renew: bool) -> usize {
    let test = if renew { "renewed" } else { "unrenewed" };
    let (engine, report) = mock_engine_with(conn, config(test, renew), None, Duration::ZERO).await;
    assert_eq!(report.loaded, 5);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let left = cached(&engine).await;
    engine.shutdown(Duration::from_secs(2)).await.unwrap();
    left
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_nobody_changes_outlive_their_ttl_while_sync_is_healthy() {
    let redis = TestRedis::start();
    assert_eq!(quiet_keys_stay(redis.conn().await, true).await, 5);
    // The mechanism removed: the same quiet 10 s empty the cache.
    assert_eq!(quiet_keys_stay(redis.conn().await, false).await, 0);
}

/// The worker paused past the TTL: keys expire (the safety net); resumed,
/// the cache refills within 2 s, counted and told on the event feed.
async fn paused_past_the_ttl_then_refilled<C: Connection>(conn: C, test: &str) {
    let (engine, _) = mock_engine_with(conn, config(test, true), None, Duration::ZERO).await;
    let mut feed = engine.subscribe();
    let pause = engine.sync().pause(Duration::from_secs(2)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let renewal = engine.renewal();
    assert!(!renewal.active, "{renewal:?}");
    assert_eq!(
        renewal.suspended.as_deref(),
        Some("the sync worker is paused")
    );
    let deadline = Instant::now() + TTL * 2;
    while cached(&engine).await > 0 {
        assert!(
            Instant::now() < deadline,
            "keys did not expire while paused"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let resumed = Instant::now();
    pause.resume();
    // Told on the event feed once the refill's load is over.
    let told = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            if let Ok(Event::Prefetched { reason, loaded, .. }) = feed.recv().await
                && reason == PrefetchReason::Refill
            {
                return loaded;
            }
        }
    })
    .await
    .expect("the refill was not on the event feed within 2 s");
    assert_eq!(told, 5);
    assert!(resumed.elapsed() < Duration::from_secs(2));
    converged_within(&engine, Duration::from_millis(10)).await;
    assert_eq!(engine.stats().cache.refills, 1);
    assert!(engine.renewal().active);
    engine.shutdown(Duration::from_secs(2)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_expire_while_the_worker_is_paused_and_come_back_after_resume() {
    let redis = TestRedis::start();
    paused_past_the_ttl_then_refilled(redis.conn().await, "paused").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_on_a_cluster() {
    let c = crate::cluster::cluster();
    assert_eq!(quiet_keys_stay(c.redis().await, true).await, 5);
    paused_past_the_ttl_then_refilled(c.redis().await, "paused-cluster").await;
}

/// A table with a TTL of its own shorter than the cache's: the walks come
/// often enough for it, and each key is renewed to its own table's TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_with_a_shorter_ttl_of_its_own_is_renewed_to_it_and_kept() {
    let redis = TestRedis::start();
    let mut config = config("own-ttl", true);
    config.cache.ttl = Duration::from_secs(120);
    let short = format!("{}cat-001", config.cache.prefix);
    config.cache.table_ttls = vec![(short.clone(), TTL)];
    let (engine, _) = mock_engine_with(redis.conn().await, config, None, Duration::ZERO).await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let conn = redis.conn().await;
    let ttl_of = |key: String| {
        let mut conn = conn.clone();
        async move {
            redis::cmd("TTL")
                .arg(key)
                .query_async::<i64>(&mut conn)
                .await
                .unwrap()
        }
    };
    let short_ttl = ttl_of(short).await;
    assert!(
        (1..=3).contains(&short_ttl),
        "cat-001 kept by renewals to its own 3 s: {short_ttl}"
    );
    let long = ttl_of(engine.cache().key("cat-002")).await;
    assert!(long > 100, "cat-002 keeps the cache's TTL: {long}");
    assert_eq!(cached(&engine).await, 5);
    engine.shutdown(Duration::from_secs(2)).await.unwrap();
}
