//! Operations: reconciliation classifies each kind of drift exactly and
//! repairs it, the memory budget refuses a load that would not fit, OOM
//! during sync is retried until memory is freed, injected faults do what
//! they say and the version guard contains them.

use std::time::Duration;

use prefetch::launcher::RedisOptions;
use prefetch::testing::{
    TestRedis, assert_converged, assert_converged_of, engine_config, faulty_mock_engine,
    mock_engine, mock_engine_with,
};
use prefetch::{Error, Fault, Record, Ttl};
use redis::AsyncCommands;

use crate::Lcg;
use crate::sync::random_mutation;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciliation_classifies_each_kind_of_drift_exactly_and_repairs_it() {
    let redis = TestRedis::start();
    let (engine, primary, faults) = faulty_mock_engine(redis.conn().await, "drift").await;
    let mut conn = redis.conn().await;
    let key = |id: &str| engine.cache().key(id);
    // missing: the key is gone.
    let _: () = conn.del(key("cat-001")).await.unwrap();
    // orphaned: a key the primary never had.
    let _: () = conn.hset(key("ghost"), "id", "ghost").await.unwrap();
    // stale: an event lost on the way (the pipeline's own older write stays).
    faults.inject(Fault::Drop(1));
    primary.update_field("cat-002", "name", "Bread").unwrap();
    engine.settle(Duration::from_secs(2)).await.unwrap();
    // changed_outside: someone edited the hash.
    let _: () = conn.hset(key("cat-003"), "name", "vandal").await.unwrap();
    // in_flight: a change the worker is still holding when the snapshot is
    // taken; it lands before the recheck.
    faults.inject(Fault::Delay(1, Duration::from_millis(600)));
    primary.update_field("cat-004", "name", "Ice").unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;

    let report = engine.reconcile(false).await.unwrap();
    assert_eq!(report.missing, ["cat-001"]);
    assert_eq!(report.orphaned, ["ghost"]);
    assert_eq!(report.stale, ["cat-002"]);
    assert_eq!(report.changed_outside, ["cat-003"]);
    assert_eq!(report.in_flight, ["cat-004"]);
    assert_eq!(report.checked, 6);
    assert_eq!(report.repaired, 0, "a check changes nothing");
    // The recheck waited for the delayed change to land, not for the 5 s
    // bound on that wait (the source's positions stop short of the
    // snapshot's version).
    assert!(
        report.elapsed < Duration::from_secs(5),
        "{:?}",
        report.elapsed
    );
    assert!(!engine.cache().get("cat-001").await.unwrap().hit());

    let repaired = engine.reconcile(true).await.unwrap();
    assert_eq!(repaired.repaired, 4);
    let clean = engine.reconcile(false).await.unwrap();
    assert!(clean.is_clean(), "{clean:?}");
    assert_converged_of(&engine, primary.as_ref()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repair_under_concurrent_writes_converges() {
    let redis = TestRedis::start();
    let (engine, primary, faults) = faulty_mock_engine(redis.conn().await, "repairlive").await;
    let mut rng = Lcg(3);
    for tag in 0..300 {
        random_mutation(&primary, &mut rng, 60, tag);
    }
    engine.settle(Duration::from_secs(5)).await.unwrap();
    // Break it: drop some changes and delete some keys behind its back.
    faults.inject(Fault::Drop(20));
    let mut conn = redis.conn().await;
    for id in engine.cache().ids().await.unwrap().iter().step_by(3) {
        let _: () = conn.del(engine.cache().key(id)).await.unwrap();
    }
    let mutator = {
        let primary = primary.clone();
        tokio::spawn(async move {
            let mut rng = Lcg(9);
            for tag in 300..2300 {
                random_mutation(&primary, &mut rng, 60, tag);
                if tag % 20 == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        })
    };
    let during = engine.reconcile(true).await.unwrap();
    assert!(during.repaired > 0, "{during:?}");
    mutator.await.unwrap();
    engine.settle(Duration::from_secs(5)).await.unwrap();
    // What the repair missed while writes ran (dropped changes of rows
    // that did not change again), a second pass fixes; then it is clean.
    engine.reconcile(true).await.unwrap();
    let after = engine.reconcile(false).await.unwrap();
    assert!(after.is_clean(), "{after:?}");
    assert_converged_of(&engine, primary.as_ref()).await;
}

#[tokio::test]
async fn reconciliation_refreshes_the_ttl_of_keys_found_correct() {
    let redis = TestRedis::start();
    let (engine, _) = mock_engine(redis.conn().await, "ttlrefresh", None).await;
    let mut conn = redis.conn().await;
    let _: () = conn
        .expire(engine.cache().key("cat-005"), 100)
        .await
        .unwrap();
    let report = engine.reconcile(false).await.unwrap();
    assert!(report.is_clean());
    assert_eq!(report.verified, 5);
    let Ttl::Seconds(left) = engine.cache().ttl("cat-005").await.unwrap() else {
        panic!("cat-005 has a TTL");
    };
    assert!(left > 3500, "TTL refreshed to a full hour, got {left}");
}

#[tokio::test]
async fn a_load_that_would_not_fit_in_maxmemory_is_refused_with_both_figures() {
    let redis = TestRedis::spawn_with(
        false,
        &["--maxmemory", "3mb", "--maxmemory-policy", "noeviction"],
    );
    let records: Vec<Record> = (0..20_000)
        .map(|i| {
            [
                ("id", format!("big-{i:06}")),
                ("name", format!("a record with a reasonably long name {i}")),
                ("display_order", i.to_string()),
            ]
            .into_iter()
            .collect()
        })
        .collect();
    let events = prefetch::EventBus::default();
    let primary = std::sync::Arc::new(prefetch::MockPrimary::with_records(
        records,
        Duration::ZERO,
        events.clone(),
    ));
    let err = prefetch::Engine::start(redis.conn().await, primary, events, engine_config("budget"))
        .await
        .expect_err("20,000 records do not fit in 3 MB");
    let message = err.to_string();
    assert!(matches!(err, Error::MemoryBudget { .. }), "{message}");
    assert!(
        message.contains(" MB of Redis memory") && message.contains("budget is 2."),
        "a budget of 3 MB less its headroom, with its decimals: {message}"
    );
    let mut conn = redis.conn().await;
    let keys: Vec<String> = conn.keys("t:budget:*").await.unwrap();
    assert!(keys.is_empty(), "nothing written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oom_during_sync_is_retried_until_memory_is_freed_with_nothing_lost() {
    let redis = TestRedis::spawn_options(RedisOptions {
        args: ["--maxmemory", "4mb", "--maxmemory-policy", "noeviction"]
            .map(String::from)
            .to_vec(),
        die_with_parent: true,
        ..RedisOptions::default()
    });
    let (engine, _) = mock_engine_with(
        redis.conn().await,
        engine_config("oom"),
        None,
        Duration::ZERO,
    )
    .await;
    // Fill Redis to its limit with something else.
    let mut conn = redis.conn().await;
    let blob = "x".repeat(64 * 1024);
    let mut filler = Vec::new();
    for i in 0..200 {
        let key = format!("filler:{i}");
        let set: redis::RedisResult<()> = conn.set(&key, &blob).await;
        if set.is_err() {
            break;
        }
        filler.push(key);
    }
    for i in 0..50 {
        let rec: Record = [("id", format!("new-{i:03}")), ("name", "x".repeat(2000))]
            .into_iter()
            .collect();
        engine.source().add(rec).unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while engine.stats().cache.sync_oom_retries == 0 {
        assert!(std::time::Instant::now() < deadline, "never ran into OOM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(matches!(
        engine.sync().state(),
        prefetch::WorkerState::Retrying { .. }
    ));
    for key in filler {
        let _: () = conn.del(key).await.unwrap();
    }
    assert_converged(&engine).await;
    assert!(engine.stats().cache.sync_oom_retries > 0);
}

#[tokio::test]
async fn duplicates_and_reorders_change_nothing_and_an_outage_loses_nothing() {
    let redis = TestRedis::start();
    let (engine, primary, faults) = faulty_mock_engine(redis.conn().await, "faults").await;
    let mut feed = engine.subscribe();
    // What the guard did with a copy or a late change is told once it is
    // applied, after the original: wait for that, not only for the worker.
    faults.inject(Fault::Duplicate(1));
    primary.update_field("cat-001", "name", "one").unwrap();
    let kinds = told(&mut feed, "duplicated").await;
    assert_eq!(
        engine.stats().cache.sync_events_stale,
        1,
        "the copy was refused"
    );

    faults.inject(Fault::Reorder(2));
    primary
        .transaction(vec![prefetch::Mutation::Put(
            [("id", "cat-002"), ("name", "first")].into_iter().collect(),
        )])
        .unwrap();
    primary.update_field("cat-002", "name", "second").unwrap();
    let reordered = told(&mut feed, "reordered").await;
    assert_converged_of(&engine, primary.as_ref()).await;

    faults.inject(Fault::Outage(Duration::from_millis(400)));
    primary
        .update_field("cat-003", "name", "after outage")
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(matches!(
        engine.sync().state(),
        prefetch::WorkerState::Retrying { .. }
    ));
    assert_converged_of(&engine, primary.as_ref()).await;
    assert!(
        kinds.contains(&("duplicated", Some(prefetch::WriteOutcome::Stale))),
        "{kinds:?}"
    );
    assert!(
        reordered.iter().any(|(k, _)| *k == "reordered"),
        "{reordered:?}"
    );
}

/// The faults announced on `feed` until one of kind `want` comes with the
/// guard's outcome (at most 5 s).
async fn told(
    feed: &mut tokio::sync::broadcast::Receiver<prefetch::Event>,
    want: &'static str,
) -> Vec<(&'static str, Option<prefetch::WriteOutcome>)> {
    let mut kinds = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, feed.recv()).await {
            Ok(Ok(prefetch::Event::Fault { kind, outcome, .. })) => {
                kinds.push((kind.as_str(), outcome));
                if kind.as_str() == want && outcome.is_some() {
                    return kinds;
                }
            }
            Ok(Ok(_)) => {}
            other => panic!("no {want} with its outcome: {kinds:?} ({other:?})"),
        }
    }
}
