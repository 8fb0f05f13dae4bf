//! Misses that say why (deleted, absent, lost), lost keys restored from
//! the source in the background, stale reads counted, and the share of
//! changes visible within 10 ms / 100 ms / 1 s: on one node and on a
//! 3-primary cluster.

use std::time::{Duration, Instant};

use prefetch::testing::{TestRedis, engine_config, mock_engine_with};
use prefetch::{
    CacheConfig, Connection, Engine, EngineConfig, MissKind, MockPrimary, Primary, Record, Version,
};

use crate::cluster::cluster;

fn rows(n: usize) -> Vec<Record> {
    (0..n)
        .map(|i| {
            [
                ("id".to_owned(), format!("r-{i:04}")),
                ("name".to_owned(), format!("row {i}")),
            ]
            .into_iter()
            .collect()
        })
        .collect()
}

async fn engine_on<C: Connection>(conn: C, test: &str, exact_limit: u64) -> Engine<MockPrimary, C> {
    let base = engine_config(test);
    let config = EngineConfig {
        cache: CacheConfig {
            membership_exact_limit: exact_limit,
            ..base.cache
        },
        ..base
    };
    mock_engine_with(conn, config, Some(rows(1_000)), Duration::ZERO)
        .await
        .0
}

/// Deletes `id`'s key behind the engine's back.
async fn del_behind<C: Connection>(engine: &Engine<MockPrimary, C>, id: &str) {
    let mut conn = engine.cache().connection();
    let n: i64 = redis::cmd("DEL")
        .arg(engine.cache().key(id))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(n, 1, "{id} was cached");
}

/// Waits up to `within` for `id` to be cached with the primary's value.
async fn back_within<C: Connection>(
    engine: &Engine<MockPrimary, C>,
    id: &str,
    within: Duration,
) -> Duration {
    let started = Instant::now();
    let want = engine.source().records_for(&[id.to_owned()]).await.unwrap();
    loop {
        let got = engine.cache().peek(id).await.unwrap();
        if got.as_ref().map(|e| &e.fields) == want.first().map(|r| r.fields()) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "{id} not restored within {within:?}: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn misses_say_why_and_lost_keys_come_back<C: Connection>(engine: Engine<MockPrimary, C>) {
    let primary = engine.source().clone();
    primary.reset_reads();

    // Lost, noticed by a read: the read misses at once, the key is back
    // within a second, read once from the source.
    del_behind(&engine, "r-0001").await;
    let read = engine.read("r-0001").await.unwrap();
    assert_eq!(read.miss, Some(MissKind::Lost));
    let took = back_within(&engine, "r-0001", Duration::from_secs(1)).await;
    eprintln!("lost key restored {took:?} after the read");

    // Lost, noticed by Redis (what a keyspace notification reports): back
    // before anyone reads it.
    del_behind(&engine, "r-0002").await;
    engine.key_gone("r-0002");
    back_within(&engine, "r-0002", Duration::from_secs(1)).await;
    assert_eq!(primary.reads(), 2, "one source read per lost key");

    // Deleted: the tombstone says so.
    primary.delete("r-0003").unwrap();
    engine.settle(Duration::from_secs(5)).await.unwrap();
    let read = engine.read("r-0003").await.unwrap();
    assert_eq!(read.miss, Some(MissKind::Deleted));

    // Absent: unknown ids cost the source nothing (an exact filter).
    for i in 0..1_000 {
        let read = engine.read(&format!("nope-{i}")).await.unwrap();
        assert_eq!(read.miss, Some(MissKind::Absent), "nope-{i}");
    }
    // A new row, once applied, is known too.
    primary
        .add(
            [
                ("id".to_owned(), "new-1".to_owned()),
                ("name".to_owned(), "new".to_owned()),
            ]
            .into_iter()
            .collect(),
        )
        .unwrap();
    engine.settle(Duration::from_secs(5)).await.unwrap();
    del_behind(&engine, "new-1").await;
    assert_eq!(
        engine.read("new-1").await.unwrap().miss,
        Some(MissKind::Lost)
    );
    back_within(&engine, "new-1", Duration::from_secs(1)).await;

    // Removed on purpose: stays missing, and the source is not asked.
    engine.invalidate("r-0004").await.unwrap();
    engine.key_gone("r-0004");
    assert_eq!(
        engine.read("r-0004").await.unwrap().miss,
        Some(MissKind::Lost)
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(engine.cache().peek("r-0004").await.unwrap().is_none());
    assert_eq!(primary.reads(), 3, "an invalidated key is not restored");

    let s = engine.stats().cache;
    assert_eq!(
        (s.misses_deleted, s.misses_absent, s.misses_lost),
        (1, 1_000, 3)
    );
    assert_eq!((s.lost_repaired, s.repair_source_reads), (3, 3));
    engine.shutdown(Duration::from_secs(2)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misses_say_why_and_lost_keys_come_back_on_one_node() {
    let redis = TestRedis::start();
    let engine = engine_on(redis.conn().await, "misses-node", 10_000).await;
    misses_say_why_and_lost_keys_come_back(engine).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misses_say_why_and_lost_keys_come_back_on_a_cluster() {
    let engine = engine_on(cluster().redis().await, "misses-cluster", 10_000).await;
    misses_say_why_and_lost_keys_come_back(engine).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_bloom_filter_unknown_ids_cost_the_source_only_its_false_positives() {
    let redis = TestRedis::start();
    unknown_ids_cost_only_false_positives(engine_on(redis.conn().await, "misses-bloom", 0).await)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_bloom_filter_on_a_cluster_unknown_ids_cost_only_false_positives() {
    let engine = engine_on(cluster().redis().await, "misses-bloom-cluster", 0).await;
    unknown_ids_cost_only_false_positives(engine).await;
}

/// With a Bloom filter, unknown ids cost the source its false positives
/// and nothing more; the rows themselves are all known.
async fn unknown_ids_cost_only_false_positives<C: Connection>(engine: Engine<MockPrimary, C>) {
    assert!(!engine.cache().membership().exact);
    engine.source().reset_reads();
    for i in 0..1_000 {
        let miss = engine.read(&format!("nope-{i}")).await.unwrap().miss;
        assert!(matches!(miss, Some(MissKind::Absent | MissKind::Lost)));
    }
    let started = Instant::now();
    let s = loop {
        let s = engine.stats().cache;
        if s.repair_source_reads == s.misses_lost || started.elapsed() > Duration::from_secs(5) {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    eprintln!(
        "1,000 unknown ids: {} false positives, {} source reads, filter {} bytes",
        s.misses_lost,
        engine.source().reads(),
        engine.cache().membership().bytes
    );
    assert_eq!(s.misses_absent + s.misses_lost, 1_000);
    assert_eq!(engine.source().reads(), s.misses_lost);
    // 0.1 % per layer: about one in a thousand.
    assert!(s.misses_lost <= 10, "{} false positives", s.misses_lost);
    assert_eq!(s.lost_repaired, 0, "nothing was written for them");
    // Every real row is a member: a lost one is still found.
    del_behind(&engine, "r-0500").await;
    assert_eq!(
        engine.read("r-0500").await.unwrap().miss,
        Some(MissKind::Lost)
    );
    back_within(&engine, "r-0500", Duration::from_secs(1)).await;
    engine.shutdown(Duration::from_secs(2)).await.unwrap();
}

/// A repair never writes over anything the cache holds: it fills a gap
/// and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repair_writes_only_where_nothing_is_held() {
    let redis = TestRedis::start();
    let engine = engine_on(redis.conn().await, "misses-guard", 10_000).await;
    let cache = engine.cache();
    let old: Record = [
        ("id".to_owned(), "r-0007".to_owned()),
        ("name".to_owned(), "older".to_owned()),
    ]
    .into_iter()
    .collect();
    let later = Version::new(u64::from(u32::MAX) * 4, 0);
    // Held (a record, then a tombstone): left alone, whatever the version.
    assert!(!cache.repair(&old, later).await.unwrap());
    engine.source().delete("r-0007").unwrap();
    engine.settle(Duration::from_secs(5)).await.unwrap();
    assert!(!cache.repair(&old, later).await.unwrap());
    assert!(cache.peek("r-0007").await.unwrap().is_none());
    // A gap: filled.
    del_behind(&engine, "r-0008").await;
    let record: Record = [
        ("id".to_owned(), "r-0008".to_owned()),
        ("name".to_owned(), "older".to_owned()),
    ]
    .into_iter()
    .collect();
    assert!(cache.repair(&record, later).await.unwrap());
    assert_eq!(
        cache
            .peek("r-0008")
            .await
            .unwrap()
            .unwrap()
            .fields
            .get("name"),
        Some(&"older".to_owned())
    );
    engine.shutdown(Duration::from_secs(2)).await.unwrap();
}

/// Stale reads are counted while the worker holds a change back, and the
/// share of changes visible within 1 s falls when it held one longer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_reads_and_late_changes_show_in_the_counters() {
    let redis = TestRedis::start();
    let engine = engine_on(redis.conn().await, "misses-sli", 10_000).await;
    let primary = engine.source().clone();
    for i in 0..20 {
        primary
            .update_field("r-0010", "name", &format!("quick {i}"))
            .unwrap();
        engine.settle(Duration::from_secs(5)).await.unwrap();
    }
    let s = engine.stats().cache;
    assert_eq!(s.sync_lag.count, 20);
    assert_eq!(s.visible_within[2], 20, "every change visible within 1 s");
    assert_eq!(s.stale_reads, 0);

    let pause = engine.sync().pause(Duration::from_secs(5)).await.unwrap();
    primary.update_field("r-0011", "name", "held").unwrap();
    primary.delete("r-0012").unwrap();
    let read = engine.read("r-0011").await.unwrap();
    assert_eq!(read.lookup.record.unwrap().get("name"), Some("row 11"));
    // Still there although deleted at the source: stale too.
    assert!(engine.read("r-0012").await.unwrap().lookup.hit());
    // Nothing pending for this one: not stale.
    engine.read("r-0013").await.unwrap();
    assert_eq!(engine.stats().cache.stale_reads, 2);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    drop(pause);
    engine.settle(Duration::from_secs(5)).await.unwrap();
    let read = engine.read("r-0011").await.unwrap();
    assert_eq!(read.lookup.record.unwrap().get("name"), Some("held"));
    let s = engine.stats().cache;
    assert_eq!(s.stale_reads, 2, "applied: no longer stale");
    assert_eq!(s.sync_lag.count, 22);
    assert_eq!(s.visible_within[2], 20, "the two held changes took > 1 s");
    engine.shutdown(Duration::from_secs(2)).await.unwrap();
}

/// An engine that resumed (loaded nothing) builds its filter from the keys
/// Redis holds: misses are `unknown` only until then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_resume_the_filter_is_built_from_the_keys_redis_holds() {
    let redis = TestRedis::start();
    let events = prefetch::EventBus::default();
    let primary = std::sync::Arc::new(MockPrimary::with_records(
        rows(1_000),
        Duration::ZERO,
        events.clone(),
    ));
    let config = engine_config("misses-resume");
    let (first, _) = Engine::start(
        redis.conn().await,
        std::sync::Arc::clone(&primary),
        events.clone(),
        config.clone(),
    )
    .await
    .unwrap();
    first.shutdown(Duration::from_secs(2)).await.unwrap();
    let (engine, report) = Engine::start(redis.conn().await, primary, events, config)
        .await
        .unwrap();
    assert_eq!(report.version, None, "resumed: nothing loaded");
    let started = Instant::now();
    while !engine.cache().membership().ready {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "filter not built"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        engine.read("nope").await.unwrap().miss,
        Some(MissKind::Absent)
    );
    del_behind(&engine, "r-0999").await;
    assert_eq!(
        engine.read("r-0999").await.unwrap().miss,
        Some(MissKind::Lost)
    );
    back_within(&engine, "r-0999", Duration::from_secs(1)).await;
    engine.shutdown(Duration::from_secs(2)).await.unwrap();
}
