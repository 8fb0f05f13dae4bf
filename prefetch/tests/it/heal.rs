//! Self-healing and restarts: a Redis that lost its data is refilled by
//! itself, and a worker stopped mid-batch resumes from the position Redis
//! holds with nothing lost.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prefetch::testing::{TestRedis, assert_converged, both_sides, engine_config, mock_engine};
use prefetch::{Engine, EventBus, MockPrimary, Version, WorkerState};
use redis::AsyncCommands;

use crate::Lcg;
use crate::sync::random_mutation;

/// Polls until the cache equals the primary; returns how long it took.
async fn until_converged<C>(engine: &Engine<MockPrimary, C>, limit: Duration) -> Duration
where
    C: prefetch::Connection,
{
    let started = Instant::now();
    loop {
        if let Ok(snapshot) =
            tokio::time::timeout(Duration::from_millis(500), both_sides(engine)).await
        {
            let (primary, cache) = snapshot;
            if primary == cache {
                return started.elapsed();
            }
        }
        assert!(started.elapsed() < limit, "not converged within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_under_traffic_is_refilled_within_two_seconds() {
    let mut redis = TestRedis::spawn_own(false);
    let (engine, _) = mock_engine(redis.manager().await, "heal", None).await;
    let mut rng = Lcg(11);
    for tag in 0..300 {
        random_mutation(engine.source(), &mut rng, 100, tag);
    }
    assert_converged(&engine).await;

    // Readers keep reading throughout (their misses are expected while
    // Redis is empty; what matters is that they stop).
    let reader = {
        let engine = engine.clone();
        tokio::spawn(async move {
            for _ in 0..2000 {
                let _ = engine.read("cat-001").await;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    redis.kill();
    redis.restart(); // empty: no persistence
    let restarted = Instant::now();
    // No request, no mutation: the engine has to notice by itself.
    let took = until_converged(&engine, Duration::from_secs(5)).await;
    let since_restart = restarted.elapsed();
    assert!(
        since_restart < Duration::from_secs(2),
        "refilled {since_restart:?} after the restart (converged check took {took:?})"
    );
    let stats = engine.stats();
    assert_eq!(stats.cache.self_heals, 1);
    // Traffic after the refill flows as usual.
    for tag in 300..400 {
        random_mutation(engine.source(), &mut rng, 100, tag);
    }
    assert_converged(&engine).await;
    reader.await.unwrap();
}

#[tokio::test]
async fn a_flushed_redis_is_noticed_by_the_next_write_and_refilled() {
    let redis = TestRedis::start();
    let (engine, _) = mock_engine(redis.conn().await, "flushed", None).await;
    let mut conn = redis.conn().await;
    // Everything of this cache disappears (FLUSHDB would hit other tests).
    for key in engine.cache().ids().await.unwrap() {
        let _: () = conn.del(engine.cache().key(&key)).await.unwrap();
    }
    let _: () = conn
        .del(engine.cache().key_space().meta_key())
        .await
        .unwrap();
    engine
        .source()
        .update_field("cat-002", "name", "after")
        .unwrap();
    assert_converged(&engine).await;
    assert_eq!(engine.stats().cache.self_heals, 1);
}

#[tokio::test]
async fn a_redis_behind_what_was_acknowledged_is_refilled() {
    let redis = TestRedis::start();
    let (engine, _) = mock_engine(redis.conn().await, "behind", None).await;
    for i in 0..10 {
        engine
            .source()
            .update_field("cat-004", "name", &i.to_string())
            .unwrap();
    }
    assert_converged(&engine).await;
    // As after a failover to a replica that had not caught up: an older
    // position and an older value.
    let mut conn = redis.conn().await;
    let _: () = conn
        .hset(engine.cache().key_space().meta_key(), "pos", "0:2:0")
        .await
        .unwrap();
    let _: () = conn
        .hset(engine.cache().key("cat-004"), "name", "2")
        .await
        .unwrap();
    let reason = engine.heal().await.unwrap();
    assert!(reason.unwrap().contains("behind"));
    assert_converged(&engine).await;
}

#[tokio::test]
async fn clear_is_not_mistaken_for_lost_data() {
    let redis = TestRedis::start();
    let (engine, _) = mock_engine(redis.conn().await, "clearok", None).await;
    engine.clear().await.unwrap();
    assert_eq!(engine.heal().await.unwrap(), None);
    assert!(
        engine.cache().ids().await.unwrap().is_empty(),
        "cleared stays cleared"
    );
}

/// The worker is stopped while a batch is in flight against a dead Redis;
/// a new engine over the same source starts from the position Redis holds
/// and gets everything after it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stopped_mid_batch_resumes_from_the_stored_position_with_nothing_lost() {
    let mut redis = TestRedis::spawn_own(true);
    let events = EventBus::default();
    let primary = Arc::new(MockPrimary::new(Duration::ZERO, events.clone()));
    let config = engine_config("resume");
    let (engine, first) = Engine::start(
        redis.manager().await,
        Arc::clone(&primary),
        events.clone(),
        config.clone(),
    )
    .await
    .unwrap();
    assert_eq!(first.loaded, 5);
    let mut rng = Lcg(5);
    for tag in 0..200 {
        random_mutation(engine.source(), &mut rng, 50, tag);
    }
    assert_converged(&engine).await;
    let stored = engine.state().await.unwrap().position;

    redis.kill();
    for tag in 200..400 {
        random_mutation(engine.source(), &mut rng, 50, tag);
    }
    // The worker is retrying a batch it cannot write.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !matches!(engine.sync().state(), WorkerState::Retrying { .. }) {
        assert!(Instant::now() < deadline, "worker never tried");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Stopped with the batch unwritten (the drain gives up at the deadline).
    let _ = engine.shutdown(Duration::from_millis(100)).await;
    drop(engine);
    redis.restart(); // the data fsynced so far is back
    for tag in 400..500 {
        random_mutation(&primary, &mut rng, 50, tag);
    }

    let (engine, second) = Engine::start(redis.manager().await, primary, events, config)
        .await
        .unwrap();
    assert_eq!(second.version, None, "resumed, not reloaded");
    assert_eq!(second.loaded, 0);
    assert_eq!(engine.stats().applied, stored);
    assert_converged(&engine).await;
    assert_eq!(engine.source().reads(), 1, "one snapshot in all");
}

#[tokio::test]
async fn a_version_is_what_redis_keeps_beside_each_record() {
    let redis = TestRedis::start();
    let (engine, report) = mock_engine(redis.conn().await, "versions", None).await;
    let snapshot = report.version.unwrap();
    engine
        .source()
        .update_field("cat-001", "name", "x")
        .unwrap();
    engine.settle(Duration::from_secs(2)).await.unwrap();
    let entries = engine.entries().await.unwrap();
    for e in entries {
        let expected = if e.id == "cat-001" {
            Version::new(1, 0)
        } else {
            snapshot
        };
        assert_eq!(e.version, Some(expected), "{}", e.id);
    }
}
