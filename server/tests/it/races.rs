//! The admin actions that remove keys (`/invalidate`, `/clear`) racing
//! `/reprefetch` and `/update` through the HTTP API, with the mock primary's
//! default read latency (80 ms, so every re-prefetch's snapshot spans
//! several updates).
//!
//! Each updater owns its ids and writes ever larger numbers into them, so
//! per id the primary only moves forward. A reader reads all the while: a
//! hit may never show a smaller number than one it already saw for that id
//! (the cache went back in time). Once the clients stop and the worker
//! settles, no cached key may hold anything but the primary's current
//! record: a key may be missing (that is what invalidate and clear are
//! for), never wrong.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use prefetch::testing::{TestRedis, both_sides_of};

use crate::common::TestServer;

/// How long the clients run (with the guard's snapshot window disabled on
/// purpose, 4 s showed a key moving back in 4 of 6 runs).
const RUN: Duration = Duration::from_secs(8);
const IDS: [&str; 5] = ["cat-001", "cat-002", "cat-003", "cat-004", "cat-005"];

/// A small deterministic generator per client, so a failure replays.
fn next(state: &mut u64) -> u64 {
    *state = state
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *state >> 33
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidate_and_clear_racing_reprefetch_and_updates_never_move_a_key_back() {
    let srv =
        Arc::new(TestServer::start_on(TestRedis::start(), &["--primary-latency-ms", "80"]).await);
    let stop = Arc::new(AtomicBool::new(false));
    let number = Arc::new(AtomicU64::new(1));
    let spawn_loop = |mut each: Box<dyn FnMut() -> (&'static str, String) + Send>| {
        let (srv, stop) = (srv.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let (path, form) = each();
                let (status, body) = srv.post(path, &form).await;
                assert_eq!(status, 200, "{path} {form}: {body}");
                n += 1;
                if path != "/update" {
                    tokio::time::sleep(Duration::from_millis(n % 10)).await;
                }
            }
            n
        })
    };
    // Two updaters, each owning its ids: per id the values only grow.
    let updater = |owner: usize| {
        let number = number.clone();
        let mut rng = owner as u64 + 1;
        Box::new(move || {
            let mine: Vec<&str> = IDS.iter().copied().skip(owner).step_by(2).collect();
            let id = mine[(next(&mut rng) % mine.len() as u64) as usize];
            let n = number.fetch_add(1, Ordering::Relaxed);
            ("/update", format!("id={id}&field=name&value={n:08}"))
        }) as Box<dyn FnMut() -> _ + Send>
    };
    let mut rng = 7;
    let remover = Box::new(move || match next(&mut rng) % 100 {
        0..85 => (
            "/invalidate",
            format!("id={}", IDS[(next(&mut rng) % 5) as usize]),
        ),
        _ => ("/clear", String::new()),
    });
    let clients = [
        spawn_loop(updater(0)),
        spawn_loop(updater(1)),
        spawn_loop(remover),
        spawn_loop(Box::new(|| ("/reprefetch", String::new()))),
    ];
    let reader = {
        let (srv, stop) = (srv.clone(), stop.clone());
        tokio::spawn(async move {
            let mut seen: HashMap<&str, String> = HashMap::new();
            let (mut reads, mut rng) = (0u64, 11u64);
            while !stop.load(Ordering::Relaxed) {
                let id = IDS[(next(&mut rng) % 5) as usize];
                let (status, body) = srv.get(&format!("/read?id={id}")).await;
                assert_eq!(status, 200, "{body}");
                reads += 1;
                let Some(name) = body["record"]["name"].as_str() else {
                    continue; // a miss
                };
                // The seed's names are not numbers: only compare numbers.
                if !name.bytes().all(|b| b.is_ascii_digit()) {
                    continue;
                }
                if let Some(before) = seen.get(id) {
                    assert!(
                        name >= before.as_str(),
                        "{id} went back from {before} to {name} after {reads} reads"
                    );
                }
                seen.insert(id, name.to_owned());
            }
            reads
        })
    };
    tokio::time::sleep(RUN).await;
    stop.store(true, Ordering::Relaxed);
    let mut done = Vec::new();
    for c in clients {
        done.push(c.await.unwrap());
    }
    done.push(reader.await.unwrap());
    assert!(
        done.iter().all(|&n| n >= 5),
        "every client made requests: {done:?}"
    );
    srv.engine().settle(Duration::from_secs(5)).await.unwrap();
    let (primary, cache) = both_sides_of(srv.engine(), srv.primary().as_ref()).await;
    for (id, fields) in &cache {
        assert_eq!(
            Some(fields),
            primary.get(id),
            "{id} is cached with a value the primary no longer has (requests per client: {done:?})"
        );
    }
    // And a re-prefetch with nothing racing makes it whole again.
    let (status, _) = srv.post("/reprefetch", "").await;
    assert_eq!(status, 200);
    let (primary, cache) = both_sides_of(srv.engine(), srv.primary().as_ref()).await;
    assert_eq!(primary, cache);
}
