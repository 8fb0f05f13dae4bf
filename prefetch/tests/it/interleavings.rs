//! Random interleavings of every engine operation from several tasks, against
//! a real redis-server. After the tasks finish and the worker catches up:
//!
//! - no cached key holds anything but its primary record (nothing stale),
//! - no key is cached for a record the primary no longer has (no orphans),
//! - the counters add up: every primary change either applied or refused
//!   as stale exactly once, every read counted once, one primary read per
//!   (re-)prefetch,
//! - one more re-prefetch makes the cache equal to the primary exactly.
//!
//! Keys may be *missing* (an invalidate or clear after a record's last
//! change is a legitimate way to lose a key); they may never be wrong.
//!
//! A second property adds competing appliers that replay random old changes
//! (duplicates, reorders, replays) beside the worker and re-prefetches: the
//! version guard must end with Redis equal to the source, exactly.
//!
//! `PROPTEST_CASES` overrides the number of cases (default 100 and 200).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prefetch::testing::{TestRedis, both_sides, engine_config, mock_engine, mock_engine_with};
use prefetch::{Change, Connection, Engine, Error, MockPrimary, Record};
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestRunner};

const IDS: u8 = 12;

/// Two to four tasks of random operations.
pub(crate) fn tasks() -> impl Strategy<Value = Vec<Vec<Op>>> {
    proptest::collection::vec(proptest::collection::vec(op(), 0..25), 2..5)
}

/// Two to four tasks of changes, replays and re-prefetches.
pub(crate) fn races() -> impl Strategy<Value = Vec<Vec<Race>>> {
    proptest::collection::vec(proptest::collection::vec(race(), 0..30), 2..5)
}

#[derive(Clone, Debug)]
pub(crate) enum Op {
    Update(u8, u16),
    Add(u8),
    Delete(u8),
    Read(u8),
    Invalidate(u8),
    Clear,
    Reprefetch,
    /// Pause the worker for this many milliseconds, then resume.
    Pause(u8),
}

/// Two to four tasks weighted towards the admin actions that remove keys
/// or rewrite them from a snapshot (invalidate, clear, re-prefetch, pause)
/// racing updates.
pub(crate) fn admin_tasks() -> impl Strategy<Value = Vec<Vec<Op>>> {
    proptest::collection::vec(proptest::collection::vec(admin_op(), 0..25), 2..5)
}

fn admin_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0..IDS, any::<u16>()).prop_map(|(i, v)| Op::Update(i, v)),
        1 => (0..IDS).prop_map(Op::Add),
        1 => (0..IDS).prop_map(Op::Delete),
        3 => (0..IDS).prop_map(Op::Invalidate),
        2 => Just(Op::Clear),
        3 => Just(Op::Reprefetch),
        1 => (0u8..20).prop_map(Op::Pause),
    ]
}

/// The primary's read latency in the admin property, and the pause after
/// each operation: a snapshot's read spans several updates and removals.
pub(crate) const ADMIN_LATENCY: Duration = Duration::from_millis(10);
pub(crate) const ADMIN_PACE: Duration = Duration::from_millis(1);

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

type TestEngine<C> = Engine<MockPrimary, C>;

fn ok_or_expected(r: Result<Change, Error>) -> Option<Change> {
    match r {
        Ok(c) => Some(c),
        Err(Error::NotFound(_) | Error::AlreadyExists(_)) => None,
        Err(e) => panic!("mutation failed: {e}"),
    }
}

async fn run_task<C: Connection>(
    engine: TestEngine<C>,
    ops: Vec<Op>,
    tally: Arc<Tally>,
    pace: Duration,
) {
    let primary = engine.source().clone();
    for op in ops {
        match op {
            Op::Update(i, v) => {
                ok_or_expected(primary.update_field(&id(i), "name", &format!("u{v}")));
            }
            Op::Add(i) => {
                ok_or_expected(primary.add(record(i, 0)));
            }
            Op::Delete(i) => {
                ok_or_expected(primary.delete(&id(i)));
            }
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
                let guard = engine
                    .sync()
                    .pause(Duration::from_secs(2))
                    .await
                    .expect("pause");
                tokio::time::sleep(Duration::from_millis(u64::from(ms))).await;
                guard.resume();
            }
        }
        if pace.is_zero() {
            tokio::task::yield_now().await;
        } else {
            tokio::time::sleep(pace).await;
        }
    }
}

/// Runs each task on a tokio task of its own, then waits until the worker
/// has applied everything.
async fn run_all<C: Connection, T, Fut>(
    engine: &TestEngine<C>,
    tasks: Vec<T>,
    task: impl Fn(T) -> Fut,
) -> Result<(), TestCaseError>
where
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let handles: Vec<_> = tasks
        .into_iter()
        .map(|ops| tokio::spawn(task(ops)))
        .collect();
    for h in handles {
        h.await
            .map_err(|e| TestCaseError::fail(format!("task failed: {e}")))?;
    }
    engine
        .settle(Duration::from_secs(10))
        .await
        .expect("worker catches up");
    Ok(())
}

/// Reads every id's stored version over and over while the tasks run: a
/// key's version may vanish (a delete, an invalidate, a clear) but never
/// come back lower than one already seen, whatever wrote it. This sees a
/// key go back in time even when a later change repairs it before the end.
async fn watch_versions<C: Connection>(
    engine: TestEngine<C>,
    stop: Arc<AtomicBool>,
) -> Option<String> {
    let mut seen: Vec<Option<prefetch::Version>> = vec![None; usize::from(IDS)];
    while !stop.load(Ordering::SeqCst) {
        for i in 0..IDS {
            let entry = engine.cache().peek(&id(i)).await.expect("peek");
            let Some(version) = entry.and_then(|e| e.version) else {
                continue;
            };
            let before = &mut seen[usize::from(i)];
            if *before > Some(version) {
                return Some(format!(
                    "{} moved back from version {} to {version}",
                    id(i),
                    before.map(|v| v.to_string()).unwrap_or_default()
                ));
            }
            *before = Some(version);
        }
        tokio::task::yield_now().await;
    }
    None
}

pub(crate) async fn check<C: Connection>(
    conn: C,
    tasks: Vec<Vec<Op>>,
) -> Result<(), TestCaseError> {
    check_with(conn, tasks, Duration::ZERO, Duration::ZERO).await
}

/// [`check`] with the primary's reads taking `latency`, and each task
/// waiting `pace` after each of its operations (so that they spread over
/// the re-prefetches instead of finishing in one burst).
pub(crate) async fn check_with<C: Connection>(
    conn: C,
    tasks: Vec<Vec<Op>>,
    latency: Duration,
    pace: Duration,
) -> Result<(), TestCaseError> {
    let seed: Vec<Record> = (0..IDS / 2).map(|i| record(i, 1)).collect();
    let (engine, _) = mock_engine_with(conn, engine_config("prop"), Some(seed), latency).await;
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = tokio::spawn(watch_versions(engine.clone(), stop.clone()));
    let ran = run_all(&engine, tasks, |ops| {
        run_task(engine.clone(), ops, tally.clone(), pace)
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    let moved_back = watcher.await.expect("the watcher ends");
    ran?;
    if let Some(violation) = moved_back {
        return Err(TestCaseError::fail(violation));
    }

    let (primary, cache) = both_sides(&engine).await;
    for (key, fields) in &cache {
        let Some(truth) = primary.get(key) else {
            return Err(TestCaseError::fail(format!("orphan {key} in the cache")));
        };
        prop_assert_eq!(fields, truth, "stale {}", key);
    }
    let stats = engine.stats();
    let committed = engine.source().head().map_or(0, |v| v.commit);
    let handled = stats.cache.sync_events_applied + stats.cache.sync_events_stale;
    if tally.prefetches.load(Ordering::SeqCst) == 0 {
        prop_assert_eq!(handled, committed);
    } else {
        // A snapshot covers the changes before it that were still queued:
        // acknowledging it lets the source forget them unapplied.
        prop_assert!(handled <= committed);
    }
    prop_assert_eq!(stats.cache.sync_events_skipped, 0);
    prop_assert_eq!(
        stats.cache.hits + stats.cache.misses,
        tally.reads.load(Ordering::SeqCst)
    );
    // A key left missing (an invalidate before a re-prefetch that did not
    // bring it back) and then read is restored from the source: one read
    // each, counted once the restorations are done.
    let started = std::time::Instant::now();
    while engine.restoring() > 0 && started.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let stats = engine.stats();
    prop_assert_eq!(
        engine.source().reads(),
        1 + tally.prefetches.load(Ordering::SeqCst) + stats.cache.repair_source_reads
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

/// Where the properties of this module keep the seeds of the failures
/// they found (relative to the crate: tests run in its directory).
const REGRESSIONS: &str = "tests/it/interleavings.proptest-regressions";

/// A two-thread runtime and a proptest runner of `PROPTEST_CASES` (default
/// `default`) cases that replays and records failures in [`REGRESSIONS`].
pub(crate) fn harness(default: u32) -> (tokio::runtime::Runtime, TestRunner) {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let runner = TestRunner::new(Config {
        cases,
        // Seeds of failures found so far, replayed first on every run (a
        // new failure is added here; commit it).
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(REGRESSIONS))),
        ..Config::default()
    });
    (runtime, runner)
}

/// The minimal failing input proptest found in CI on a cluster (three
/// tasks): task 2 updates p-010 and later invalidates it while task 0's
/// re-prefetch writes its snapshot; the snapshot's older row landed on the
/// emptied key.
pub(crate) fn ci_minimal_input() -> Vec<Vec<Op>> {
    use Op::*;
    vec![
        vec![Update(0, 19), Read(1), Clear, Reprefetch],
        vec![
            Update(8, 25382),
            Update(10, 18371),
            Update(2, 45671),
            Update(4, 57046),
            Update(8, 23201),
            Read(2),
            Add(3),
            Update(11, 12636),
            Add(3),
            Add(3),
            Update(8, 46399),
            Update(10, 52774),
            Delete(1),
            Update(5, 3227),
            Delete(6),
            Update(8, 26247),
            Update(2, 63067),
            Add(10),
            Update(1, 42943),
            Update(8, 11244),
            Update(2, 54408),
        ],
        vec![
            Clear,
            Reprefetch,
            Update(10, 22516),
            Update(7, 10525),
            Add(8),
            Update(7, 1208),
            Read(7),
            Invalidate(10),
            Update(7, 15558),
            Update(5, 19284),
            Update(6, 34224),
            Update(7, 50938),
            Update(5, 28990),
            Invalidate(0),
            Update(11, 35375),
            Add(6),
            Update(5, 59874),
            Update(11, 30004),
        ],
    ]
}

/// How many times the minimal input is replayed: its outcome depends on
/// how the tasks interleave, so one run proves little.
pub(crate) const MINIMAL_RUNS: usize = 25;

#[test]
fn the_ci_minimal_input_never_leaves_a_wrong_key() {
    let (runtime, _) = harness(1);
    let redis = TestRedis::start();
    for run in 0..MINIMAL_RUNS {
        let result =
            runtime.block_on(async { check(redis.conn().await, ci_minimal_input()).await });
        if let Err(e) = result {
            panic!("run {run}: {e}");
        }
    }
}

#[test]
fn admin_actions_racing_updates_never_leave_a_wrong_key() {
    let (runtime, mut runner) = harness(60);
    let redis = TestRedis::start();
    let result = runner.run(&admin_tasks(), |tasks| {
        runtime.block_on(async {
            check_with(redis.conn().await, tasks, ADMIN_LATENCY, ADMIN_PACE).await
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[test]
fn random_interleavings_never_leave_a_wrong_key_and_the_counters_add_up() {
    let (runtime, mut runner) = harness(100);
    let redis = TestRedis::start();
    let result = runner.run(&tasks(), |tasks| {
        runtime.block_on(async { check(redis.conn().await, tasks).await })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// What a competing-applier task does.
#[derive(Clone, Debug)]
pub(crate) enum Race {
    /// A real change at the source (update, add or delete of one id).
    Mutate(u8, u8, u16),
    /// Apply this many changes picked from everything committed so far
    /// (old ones, duplicates, in a shuffled order) beside the worker.
    Replay(u16, u8),
    Reprefetch,
}

fn race() -> impl Strategy<Value = Race> {
    prop_oneof![
        6 => (0..IDS, 0u8..4, any::<u16>()).prop_map(|(i, k, v)| Race::Mutate(i, k, v)),
        3 => (any::<u16>(), 1u8..12).prop_map(|(s, n)| Race::Replay(s, n)),
        1 => Just(Race::Reprefetch),
    ]
}

/// Picks `n` changes from `history` (with repeats), in a scrambled order.
fn pick(history: &[Change], seed: u16, n: u8) -> Vec<Change> {
    let mut rng = crate::Lcg(u64::from(seed) + 1);
    (0..n)
        .filter_map(|_| {
            let len = history.len() as u64;
            (len > 0).then(|| history[rng.below(len) as usize].clone())
        })
        .collect()
}

async fn race_task<C: Connection>(
    engine: TestEngine<C>,
    ops: Vec<Race>,
    history: Arc<Mutex<Vec<Change>>>,
) {
    let primary = engine.source().clone();
    for op in ops {
        match op {
            Race::Mutate(i, kind, v) => {
                let change = match kind {
                    0 => ok_or_expected(primary.add(record(i, v))),
                    1 => ok_or_expected(primary.delete(&id(i))),
                    _ => ok_or_expected(primary.update_field(&id(i), "name", &format!("r{v}"))),
                };
                if let Some(change) = change {
                    history.lock().unwrap().push(change);
                }
            }
            Race::Replay(seed, n) => {
                let picked = pick(&history.lock().unwrap(), seed, n);
                engine
                    .cache()
                    .apply_batch(&picked, None)
                    .await
                    .expect("replay applies");
            }
            Race::Reprefetch => {
                engine.reprefetch().await.expect("reprefetch");
            }
        }
        tokio::task::yield_now().await;
    }
}

pub(crate) async fn check_race<C: Connection>(
    conn: C,
    tasks: Vec<Vec<Race>>,
) -> Result<(), TestCaseError> {
    let seed: Vec<Record> = (0..IDS / 2).map(|i| record(i, 1)).collect();
    let (engine, _) = mock_engine(conn, "race", Some(seed)).await;
    let history = Arc::new(Mutex::new(Vec::new()));
    run_all(&engine, tasks, |ops| {
        race_task(engine.clone(), ops, history.clone())
    })
    .await?;
    // Last, the whole history again, newest first, one change per call (a
    // batch would send only the newest per id): nothing may move back.
    let all = history.lock().unwrap().clone();
    for change in all.iter().rev() {
        engine
            .cache()
            .apply_batch(std::slice::from_ref(change), None)
            .await
            .expect("replay");
    }
    let (primary, cache) = both_sides(&engine).await;
    prop_assert_eq!(primary, cache);
    engine
        .shutdown(Duration::from_secs(2))
        .await
        .expect("stops");
    Ok(())
}

#[test]
fn duplicates_reorders_replays_and_reprefetches_end_with_redis_equal_to_the_source() {
    let (runtime, mut runner) = harness(200);
    let redis = TestRedis::start();
    let result = runner.run(&races(), |tasks| {
        runtime.block_on(async { check_race(redis.conn().await, tasks).await })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
