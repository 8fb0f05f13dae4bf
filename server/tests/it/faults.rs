//! Fault drills on loopback: Redis dies under traffic and comes back empty;
//! the server process is killed and restarted. Nothing is lost, nothing is
//! served wrong, nothing panics.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::common::{TestServer, free_port, json_of, sides, spawn_binary};
use prefetch::WorkerState;
use prefetch::testing::TestRedis;
use serde_json::Value;

#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    unavailable: AtomicU64,
    other: AtomicU64,
}

fn count(counts: &Counts, status: u16, body: &Value) {
    match status {
        200 => counts.ok.fetch_add(1, Ordering::Relaxed),
        503 if body["error"]
            .as_str()
            .is_some_and(|m| m.contains("Redis is unavailable")) =>
        {
            counts.unavailable.fetch_add(1, Ordering::Relaxed)
        }
        _ => {
            eprintln!("unexpected answer {status}: {body}");
            counts.other.fetch_add(1, Ordering::Relaxed)
        }
    };
}

/// Compares every record of both sides.
async fn assert_equal_sides(srv: &TestServer) {
    let (status, state) = srv.get("/state").await;
    assert_eq!(status, 200);
    let (primary, cache) = sides(&state);
    assert_eq!(primary, cache, "every record must match");
}

async fn send(
    http: &reqwest::Client,
    base: &str,
    path: &str,
    form: Option<String>,
) -> (u16, Value) {
    let req = match form {
        None => http.get(format!("{base}{path}")),
        Some(body) => http
            .post(format!("{base}{path}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body),
    };
    json_of(req.send().await.expect("the server stays up")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_dies_under_traffic_and_comes_back_empty_nothing_is_lost() {
    let mut srv = TestServer::start_on(TestRedis::spawn_own(false), &[]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(Counts::default());
    let writes = Arc::new(Counts::default());
    let mut traffic = Vec::new();
    for t in 0..2 {
        let (base, stop, reads) = (srv.base.clone(), stop.clone(), reads.clone());
        traffic.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let path = format!("/read?id=cat-00{}", (i + t) % 5 + 1);
                let (status, body) = send(&http, &base, &path, None).await;
                count(&reads, status, &body);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
    }
    {
        let (base, stop, writes) = (srv.base.clone(), stop.clone(), writes.clone());
        traffic.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let form = format!("id=cat-00{}&field=name&value=v{i}", i % 5 + 1);
                let (status, body) = send(&http, &base, "/update", Some(form)).await;
                count(&writes, status, &body);
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        }));
    }

    tokio::time::sleep(Duration::from_millis(300)).await;
    srv.redis.kill();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        reads.unavailable.load(Ordering::Relaxed) > 0,
        "reads answer 503 while Redis is down"
    );
    assert!(matches!(
        srv.engine().sync().state(),
        WorkerState::Retrying { .. }
    ));

    srv.redis.restart();
    // Stop the traffic so convergence has a fixed target.
    stop.store(true, Ordering::Relaxed);
    for t in traffic {
        t.await.unwrap();
    }
    let reconnect = Instant::now();
    while srv.engine().sync().state() != WorkerState::Running {
        assert!(
            reconnect.elapsed() < Duration::from_secs(5),
            "worker never reconnected"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Within 1 s of reconnecting, every queued change is in Redis.
    srv.engine()
        .settle(Duration::from_secs(1))
        .await
        .expect("converges within 1 s");

    // The restart lost the keys; the server noticed and refilled them by
    // itself, with no request asking for it.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let (status, state) = srv.get("/state").await;
        assert_eq!(status, 200);
        let (primary, cache) = sides(&state);
        if primary == cache {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not refilled within 2 s of reconnecting"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_equal_sides(&srv).await;
    assert!(srv.engine().stats().cache.self_heals >= 1);

    assert_eq!(
        reads.other.load(Ordering::Relaxed),
        0,
        "only 200 or 503 for reads"
    );
    assert_eq!(
        writes.other.load(Ordering::Relaxed),
        0,
        "mutations never fail"
    );
    assert_eq!(
        writes.unavailable.load(Ordering::Relaxed),
        0,
        "the primary takes writes while Redis is down"
    );
    // Every change was either applied or covered by the refill's snapshot
    // (which made the queued ones older than what Redis holds).
    let stats = srv.engine().stats();
    let handled = stats.cache.sync_events_applied + stats.cache.sync_events_stale;
    assert!(
        handled <= writes.ok.load(Ordering::Relaxed),
        "a change applied twice ({handled} handled)"
    );
    assert_eq!(stats.backlog, 0, "nothing left behind");
}

#[tokio::test]
async fn a_killed_server_restarts_with_a_complete_cache() {
    let redis = TestRedis::spawn_own(false);
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let post = |path: &str, body: &'static str| {
        http.post(format!("{base}{path}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
    };

    let mut first = spawn_binary(&redis.url, port);
    assert_eq!(
        post("/add", "id=cat-006&name=Seasonal")
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        post("/invalidate", "id=cat-002").await.unwrap().status(),
        200
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    first.kill().unwrap(); // SIGKILL: no shutdown, no cleanup
    first.wait().unwrap();

    let mut second = spawn_binary(&redis.url, port);
    let (status, state) = json_of(reqwest::get(format!("{base}/state")).await.unwrap()).await;
    assert_eq!(status, 200);
    let (primary, cache) = sides(&state);
    assert_eq!(
        primary.len(),
        5,
        "a new process starts from the seed primary"
    );
    assert_eq!(
        primary, cache,
        "start-up prefetch restores a complete cache, orphan cat-006 gone"
    );
    second.kill().unwrap();
    second.wait().unwrap();
}
