//! Re-prefetch without a pause: the snapshot goes through the version
//! guard while the worker runs, and a sweep removes what it no longer has.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use prefetch::testing::{Counting, TestRedis, assert_converged, engine_config, mock_engine};
use prefetch::{Engine, EventBus, MockPrimary, PrefetchReport, Record, WorkerState};
use redis::AsyncCommands;

#[tokio::test]
async fn reprefetch_does_not_pause_the_worker_and_sweeps_orphans_and_outside_writes() {
    let redis = TestRedis::start();
    let (engine, _) = mock_engine(redis.conn().await, "sweep", None).await;
    let mut conn = redis.conn().await;
    // An orphan (a key the primary never had) and a hash edited by hand.
    let _: () = conn
        .hset_multiple(
            engine.cache().key("ghost"),
            &[("id", "ghost"), ("name", "boo")],
        )
        .await
        .unwrap();
    let _: () = conn
        .hset(engine.cache().key("cat-002"), "name", "vandalised")
        .await
        .unwrap();
    let mut events = engine.subscribe();
    let report = engine.reprefetch().await.unwrap();
    assert_eq!(report.loaded, 5);
    assert_eq!(report.swept, 1, "the orphan");
    assert_converged(&engine).await;
    // The worker never parked.
    while let Ok(ev) = events.try_recv() {
        assert!(
            !matches!(ev, prefetch::Event::Worker(WorkerState::Paused)),
            "re-prefetch paused the worker"
        );
    }
}

/// Readers hammer every id while re-prefetches run back to back and the
/// primary keeps changing: an id that exists throughout is never a miss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_see_no_miss_during_a_hundred_reprefetches() {
    let redis = TestRedis::start();
    let stable: Vec<Record> = (0..200)
        .map(|i| {
            [("id", format!("s-{i:03}")), ("name", format!("stable {i}"))]
                .into_iter()
                .collect()
        })
        .collect();
    let ids: Vec<String> = stable.iter().map(|r| r.id().unwrap().to_owned()).collect();
    let (engine, _) = mock_engine(redis.conn().await, "nomiss", Some(stable)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let misses = Arc::new(AtomicU64::new(0));
    let reads = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = (0..6)
        .map(|r| {
            let (engine, ids, stop, misses, reads) = (
                engine.clone(),
                ids.clone(),
                stop.clone(),
                misses.clone(),
                reads.clone(),
            );
            tokio::spawn(async move {
                let mut i = r * 31;
                while !stop.load(Ordering::Relaxed) {
                    let id = &ids[i % ids.len()];
                    if !engine.cache().get(id).await.unwrap().hit() {
                        misses.fetch_add(1, Ordering::Relaxed);
                    }
                    reads.fetch_add(1, Ordering::Relaxed);
                    i += 7;
                }
            })
        })
        .collect();
    let mutator = {
        let engine = engine.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let id = format!("s-{:03}", n % 200);
                engine
                    .source()
                    .update_field(&id, "name", &format!("changed {n}"))
                    .unwrap();
                n += 1;
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        })
    };
    for _ in 0..100 {
        engine.reprefetch().await.unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.await.unwrap();
    }
    mutator.await.unwrap();
    assert!(reads.load(Ordering::Relaxed) > 1000, "the readers ran");
    assert_eq!(misses.load(Ordering::Relaxed), 0, "a reader saw a miss");
    assert_eq!(engine.stats().cache.misses, 0);
    assert_converged(&engine).await;
}

#[tokio::test]
async fn a_record_deleted_before_the_snapshot_is_swept_and_stays_gone() {
    let redis = TestRedis::start();
    let (engine, _) = mock_engine(redis.conn().await, "gone", None).await;
    let pause = engine.sync().pause(Duration::from_secs(1)).await.unwrap();
    engine.source().delete("cat-003").unwrap();
    // The worker has not applied the delete: the key is still cached.
    assert!(engine.cache().get("cat-003").await.unwrap().hit());
    let report = engine.reprefetch().await.unwrap();
    assert_eq!(report.swept, 1);
    assert!(!engine.cache().get("cat-003").await.unwrap().hit());
    drop(pause);
    // The queued delete is covered by the snapshot: acknowledged with it.
    assert_converged(&engine).await;
    assert_eq!(engine.stats().backlog, 0);
}

#[tokio::test]
async fn given_a_writer_connection_every_write_goes_there_and_reads_stay_apart() {
    let redis = TestRedis::start();
    let (engine, primary, reads, writes, report) = split_engine(&redis, 3000, "split").await;
    assert_eq!(report.loaded, 3000);

    // A re-prefetch writes 3,000 records in guarded chunks and sweeps: all
    // of it on the writer; the reads' connection sees no write.
    let (r0, w0) = (reads.count(), writes.count());
    engine.reprefetch().await.unwrap();
    let (r1, w1) = (reads.count(), writes.count());
    assert!(
        w1 - w0 >= 3000 / 256,
        "writes went elsewhere: {} requests",
        w1 - w0
    );
    assert!(
        r1 - r0 <= 2,
        "a re-prefetch sent {} requests on the reads' connection",
        r1 - r0
    );

    // A change from the source: applied on the writer, visible to a read
    // on the other connection as soon as it is acknowledged.
    primary
        .update_field("rec-000007", "name", "Renamed")
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let got = engine.cache().get("rec-000007").await.unwrap();
        if got
            .record
            .and_then(|r| r.get("name").map(str::to_owned))
            .as_deref()
            == Some("Renamed")
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the update never showed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        writes.count() > w1,
        "the update was not written on the writer"
    );
    engine.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn a_handle_with_its_own_reader_reads_there_and_shares_everything_else() {
    let redis = TestRedis::start();
    let (engine, primary, reads, _writes, _) = split_engine(&redis, 10, "view").await;
    let own = Counting::new(redis.conn().await);
    let view = engine.with_reader(own.clone());

    // Reads through the view go on its connection, never on the engine's.
    let (r0, o0) = (reads.count(), own.count());
    assert!(view.read("rec-000003").await.unwrap().lookup.hit());
    assert_eq!(view.ids().await.unwrap().len(), 10);
    assert_eq!(view.entries().await.unwrap().len(), 10);
    assert!(own.count() - o0 >= 3, "the view's reads went elsewhere");
    assert_eq!(
        reads.count(),
        r0,
        "the view read on the engine's connection"
    );

    // Everything else is the same engine: counters, source, worker.
    assert_eq!(engine.stats().cache.hits, 1);
    primary.update_field("rec-000003", "name", "Seen").unwrap();
    view.settle(Duration::from_secs(5)).await.unwrap();
    let read = view.read("rec-000003").await.unwrap();
    let name = read
        .lookup
        .record
        .and_then(|r| r.get("name").map(str::to_owned));
    assert_eq!(name.as_deref(), Some("Seen"));
    assert_eq!(engine.stats().cache.hits, 2);
    engine.shutdown(Duration::from_secs(5)).await.unwrap();
}

type Conn = Counting<redis::aio::MultiplexedConnection>;

/// An engine over `n` mock records whose reads and writes go on two
/// counted connections of their own.
async fn split_engine(
    redis: &TestRedis,
    n: usize,
    name: &str,
) -> (
    Engine<MockPrimary, Conn>,
    Arc<MockPrimary>,
    Conn,
    Conn,
    PrefetchReport,
) {
    let reads = Counting::new(redis.conn().await);
    let writes = Counting::new(redis.conn().await);
    let events = EventBus::default();
    let primary = Arc::new(MockPrimary::with_records(
        crate::records(n),
        Duration::ZERO,
        events.clone(),
    ));
    let (engine, report) = Engine::start_with_writer(
        reads.clone(),
        writes.clone(),
        Arc::clone(&primary),
        events,
        engine_config(name),
    )
    .await
    .unwrap();
    (engine, primary, reads, writes, report)
}
