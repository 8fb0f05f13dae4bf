//! The version guard on its own: stale writes, tombstones, the floor,
//! exact 64-bit versions, the locale, a missing library, a lost state, and
//! one source transaction visible all at once.

use std::time::Duration;

use prefetch::launcher::RedisOptions;
use prefetch::testing::{TestRedis, mock_engine, prefix};
use prefetch::{Change, Error, Mutation, PrefetchCache, Record, Version};
use redis::AsyncCommands;

use crate::{claimed, config, fields};

fn up(id: &str, name: &str, v: Version) -> Change {
    Change::upsert(id, fields(&[("id", id), ("name", name)]), v)
}

fn name_of(record: Option<Record>) -> Option<String> {
    record.and_then(|r| r.get("name").map(str::to_owned))
}

#[tokio::test]
async fn a_stale_change_never_overwrites_a_newer_one_and_a_duplicate_changes_nothing() {
    let redis = TestRedis::start();
    let cache = claimed(redis.conn().await, "stale", 60).await;
    let out = cache
        .apply_batch(&[up("a", "new", Version::new(5, 0))], None)
        .await
        .unwrap();
    assert_eq!((out.applied, out.stale), (1, 0));
    for late in [Version::new(4, 9), Version::new(5, 0), Version::new(1, 0)] {
        let out = cache
            .apply_batch(&[up("a", "old", late)], None)
            .await
            .unwrap();
        assert_eq!((out.applied, out.stale), (0, 1), "{late}");
    }
    assert_eq!(
        name_of(cache.get("a").await.unwrap().record).as_deref(),
        Some("new")
    );
    assert_eq!(cache.stats().sync_events_stale, 3);
    // Reordered within one batch: the newest wins whatever its place.
    let out = cache
        .apply_batch(
            &[
                up("a", "newest", Version::new(9, 0)),
                up("a", "older", Version::new(7, 0)),
            ],
            None,
        )
        .await
        .unwrap();
    assert_eq!(out.applied, 2);
    assert_eq!(
        name_of(cache.get("a").await.unwrap().record).as_deref(),
        Some("newest")
    );
}

#[tokio::test]
async fn a_late_older_upsert_never_resurrects_a_deleted_row() {
    let redis = TestRedis::start();
    let cache = claimed(redis.conn().await, "resurrect", 60).await;
    for id in ["plain", "{tagged}x", "brace}less"] {
        cache
            .apply_batch(&[up(id, "v1", Version::new(1, 0))], None)
            .await
            .unwrap();
        cache
            .apply_batch(&[Change::delete(id, Version::new(3, 0))], None)
            .await
            .unwrap();
        let late = cache
            .apply_batch(&[up(id, "v2", Version::new(2, 0))], None)
            .await
            .unwrap();
        assert_eq!(late.stale, 1, "{id}");
        assert!(!cache.get(id).await.unwrap().hit(), "{id} came back");
        // A newer upsert does bring it back, and clears the tombstone.
        cache
            .apply_batch(&[up(id, "v4", Version::new(4, 0))], None)
            .await
            .unwrap();
        assert_eq!(
            name_of(cache.get(id).await.unwrap().record).as_deref(),
            Some("v4")
        );
    }
}

/// Versions that a comparison of strings, of doubles or of the guard's
/// parts gets wrong, in increasing order.
const STEPS: [Version; 13] = [
    Version::new(9, 0),
    // As decimal strings "10" < "9"; as numbers 10 > 9.
    Version::new(10, 0),
    Version::new((1 << 32) - 1, 0),
    Version::new(1 << 32, 0),
    // The slow path compares two numbers: the commit's top 48 bits, then
    // its low 16 bits with the ordinal.
    Version::new((1 << 32) | 0xFFFF, u32::MAX),
    Version::new((1 << 32) + 0x1_0000, 0),
    Version::new((1 << 48) - 1, u32::MAX),
    Version::new(1 << 48, 0),
    Version::new(1 << 53, 0),
    // A double cannot tell 2^53 + 1 from 2^53.
    Version::new((1 << 53) + 1, 0),
    Version::new(u64::MAX - 1, u32::MAX),
    Version::new(u64::MAX, 0),
    Version::new(u64::MAX, u32::MAX),
];

/// Writes `STEPS` in order over one key (each must apply), then each
/// step's predecessor and a delete at the step itself (each must be
/// refused): over the record as the guard stored it (the hot path that
/// compares digit strings) or, given a connection, over the record with
/// its `__h` in the form written before the version moved into it (the
/// path that parses `__v` into numbers).
async fn walk_steps<C: prefetch::Connection>(
    cache: &PrefetchCache<C>,
    mut old_form: Option<redis::aio::MultiplexedConnection>,
) {
    for (i, v) in STEPS.iter().enumerate() {
        let out = cache
            .apply_batch(&[up("k", &format!("s{i}"), *v)], None)
            .await
            .unwrap();
        assert_eq!(out.applied, 1, "{v} must be newer than the step before");
        if let Some(conn) = old_form.as_mut() {
            let h: String = conn.hget(cache.key("k"), "__h").await.unwrap();
            let _: () = conn.hset(cache.key("k"), "__h", &h[30..]).await.unwrap();
        }
        let refused = [
            up("k", "back", STEPS[i.saturating_sub(1)]),
            Change::delete("k", *v),
        ];
        for change in refused.iter().skip(usize::from(i == 0)) {
            let out = cache
                .apply_batch(std::slice::from_ref(change), None)
                .await
                .unwrap();
            assert_eq!(out.stale, 1, "{change:?} must not be newer than {v}");
        }
    }
    let entry = cache.peek("k").await.unwrap().unwrap();
    assert_eq!(entry.version, Some(Version::new(u64::MAX, u32::MAX)));
}

#[tokio::test]
async fn versions_compare_exactly_near_two_to_the_53_and_64() {
    let redis = TestRedis::start();
    walk_steps(&claimed(redis.conn().await, "big", 60).await, None).await;
    let old = claimed(redis.conn().await, "big-old-form", 60).await;
    walk_steps(&old, Some(redis.conn().await)).await;
}

#[tokio::test]
async fn nothing_older_than_a_floor_applies_however_large_the_floor() {
    // The hot path compares a write with the floor's 30 digits, which the
    // guard computes from "hi:lo:ord" by long division.
    let redis = TestRedis::start();
    for (i, floor) in STEPS.iter().enumerate().skip(1) {
        let cache = PrefetchCache::new(
            redis.conn().await,
            config(prefix(&format!("bigfloor-{i}")), 60),
            "s",
        );
        cache.begin_load(*floor).await.unwrap();
        cache.finish_load(*floor).await.unwrap();
        // A record stored above the floor, so that the hot path runs.
        let top = Version::new(u64::MAX, u32::MAX);
        cache
            .apply_batch(&[up("k", "top", top)], None)
            .await
            .unwrap();
        let below = STEPS[i - 1];
        for (id, v, applies) in [
            ("a", below, false),
            ("b", *floor, true),
            ("k", below, false),
        ] {
            let out = cache.apply_batch(&[up(id, "x", v)], None).await.unwrap();
            assert_eq!(
                out.applied,
                usize::from(applies),
                "{id} at {v} over the floor {floor}"
            );
        }
    }
}

#[tokio::test]
async fn a_record_without_the_version_in_its_h_is_compared_by_its_v() {
    // Written by the previous library (`__h` of 32 digits), or an `__h`
    // someone else wrote: the guard falls back to `__v`, exactly.
    let redis = TestRedis::start();
    let cache = claimed(redis.conn().await, "oldform", 60).await;
    let mut conn = redis.conn().await;
    let key = cache.key("k");
    let v = Version::new((1 << 40) + 7, 3);
    cache.apply_batch(&[up("k", "v", v)], None).await.unwrap();
    let h: String = conn.hget(&key, "__h").await.unwrap();
    assert_eq!(h.len(), 62, "{h}");
    assert_eq!(&h[..30], format!("{:020}{:010}", v.commit, v.ord));
    let forms = [
        // Content and names hashes alone, as written before.
        h[30..].to_owned(),
        // Shorter or longer than the guard writes it.
        h[1..].to_owned(),
        format!("{h}0"),
        String::new(),
    ];
    for (i, form) in forms.iter().enumerate() {
        let _: () = conn.hset(&key, "__h", form).await.unwrap();
        for older in [Version::new(v.commit, v.ord - 1), Version::new(9, 0), v] {
            let out = cache
                .apply_batch(&[up("k", "older", older)], None)
                .await
                .unwrap();
            assert_eq!(out.stale, 1, "{older} over __h {form:?}");
        }
        let newer = Version::new(v.commit + 1 + i as u64, 0);
        let out = cache
            .apply_batch(&[up("k", &format!("n{i}"), newer)], None)
            .await
            .unwrap();
        assert_eq!(out.applied, 1, "{newer} over __h {form:?}");
        let h: String = conn.hget(&key, "__h").await.unwrap();
        assert_eq!(h.len(), 62, "rewritten in the new form");
        // Back to the version the forms are built from.
        let _: () = conn.hset(&key, "__v", v.to_string()).await.unwrap();
    }
}

#[tokio::test]
async fn the_guard_is_the_same_under_a_non_c_locale() {
    // Redis calls setlocale(LC_COLLATE, "") at start, which would change Lua
    // string comparison. Run it under a locale that collates differently
    // from C when one is installed (setup.sh generates en_US.UTF-8).
    let locale = ["en_US.UTF-8", "de_DE.UTF-8", "C.UTF-8"]
        .into_iter()
        .find(|l| {
            std::process::Command::new("locale")
                .arg("-a")
                .output()
                .map(|o| {
                    let listed = String::from_utf8_lossy(&o.stdout).to_lowercase();
                    listed.contains(&l.to_lowercase().replace("utf-8", "utf8"))
                })
                .unwrap_or(false)
        })
        .unwrap_or("C.UTF-8");
    let redis = TestRedis::spawn_options(RedisOptions {
        env: vec![
            ("LC_ALL".into(), locale.into()),
            ("LANG".into(), locale.into()),
        ],
        die_with_parent: true,
        ..RedisOptions::default()
    });
    let cache = claimed(redis.conn().await, "locale", 60).await;
    // Pairs a locale-aware string comparison orders the other way round.
    for (older, newer) in [
        (Version::new(9, 0), Version::new(10, 0)),
        (Version::new(1 << 32, 10), Version::new(1 << 32, 100)),
        (Version::new(2, 0), Version::new(11, 0)),
    ] {
        cache
            .apply_batch(&[up("k", "newer", newer)], None)
            .await
            .unwrap();
        let out = cache
            .apply_batch(&[up("k", "older", older)], None)
            .await
            .unwrap();
        assert_eq!(out.stale, 1, "{older} vs {newer} under {locale}");
        cache.invalidate("k").await.unwrap();
        let _: () = redis::cmd("DEL")
            .arg(format!("__pf:u:{{{}}}", cache.key("k")))
            .query_async(&mut redis.conn().await)
            .await
            .unwrap();
    }
    walk_steps(&claimed(redis.conn().await, "locale-big", 60).await, None).await;
}

#[tokio::test]
async fn nothing_older_than_the_last_snapshot_applies() {
    let redis = TestRedis::start();
    let cache = PrefetchCache::new(redis.conn().await, config(prefix("floor"), 60), "s");
    cache.begin_load(Version::new(100, 0)).await.unwrap();
    cache.finish_load(Version::new(100, 0)).await.unwrap();
    // A change of a row the snapshot did not hold (deleted before it), late.
    let out = cache
        .apply_batch(&[up("gone", "resurrected", Version::new(99, 0))], None)
        .await
        .unwrap();
    assert_eq!(out.stale, 1);
    assert!(!cache.get("gone").await.unwrap().hit());
    let out = cache
        .apply_batch(&[up("new", "after", Version::new(101, 0))], None)
        .await
        .unwrap();
    assert_eq!(out.applied, 1);
}

#[tokio::test]
async fn a_change_older_than_a_truncate_never_brings_a_row_back_whenever_it_arrives() {
    let redis = TestRedis::start();
    let cache = claimed(redis.conn().await, "truncate", 60).await;
    cache
        .apply_batch(&[up("kept", "v1", Version::new(1, 0))], None)
        .await
        .unwrap();
    cache
        .apply_batch(&[Change::truncate(Version::new(10, 0))], None)
        .await
        .unwrap();
    assert!(cache.get("kept").await.unwrap().record.is_none());
    // Committed before the truncate, applied after it (another partition,
    // a claimed entry): refused, for a row that existed and one that did not.
    let out = cache
        .apply_batch(
            &[
                up("kept", "late", Version::new(9, 0)),
                up("fresh", "late", Version::new(9, 1)),
            ],
            None,
        )
        .await
        .unwrap();
    assert_eq!((out.applied, out.stale), (0, 2));
    assert!(cache.get("fresh").await.unwrap().record.is_none());
    let out = cache
        .apply_batch(&[up("fresh", "after", Version::new(11, 0))], None)
        .await
        .unwrap();
    assert_eq!(out.applied, 1);
}

#[tokio::test]
async fn a_flushed_library_is_reloaded_and_the_write_retried() {
    let redis = TestRedis::start();
    let cache = claimed(redis.conn().await, "flush", 60).await;
    let _: () = redis::cmd("FUNCTION")
        .arg("FLUSH")
        .query_async(&mut redis.conn().await)
        .await
        .unwrap();
    let out = cache
        .apply_batch(&[up("a", "after flush", Version::new(1, 0))], None)
        .await
        .unwrap();
    assert_eq!(out.applied, 1);
}

#[tokio::test]
async fn a_write_to_a_redis_without_the_cache_state_writes_nothing_and_says_so() {
    let redis = TestRedis::start();
    let cache = claimed(redis.conn().await, "lost", 60).await;
    let mut conn = redis.conn().await;
    let _: () = conn.del(cache.key_space().meta_key()).await.unwrap();
    let err = cache
        .apply_batch(&[up("a", "x", Version::new(1, 0))], None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::StateLost), "{err}");
    assert!(cache.ids().await.unwrap().is_empty());
    // Another source's state counts as lost too.
    let other = PrefetchCache::new(
        redis.conn().await,
        config(cache.prefix().to_owned(), 60),
        "other",
    );
    other.begin_load(Version::ZERO).await.unwrap();
    let err = cache
        .apply_batch(&[up("a", "x", Version::new(1, 0))], None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::StateLost), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_never_sees_half_of_a_source_transaction() {
    let redis = TestRedis::start();
    let pair = |g: u64| {
        vec![
            Mutation::Put(Record::from(fields(&[
                ("id", "left"),
                ("gen", &g.to_string()),
            ]))),
            Mutation::Put(Record::from(fields(&[
                ("id", "right"),
                ("gen", &g.to_string()),
            ]))),
        ]
    };
    let (engine, _) = mock_engine(redis.conn().await, "atomic", Some(Vec::new())).await;
    engine.source().transaction(pair(0)).unwrap();
    engine.settle(Duration::from_secs(5)).await.unwrap();
    let (left, right) = (engine.cache().key("left"), engine.cache().key("right"));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reads = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let reader = {
        let mut conn = redis.conn().await;
        let (stop, reads) = (stop.clone(), reads.clone());
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // Both keys at one instant (MULTI/EXEC).
                let (l, r): (Option<String>, Option<String>) = redis::pipe()
                    .atomic()
                    .hget(&left, "gen")
                    .hget(&right, "gen")
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                assert_eq!(l, r, "half a transaction was visible");
                reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        })
    };
    // Transactions keep coming until the reader has looked 2,000 times.
    let mut g = 0u64;
    while reads.load(std::sync::atomic::Ordering::Relaxed) < 2000 {
        g += 1;
        engine.source().transaction(pair(g)).unwrap();
        if g.is_multiple_of(10) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(g < 1_000_000, "the reader never got going");
    }
    engine.settle(Duration::from_secs(10)).await.unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    reader.await.unwrap();
    assert!(
        engine.stats().cache.sync_batches > 10,
        "many separate applies"
    );
    let mut conn = redis.conn().await;
    let last: String = conn.hget(engine.cache().key("left"), "gen").await.unwrap();
    assert_eq!(last, g.to_string());
}
