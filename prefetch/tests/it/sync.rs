//! The sync worker and the engine against a real redis-server: pause and
//! resume, batching, stop, concurrency, re-prefetch, and a Redis restart.

use std::time::Duration;

use prefetch::testing::{
    TestRedis, assert_converged, both_sides, engine_config, mock_engine, mock_engine_with,
};
use prefetch::{
    ChangeKind, Engine, Error, Event, Fields, MockPrimary, Record, Version, WorkerState,
};

use crate::Lcg;

async fn cached_field<C>(engine: &Engine<MockPrimary, C>, id: &str, field: &str) -> Option<String>
where
    C: prefetch::Connection,
{
    let lookup = engine.cache().get(id).await.unwrap();
    lookup.record.and_then(|r| r.get(field).map(str::to_owned))
}

/// One random mutation on ids `m-000..m-{space}`; returns whether it changed
/// the primary (an update/delete of a missing id or an add of an existing
/// one is refused, as it should be).
pub fn random_mutation(primary: &MockPrimary, rng: &mut Lcg, space: u64, tag: u64) -> bool {
    let id = format!("m-{:03}", rng.below(space));
    let result = match rng.below(4) {
        0 => {
            let rec: Record = [
                ("id", id.clone()),
                ("name", format!("n{tag}")),
                ("display_order", tag.to_string()),
            ]
            .into_iter()
            .collect();
            primary.add(rec).map(drop)
        }
        1 => primary.delete(&id).map(drop),
        _ => primary
            .update_field(&id, "name", &format!("v{tag}"))
            .map(drop),
    };
    match result {
        Ok(()) => true,
        Err(Error::NotFound(_) | Error::AlreadyExists(_)) => false,
        Err(e) => panic!("unexpected error: {e}"),
    }
}

#[tokio::test]
async fn the_worker_applies_a_mutation_without_being_asked() {
    let redis = TestRedis::start();
    let (engine, _) = mock_engine(redis.conn().await, "basic", None).await;
    engine
        .source()
        .update_field("cat-001", "name", "Drinks")
        .unwrap();
    engine.settle(Duration::from_secs(2)).await.unwrap();
    assert_eq!(
        cached_field(&engine, "cat-001", "name").await.as_deref(),
        Some("Drinks")
    );
    let stats = engine.stats();
    assert_eq!(stats.cache.sync_events_applied, 1);
    assert_eq!(stats.backlog, 0);
    assert_eq!(stats.applied, Some(Version::new(1, 0)));
    assert!(stats.cache.sync_lag.count == 1 && stats.cache.sync_lag.mean > Duration::ZERO);
    assert!(stats.cache.sync_lag.p99 >= stats.cache.sync_lag.p50);
    engine.shutdown(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test]
async fn paused_worker_applies_nothing_until_resume_then_everything_in_order() {
    let redis = TestRedis::start();
    let (engine, _) = mock_engine(redis.conn().await, "pause", None).await;
    let pause = engine.sync().pause(Duration::from_secs(1)).await.unwrap();
    assert_eq!(engine.sync().state(), WorkerState::Paused);
    let primary = engine.source();

    for i in 0..200 {
        primary
            .update_field("cat-002", "name", &format!("v{i}"))
            .unwrap();
    }
    primary.delete("cat-004").unwrap();
    primary
        .add(
            [("id", "cat-006"), ("name", "Seasonal")]
                .into_iter()
                .collect(),
        )
        .unwrap();
    primary
        .update_field("cat-006", "name", "Seasonal 2")
        .unwrap();

    // Give a wrongly running worker every chance to apply something.
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(
        cached_field(&engine, "cat-002", "name").await.as_deref(),
        Some("Bakery")
    );
    assert!(engine.cache().get("cat-004").await.unwrap().hit());
    assert!(!engine.cache().get("cat-006").await.unwrap().hit());
    assert_eq!(engine.stats().cache.sync_events_applied, 0);
    assert_eq!(engine.stats().backlog, 203);

    pause.resume();
    assert_converged(&engine).await;
    assert_eq!(
        cached_field(&engine, "cat-002", "name").await.as_deref(),
        Some("v199")
    );
    assert_eq!(
        cached_field(&engine, "cat-006", "name").await.as_deref(),
        Some("Seasonal 2")
    );
    assert_eq!(engine.stats().cache.sync_events_applied, 203, "none lost");
}

#[tokio::test]
async fn the_worker_runs_again_only_once_every_pause_is_gone() {
    let redis = TestRedis::start();
    let (engine, _) = mock_engine(redis.conn().await, "overlap", None).await;
    let sync = engine.sync().clone();

    let first = sync.pause(Duration::from_secs(1)).await.unwrap();
    let second = sync.pause(Duration::from_secs(1)).await.unwrap();
    engine
        .source()
        .update_field("cat-001", "name", "while paused")
        .unwrap();
    first.resume();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(sync.state(), WorkerState::Paused, "one pause is still out");
    assert_eq!(
        cached_field(&engine, "cat-001", "name").await.as_deref(),
        Some("Beverages")
    );
    drop(second); // dropping a guard resumes
    engine.settle(Duration::from_secs(2)).await.unwrap();
    assert_eq!(
        cached_field(&engine, "cat-001", "name").await.as_deref(),
        Some("while paused")
    );
}

#[tokio::test]
async fn pause_times_out_while_an_apply_is_in_flight_and_withdraws_itself() {
    let redis = TestRedis::start();
    let (engine, _) = mock_engine(redis.conn().await, "stuck", None).await;
    let mut admin = redis.conn().await;

    // Writes block inside Redis for 800 ms, so the next apply hangs in flight.
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(800)
        .arg("WRITE")
        .query_async(&mut admin)
        .await
        .unwrap();
    engine
        .source()
        .update_field("cat-003", "name", "slow")
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;

    let err = engine
        .sync()
        .pause(Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::PauseTimeout(_)), "{err}");

    // The failed pause left nothing behind: the apply completes and the
    // worker keeps running.
    engine.settle(Duration::from_secs(3)).await.unwrap();
    assert_eq!(engine.sync().state(), WorkerState::Running);
    assert_eq!(
        cached_field(&engine, "cat-003", "name").await.as_deref(),
        Some("slow")
    );
    let guard = engine.sync().pause(Duration::from_secs(1)).await.unwrap();
    guard.resume();
}

#[tokio::test]
async fn a_burst_queued_while_paused_is_applied_in_one_round_trip() {
    let redis = TestRedis::start();
    let (engine, _) = mock_engine(redis.conn().await, "burst", None).await;
    let pause = engine.sync().pause(Duration::from_secs(1)).await.unwrap();
    for i in 0..1000 {
        let id = format!("cat-00{}", i % 5 + 1);
        engine
            .source()
            .update_field(&id, "display_order", &i.to_string())
            .unwrap();
    }
    let batches_before = engine.stats().cache.sync_batches;
    pause.resume();
    assert_converged(&engine).await;
    let stats = engine.stats().cache;
    assert_eq!(stats.sync_batches - batches_before, 1);
    assert_eq!(stats.sync_events_applied, 1000);
}

#[tokio::test]
async fn malformed_changes_from_the_source_are_skipped_and_counted_not_fatal() {
    let redis = TestRedis::start();
    let (engine, _) = mock_engine(redis.conn().await, "badfeed", None).await;
    let primary = engine.source();
    primary.emit_raw(
        "cat-001",
        ChangeKind::Upsert(std::sync::Arc::new(Fields::new())),
    );
    primary.emit_raw("", ChangeKind::Delete);
    primary.update_field("cat-001", "name", "after").unwrap();
    engine.settle(Duration::from_secs(2)).await.unwrap();
    let stats = engine.stats();
    assert_eq!(stats.cache.sync_events_skipped, 2);
    assert_eq!(stats.cache.sync_events_applied, 1);
    assert_eq!(stats.worker, WorkerState::Running);
    assert_eq!(
        cached_field(&engine, "cat-001", "name").await.as_deref(),
        Some("after")
    );
}

#[tokio::test]
async fn stop_applies_what_is_queued_overriding_a_pause_and_joins() {
    let redis = TestRedis::start();
    let (engine, _) = mock_engine(redis.conn().await, "stop", None).await;
    let pause = engine.sync().pause(Duration::from_secs(1)).await.unwrap();
    for i in 0..50 {
        engine
            .source()
            .update_field("cat-005", "name", &format!("s{i}"))
            .unwrap();
    }
    engine.shutdown(Duration::from_secs(2)).await.unwrap();
    assert_eq!(engine.sync().state(), WorkerState::Stopped);
    assert_eq!(
        cached_field(&engine, "cat-005", "name").await.as_deref(),
        Some("s49")
    );
    drop(pause);
    let err = engine
        .sync()
        .pause(Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::WorkerStopped), "{err}");
    // Stopping twice is fine.
    engine.shutdown(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_concurrent_mutations_end_with_the_cache_equal_to_the_primary() {
    let redis = TestRedis::start();
    let (engine, _) = mock_engine(redis.conn().await, "10k", None).await;
    let tasks: Vec<_> = (0..8u64)
        .map(|t| {
            let engine = engine.clone();
            tokio::spawn(async move {
                let mut rng = Lcg(t + 1);
                let mut done = 0;
                let mut tag = 0;
                while done < 1250 {
                    tag += 1;
                    if random_mutation(engine.source(), &mut rng, 300, t * 1_000_000 + tag) {
                        done += 1;
                    }
                    if tag % 64 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(engine.source().head(), Some(Version::new(10_000, 0)));
    assert_converged(&engine).await;
    assert_eq!(engine.stats().cache.sync_events_applied, 10_000);
    assert_eq!(engine.stats().cache.sync_events_stale, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reprefetch_under_concurrent_mutations_ends_equal() {
    let redis = TestRedis::start();
    let (engine, _) = mock_engine(redis.conn().await, "reprefetch", None).await;
    let mutators: Vec<_> = (0..4u64)
        .map(|t| {
            let engine = engine.clone();
            tokio::spawn(async move {
                let mut rng = Lcg(100 + t);
                for tag in 0..1500 {
                    random_mutation(engine.source(), &mut rng, 100, tag);
                    if tag % 16 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            })
        })
        .collect();
    // Two admins re-prefetching and clearing at once, repeatedly.
    let admins: Vec<_> = (0..2)
        .map(|a| {
            let engine = engine.clone();
            tokio::spawn(async move {
                for i in 0..5 {
                    if (a + i) % 3 == 0 {
                        engine.clear().await.unwrap();
                    }
                    engine.reprefetch().await.unwrap();
                }
            })
        })
        .collect();
    for t in mutators.into_iter().chain(admins) {
        t.await.unwrap();
    }
    assert_converged(&engine).await;
    assert_eq!(
        engine.source().reads(),
        1 + 10,
        "one primary read per prefetch"
    );
    assert_eq!(engine.stats().cache.reprefetches, 10);
}

/// The window the version guard closes without a pause: a change made after
/// the primary took its snapshot (while its reply travels, half the read
/// latency) but applied before the snapshot lands would be overwritten by
/// the older snapshot. Every record here changes exactly once, so nothing
/// later can repair such a loss, and changes keep coming while
/// re-prefetches run back to back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_made_during_reprefetch_is_not_overwritten_by_the_snapshot() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const RECORDS: usize = 5_000;
    let redis = TestRedis::start();
    let (engine, _) = mock_engine_with(
        redis.conn().await,
        engine_config("reprefetch-window"),
        None,
        Duration::from_millis(40),
    )
    .await;
    for i in 0..RECORDS {
        let rec: Record = [("id", format!("w-{i:05}")), ("name", "before".to_owned())]
            .into_iter()
            .collect();
        engine.source().add(rec).unwrap();
    }
    assert_converged(&engine).await;

    let changed = Arc::new(AtomicUsize::new(0));
    let mutator = {
        let engine = engine.clone();
        let changed = Arc::clone(&changed);
        tokio::spawn(async move {
            for i in 0..RECORDS {
                // A stride coprime to RECORDS visits every record once, in
                // an order spread over the whole id range (and so over
                // every bulk-load chunk).
                let id = format!("w-{:05}", i * 7919 % RECORDS);
                engine.source().update_field(&id, "name", "after").unwrap();
                changed.store(i + 1, Ordering::SeqCst);
                if i % 25 == 24 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        })
    };
    let mut reprefetches = 0;
    while changed.load(Ordering::SeqCst) < RECORDS {
        engine.reprefetch().await.unwrap();
        reprefetches += 1;
    }
    mutator.await.unwrap();
    assert!(
        reprefetches >= 1,
        "changes must be under way while re-prefetching"
    );
    assert_converged(&engine).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_mid_stream_the_worker_retries_and_converges_with_nothing_lost() {
    // A server of our own that fsyncs every write, so a kill -9 loses only
    // what was never acknowledged, which the worker must then retry.
    let mut redis = TestRedis::spawn_own(true);
    let (engine, _) = mock_engine(redis.manager().await, "restart", None).await;
    let mut rng = Lcg(7);

    for tag in 0..1000 {
        random_mutation(engine.source(), &mut rng, 200, tag);
    }
    redis.kill();
    for tag in 1000..2000 {
        random_mutation(engine.source(), &mut rng, 200, tag);
        if tag % 100 == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    // The worker has been failing against the dead server meanwhile.
    assert!(engine.stats().cache.sync_retries > 0);
    assert!(matches!(
        engine.sync().state(),
        WorkerState::Retrying { .. }
    ));
    redis.restart();
    for tag in 2000..3000 {
        random_mutation(engine.source(), &mut rng, 200, tag);
    }
    assert_converged(&engine).await;
    assert_eq!(engine.sync().state(), WorkerState::Running);
    let (primary, _) = both_sides(&engine).await;
    assert!(!primary.is_empty());
}

#[tokio::test]
async fn the_event_feed_reports_primary_changes_sync_writes_and_admin_actions() {
    let redis = TestRedis::start();
    let (engine, _) = mock_engine(redis.conn().await, "feed", None).await;
    let mut feed = engine.subscribe();
    engine
        .source()
        .update_field("cat-002", "featured", "false")
        .unwrap();
    engine.settle(Duration::from_secs(1)).await.unwrap();
    engine.invalidate("cat-002").await.unwrap();

    let mut seen = Vec::new();
    while seen.len() < 3 {
        let ev = tokio::time::timeout(Duration::from_secs(1), feed.recv())
            .await
            .expect("event within 1 s")
            .expect("feed open");
        match ev {
            Event::Primary(tx) => {
                let c = &tx.changes[0];
                assert_eq!(
                    (c.id.as_str(), c.op().as_str(), c.version),
                    ("cat-002", "upsert", Version::new(1, 0))
                );
                seen.push("primary");
            }
            Event::SyncApplied {
                writes, applied, ..
            } => {
                assert_eq!(applied, 1);
                assert_eq!(writes[0].id, "cat-002");
                assert_eq!(writes[0].outcome, prefetch::WriteOutcome::Applied);
                let fields = writes[0].fields.as_ref().unwrap();
                assert_eq!(fields.get("featured").map(String::as_str), Some("false"));
                seen.push("sync");
            }
            Event::Invalidated { id, existed } => {
                assert!(existed);
                assert_eq!(id, "cat-002");
                seen.push("invalidate");
            }
            Event::Worker(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen, ["primary", "sync", "invalidate"]);
}
