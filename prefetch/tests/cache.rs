//! The cache against a real redis-server: bulk load, reads, applies,
//! invalidate, clear, ids, TTL.

use std::time::Duration;

use prefetch::testing::{Counting, TestRedis, prefix};
use prefetch::{
    CacheConfig, Change, Engine, EngineConfig, Fields, PrefetchCache, Record, Ttl, seed_records,
};
use redis::AsyncCommands;

fn fields(pairs: &[(&str, &str)]) -> Fields {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn config(prefix: String, ttl_secs: u64) -> CacheConfig {
    CacheConfig {
        prefix,
        ttl: Duration::from_secs(ttl_secs),
    }
}

fn records(n: usize) -> Vec<Record> {
    (0..n)
        .map(|i| {
            [
                ("id", format!("rec-{i:06}")),
                ("name", format!("Record {i}")),
                ("display_order", i.to_string()),
                ("featured", (i % 2 == 0).to_string()),
                ("parent_id", String::new()),
            ]
            .into_iter()
            .collect()
        })
        .collect()
}

#[tokio::test]
async fn bulk_load_writes_every_record_with_its_ttl_pipelined_without_waiting() {
    let redis = TestRedis::start();
    let counting = Counting::new(redis.conn().await);
    let p = prefix("bulk");
    let cache = PrefetchCache::new(counting.clone(), config(p.clone(), 1234));

    let mut input = records(2000);
    // Records without an id are skipped, not written under "{prefix}".
    input.push([("name", "no id")].into_iter().collect());
    input.push([("id", ""), ("name", "empty id")].into_iter().collect());

    let loaded = cache.bulk_load(&input).await.expect("bulk load");
    assert_eq!(loaded, 2000);
    // 512 records per pipeline, all sent before any reply is awaited: the
    // whole load costs one round trip of latency.
    assert_eq!(counting.count(), 4, "2000 records in 512-record pipelines");
    assert_eq!(
        counting.max_in_flight(),
        4,
        "no chunk waits for the one before"
    );

    let small = PrefetchCache::new(counting.clone(), config(prefix("bulk-small"), 60));
    small.bulk_load(&records(500)).await.unwrap();
    assert_eq!(counting.count(), 5, "a small load is a single pipeline");
    assert_eq!(cache.stats().prefetched, 2000);

    let mut conn = redis.conn().await;
    for r in input.iter().take(2000).step_by(97) {
        let key = format!("{p}{}", r.id().unwrap());
        let stored: Fields = conn.hgetall(&key).await.unwrap();
        assert_eq!(&stored, r.fields());
        let ttl: i64 = conn.ttl(&key).await.unwrap();
        assert!((1230..=1234).contains(&ttl), "ttl {ttl}");
    }
    let exists: bool = conn.exists(&p).await.unwrap();
    assert!(
        !exists,
        "a record without id must not be written at the bare prefix"
    );
    assert_eq!(cache.ids().await.unwrap().len(), 2000);
}

#[tokio::test]
async fn reads_never_touch_the_primary_and_count_hits_and_misses() {
    let redis = TestRedis::start();
    let cfg = EngineConfig {
        cache: config(prefix("reads"), 3600),
        primary_read_latency: Duration::ZERO,
        ..EngineConfig::default()
    };
    let (engine, report) = Engine::start(redis.conn().await, cfg).await.unwrap();
    assert_eq!(report.loaded, 5);
    let reads_after_prefetch = engine.primary().reads();
    assert_eq!(reads_after_prefetch, 1, "the prefetch is one primary read");

    for i in 0..1000 {
        let id = format!("cat-00{}", i % 5 + 1);
        let read = engine.read(&id).await.unwrap();
        assert!(read.lookup.hit);
        assert_eq!(
            read.lookup.record.as_ref().and_then(|r| r.id()),
            Some(id.as_str())
        );
    }
    for _ in 0..10 {
        let read = engine.read("cat-999").await.unwrap();
        assert!(!read.lookup.hit);
        assert_eq!(read.lookup.record, None);
        assert_eq!(read.ttl, Ttl::Missing);
        assert_eq!(read.ttl.as_redis(), -2);
    }
    // Even an invalidated key is not refilled from the primary.
    engine.invalidate("cat-001").await.unwrap();
    assert!(!engine.read("cat-001").await.unwrap().lookup.hit);

    assert_eq!(engine.primary().reads(), reads_after_prefetch);
    let stats = engine.stats();
    assert_eq!(stats.cache.hits, 1000);
    assert_eq!(stats.cache.misses, 11);
    assert_eq!(stats.cache.hit_rate_pct, 98.9);
    engine.shutdown(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test]
async fn get_is_one_hgetall_and_read_with_ttl_is_one_round_trip() {
    let redis = TestRedis::start();
    let counting = Counting::new(redis.conn().await);
    let cache = PrefetchCache::new(counting.clone(), config(prefix("rt"), 60));
    cache.bulk_load(&seed_records()).await.unwrap();
    let before = counting.count();
    let lookup = cache.get("cat-005").await.unwrap();
    assert_eq!(lookup.record.unwrap().get("parent_id"), Some("cat-002"));
    let (lookup, ttl) = cache.get_with_ttl("cat-002").await.unwrap();
    assert!(lookup.hit);
    assert!(matches!(ttl, Ttl::Seconds(58..=60)), "{ttl:?}");
    assert_eq!(counting.count() - before, 2, "one round trip per read");
}

#[tokio::test]
async fn upsert_replaces_the_whole_hash_and_refreshes_the_ttl() {
    let redis = TestRedis::start();
    let p = prefix("upsert");
    let cache = PrefetchCache::new(redis.conn().await, config(p.clone(), 3600));
    let mut conn = redis.conn().await;

    cache
        .apply(&Change::upsert(
            "x",
            fields(&[("id", "x"), ("a", "1"), ("b", "2")]),
        ))
        .await
        .unwrap();
    let _: () = conn.expire(format!("{p}x"), 5).await.unwrap();

    let outcome = cache
        .apply(&Change::upsert("x", fields(&[("id", "x"), ("a", "9")])))
        .await
        .unwrap();
    assert_eq!((outcome.applied, outcome.skipped), (1, 0));

    let stored: Fields = conn.hgetall(format!("{p}x")).await.unwrap();
    assert_eq!(
        stored,
        fields(&[("id", "x"), ("a", "9")]),
        "dropped field b must vanish"
    );
    let ttl: i64 = conn.ttl(format!("{p}x")).await.unwrap();
    assert!(ttl > 3590, "ttl refreshed, got {ttl}");
    assert_eq!(cache.stats().sync_events_applied, 2);
}

#[tokio::test]
async fn delete_removes_the_key() {
    let redis = TestRedis::start();
    let cache = PrefetchCache::new(redis.conn().await, config(prefix("del"), 60));
    cache
        .apply(&Change::upsert("x", fields(&[("id", "x")])))
        .await
        .unwrap();
    assert!(cache.get("x").await.unwrap().hit);
    cache.apply(&Change::delete("x")).await.unwrap();
    assert!(!cache.get("x").await.unwrap().hit);
    assert_eq!(cache.ttl("x").await.unwrap(), Ttl::Missing);
}

#[tokio::test]
async fn malformed_upsert_is_skipped_and_counted() {
    let redis = TestRedis::start();
    let p = prefix("malformed");
    let cache = PrefetchCache::new(redis.conn().await, config(p.clone(), 60));
    cache
        .apply(&Change::upsert(
            "keep",
            fields(&[("id", "keep"), ("v", "1")]),
        ))
        .await
        .unwrap();

    let batch = vec![
        Change::upsert("keep", Fields::new()), // no fields: skipped, keeps v=1
        Change::upsert("", fields(&[("v", "x")])), // no id: skipped
        Change::upsert("new", fields(&[("id", "new")])),
    ];
    let outcome = cache.apply_batch(&batch).await.unwrap();
    assert_eq!((outcome.applied, outcome.skipped), (1, 2));
    assert_eq!(cache.stats().sync_events_skipped, 2);
    assert_eq!(cache.ids().await.unwrap(), vec!["keep", "new"]);
    let keep = cache.get("keep").await.unwrap().record.unwrap();
    assert_eq!(keep.get("v"), Some("1"));
}

#[tokio::test]
async fn a_batch_is_one_atomic_round_trip_and_only_the_last_event_per_id_is_written() {
    let redis = TestRedis::start();
    let counting = Counting::new(redis.conn().await);
    let cache = PrefetchCache::new(counting.clone(), config(prefix("batch"), 60));
    let batch: Vec<Change> = (0..100)
        .map(|i| Change::upsert(format!("k{}", i % 10), fields(&[("v", &i.to_string())])))
        .chain([Change::delete("k3")])
        .collect();
    let outcome = cache.apply_batch(&batch).await.unwrap();
    assert_eq!(counting.count(), 1);
    assert_eq!(outcome.applied, 101);
    assert_eq!(outcome.written.len(), 10);
    for i in [0usize, 1, 2, 4, 9] {
        let rec = cache.get(&format!("k{i}")).await.unwrap().record.unwrap();
        assert_eq!(rec.get("v"), Some((90 + i).to_string().as_str()));
    }
    assert!(!cache.get("k3").await.unwrap().hit);
}

#[tokio::test]
async fn invalidate_reports_whether_the_key_existed() {
    let redis = TestRedis::start();
    let cache = PrefetchCache::new(redis.conn().await, config(prefix("inv"), 60));
    cache.bulk_load(&seed_records()).await.unwrap();
    assert!(cache.invalidate("cat-003").await.unwrap());
    assert!(!cache.invalidate("cat-003").await.unwrap());
    assert!(!cache.get("cat-003").await.unwrap().hit);
    assert_eq!(cache.ids().await.unwrap().len(), 4);
}

#[tokio::test]
async fn clear_removes_only_keys_under_the_prefix_even_with_glob_characters() {
    let redis = TestRedis::start();
    let mut conn = redis.conn().await;
    let base = prefix("clear");
    for odd in ["a*b:", "a?b:", "a[bc]:", "x\\y:"] {
        let p = format!("{base}{odd}");
        let cache = PrefetchCache::new(redis.conn().await, config(p.clone(), 60));
        cache.bulk_load(&records(1500)).await.unwrap();
        // Neighbours an unescaped pattern would match: `a*b:` as a glob matches
        // `aZZb:…`, `a?b:` matches `aXb:…`, `a[bc]:` matches `ab:…`.
        let neighbours = [
            format!("{base}aZZb:rec-000001"),
            format!("{base}aXb:rec-000001"),
            format!("{base}ab:rec-000001"),
            format!("{base}xy:rec-000001"),
            format!("{base}{}", odd.trim_end_matches(':')),
        ];
        for n in &neighbours {
            let _: () = conn.set(n, "keep").await.unwrap();
        }
        assert_eq!(cache.clear().await.unwrap(), 1500, "prefix {odd:?}");
        assert!(cache.ids().await.unwrap().is_empty());
        for n in &neighbours {
            let v: Option<String> = conn.get(n).await.unwrap();
            assert_eq!(v.as_deref(), Some("keep"), "{n} must survive clearing {p}");
        }
    }
}

#[tokio::test]
async fn ids_are_sorted_and_unique_and_entries_carry_ttls() {
    let redis = TestRedis::start();
    let cache = PrefetchCache::new(redis.conn().await, config(prefix("ids"), 100));
    let mut recs = records(3000);
    recs.reverse();
    cache.bulk_load(&recs).await.unwrap();
    let ids = cache.ids().await.unwrap();
    assert_eq!(ids.len(), 3000);
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    let entries = cache.entries().await.unwrap();
    assert_eq!(entries.len(), 3000);
    assert!(
        entries
            .iter()
            .all(|e| matches!(e.ttl, Ttl::Seconds(95..=100)))
    );
    assert_eq!(
        entries[7].fields.get("name").map(String::as_str),
        Some("Record 7")
    );
}

#[tokio::test]
async fn redis_errors_surface_instead_of_being_swallowed() {
    let redis = TestRedis::start();
    let p = prefix("wrongtype");
    let cache = PrefetchCache::new(redis.conn().await, config(p.clone(), 60));
    let mut conn = redis.conn().await;
    let _: () = conn.set(format!("{p}s"), "a string").await.unwrap();
    // HGETALL on a string is a WRONGTYPE error, which must reach the caller.
    let err = cache.get("s").await.expect_err("WRONGTYPE must surface");
    assert!(!err.is_unavailable());
    assert!(err.to_string().contains("WRONGTYPE"), "{err}");
    // An upsert replaces the string (DEL first) instead of failing.
    cache
        .apply(&Change::upsert("s", fields(&[("id", "s")])))
        .await
        .unwrap();
    assert!(cache.get("s").await.unwrap().hit);
}
