//! Read-your-writes in the library: [`Engine::wait_applied`] on the
//! position a write's commit got, on one node and on a 3-primary cluster;
//! a position the worker does not reach in time is a timeout, and nothing
//! is left waiting.

use std::time::{Duration, Instant};

use prefetch::testing::{TestRedis, mock_engine};
use prefetch::{Connection, Engine, MockPrimary, Primary, Version};

use crate::cluster::cluster;

/// 200 writes, each read back at once after waiting for its position.
async fn each_write_is_read_back_at_its_position<C: Connection>(engine: &Engine<MockPrimary, C>) {
    for i in 0..200 {
        let id = format!("cat-00{}", 1 + i % 5);
        let value = format!("own-{i}");
        let change = engine.source().update_field(&id, "name", &value).unwrap();
        // What the demo's API answers with: at or after the write's own.
        let head = engine.source().commit_position().await.unwrap().unwrap();
        assert!(head >= change.version, "{head} < {}", change.version);
        engine
            .wait_applied(change.version, Duration::from_secs(5))
            .await
            .unwrap();
        let got = engine.cache().get(&id).await.unwrap();
        let name = got.record.as_ref().and_then(|r| r.get("name"));
        assert_eq!(
            name,
            Some(value.as_str()),
            "write {i} at {}",
            change.version
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_waited_for_at_its_position_is_read_back_on_one_node() {
    let redis = TestRedis::start();
    let (engine, _) = mock_engine(redis.conn().await, "ryw-node", None).await;
    each_write_is_read_back_at_its_position(&engine).await;

    // A paused worker: the wait runs out at its limit, then succeeds once
    // the worker applies.
    let pause = engine.sync().pause(Duration::from_secs(5)).await.unwrap();
    let change = engine
        .source()
        .update_field("cat-002", "name", "held")
        .unwrap();
    let started = Instant::now();
    let waited = engine
        .wait_applied(change.version, Duration::from_millis(200))
        .await;
    assert!(
        matches!(waited, Err(prefetch::Error::SettleTimeout(_))),
        "{waited:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert!(engine.sync().applied() < Some(change.version));
    drop(pause);
    engine
        .wait_applied(change.version, Duration::from_secs(5))
        .await
        .unwrap();
    // A position beyond anything committed is never reached.
    let beyond = Version::new(change.version.commit + 1_000, 0);
    assert!(
        engine
            .wait_applied(beyond, Duration::from_millis(50))
            .await
            .is_err()
    );
    engine.shutdown(Duration::from_secs(2)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_waited_for_at_its_position_is_read_back_on_a_cluster() {
    let (engine, _) = mock_engine(cluster().redis().await, "ryw-cluster", None).await;
    each_write_is_read_back_at_its_position(&engine).await;
    engine.shutdown(Duration::from_secs(2)).await.unwrap();
}
