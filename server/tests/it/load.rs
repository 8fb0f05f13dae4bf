//! Load drill on loopback against the real binary: 200 concurrent live-feed
//! clients, 190 of which never read a byte, while 10,000 mutations run.
//! The server's memory stays bounded, the 10 reading clients receive every
//! change (gap-free, within 1 s of the mutation), and SIGTERM still ends the
//! process within 2 s.

use std::io::Write;
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::common::{free_port, spawn_binary};
use app::model::LiveEvent;
use futures::StreamExt;
use prefetch::Version;
use prefetch::testing::TestRedis;

const SLOW: usize = 190;
const FAST: usize = 10;
const MUTATIONS: u64 = 10_000;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Reads the feed; returns (primary events seen in commit order, worst
/// delay ms). Counts itself in `ready` once its opening snapshot has arrived.
async fn fast_client(url: String, ready: Arc<AtomicU64>, done: Arc<AtomicU64>) -> (u64, i64) {
    use eventsource_stream::Eventsource;
    let res = reqwest::get(url).await.unwrap();
    let mut stream = res.bytes_stream().eventsource();
    let mut next_seq = 1u64;
    let mut worst = 0i64;
    let mut opened = false;
    while next_seq <= MUTATIONS {
        let event = tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await
            .expect("the feed keeps flowing")
            .expect("stream open")
            .expect("well-formed SSE");
        // Only the events this client checks are decoded (a debug build
        // decoding every frame of ten clients would slow the whole drill).
        if !(event.data.starts_with("{\"primary\"") || event.data.starts_with("{\"snapshot\"")) {
            continue;
        }
        match serde_json::from_str::<LiveEvent>(&event.data) {
            Ok(LiveEvent::Snapshot(_)) => {
                assert!(
                    !std::mem::replace(&mut opened, true),
                    "a reading client was resynced, so it missed changes"
                );
                ready.fetch_add(1, Ordering::SeqCst);
            }
            Ok(LiveEvent::Primary { version, at_ms, .. }) => {
                let version: Version = version.parse().expect("a version");
                assert_eq!(version.commit, next_seq, "every change, in order");
                next_seq += 1;
                worst = worst.max(now_ms() - at_ms);
            }
            Ok(_) => {}
            Err(e) => panic!("unreadable live event ({e}): {}", event.data),
        }
    }
    done.fetch_add(1, Ordering::SeqCst);
    (next_seq - 1, worst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_feed_clients_some_stuck_while_ten_thousand_mutations_run() {
    let redis = TestRedis::spawn_own(false);
    let port = free_port();
    let mut server = spawn_binary(&redis.url, port);
    let pid = server.id();
    let base = format!("http://127.0.0.1:{port}");
    let rss_before = rss_kib(pid);

    // Clients that connect and never read: their sockets fill up.
    let stuck: Vec<TcpStream> = (0..SLOW)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.write_all(b"GET /events HTTP/1.1\r\nHost: localhost\r\n\r\n")
                .unwrap();
            s
        })
        .collect();
    let ready = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let fast: Vec<_> = (0..FAST)
        .map(|_| {
            let url = format!("{base}/events");
            tokio::spawn(fast_client(url, ready.clone(), done.clone()))
        })
        .collect();
    // Every reading client has its opening snapshot before the first change.
    let deadline = Instant::now() + Duration::from_secs(20);
    while ready.load(Ordering::SeqCst) < FAST as u64 {
        assert!(Instant::now() < deadline, "reading clients did not connect");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // 10,000 mutations from 4 concurrent writers.
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..4)
        .map(|_| {
            let (base, next) = (base.clone(), next.clone());
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= MUTATIONS {
                        break;
                    }
                    let res = http
                        .post(format!("{base}/update"))
                        .header("content-type", "application/x-www-form-urlencoded")
                        .body(format!("id=cat-00{}&field=name&value=m{i}", i % 5 + 1))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(res.status(), 200);
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let writing = started.elapsed();
    for f in fast {
        let (seen, worst) = f.await.unwrap();
        assert_eq!(seen, MUTATIONS);
        assert!(
            worst < 1000,
            "a change reached a reading client after {worst} ms"
        );
    }
    let rss_after = rss_kib(pid);
    let growth_mib = rss_after.saturating_sub(rss_before) as f64 / 1024.0;
    println!(
        "{MUTATIONS} mutations in {writing:?}; RSS {} -> {} MiB (+{growth_mib:.1} MiB) with {SLOW} stuck clients",
        rss_before / 1024,
        rss_after / 1024
    );
    assert!(growth_mib < 64.0, "memory grew by {growth_mib:.1} MiB");

    // SIGTERM with 190 stuck connections still open.
    let t = Instant::now();
    crate::common::sigterm(pid);
    let status = loop {
        if let Some(status) = server.try_wait().unwrap() {
            break status;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "no exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.code(), Some(0));
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "exit took {:?}",
        t.elapsed()
    );
    drop(stuck);
}
