//! The server on a local Redis Cluster (three primaries on loopback, with
//! explicit cluster bus ports): the reference API answers as on one node,
//! and the live feed hears writes made outside on every primary.

use std::collections::BTreeSet;
use std::time::Duration;

use app::model::{LiveEvent, WriteOrigin};
use clap::Parser;
use prefetch::testing::{TestCluster, prefix};
use redis::AsyncCommands;
use serde_json::json;

use crate::common::{SseClient, is_cache, json_of};

/// How long a test waits for something that must happen (generous: CI runs
/// these beside a 1,000,000-row test on two cores).
const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_runs_on_a_cluster_and_hears_outside_writes_on_every_primary() {
    let cluster = TestCluster::start(3, 0);
    let prefix = prefix("srv-cluster");
    let urls = cluster.urls().join(",");
    let config = server::Config::try_parse_from([
        "server",
        "--redis-cluster",
        urls.as_str(),
        "--cache-prefix",
        prefix.as_str(),
        "--primary-latency-ms",
        "0",
        "--http-threads",
        "2",
    ])
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let running = server::start(config, Some(listener))
        .await
        .expect("server starts on the cluster");
    let base = format!("http://{}", running.addr);
    let http = reqwest::Client::new();
    let get = |path: &str| {
        let req = http.get(format!("{base}{path}"));
        async move { json_of(req.send().await.unwrap()).await }
    };
    let post = |path: &str, form: &str| {
        let req = http
            .post(format!("{base}{path}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form.to_owned());
        async move { json_of(req.send().await.unwrap()).await }
    };

    let ids = json!(["cat-001", "cat-002", "cat-003", "cat-004", "cat-005"]);
    assert_eq!(
        get("/categories").await,
        (200, json!({"cache_ids": ids, "primary_ids": ids}))
    );
    let (status, body) = get("/read?id=cat-002").await;
    assert_eq!((status, body["hit"].clone()), (200, json!(true)), "{body}");

    let mut feed = SseClient::connect(&format!("{base}/events")).await;
    let Some(LiveEvent::Snapshot(state)) = feed.next(WAIT).await else {
        panic!("first event must be a snapshot");
    };
    assert_eq!(state.cache.len(), 5);
    assert_eq!(state.external, app::model::ExternalWatch::Keyspace);

    let (status, _) = post("/update", "id=cat-001&field=name&value=Clustered").await;
    assert_eq!(status, 200);
    feed.expect(WAIT, "sync write", |e| {
        is_cache(e, "cat-001", WriteOrigin::Sync, true)
    })
    .await;
    let (_, body) = get("/read?id=cat-001").await;
    assert_eq!(body["record"]["name"], "Clustered", "{body}");

    // Outside writes on every primary that holds one of the records.
    let owners: BTreeSet<u16> = (1..=5)
        .map(|i| {
            cluster
                .owner_port(prefetch::slot(&format!("{prefix}cat-00{i}")))
                .unwrap()
        })
        .collect();
    assert!(
        owners.len() >= 2,
        "the records sit on several primaries: {owners:?}"
    );
    let mut raw = cluster.conn().await;
    for i in 1..=5 {
        let id = format!("cat-00{i}");
        let _: () = raw
            .hset(format!("{prefix}{id}"), "name", "by hand")
            .await
            .unwrap();
        feed.expect(WAIT, "outside HSET", |e| {
            is_cache(e, &id, WriteOrigin::External, true)
        })
        .await;
    }
    let _: () = raw.del(format!("{prefix}cat-004")).await.unwrap();
    feed.expect(WAIT, "outside DEL", |e| {
        is_cache(e, "cat-004", WriteOrigin::External, false)
    })
    .await;

    // A re-prefetch repairs them all; the stats and the reconciler work
    // across the nodes.
    let (status, body) = post("/reprefetch", "").await;
    assert_eq!(status, 200, "{body}");
    let (_, body) = get("/read?id=cat-004").await;
    assert_eq!(body["hit"], true, "{body}");
    let (status, body) = get("/stats").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        running.engine.reconcile(false).await.unwrap().missing.len(),
        0
    );
    let (status, body) = post("/clear", "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(get("/categories").await.1["cache_ids"], json!([]));
    running.shutdown().await;
}

#[test]
fn a_pipeline_name_that_is_not_a_plain_hash_tag_is_refused() {
    let config = server::Config::try_parse_from([
        "server",
        "--redis-cluster",
        "redis://127.0.0.1:1",
        "--primary",
        "postgres://127.0.0.1:1/x",
        "--pipeline",
        "p{1}",
    ])
    .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let err = runtime.block_on(server::start(config, None)).unwrap_err();
    assert!(err.to_string().contains("hash tag"), "{err}");
}
