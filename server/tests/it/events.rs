//! `GET /events` with a real SSE client: the snapshot on connect, then each
//! kind of change as it happens, including changes made outside the app.

use std::time::Duration;

use prefetch::testing::TestRedis;

use crate::common::{TestServer, is_cache, upsert_elsewhere};
use app::model::{LiveEvent, WriteOrigin};
use redis::AsyncCommands;

const SECOND: Duration = Duration::from_secs(1);
/// How long a test waits for something that must happen (generous: CI runs
/// these beside a 1,000,000-row test on two cores).
const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn the_feed_opens_with_a_snapshot_of_both_sides() {
    let srv = TestServer::start().await;
    let mut feed = srv.events().await;
    assert!(
        feed.content_type.starts_with("text/event-stream"),
        "{}",
        feed.content_type
    );
    let Some(LiveEvent::Snapshot(state)) = feed.next(WAIT).await else {
        panic!("first event must be a snapshot");
    };
    assert_eq!(state.primary.len(), 5);
    assert_eq!(state.cache.len(), 5);
    assert_eq!(state.prefix, srv.prefix);
    assert_eq!(state.ttl_seconds, 3600);
    assert_eq!(state.external, app::model::ExternalWatch::Keyspace);
    assert!(state.cache.iter().all(|e| e.expires_at_ms.is_some()));
    assert_eq!(state.stats.worker, app::model::WorkerStateDto::Running);
}

#[tokio::test]
async fn update_delete_invalidate_and_an_external_del_each_arrive_within_a_second() {
    let srv = TestServer::start().await;
    let mut feed = srv.events().await;
    feed.next(WAIT).await.expect("snapshot");

    srv.post("/update", "id=cat-001&field=name&value=Drinks")
        .await;
    let ev = feed
        .expect(
            WAIT,
            "primary upsert",
            |e| matches!(e, LiveEvent::Primary { id, op, .. } if id == "cat-001" && op.as_str() == "upsert"),
        )
        .await;
    let LiveEvent::Primary {
        fields: Some(fields),
        ..
    } = ev
    else {
        unreachable!()
    };
    assert_eq!(fields["name"], "Drinks");
    let ev = feed
        .expect(WAIT, "sync write", |e| {
            is_cache(e, "cat-001", WriteOrigin::Sync, true)
        })
        .await;
    let LiveEvent::Cache {
        lag_ms,
        expires_at_ms,
        ..
    } = ev
    else {
        unreachable!()
    };
    assert!(lag_ms.is_some_and(|l| l >= 0.0));
    assert!(expires_at_ms.is_some());

    srv.post("/delete", "id=cat-004").await;
    feed.expect(WAIT, "primary delete", |e| {
        matches!(e, LiveEvent::Primary { id, op, fields: None, .. } if id == "cat-004" && op.as_str() == "delete")
    })
    .await;
    feed.expect(WAIT, "sync delete", |e| {
        is_cache(e, "cat-004", WriteOrigin::Sync, false)
    })
    .await;

    srv.post("/invalidate", "id=cat-002").await;
    feed.expect(WAIT, "admin invalidate", |e| {
        is_cache(e, "cat-002", WriteOrigin::Admin, false)
    })
    .await;

    let mut conn = srv.redis.conn().await;
    let _: () = conn.del(format!("{}cat-003", srv.prefix)).await.unwrap();
    feed.expect(WAIT, "external DEL", |e| {
        is_cache(e, "cat-003", WriteOrigin::External, false)
    })
    .await;
    // The primary still has the row: it comes back by itself.
    feed.expect(WAIT, "restored from the primary", |e| {
        is_cache(e, "cat-003", WriteOrigin::Restored, true)
    })
    .await;
    // The invalidated key was removed on purpose: it stays missing.
    let (_, body) = srv.get("/read?id=cat-002").await;
    assert_eq!(body["hit"], false, "{body}");
}

#[tokio::test]
async fn outside_writes_and_ttl_expiry_show_up_too() {
    let srv = TestServer::start().await;
    let mut feed = srv.events().await;
    feed.next(WAIT).await.expect("snapshot");
    let mut conn = srv.redis.conn().await;
    let key = format!("{}cat-005", srv.prefix);

    let _: () = conn.hset(&key, "name", "Edited by hand").await.unwrap();
    let ev = feed
        .expect(WAIT, "external HSET", |e| {
            is_cache(e, "cat-005", WriteOrigin::External, true)
        })
        .await;
    let LiveEvent::Cache {
        fields: Some(fields),
        ..
    } = ev
    else {
        unreachable!()
    };
    assert_eq!(fields["name"], "Edited by hand");

    let _: () = conn.pexpire(&key, 50).await.unwrap();
    feed.expect(Duration::from_secs(3), "expiry", |e| {
        is_cache(e, "cat-005", WriteOrigin::Expired, false)
            || is_cache(e, "cat-005", WriteOrigin::External, false)
    })
    .await;
}

/// TTL renewal moves every key's expiry forward: the feed tells clients
/// the new TTLs as renewals, never as changes from outside.
#[tokio::test]
async fn ttl_renewals_reach_the_feed_as_renewals_not_as_outside_changes() {
    let srv = TestServer::start_on(TestRedis::start(), &["--ttl-seconds", "3"]).await;
    let mut feed = srv.events().await;
    feed.next(WAIT).await.expect("snapshot");
    let (mut renewed, mut external) = (0, 0);
    let deadline = std::time::Instant::now() + Duration::from_millis(2600);
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match feed.next(left).await {
            Some(LiveEvent::Cache {
                source: WriteOrigin::Renewed,
                ..
            }) => renewed += 1,
            Some(LiveEvent::Cache {
                source: WriteOrigin::External,
                ..
            }) => external += 1,
            Some(_) => {}
            None => break,
        }
    }
    assert!(renewed >= 5, "every key renewed at least once ({renewed})");
    assert_eq!(external, 0);
}

#[tokio::test]
async fn clear_and_reprefetch_reach_every_client() {
    let srv = TestServer::start().await;
    let mut a = srv.events().await;
    let mut b = srv.events().await;
    a.next(WAIT).await.expect("snapshot");
    b.next(WAIT).await.expect("snapshot");

    srv.post("/clear", "").await;
    for feed in [&mut a, &mut b] {
        feed.expect(WAIT, "cleared", |e| {
            matches!(e, LiveEvent::Cleared { deleted: 5 })
        })
        .await;
    }
    srv.post("/reprefetch", "").await;
    for feed in [&mut a, &mut b] {
        feed.expect(WAIT, "prefetched", |e| {
            matches!(e, LiveEvent::Prefetched { loaded: 5, .. })
        })
        .await;
        let ev = feed
            .expect(WAIT, "fresh snapshot", |e| {
                matches!(e, LiveEvent::Snapshot(_))
            })
            .await;
        let LiveEvent::Snapshot(state) = ev else {
            unreachable!()
        };
        assert_eq!(state.cache.len(), 5);
    }
}

#[tokio::test]
async fn stats_and_worker_state_are_pushed() {
    let srv = TestServer::start().await;
    let mut feed = srv.events().await;
    feed.next(WAIT).await.expect("snapshot");
    srv.get("/read?id=cat-001").await;
    feed.expect(
        WAIT,
        "stats with the hit",
        |e| matches!(e, LiveEvent::Stats(s) if s.hits == 1),
    )
    .await;
    let pause = srv.engine().sync().pause(SECOND).await.unwrap();
    feed.expect(
        WAIT,
        "worker paused",
        |e| matches!(e, LiveEvent::Worker { state } if state.as_str() == "paused"),
    )
    .await;
    pause.resume();
    feed.expect(
        WAIT,
        "worker running",
        |e| matches!(e, LiveEvent::Worker { state } if state.as_str() == "running"),
    )
    .await;
}

#[tokio::test]
async fn shutdown_ends_open_streams() {
    let srv = TestServer::start().await;
    let mut feed = srv.events().await;
    feed.next(WAIT).await.expect("snapshot");
    let stopped = tokio::time::Instant::now();
    srv.stop().await;
    // Drain whatever was in flight; the stream must then end, not hang.
    while feed.next(Duration::from_secs(2)).await.is_some() {}
    assert!(
        stopped.elapsed() < Duration::from_secs(2),
        "stream ended in {:?}",
        stopped.elapsed()
    );
}

#[tokio::test]
async fn where_config_is_refused_outside_changes_are_polled_instead() {
    // A managed Redis that refuses CONFIG: no keyspace notifications.
    let redis =
        prefetch::testing::TestRedis::spawn_with(false, &["--rename-command", "CONFIG", ""]);
    let srv = TestServer::start_on(redis, &[]).await;
    let mut feed = srv.events().await;
    let Some(LiveEvent::Snapshot(state)) = feed.next(WAIT).await else {
        panic!("first event must be a snapshot");
    };
    assert_eq!(
        state.external,
        app::model::ExternalWatch::Polling,
        "the page says so"
    );

    let mut conn = srv.redis.conn().await;
    let _: () = conn.del(format!("{}cat-004", srv.prefix)).await.unwrap();
    // The poll runs every second.
    feed.expect(Duration::from_secs(3), "polled external DEL", |e| {
        is_cache(e, "cat-004", WriteOrigin::External, false)
    })
    .await;
    // The app's own writes are not misreported as outside changes.
    srv.post("/update", "id=cat-001&field=name&value=Mine")
        .await;
    feed.expect(WAIT, "sync write", |e| {
        is_cache(e, "cat-001", WriteOrigin::Sync, true)
    })
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(2500);
    while let Some(left) = deadline.checked_duration_since(tokio::time::Instant::now()) {
        match feed.next(left).await {
            Some(ev) => assert!(
                !is_cache(&ev, "cat-001", WriteOrigin::External, true),
                "own write reported as external: {ev:?}"
            ),
            None => break,
        }
    }
}

/// Without `--pipeline`, no other process applies to this cache: a write
/// that carries a version but was not made by this server (a key copied
/// back from a dump, a stray applier) is an outside write.
#[tokio::test]
async fn without_a_pipeline_every_write_the_server_did_not_make_is_external() {
    let srv = TestServer::start().await;
    let mut feed = srv.events().await;
    feed.next(WAIT).await.expect("snapshot");
    let v = prefetch::Version::new(u64::from(u32::MAX) << 20, 0);
    upsert_elsewhere(&srv, v).await;
    feed.expect(WAIT, "a versioned write from elsewhere", |e| {
        is_cache(e, "cat-002", WriteOrigin::External, true)
    })
    .await;
    srv.stop().await;
}

/// Calls of `command` since the last `CONFIG RESETSTAT` (0 when none).
async fn calls(conn: &mut redis::aio::MultiplexedConnection, command: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

/// With no client on the feed, keyspace notifications cost no Redis reads
/// (no re-read of each named key, no full resync); the first client to
/// come back gets a snapshot that re-seeds the hub, so the next outside
/// change is still reported as such.
#[tokio::test]
async fn with_nobody_watching_the_hub_reads_nothing_and_the_next_client_is_told_everything() {
    let srv = TestServer::start().await;
    let mut conn = srv.redis.conn().await;
    let key = format!("{}cat-003", srv.prefix);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut conn)
        .await
        .unwrap();
    for i in 0..10 {
        let _: () = conn
            .hset(&key, "name", format!("Outside {i}"))
            .await
            .unwrap();
        srv.post(
            "/update",
            &format!("id=cat-001&field=name&value=Mine%20{i}"),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    srv.engine()
        .settle(Duration::from_secs(5))
        .await
        .expect("settled");
    tokio::time::sleep(Duration::from_millis(300)).await;
    for command in ["hgetall", "ttl", "scan"] {
        assert_eq!(
            calls(&mut conn, command).await,
            0,
            "{command} with nobody watching"
        );
    }

    let mut feed = srv.events().await;
    let Some(LiveEvent::Snapshot(state)) = feed.next(WAIT).await else {
        panic!("first event must be a snapshot");
    };
    let shown = state
        .cache
        .iter()
        .find(|e| e.id == "cat-003")
        .expect("cat-003");
    assert_eq!(shown.fields["name"], "Outside 9");
    // Back to a value the hub saw before it went idle: still a change for
    // this client.
    let _: () = conn.hset(&key, "name", "Produce").await.unwrap();
    feed.expect(WAIT, "outside HSET after the client came", |e| {
        is_cache(e, "cat-003", WriteOrigin::External, true)
    })
    .await;
    srv.post("/update", "id=cat-001&field=name&value=Mine%20again")
        .await;
    feed.expect(WAIT, "sync write", |e| {
        is_cache(e, "cat-001", WriteOrigin::Sync, true)
    })
    .await;
}
