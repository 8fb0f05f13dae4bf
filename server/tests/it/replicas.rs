//! Three server processes as replicas of one pipeline, on one PostgreSQL and
//! one Redis (a single node, then a 3-primary cluster): the lease holder is killed with SIGKILL mid-stream, another
//! takes over within seconds, Redis ends equal to the table, no key ever
//! moves back to an older version, and the live feed of every surviving
//! replica carried every change, whichever replica applied it.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use app::model::LiveEvent;
use prefetch::Connection;
use prefetch::testing::{TestCluster, TestRedis};
use serde_json::Value;

use crate::common::{
    SseClient, free_port, json_of, postgres_client, postgres_database, sides, sigterm,
    spawn_binary_on,
};
use crate::postgres::watch_versions;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_holder_killed_mid_stream_is_replaced_and_every_replica_stays_live() {
    let redis = TestRedis::spawn_own(false);
    drill(
        "replicas",
        &["--redis-url", &redis.url],
        redis.redis().await,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_the_lease_holder_killed_mid_stream_is_replaced_and_every_replica_stays_live()
{
    let cluster = TestCluster::start(3, 0);
    let urls = cluster.urls().join(",");
    drill(
        "replicas_cluster",
        &["--redis-cluster", &urls],
        cluster.redis().await,
    )
    .await;
}

async fn drill(db: &str, redis_flags: &[&str], raw: prefetch::Redis) {
    let url = postgres_database(db).await;
    let names = ["r1", "r2", "r3"];
    let ports: Vec<u16> = names.iter().map(|_| free_port()).collect();
    let mut servers = Vec::new();
    for (name, port) in names.iter().zip(&ports) {
        let flags = [
            "--primary",
            url.as_str(),
            "--cache-prefix",
            "rep:",
            "--pipeline",
            "drill",
            "--replica",
            name,
            "--pipeline-partitions",
            "3",
        ];
        servers.push(Some(spawn_binary_on(redis_flags, *port, &flags)));
    }
    let mut raw = raw;
    let leader: String = redis::cmd("GET")
        .arg("prefetch:{drill}:leader")
        .query_async(&mut raw)
        .await
        .unwrap();
    let dead = names
        .iter()
        .position(|n| *n == prefetch_pipeline::holder_name(&leader))
        .expect("a replica leads");

    // Every replica's live feed, collected in the background until `done`.
    let done = Arc::new(AtomicBool::new(false));
    let mut feeds = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        if i == dead {
            continue;
        }
        let mut sse = SseClient::connect(&format!("http://127.0.0.1:{port}/events")).await;
        let done = done.clone();
        feeds.push(tokio::spawn(async move {
            let mut seen = BTreeSet::new();
            // The newest cached name each id showed, from any applier.
            let mut cached: HashMap<String, Option<String>> = HashMap::new();
            while !done.load(Ordering::Relaxed) {
                let Some(ev) = sse.next(Duration::from_millis(200)).await else {
                    continue;
                };
                match ev {
                    LiveEvent::Primary {
                        id,
                        fields: Some(f),
                        ..
                    } => {
                        seen.insert((id, f["name"].clone()));
                    }
                    LiveEvent::Cache { id, fields, .. } => {
                        cached.insert(id, fields.map(|f| f["name"].clone()));
                    }
                    _ => {}
                }
            }
            (seen, cached)
        }));
    }

    // Writers change rows; a watcher checks that no version goes back.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (url, stop) = (url.clone(), stop.clone());
        tokio::spawn(async move {
            let sql = postgres_client(&url).await;
            let mut written = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let id = format!("k-{:02}", n % 30);
                let name = format!("v{n}");
                sql.execute(
                    "INSERT INTO categories (id, name) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET name = excluded.name",
                    &[&id, &name],
                )
                .await
                .unwrap();
                written.push((id, name));
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            written
        })
    };
    let watcher = watch_versions(raw.clone(), "rep:", stop.clone());
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mut killed = servers[dead].take().unwrap();
    killed.kill().unwrap(); // SIGKILL: no goodbye, the lease runs out
    killed.wait().unwrap();
    let killed_at = Instant::now();
    let took_over = loop {
        let holder: Option<String> = redis::cmd("GET")
            .arg("prefetch:{drill}:leader")
            .query_async(&mut raw)
            .await
            .unwrap();
        if holder.as_deref().is_some_and(|h| h != leader) {
            break killed_at.elapsed();
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(10),
            "nobody took over"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::Relaxed);
    let written = writer.await.unwrap();
    assert!(written.len() > 100, "{} writes", written.len());
    assert!(watcher.await.unwrap() > 10);
    assert!(
        took_over < Duration::from_secs(6),
        "takeover took {took_over:?}"
    );
    println!(
        "{db}: {} writes; takeover after {took_over:?}",
        written.len()
    );

    // Every surviving replica converges: its cache equals the table.
    let http = reqwest::Client::new();
    for (i, port) in ports.iter().enumerate() {
        if i == dead {
            continue;
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let res = http
                .get(format!("http://127.0.0.1:{port}/state"))
                .send()
                .await
                .unwrap();
            let (_, state): (u16, Value) = json_of(res).await;
            let (primary, cache) = sides(&state);
            if primary == cache {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "replica {} never converged: {} rows, {} cached, {} differ",
                names[i],
                primary.len(),
                cache.len(),
                primary.iter().zip(&cache).filter(|(p, c)| p != c).count()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    if raw.is_cluster() {
        // The records spread over the primaries; the feed's keys share one
        // slot.
        let mut holding = 0;
        for mut node in raw.primaries().await.unwrap() {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg("rep:*")
                .query_async(&mut node)
                .await
                .unwrap();
            holding += usize::from(!keys.is_empty());
        }
        assert!(holding >= 2, "records on {holding} primary");
    }
    // Every change reached every surviving replica's live feed.
    println!("{db}: converged {:?} after the kill", killed_at.elapsed());
    tokio::time::sleep(Duration::from_millis(500)).await;
    done.store(true, Ordering::Relaxed);
    let mut newest: HashMap<String, String> = HashMap::new();
    for (id, name) in &written {
        newest.insert(id.clone(), name.clone());
    }
    for feed in feeds {
        let (seen, cached) = feed.await.unwrap();
        let missing: Vec<_> = written
            .iter()
            .filter(|(id, name)| !seen.contains(&(id.clone(), name.clone())))
            .take(5)
            .collect();
        assert!(missing.is_empty(), "changes never announced: {missing:?}");
        // Its cache column ended on the newest value of every row, whichever
        // replica applied it.
        let stale: Vec<_> = newest
            .iter()
            .filter(|(id, name)| cached.get(*id) != Some(&Some((*name).clone())))
            .take(5)
            .collect();
        assert!(stale.is_empty(), "cache column not live for: {stale:?}");
    }
    for s in servers.iter_mut().flatten() {
        sigterm(s.id());
        let _ = s.wait();
    }
}
