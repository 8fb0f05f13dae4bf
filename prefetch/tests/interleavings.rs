//! Random interleavings of every engine operation from several tasks, against
//! a real redis-server. After the tasks finish and the worker catches up:
//!
//! - no cached key holds anything but its primary record (nothing stale),
//! - no key is cached for a record the primary no longer has (no orphans),
//! - the counters add up: every primary change applied exactly once, every
//!   read counted once, one primary read per (re-)prefetch,
//! - one more re-prefetch makes the cache equal to the primary exactly.
//!
//! Keys may be *missing* (an invalidate or clear after a record's last
//! change is a legitimate way to lose a key); they may never be wrong.
//!
//! `PROPTEST_CASES` overrides the number of cases (default 100).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prefetch::testing::{TestRedis, both_sides, prefix};
use prefetch::{CacheConfig, Engine, EngineConfig, Error, EventBus, MockPrimary, Record};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

const IDS: u8 = 12;

#[derive(Clone, Debug)]
enum Op {
    Update(u8, u16),
    Add(u8),
    Delete(u8),
    Read(u8),
    Invalidate(u8),
    Clear,
    Reprefetch,
    /// Pause the worker for this many milliseconds, then resume; then try
    /// the same (now stale) resume again.
    Pause(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..IDS, any::<u16>()).prop_map(|(i, v)| Op::Update(i, v)),
        2 => (0..IDS).prop_map(Op::Add),
        2 => (0..IDS).prop_map(Op::Delete),
        2 => (0..IDS).prop_map(Op::Read),
        2 => (0..IDS).prop_map(Op::Invalidate),
        1 => Just(Op::Clear),
        1 => Just(Op::Reprefetch),
        1 => (0u8..20).prop_map(Op::Pause),
    ]
}

fn id(i: u8) -> String {
    format!("p-{i:03}")
}

fn record(i: u8, v: u16) -> Record {
    [
        ("id", id(i)),
        ("name", format!("v{v}")),
        ("display_order", i.to_string()),
    ]
    .into_iter()
    .collect()
}

#[derive(Default)]
struct Tally {
    reads: AtomicU64,
    prefetches: AtomicU64,
}

async fn run_task(
    engine: Engine<redis::aio::MultiplexedConnection>,
    ops: Vec<Op>,
    tally: Arc<Tally>,
) {
    for op in ops {
        let ok_or_expected = |r: Result<prefetch::Change, Error>| match r {
            Ok(_) | Err(Error::NotFound(_) | Error::AlreadyExists(_)) => {}
            Err(e) => panic!("mutation failed: {e}"),
        };
        match op {
            Op::Update(i, v) => {
                ok_or_expected(engine.update_field(&id(i), "name", &format!("u{v}")))
            }
            Op::Add(i) => ok_or_expected(engine.add(record(i, 0))),
            Op::Delete(i) => ok_or_expected(engine.delete(&id(i))),
            Op::Read(i) => {
                engine.read(&id(i)).await.expect("read");
                tally.reads.fetch_add(1, Ordering::SeqCst);
            }
            Op::Invalidate(i) => {
                engine.invalidate(&id(i)).await.expect("invalidate");
            }
            Op::Clear => {
                engine.clear().await.expect("clear");
            }
            Op::Reprefetch => {
                engine.reprefetch().await.expect("reprefetch");
                tally.prefetches.fetch_add(1, Ordering::SeqCst);
            }
            Op::Pause(ms) => {
                let sync = engine.sync();
                let guard = sync.pause(Duration::from_secs(2)).await.expect("pause");
                let stale = guard.id();
                tokio::time::sleep(Duration::from_millis(u64::from(ms))).await;
                guard.resume();
                assert!(!sync.resume(stale), "a resume can only act once");
            }
        }
        tokio::task::yield_now().await;
    }
}

async fn check(redis: &TestRedis, tasks: Vec<Vec<Op>>) -> Result<(), TestCaseError> {
    let events = EventBus::new(16);
    let seed: Vec<Record> = (0..IDS / 2).map(|i| record(i, 1)).collect();
    let (primary, feed) = MockPrimary::with_records(seed, Duration::ZERO, events.clone());
    let config = EngineConfig {
        cache: CacheConfig {
            prefix: prefix("prop"),
            ttl: Duration::from_secs(600),
        },
        primary_read_latency: Duration::ZERO,
        ..EngineConfig::default()
    };
    let (engine, _) = Engine::start_with(redis.conn().await, primary, feed, events, config)
        .await
        .expect("engine starts");
    let tally = Arc::new(Tally::default());
    let handles: Vec<_> = tasks
        .into_iter()
        .map(|ops| tokio::spawn(run_task(engine.clone(), ops, tally.clone())))
        .collect();
    for h in handles {
        h.await
            .map_err(|e| TestCaseError::fail(format!("task failed: {e}")))?;
    }
    engine
        .settle(Duration::from_secs(10))
        .await
        .expect("worker catches up");

    let (primary, cache) = both_sides(&engine).await;
    for (key, fields) in &cache {
        let Some(truth) = primary.get(key) else {
            return Err(TestCaseError::fail(format!("orphan {key} in the cache")));
        };
        prop_assert_eq!(fields, truth, "stale {}", key);
    }
    let stats = engine.stats();
    prop_assert_eq!(stats.cache.sync_events_applied, engine.primary().last_seq());
    prop_assert_eq!(stats.cache.sync_events_skipped, 0);
    prop_assert_eq!(
        stats.cache.hits + stats.cache.misses,
        tally.reads.load(Ordering::SeqCst)
    );
    prop_assert_eq!(
        stats.primary_reads_total,
        1 + tally.prefetches.load(Ordering::SeqCst)
    );
    prop_assert_eq!(stats.backlog, 0);

    engine.reprefetch().await.expect("final reprefetch");
    let (primary, cache) = both_sides(&engine).await;
    prop_assert_eq!(primary, cache);
    engine
        .shutdown(Duration::from_secs(2))
        .await
        .expect("stops");
    Ok(())
}

#[test]
fn random_interleavings_never_leave_a_wrong_key_and_the_counters_add_up() {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let redis = TestRedis::start();
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = proptest::collection::vec(proptest::collection::vec(op(), 0..25), 2..5);
    let result = runner.run(&strategy, |tasks| runtime.block_on(check(&redis, tasks)));
    if let Err(e) = result {
        panic!("{e}");
    }
}
