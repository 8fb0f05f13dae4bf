//! The cache against a real redis-server: bulk load, reads, applies,
//! invalidate, clear, ids, TTL, metadata kept out of reads.

use std::time::Duration;

use prefetch::testing::{Counting, TestRedis, mock_engine, prefix};
use prefetch::{Change, Fields, PrefetchCache, Record, Ttl, Version, seed_records};
use redis::AsyncCommands;

use crate::{claimed, config, fields, records};

#[tokio::test]
async fn bulk_load_writes_every_record_with_its_version_and_ttl_pipelined_without_waiting() {
    let redis = TestRedis::start();
    let counting = Counting::new(redis.conn().await);
    let p = prefix("bulk");
    let cache = PrefetchCache::new(counting.clone(), config(p.clone(), 1234), "s");

    let mut input = records(2000);
    // Records without an id are skipped, not written under "{prefix}".
    input.push([("name", "no id")].into_iter().collect());
    input.push([("id", ""), ("name", "empty id")].into_iter().collect());

    let v = Version::new(42, 7);
    let loaded = cache.bulk_load(&input, v).await.expect("bulk load");
    assert_eq!(loaded, 2000);
    // 512 records per pipeline, all sent before any reply is awaited: the
    // whole load costs one round trip of latency.
    assert_eq!(counting.count(), 4, "2000 records in 512-record pipelines");
    assert_eq!(
        counting.max_in_flight(),
        4,
        "no chunk waits for the one before"
    );

    let small = PrefetchCache::new(counting.clone(), config(prefix("bulk-small"), 60), "s");
    small.bulk_load(&records(500), v).await.unwrap();
    assert_eq!(counting.count(), 5, "a small load is a single pipeline");
    assert_eq!(cache.stats().prefetched, 2000);

    let mut conn = redis.conn().await;
    for r in input.iter().take(2000).step_by(97) {
        let key = format!("{p}{}", r.id().unwrap());
        let mut stored: Fields = conn.hgetall(&key).await.unwrap();
        assert_eq!(stored.remove("__v").as_deref(), Some("0:42:7"));
        let hash = stored.remove("__h").expect("content hash stored");
        // The version (0:42:7) in 30 digits, the content and names hashes.
        assert_eq!(
            hash,
            format!("{:020}{:010}{}", 42, 7, prefetch::hash_text(r.fields()))
        );
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
async fn reads_never_touch_the_primary_show_no_metadata_and_count_hits_and_misses() {
    let redis = TestRedis::start();
    let (engine, report) = mock_engine(redis.conn().await, "reads", None).await;
    assert_eq!(report.loaded, 5);
    let reads_after_prefetch = engine.source().reads();
    assert_eq!(reads_after_prefetch, 1, "the prefetch is one primary read");

    for i in 0..1000 {
        let id = format!("cat-00{}", i % 5 + 1);
        let read = engine.read(&id).await.unwrap();
        let record = read.lookup.record.expect("hit");
        assert_eq!(record.id(), Some(id.as_str()));
        assert_eq!(record.fields().len(), 5, "exactly the record's fields");
        assert!(record.fields().keys().all(|k| !k.starts_with("__")));
    }
    for _ in 0..10 {
        let read = engine.read("cat-999").await.unwrap();
        assert!(!read.lookup.hit());
        assert_eq!(read.lookup.record, None);
        assert_eq!(read.ttl, Ttl::Missing);
        assert_eq!(read.ttl.as_redis(), -2);
    }
    // Even an invalidated key is not refilled from the primary.
    engine.invalidate("cat-001").await.unwrap();
    assert!(!engine.read("cat-001").await.unwrap().lookup.hit());

    assert_eq!(engine.source().reads(), reads_after_prefetch);
    let stats = engine.stats();
    assert_eq!(stats.cache.hits, 1000);
    assert_eq!(stats.cache.misses, 11);
    assert!((stats.cache.hit_ratio() - 1000.0 / 1011.0).abs() < 1e-9);
    engine.shutdown(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test]
async fn get_is_one_hgetall_and_read_with_ttl_is_one_round_trip() {
    let redis = TestRedis::start();
    let counting = Counting::new(redis.conn().await);
    let cache = PrefetchCache::new(counting.clone(), config(prefix("rt"), 60), "s");
    cache
        .bulk_load(&seed_records(), Version::ZERO)
        .await
        .unwrap();
    let before = counting.count();
    let lookup = cache.get("cat-005").await.unwrap();
    assert_eq!(lookup.record.unwrap().get("parent_id"), Some("cat-002"));
    let (lookup, ttl) = cache.get_with_ttl("cat-002").await.unwrap();
    assert!(lookup.hit());
    assert!(matches!(ttl, Ttl::Seconds(58..=60)), "{ttl:?}");
    assert_eq!(counting.count() - before, 2, "one round trip per read");
}

#[tokio::test]
async fn upsert_replaces_the_whole_hash_and_refreshes_the_ttl() {
    let redis = TestRedis::start();
    let cache = claimed(redis.conn().await, "upsert", 3600).await;
    let p = cache.prefix().to_owned();
    let mut conn = redis.conn().await;

    let v1 = Version::new(1, 0);
    cache
        .apply_batch(
            &[Change::upsert(
                "x",
                fields(&[("id", "x"), ("a", "1"), ("b", "2")]),
                v1,
            )],
            None,
        )
        .await
        .unwrap();
    let _: () = conn.expire(format!("{p}x"), 5).await.unwrap();

    let outcome = cache
        .apply_batch(
            &[Change::upsert(
                "x",
                fields(&[("id", "x"), ("a", "9")]),
                Version::new(2, 0),
            )],
            None,
        )
        .await
        .unwrap();
    assert_eq!((outcome.applied, outcome.stale, outcome.skipped), (1, 0, 0));

    let stored = cache.get("x").await.unwrap().record.unwrap();
    assert_eq!(
        stored.fields(),
        &fields(&[("id", "x"), ("a", "9")]),
        "dropped field b must vanish"
    );
    let ttl: i64 = conn.ttl(format!("{p}x")).await.unwrap();
    assert!(ttl > 3590, "ttl refreshed, got {ttl}");
    assert_eq!(cache.stats().sync_events_applied, 2);
}

#[tokio::test]
async fn delete_removes_the_key_and_leaves_a_tombstone_outside_the_prefix() {
    let redis = TestRedis::start();
    let cache = claimed(redis.conn().await, "del", 60).await;
    cache
        .apply_batch(
            &[Change::upsert(
                "x",
                fields(&[("id", "x")]),
                Version::new(1, 0),
            )],
            None,
        )
        .await
        .unwrap();
    assert!(cache.get("x").await.unwrap().hit());
    cache
        .apply_batch(&[Change::delete("x", Version::new(2, 0))], None)
        .await
        .unwrap();
    assert!(!cache.get("x").await.unwrap().hit());
    assert_eq!(cache.ttl("x").await.unwrap(), Ttl::Missing);
    assert!(
        cache.ids().await.unwrap().is_empty(),
        "tombstones are not records"
    );
    let mut conn = redis.conn().await;
    let tomb: Option<String> = conn
        .get(format!("__pf:u:{{{}x}}", cache.prefix()))
        .await
        .unwrap();
    assert_eq!(tomb.as_deref(), Some("0:2:0"));
}

#[tokio::test]
async fn malformed_changes_are_skipped_and_counted() {
    let redis = TestRedis::start();
    let cache = claimed(redis.conn().await, "malformed", 60).await;
    let v = |c| Version::new(c, 0);
    cache
        .apply_batch(
            &[Change::upsert(
                "keep",
                fields(&[("id", "keep"), ("v", "1")]),
                v(1),
            )],
            None,
        )
        .await
        .unwrap();

    let batch = vec![
        Change::upsert("keep", Fields::new(), v(2)), // no fields: skipped, keeps v=1
        Change::upsert("", fields(&[("v", "x")]), v(3)), // no id: skipped
        Change::upsert("keep", fields(&[("__v", "9:9:9")]), v(4)), // reserved field
        Change::upsert("new", fields(&[("id", "new")]), v(5)),
    ];
    let outcome = cache.apply_batch(&batch, None).await.unwrap();
    assert_eq!((outcome.applied, outcome.skipped), (1, 3));
    assert_eq!(cache.stats().sync_events_skipped, 3);
    assert_eq!(cache.ids().await.unwrap(), vec!["keep", "new"]);
    let keep = cache.get("keep").await.unwrap().record.unwrap();
    assert_eq!(keep.get("v"), Some("1"));
}

#[tokio::test]
async fn a_batch_is_one_atomic_call_and_only_the_newest_change_per_id_is_written() {
    let redis = TestRedis::start();
    let counting = Counting::new(redis.conn().await);
    let cache = claimed(counting.clone(), "batch", 60).await;
    let before = counting.count();
    let batch: Vec<Change> = (0..100u64)
        .map(|i| {
            Change::upsert(
                format!("k{}", i % 10),
                fields(&[("v", &i.to_string())]),
                Version::new(i + 1, 0),
            )
        })
        .chain([Change::delete("k3", Version::new(200, 0))])
        .collect();
    let outcome = cache
        .apply_batch(&batch, Some(Version::new(200, 0)))
        .await
        .unwrap();
    assert_eq!(counting.count() - before, 1);
    assert_eq!(outcome.applied, 101);
    assert_eq!(outcome.written.len(), 10);
    for i in [0usize, 1, 2, 4, 9] {
        let rec = cache.get(&format!("k{i}")).await.unwrap().record.unwrap();
        assert_eq!(rec.get("v"), Some((90 + i).to_string().as_str()));
    }
    assert!(!cache.get("k3").await.unwrap().hit());
    assert_eq!(
        cache.state().await.unwrap().position,
        Some(Version::new(200, 0)),
        "the position moved in the same call"
    );
}

#[tokio::test]
async fn invalidate_reports_whether_the_key_existed() {
    let redis = TestRedis::start();
    let cache = PrefetchCache::new(redis.conn().await, config(prefix("inv"), 60), "s");
    cache
        .bulk_load(&seed_records(), Version::ZERO)
        .await
        .unwrap();
    assert!(cache.invalidate("cat-003").await.unwrap());
    assert!(!cache.invalidate("cat-003").await.unwrap());
    assert!(!cache.get("cat-003").await.unwrap().hit());
    assert_eq!(cache.ids().await.unwrap().len(), 4);
}

#[tokio::test]
async fn clear_removes_only_keys_under_the_prefix_even_with_glob_characters() {
    let redis = TestRedis::start();
    let mut conn = redis.conn().await;
    let base = prefix("clear");
    for odd in ["a*b:", "a?b:", "a[bc]:", "x\\y:"] {
        let p = format!("{base}{odd}");
        let cache = PrefetchCache::new(redis.conn().await, config(p.clone(), 60), "s");
        cache
            .bulk_load(&records(1500), Version::ZERO)
            .await
            .unwrap();
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
async fn ids_are_sorted_and_unique_and_entries_carry_ttls_versions_and_integrity() {
    let redis = TestRedis::start();
    let cache = PrefetchCache::new(redis.conn().await, config(prefix("ids"), 100), "s");
    let mut recs = records(3000);
    recs.reverse();
    cache.bulk_load(&recs, Version::new(3, 0)).await.unwrap();
    let ids = cache.ids().await.unwrap();
    assert_eq!(ids.len(), 3000);
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    let entries = cache.entries().await.unwrap();
    assert_eq!(entries.len(), 3000);
    assert!(
        entries
            .iter()
            .all(|e| matches!(e.ttl, Ttl::Seconds(95..=100))
                && e.version == Some(Version::new(3, 0))
                && e.intact)
    );
    assert_eq!(
        entries[7].fields.get("name").map(String::as_str),
        Some("Record 7")
    );
    // A hash changed outside the pipeline no longer matches its content hash.
    let mut conn = redis.conn().await;
    let _: () = conn
        .hset(cache.key("rec-000007"), "name", "edited by hand")
        .await
        .unwrap();
    let edited = cache.peek("rec-000007").await.unwrap().unwrap();
    assert!(!edited.intact);
}

#[tokio::test]
async fn a_record_whose_key_has_a_brace_and_no_tag_keeps_its_tombstone_in_the_hash() {
    let redis = TestRedis::start();
    let cache = claimed(redis.conn().await, "brace", 60).await;
    let id = "odd}id";
    cache
        .apply_batch(
            &[Change::upsert(
                id,
                fields(&[("id", id)]),
                Version::new(1, 0),
            )],
            None,
        )
        .await
        .unwrap();
    assert_eq!(cache.ids().await.unwrap(), vec![id]);
    cache
        .apply_batch(&[Change::delete(id, Version::new(3, 0))], None)
        .await
        .unwrap();
    assert!(
        !cache.get(id).await.unwrap().hit(),
        "a tombstone reads as a miss"
    );
    assert!(cache.ids().await.unwrap().is_empty(), "and is not listed");
    assert!(cache.entries().await.unwrap().is_empty());
    let late = cache
        .apply_batch(
            &[Change::upsert(
                id,
                fields(&[("id", id)]),
                Version::new(2, 0),
            )],
            None,
        )
        .await
        .unwrap();
    assert_eq!(late.stale, 1, "the in-hash tombstone guards like a key");
    assert!(!cache.get(id).await.unwrap().hit());
}

#[tokio::test]
async fn redis_errors_surface_instead_of_being_swallowed() {
    let redis = TestRedis::start();
    let cache = claimed(redis.conn().await, "wrongtype", 60).await;
    let p = cache.prefix().to_owned();
    let mut conn = redis.conn().await;
    let _: () = conn.set(format!("{p}s"), "a string").await.unwrap();
    // HGETALL on a string is a WRONGTYPE error, which must reach the caller.
    let err = cache.get("s").await.expect_err("WRONGTYPE must surface");
    assert!(!err.is_unavailable());
    assert!(err.to_string().contains("WRONGTYPE"), "{err}");
    // An upsert replaces the string (it has no version) instead of failing.
    cache
        .apply_batch(
            &[Change::upsert(
                "s",
                fields(&[("id", "s")]),
                Version::new(1, 0),
            )],
            None,
        )
        .await
        .unwrap();
    assert!(cache.get("s").await.unwrap().hit());
}

#[tokio::test]
async fn records_hold_the_demo_shape_after_a_round_trip() {
    let redis = TestRedis::start();
    let cache = PrefetchCache::new(redis.conn().await, config(prefix("shape"), 60), "s");
    cache
        .bulk_load(&seed_records(), Version::ZERO)
        .await
        .unwrap();
    let rec: Record = cache.get("cat-005").await.unwrap().record.unwrap();
    assert_eq!(rec, seed_records()[4]);
}

#[tokio::test]
async fn a_narrow_search_pages_through_every_match_in_pages_of_about_the_size_asked() {
    let redis = TestRedis::start();
    let p = prefix("narrow");
    let cache = PrefetchCache::new(redis.conn().await, config(p.clone(), 600), "s");
    // One key in ten matches the search, spread over the key space as hash
    // order spreads it: a guess of the share made from the first few keys
    // is often far off.
    let input: Vec<Record> = (0..4000)
        .map(|i| {
            let id = if i % 10 == 0 {
                format!("a-{i:05}")
            } else {
                format!("b-{i:05}")
            };
            [("id", id), ("name", format!("n{i}"))]
                .into_iter()
                .collect()
        })
        .collect();
    cache.bulk_load(&input, Version::new(1, 1)).await.unwrap();

    let want = 20;
    let mut seen = std::collections::BTreeSet::new();
    let (mut at, mut pages, mut largest) = (prefetch::ScanCursor::START, 0, 0);
    loop {
        let page = cache.scan_ids(at, "a-", want).await.unwrap();
        pages += 1;
        largest = largest.max(page.ids.len());
        assert!(
            page.ids.len() <= 2 * want,
            "page {pages} holds {} ids, asked for {want}",
            page.ids.len()
        );
        for id in page.ids {
            assert!(id.starts_with("a-"), "{id} does not match the search");
            seen.insert(id);
        }
        match page.next {
            Some(next) => at = next,
            None => break,
        }
        assert!(pages < 400, "the walk does not end");
    }
    assert_eq!(seen.len(), 400, "every match, exactly once over the walk");
    assert!(
        largest >= want / 2,
        "pages hold about {want} ids, the largest {largest}"
    );
}

#[tokio::test]
async fn tables_with_a_ttl_of_their_own_get_it_on_every_kind_of_write() {
    let redis = TestRedis::start();
    let p = prefix("own-ttl");
    let mut cfg = config(p.clone(), 3000);
    cfg.tables = vec![format!("{p}a:"), format!("{p}b:")];
    cfg.table_ttls = vec![(format!("{p}a:"), Duration::from_secs(60))];
    let cache = PrefetchCache::new(redis.conn().await, cfg, "s");
    let mut conn = redis.conn().await;
    let ttl = |conn: &mut redis::aio::MultiplexedConnection, id: &str| {
        let key = format!("{p}{id}");
        let mut conn = conn.clone();
        async move { conn.ttl::<_, i64>(&key).await.unwrap() }
    };
    let rec = |id: &str| -> Record { [("id", id), ("name", "x")].into_iter().collect() };

    // A fresh load.
    cache
        .bulk_load(&[rec("a:1"), rec("b:1")], Version::new(1, 0))
        .await
        .unwrap();
    assert!((55..=60).contains(&ttl(&mut conn, "a:1").await));
    assert!((2990..=3000).contains(&ttl(&mut conn, "b:1").await));

    // One guarded call over both tables: each key its table's TTL.
    cache.begin_load(Version::new(1, 0)).await.unwrap();
    cache.finish_load(Version::new(1, 0)).await.unwrap();
    let changes = [
        Change::upsert("a:2", fields(&[("name", "y")]), Version::new(2, 0)),
        Change::upsert("b:2", fields(&[("name", "y")]), Version::new(2, 1)),
    ];
    let out = cache.apply_batch(&changes, None).await.unwrap();
    assert_eq!(out.applied, 2);
    assert!((55..=60).contains(&ttl(&mut conn, "a:2").await));
    assert!((2990..=3000).contains(&ttl(&mut conn, "b:2").await));
    // Only default-TTL writes: the plain call, the cache's TTL.
    let only_b = [Change::upsert(
        "b:3",
        fields(&[("name", "z")]),
        Version::new(3, 0),
    )];
    cache.apply_batch(&only_b, None).await.unwrap();
    assert!((2990..=3000).contains(&ttl(&mut conn, "b:3").await));

    // A TTL changed while running applies from the next write on.
    cache.set_table_ttl(&format!("{p}b:"), Some(Duration::from_secs(120)));
    assert_eq!(cache.shortest_ttl(), Duration::from_secs(60));
    let again = [Change::upsert(
        "b:2",
        fields(&[("name", "w")]),
        Version::new(4, 0),
    )];
    cache.apply_batch(&again, None).await.unwrap();
    assert!((115..=120).contains(&ttl(&mut conn, "b:2").await));
    assert_eq!(cache.ttl_of(&format!("{p}a:9")), Duration::from_secs(60));
    assert_eq!(cache.ttl_of(&format!("{p}c:9")), Duration::from_secs(3000));
}

#[tokio::test]
async fn a_json_table_stores_documents_guarded_by_the_version_in_their_tombstone_key() {
    let redis = TestRedis::start();
    let p = prefix("json");
    let mut cfg = config(p.clone(), 600);
    cfg.tables = vec![format!("{p}j:"), format!("{p}h:")];
    cfg.json_tables = vec![format!("{p}j:")];
    let cache = PrefetchCache::new(redis.conn().await, cfg, "s");
    let conn = redis.conn().await;
    let doc = |id: &str, d: &str| -> Record {
        Record::with_id(id, [(prefetch::JSON_FIELD.to_owned(), d.to_owned())].into())
    };
    let get = |key: String| {
        let mut conn = conn.clone();
        async move { conn.get::<_, Option<String>>(key).await.unwrap() }
    };

    // A fresh load: the document as a string, its version beside it.
    let hash_row: Record = [("id", "h:1"), ("name", "x")].into_iter().collect();
    let v1 = Version::new(10, 0);
    cache
        .bulk_load(&[doc("j:1", r#"{"n":1}"#), hash_row], v1)
        .await
        .unwrap();
    assert_eq!(get(format!("{p}j:1")).await.as_deref(), Some(r#"{"n":1}"#));
    let side = get(format!("__pf:u:{{{p}j:1}}")).await.unwrap();
    assert!(side.starts_with("0:10:0 "), "{side}");
    let ttl: i64 = conn
        .clone()
        .ttl(format!("__pf:u:{{{p}j:1}}"))
        .await
        .unwrap();
    assert!(
        (590..=600).contains(&ttl),
        "the version lives as long as the document: {ttl}"
    );
    let read = cache.get("j:1").await.unwrap().record.unwrap();
    assert_eq!(read.fields()[prefetch::JSON_FIELD], r#"{"n":1}"#);
    let entry = cache
        .entries_of(&["j:1".to_owned()])
        .await
        .unwrap()
        .remove(0);
    assert_eq!(entry.version, Some(v1));
    assert!(entry.intact, "the stored hash matches the document");
    assert_eq!(
        cache
            .cached_of(&["j:1".to_owned(), "h:1".to_owned()])
            .await
            .unwrap(),
        [true, true]
    );

    // Live writes through the guard: text fields become an object; an older
    // change is refused; a delete leaves its version; nothing older revives.
    cache.begin_load(v1).await.unwrap();
    cache.finish_load(v1).await.unwrap();
    let up = Change::upsert("j:2", fields(&[("name", "two")]), Version::new(20, 0));
    cache.apply_batch(&[up], None).await.unwrap();
    assert_eq!(
        get(format!("{p}j:2")).await.as_deref(),
        Some(r#"{"name":"two"}"#)
    );
    let old = Change::upsert("j:2", fields(&[("name", "old")]), Version::new(15, 0));
    assert_eq!(cache.apply_batch(&[old], None).await.unwrap().stale, 1);
    let del = Change::delete("j:2", Version::new(30, 0));
    cache.apply_batch(&[del], None).await.unwrap();
    assert_eq!(get(format!("{p}j:2")).await, None);
    let late = Change::upsert("j:2", fields(&[("name", "late")]), Version::new(25, 0));
    assert_eq!(cache.apply_batch(&[late], None).await.unwrap().stale, 1);
    assert_eq!(
        get(format!("{p}j:2")).await,
        None,
        "a delete's tombstone holds"
    );

    // A snapshot without j:1 sweeps it, and leaves the hash table alone.
    let window = cache.open_window(Duration::from_secs(5)).await.unwrap();
    let v2 = Version::new(40, 0);
    cache
        .write_snapshot(&[doc("j:3", r#"{"n":3}"#)], v2)
        .await
        .unwrap();
    assert_eq!(cache.sweep_within(v2, "j:").await.unwrap(), 1);
    window.close().await.unwrap();
    assert_eq!(get(format!("{p}j:1")).await, None);
    assert_eq!(get(format!("{p}j:3")).await.as_deref(), Some(r#"{"n":3}"#));
    assert!(cache.get("h:1").await.unwrap().hit());
}
