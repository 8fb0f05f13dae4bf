//! A key removed while a snapshot is being written (issue: a wrong value
//! stays in the cache when invalidate or clear races a re-prefetch).
//!
//! The timeline that broke: a re-prefetch takes its snapshot at S; a change
//! newer than S reaches a key; something removes the key (an invalidate, a
//! clear, a `DEL` from outside, its TTL, eviction); then the snapshot's row
//! for that key, older than the change, is written. The removal took the
//! key's version with it, so the guard had nothing to compare with and the
//! older row applied, where it stayed until the next change to that row.
//!
//! The mock primary's read latency stretches the load: its snapshot is
//! taken halfway through the read and returned at the end, which leaves
//! room to change and remove a key in between. The test waits for the
//! primary's read to start (its read counter), so the timeline does not
//! depend on scheduling luck.

use std::time::Duration;

use prefetch::testing::{TestRedis, converged_within, engine_config, mock_engine_with};
use prefetch::{Connection, Engine, MockPrimary, Record};
use redis::AsyncCommands;

/// The primary's read latency: the snapshot is taken at half of it.
const LATENCY: Duration = Duration::from_millis(1000);

#[derive(Clone, Copy, Debug)]
enum Removal {
    /// `Engine::invalidate`.
    Invalidate,
    /// `PrefetchCache::clear` (as another replica's clear would).
    Clear,
    /// `DEL` from another client.
    OutsideDel,
    /// The key's TTL running out.
    Expiry,
}

const ALL: [Removal; 4] = [
    Removal::Invalidate,
    Removal::Clear,
    Removal::OutsideDel,
    Removal::Expiry,
];

fn seed() -> Vec<Record> {
    (0..6)
        .map(|i| {
            [
                ("id", format!("p-{i:03}")),
                ("name", "v0".to_owned()),
                ("display_order", i.to_string()),
            ]
            .into_iter()
            .collect()
        })
        .collect()
}

async fn remove<C: Connection>(engine: &Engine<MockPrimary, C>, id: &str, how: Removal) {
    let key = engine.cache().key(id);
    let mut raw = engine.cache().connection();
    match how {
        Removal::Invalidate => {
            let (_, existed) = engine.invalidate(id).await.unwrap();
            assert!(existed);
        }
        Removal::Clear => {
            assert!(engine.cache().clear().await.unwrap() >= 1);
        }
        Removal::OutsideDel => {
            let n: u64 = raw.del(&key).await.unwrap();
            assert_eq!(n, 1);
        }
        Removal::Expiry => {
            let set: bool = raw.pexpire(&key, 1).await.unwrap();
            assert!(set);
            tokio::time::sleep(Duration::from_millis(20)).await;
            let exists: bool = raw.exists(&key).await.unwrap();
            assert!(!exists, "the key expired");
        }
    }
}

/// One race: a re-prefetch's snapshot, then a newer change to `p-001`,
/// then its removal, then the snapshot's write. The cache may miss the
/// key; it must never hold the snapshot's older value.
async fn race<C: Connection>(conn: C, how: Removal) {
    let test = format!("removal-{how:?}").to_lowercase();
    let (engine, _) = mock_engine_with(conn, engine_config(&test), Some(seed()), LATENCY).await;
    let primary = engine.source().clone();
    let reads = primary.reads();
    let reprefetch = tokio::spawn({
        let engine = engine.clone();
        async move { engine.reprefetch().await }
    });
    // The snapshot is taken half the latency after the read starts.
    while primary.reads() == reads {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    tokio::time::sleep(LATENCY / 2 + LATENCY / 10).await;
    primary.update_field("p-001", "name", "after").unwrap();
    engine.settle(Duration::from_secs(5)).await.unwrap();
    let cached = engine.cache().peek("p-001").await.unwrap().unwrap();
    assert_eq!(cached.fields["name"], "after", "{how:?}: the change landed");
    remove(&engine, "p-001", how).await;
    assert!(
        !reprefetch.is_finished(),
        "{how:?}: the snapshot was still to be written when the key went"
    );
    let report = reprefetch.await.unwrap().unwrap();
    engine.settle(Duration::from_secs(5)).await.unwrap();
    if let Some(entry) = engine.cache().peek("p-001").await.unwrap() {
        assert_eq!(
            entry.fields["name"], "after",
            "{how:?}: the snapshot's older row was written over the newer change ({report:?})"
        );
    }
    // Everything else is untouched, and the next re-prefetch (whose
    // snapshot has the change) makes the cache whole.
    engine.reprefetch().await.unwrap();
    converged_within(&engine, Duration::from_secs(5)).await;
    engine.shutdown(Duration::from_secs(2)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_removed_after_a_newer_change_is_never_refilled_with_the_snapshots_older_row() {
    let redis = TestRedis::start();
    for how in ALL {
        race(redis.conn().await, how).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_on_a_cluster() {
    let cluster = crate::cluster::cluster();
    for how in ALL {
        race(cluster.redis().await, how).await;
    }
}

/// Without a window, a snapshot write is refused outright: a loader whose
/// window lapsed (it stalled past its lease, or its log was evicted) could
/// otherwise write over a change it cannot see.
#[tokio::test]
async fn a_snapshot_write_outside_a_window_is_refused() {
    let redis = TestRedis::start();
    let cache = crate::claimed(redis.conn().await, "nowindow", 60).await;
    let rows = crate::records(3);
    let err = cache
        .write_snapshot(&rows, prefetch::Version::new(5, 0))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("PFWINDOW"), "{err}");
    let window = cache.open_window(Duration::from_secs(30)).await.unwrap();
    let written = cache
        .write_snapshot(&rows, prefetch::Version::new(5, 0))
        .await
        .unwrap();
    assert_eq!(written, 3);
    window.close().await.unwrap();
    // Closed: the log and the mark are gone, and snapshot writes are
    // refused again.
    let mut conn = redis.conn().await;
    let log: bool = conn.exists(cache.key_space().window_key()).await.unwrap();
    assert!(!log);
    assert!(
        cache
            .write_snapshot(&rows, prefetch::Version::new(6, 0))
            .await
            .is_err()
    );
}
