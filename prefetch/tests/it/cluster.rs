//! The core's guarantees on a local Redis Cluster: three primaries on
//! loopback (explicit cluster bus ports), shared by this module's tests, each
//! on its own prefix; the failover drill starts six nodes of its own. Last,
//! replicas: with `wait_replicas`, a write counts only once a replica holds it.

use std::collections::BTreeSet;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use prefetch::testing::{
    TestCluster, TestRedis, assert_converged, converged_within, engine_config, mock_engine,
    mock_engine_with,
};
use prefetch::{Change, Connection, KeySpace, PrefetchCache, Record, Tombstone, Version, slot};
use redis::AsyncCommands;

use crate::{claimed, fields, records};

/// Three primaries, no replicas, for every test here but the drill.
pub(crate) fn cluster() -> &'static TestCluster {
    static CLUSTER: OnceLock<TestCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| TestCluster::start(3, 0))
}

/// How many keys each primary holds under `prefix`.
async fn keys_per_primary<C: Connection>(conn: &C, prefix: &str) -> Vec<usize> {
    let mut out = Vec::new();
    for mut node in conn.primaries().await.unwrap() {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*", prefetch::escape_glob(prefix)))
            .query_async(&mut node)
            .await
            .unwrap();
        out.push(keys.len());
    }
    out
}

#[test]
fn our_slots_are_the_clusters_and_a_records_tombstone_and_state_share_its_slot() {
    let c = cluster();
    let ks = KeySpace::new("cache:category:");
    for id in ["cat-001", "{x}y", "a{b}c", "a}b", "é{ü}", "", "{}"] {
        let key = ks.key(id);
        assert_eq!(slot(&key), c.keyslot(&key), "{key}");
        if let Tombstone::Key(t) = ks.tombstone(&key) {
            assert_eq!(c.keyslot(&t), c.keyslot(&key), "{t}");
        }
        let meta = ks.slot_meta_key(slot(&key));
        assert_eq!(c.keyslot(&meta), slot(&key), "{meta}");
    }
    for s in [0, 1, 5461, 10922, 12345, 16383] {
        assert_eq!(c.keyslot(&ks.slot_meta_key(s)), s);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_on_a_cluster_spreads_its_keys_over_every_primary_and_converges() {
    let c = cluster();
    let conn = c.redis().await;
    let started = Instant::now();
    let (engine, report) = mock_engine(conn.clone(), "cluster-engine", Some(records(600))).await;
    eprintln!(
        "a first load of 600 records on 3 primaries: {:?}",
        started.elapsed()
    );
    assert_eq!(report.loaded, 600);
    let prefix = engine.cache().prefix().to_owned();
    let spread = keys_per_primary(&conn, &prefix).await;
    assert_eq!(spread.len(), 3, "three primaries: {spread:?}");
    assert!(
        spread.iter().all(|&n| n > 100),
        "keys on every primary: {spread:?}"
    );
    assert_eq!(spread.iter().sum::<usize>(), 600);

    // The library is on every primary.
    for mut node in conn.primaries().await.unwrap() {
        let libs: redis::Value = redis::cmd("FUNCTION")
            .arg("LIST")
            .arg("LIBRARYNAME")
            .arg("prefetch_v2")
            .query_async(&mut node)
            .await
            .unwrap();
        assert!(
            matches!(libs, redis::Value::Array(ref a) if a.len() == 1),
            "{libs:?}"
        );
    }

    let primary = engine.source().clone();
    for i in (0..600).step_by(7) {
        primary
            .update_field(&format!("rec-{i:06}"), "name", &format!("changed {i}"))
            .unwrap();
    }
    for i in (0..600).step_by(11) {
        primary.delete(&format!("rec-{i:06}")).unwrap();
    }
    primary
        .add(Record::new(fields(&[("id", "new-1"), ("name", "n")])))
        .unwrap();
    assert_converged(&engine).await;
    let read = engine.read("rec-000007").await.unwrap();
    assert_eq!(read.lookup.record.unwrap().get("name"), Some("changed 7"));
    assert!(
        engine
            .read("rec-000011")
            .await
            .unwrap()
            .lookup
            .record
            .is_none()
    );

    // A re-prefetch sweeps what the source no longer has, on every node.
    let mut raw = c.conn().await;
    let _: () = raw
        .hset(engine.cache().key("ghost"), "name", "x")
        .await
        .unwrap();
    engine.reprefetch().await.unwrap();
    assert_converged(&engine).await;
    assert_eq!(engine.ids().await.unwrap().len(), 600 - 55 + 1);

    // Clear empties every node, and nothing else.
    engine.clear().await.unwrap();
    assert_eq!(keys_per_primary(&conn, &prefix).await, vec![0, 0, 0]);
    engine.shutdown(Duration::from_secs(2)).await.unwrap();
}

#[tokio::test]
async fn writes_in_many_slots_are_each_version_guarded_and_deletes_never_come_back() {
    let c = cluster();
    let cache = claimed(c.redis().await, "cluster-guard", 60).await;
    let ids: Vec<String> = (0..200).map(|i| format!("g-{i}")).collect();
    let slots: BTreeSet<u16> = ids.iter().map(|id| slot(&cache.key(id))).collect();
    assert!(slots.len() > 150, "the batch spans many slots");
    let at = |c: u64| Version::new(c, 0);
    let upserts = |v: u64, tag: &str| -> Vec<Change> {
        ids.iter()
            .map(|id| Change::upsert(id, fields(&[("id", id), ("v", tag)]), at(v)))
            .collect()
    };
    let out = cache
        .apply_batch(&upserts(10, "ten"), Some(at(10)))
        .await
        .unwrap();
    assert_eq!(out.applied, 200);
    assert_eq!(cache.state().await.unwrap().position, Some(at(10)));
    // Older and equal versions are stale everywhere.
    let out = cache
        .apply_batch(&upserts(9, "nine"), Some(at(9)))
        .await
        .unwrap();
    assert_eq!((out.applied, out.stale), (0, 200));
    let out = cache
        .apply_batch(&upserts(10, "ten again"), None)
        .await
        .unwrap();
    assert_eq!(out.stale, 200);
    assert_eq!(
        cache.state().await.unwrap().position,
        Some(at(10)),
        "the position never moves back"
    );
    // Deletes at 20, then late upserts at 15: nothing comes back.
    let deletes: Vec<Change> = ids.iter().map(|id| Change::delete(id, at(20))).collect();
    assert_eq!(
        cache
            .apply_batch(&deletes, Some(at(20)))
            .await
            .unwrap()
            .applied,
        200
    );
    let out = cache.apply_batch(&upserts(15, "late"), None).await.unwrap();
    assert_eq!(out.stale, 200);
    assert!(cache.ids().await.unwrap().is_empty());
    // Newer writes apply again.
    let out = cache
        .apply_batch(&upserts(30, "thirty"), Some(at(30)))
        .await
        .unwrap();
    assert_eq!(out.applied, 200);
    let entries = cache.entries().await.unwrap();
    assert_eq!(entries.len(), 200);
    assert!(
        entries
            .iter()
            .all(|e| e.fields.get("v").map(String::as_str) == Some("thirty") && e.intact)
    );
}

#[tokio::test]
async fn a_truncate_raises_the_floor_in_every_slot_before_its_sweep() {
    let c = cluster();
    let cache = claimed(c.redis().await, "cluster-truncate", 60).await;
    let ids: Vec<String> = (0..100).map(|i| format!("t-{i}")).collect();
    let rows = |v: u64| -> Vec<Change> {
        ids.iter()
            .map(|id| Change::upsert(id, fields(&[("id", id)]), Version::new(v, 0)))
            .collect()
    };
    cache.apply_batch(&rows(5), None).await.unwrap();
    cache
        .apply_batch(&[Change::truncate(Version::new(10, 0))], None)
        .await
        .unwrap();
    assert!(cache.ids().await.unwrap().is_empty(), "swept on every node");
    // Committed before the truncate, arriving after it: stale in every slot.
    let out = cache.apply_batch(&rows(8), None).await.unwrap();
    assert_eq!(out.stale, 100);
    assert!(cache.ids().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_lost_its_keys_is_noticed_by_the_next_write_there_and_refilled() {
    let c = cluster();
    let conn = c.redis().await;
    let (engine, _) = mock_engine(conn.clone(), "cluster-lost", Some(records(300))).await;
    // Everything of this cache on one primary disappears, its slots' state
    // included (as a node restarted without persistence would). The node
    // chosen does not hold the main state, which therefore looks intact.
    let home_port = c
        .owner_port(slot(engine.cache().key_space().meta_key()))
        .unwrap();
    let node = conn
        .primaries()
        .await
        .unwrap()
        .into_iter()
        .find(|n| match n {
            prefetch::RedisNode::Cluster(n) => n.address().1 != home_port,
            prefetch::RedisNode::Single(_) => false,
        });
    let mut node = node.unwrap();
    let pattern = format!("*{}*", prefetch::escape_glob(engine.cache().prefix()));
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(&pattern)
        .query_async(&mut node)
        .await
        .unwrap();
    assert!(keys.len() > 100);
    let mut raw = c.conn().await;
    for key in &keys {
        let _: () = raw.del(key).await.unwrap();
    }
    // A write in one of that node's slots.
    let victim = (0..300)
        .map(|i| format!("rec-{i:06}"))
        .find(|id| keys.contains(&engine.cache().key(id)))
        .unwrap();
    engine
        .source()
        .update_field(&victim, "name", "after")
        .unwrap();
    // The refill runs beside the worker: wait for its end, not the worker's.
    converged_within(&engine, Duration::from_secs(20)).await;
    assert_eq!(engine.stats().cache.self_heals, 1);
    engine.shutdown(Duration::from_secs(2)).await.unwrap();
}

#[test]
fn random_interleavings_on_a_cluster_never_leave_a_wrong_key() {
    let (runtime, mut runner) = crate::interleavings::harness(12);
    let c = cluster();
    let result = runner.run(&crate::interleavings::tasks(), |tasks| {
        runtime.block_on(async { crate::interleavings::check(c.redis().await, tasks).await })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[test]
fn admin_actions_racing_updates_on_a_cluster_never_leave_a_wrong_key() {
    let (runtime, mut runner) = crate::interleavings::harness(8);
    let c = cluster();
    let result = runner.run(&crate::interleavings::admin_tasks(), |tasks| {
        runtime.block_on(async {
            let (latency, pace) = (
                crate::interleavings::ADMIN_LATENCY,
                crate::interleavings::ADMIN_PACE,
            );
            crate::interleavings::check_with(c.redis().await, tasks, latency, pace).await
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[test]
fn the_ci_minimal_input_on_a_cluster_never_leaves_a_wrong_key() {
    let (runtime, _) = crate::interleavings::harness(1);
    let c = cluster();
    // Each run starts an engine and re-prefetches three times over 16,384
    // slots: fewer runs than on one node.
    for run in 0..crate::interleavings::MINIMAL_RUNS / 3 {
        let tasks = crate::interleavings::ci_minimal_input();
        let result =
            runtime.block_on(async { crate::interleavings::check(c.redis().await, tasks).await });
        if let Err(e) = result {
            panic!("run {run}: {e}");
        }
    }
}

#[test]
fn duplicates_reorders_and_replays_on_a_cluster_end_with_redis_equal_to_the_source() {
    let (runtime, mut runner) = crate::interleavings::harness(12);
    let c = cluster();
    let result = runner.run(&crate::interleavings::races(), |tasks| {
        runtime.block_on(async { crate::interleavings::check_race(c.redis().await, tasks).await })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// Six nodes (three primaries, a replica each). Writes run while a primary
/// gets SIGKILL; its replica is promoted, and the cache converges on the
/// source, with the library still on every primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_survives_kill_9_of_a_primary_and_the_cache_converges_after_promotion() {
    let mut c = TestCluster::start(3, 1);
    let conn = c.redis().await;
    let (engine, _) = mock_engine(conn.clone(), "cluster-failover", Some(records(300))).await;
    let writer = {
        let engine = engine.clone();
        tokio::spawn(async move {
            for i in 0..600u32 {
                let id = format!("rec-{:06}", (i * 7) % 300);
                engine
                    .source()
                    .update_field(&id, "name", &format!("w{i}"))
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let killed = Instant::now();
    c.kill(1);
    c.wait_healthy(Duration::from_secs(30));
    eprintln!("promotion seen after {:?}", killed.elapsed());
    writer.await.unwrap();
    engine
        .settle(Duration::from_secs(30))
        .await
        .expect("the worker catches up after the failover");
    converged_within(&engine, Duration::from_secs(30)).await;
    eprintln!("converged {:?} after the kill", killed.elapsed());
    // Every primary now, the promoted one included, has the library.
    let primaries = conn.primaries().await.unwrap();
    assert_eq!(primaries.len(), 3);
    for mut node in primaries {
        let libs: redis::Value = redis::cmd("FUNCTION")
            .arg("LIST")
            .query_async(&mut node)
            .await
            .unwrap();
        assert!(matches!(libs, redis::Value::Array(ref a) if !a.is_empty()));
    }
    engine.shutdown(Duration::from_secs(2)).await.unwrap();
}

#[tokio::test]
async fn a_standalone_cache_lists_clears_and_resets_across_nodes() {
    let c = cluster();
    let conn = c.redis().await;
    let cache: PrefetchCache<_> = claimed(conn.clone(), "cluster-reset", 60).await;
    let changes: Vec<Change> = (0..150)
        .map(|i| {
            let id = format!("r-{i}");
            Change::upsert(&id, fields(&[("id", &id)]), Version::new(2, 0))
        })
        .collect();
    cache.apply_batch(&changes, None).await.unwrap();
    let deletes: Vec<Change> = (0..50)
        .map(|i| Change::delete(format!("r-{i}"), Version::new(3, 0)))
        .collect();
    cache.apply_batch(&deletes, None).await.unwrap();
    assert_eq!(cache.ids().await.unwrap().len(), 100);
    assert_eq!(cache.reset().await.unwrap(), 100);
    // Records, tombstones and every slot's state are gone.
    let mut left = 0;
    for mut node in conn.primaries().await.unwrap() {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("*{}*", prefetch::escape_glob(cache.prefix())))
            .query_async(&mut node)
            .await
            .unwrap();
        left += keys.len();
    }
    assert_eq!(left, 0);
    assert_eq!(cache.state().await.unwrap().source, None);
}

#[tokio::test]
async fn reconciliation_finds_and_repairs_drift_on_every_node() {
    let c = cluster();
    let (engine, _) = mock_engine(c.redis().await, "cluster-reconcile", Some(records(200))).await;
    let mut raw = c.conn().await;
    // One key lost, one changed outside the pipeline, one extra, spread
    // over the nodes by their slots.
    let _: () = raw.del(engine.cache().key("rec-000003")).await.unwrap();
    let _: () = raw
        .hset(engine.cache().key("rec-000100"), "name", "drift")
        .await
        .unwrap();
    let _: () = raw
        .hset_multiple(
            engine.cache().key("orphan"),
            &[("id", "orphan"), ("__v", "0:0:1")],
        )
        .await
        .unwrap();
    let report = engine.reconcile(true).await.unwrap();
    assert_eq!(report.missing, vec!["rec-000003".to_owned()], "{report:?}");
    assert_eq!(
        report.changed_outside,
        vec!["rec-000100".to_owned()],
        "{report:?}"
    );
    assert_eq!(report.orphaned, vec!["orphan".to_owned()], "{report:?}");
    assert_converged(&engine).await;
    assert!(engine.reconcile(false).await.unwrap().is_clean());
    engine.shutdown(Duration::from_secs(2)).await.unwrap();
}

/// Waits until `primary` reports `replicas` connected and in sync.
async fn linked(primary: &TestRedis, replicas: usize) {
    let mut conn = primary.conn().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut conn)
            .await
            .unwrap();
        let online = info
            .lines()
            .filter(|l| l.starts_with("slave") && l.contains("state=online"))
            .count();
        if online == replicas {
            return;
        }
        assert!(Instant::now() < deadline, "replica never linked: {info}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_wait_replicas_a_batch_counts_as_applied_only_once_a_replica_holds_it() {
    let primary = TestRedis::spawn_own(false);
    let port = primary.port.to_string();
    let mut replica = TestRedis::spawn_with(false, &["--replicaof", "127.0.0.1", &port]);
    linked(&primary, 1).await;
    let mut config = engine_config("wait");
    config.cache.wait_replicas = 1;
    config.cache.wait_timeout = Duration::from_secs(2);
    let (engine, _) = mock_engine_with(primary.conn().await, config, None, Duration::ZERO).await;
    engine
        .source()
        .update_field("cat-001", "name", "one")
        .unwrap();
    engine.settle(Duration::from_secs(5)).await.unwrap();
    let mut on_replica = replica.conn().await;
    let name: Option<String> = on_replica
        .hget(engine.cache().key("cat-001"), "name")
        .await
        .unwrap();
    assert_eq!(
        name.as_deref(),
        Some("one"),
        "the replica held it before it counted"
    );

    // Without a replica, a write is made but never counts as applied: the
    // source does not hear it is durable, and the worker retries.
    let before = engine.stats().cache;
    replica.kill();
    engine
        .source()
        .update_field("cat-002", "name", "two")
        .unwrap();
    // Longer than one `WAIT`, so the first attempt has failed.
    assert!(
        engine.settle(Duration::from_secs(3)).await.is_err(),
        "a batch no replica holds counted as applied"
    );
    assert!(engine.stats().cache.sync_retries > 0);
    replica.restart();
    linked(&primary, 1).await;
    engine.settle(Duration::from_secs(10)).await.unwrap();
    assert_converged(&engine).await;
    // The retry finds the write already held: it counts once, as applied,
    // not as a stale change.
    let after = engine.stats().cache;
    assert_eq!(
        (
            after.sync_events_applied - before.sync_events_applied,
            after.sync_events_stale - before.sync_events_stale
        ),
        (1, 0),
        "the retried change, as (applied, stale)"
    );
    engine.shutdown(Duration::from_secs(2)).await.unwrap();
}
