//! Operations over HTTP: `/metrics` scrapes with every name and type,
//! `/reconcile` reports and repairs, `/fault` and `/worker` break and mend
//! the pipeline, and the live feed tells the dashboard.

use std::time::Duration;

use app::model::LiveEvent;
use redis::AsyncCommands;

use crate::common::TestServer;

/// How long a test waits for something that must happen (generous: CI runs
/// these beside a 1,000,000-row test on two cores).
const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn metrics_scrape_with_every_name_and_type() {
    let srv = TestServer::start().await;
    srv.get("/read?id=cat-001").await;
    srv.get("/read?id=nope").await;
    srv.post("/update", "id=cat-002&field=name&value=x").await;
    srv.engine().settle(WAIT).await.unwrap();
    srv.post("/reconcile", "").await;
    let res = reqwest::get(srv.url("/metrics")).await.unwrap();
    assert_eq!(res.status(), 200);
    let ctype = res.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
    let text = res.text().await.unwrap();
    for (name, kind) in [
        ("prefetch_cache_hits", "counter"),
        ("prefetch_cache_misses", "counter"),
        ("prefetch_sync_events_applied", "counter"),
        ("prefetch_sync_events_stale", "counter"),
        ("prefetch_sync_events_rejected", "counter"),
        ("prefetch_sync_batches", "counter"),
        ("prefetch_sync_retries", "counter"),
        ("prefetch_sync_oom_retries", "counter"),
        ("prefetch_sync_lag_seconds", "histogram"),
        ("prefetch_visibility_seconds", "histogram"),
        ("prefetch_reads", "counter"),
        ("prefetch_stale_reads", "counter"),
        ("prefetch_lost_keys_restored", "counter"),
        ("prefetch_repair_source_reads", "counter"),
        ("prefetch_membership_filter_bytes", "gauge"),
        ("prefetch_sync_batch_size", "histogram"),
        ("prefetch_read_seconds", "histogram"),
        ("prefetch_sync_backlog", "gauge"),
        ("prefetch_source_behind_seconds", "gauge"),
        ("prefetch_source_connected", "gauge"),
        ("prefetch_source_reads", "counter"),
        ("prefetch_worker_running", "gauge"),
        ("prefetch_reprefetches", "counter"),
        ("prefetch_self_heals", "counter"),
        ("prefetch_ttl_renewal_active", "gauge"),
        ("prefetch_ttl_renewed_keys", "counter"),
        ("prefetch_refills", "counter"),
        ("prefetch_redis_memory_used_bytes", "gauge"),
        ("prefetch_redis_memory_budget_bytes", "gauge"),
        ("prefetch_drift_keys", "gauge"),
        ("prefetch_reconcile_last_timestamp_seconds", "gauge"),
        ("prefetch_reconcile_duration_seconds", "gauge"),
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} {kind}\n")),
            "{name} {kind} missing:\n{text}"
        );
    }
    assert!(text.contains("prefetch_cache_hits_total 1\n"), "{text}");
    // The one miss, of an id the primary does not have.
    for (kind, n) in [("deleted", 0), ("absent", 1), ("lost", 0), ("unknown", 0)] {
        assert!(
            text.contains(&format!(
                "prefetch_cache_misses_total{{kind=\"{kind}\"}} {n}\n"
            )),
            "{kind}: {text}"
        );
    }
    assert!(text.contains("prefetch_reads_total 2\n"), "{text}");
    assert!(text.contains("prefetch_stale_reads_total 0\n"), "{text}");
    assert!(text.contains("prefetch_source_connected 1"), "{text}");
    assert!(
        text.contains("prefetch_sync_lag_seconds_bucket{le=\"0.01\"}"),
        "{text}"
    );
    assert!(text.contains("prefetch_read_seconds_count 2\n"), "{text}");
    // Buckets are cumulative: never falling, none above the count, and
    // `+Inf` holds them all.
    let buckets: Vec<(&str, u64)> = text
        .lines()
        .filter_map(|l| l.strip_prefix("prefetch_read_seconds_bucket{le=\""))
        .filter_map(|l| l.split_once("\"} "))
        .map(|(le, n)| (le, n.trim().parse().unwrap()))
        .collect();
    assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{buckets:?}");
    assert_eq!(buckets.last(), Some(&("+Inf", 2)), "{buckets:?}");
    for kind in [
        "missing",
        "orphaned",
        "stale",
        "changed_outside",
        "in_flight",
    ] {
        assert!(
            text.contains(&format!("prefetch_drift_keys{{kind=\"{kind}\"}} 0")),
            "{kind}: {text}"
        );
    }
    assert!(text.trim_end().ends_with("# EOF"));
}

#[tokio::test]
async fn reconcile_reports_drift_and_repair_fixes_it_live() {
    // Lost keys left lost, for the reconciliation to find.
    let srv = TestServer::start_on(
        prefetch::testing::TestRedis::start(),
        &["--restore-lost", "off"],
    )
    .await;
    let mut feed = srv.events().await;
    feed.next(WAIT).await.expect("snapshot");
    let mut conn = srv.redis.conn().await;
    let _: () = conn.del(format!("{}cat-004", srv.prefix)).await.unwrap();
    let _: () = conn
        .hset(format!("{}cat-005", srv.prefix), "name", "edited")
        .await
        .unwrap();
    let (status, body) = srv.post("/reconcile", "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["missing"], serde_json::json!(["cat-004"]));
    assert_eq!(body["changed_outside"], serde_json::json!(["cat-005"]));
    assert_eq!(body["checked"], 5);
    assert_eq!(body["repaired"], 0);
    assert_eq!(body["verified"], 3, "the three untouched keys");
    for key in ["orphaned", "stale", "in_flight", "elapsed_ms"] {
        assert!(body.get(key).is_some(), "{key} in {body}");
    }
    feed.expect(
        WAIT,
        "reconciled",
        |e| matches!(e, LiveEvent::Reconciled(r) if r.missing == ["cat-004"]),
    )
    .await;
    let (status, body) = srv.post("/reconcile", "repair=true").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["repaired"], 2);
    let (_, body) = srv.post("/reconcile", "repair=false").await;
    assert_eq!(body["missing"], serde_json::json!([]));
    assert_eq!(body["changed_outside"], serde_json::json!([]));
    let (status, body) = srv.post("/reconcile", "repair=maybe").await;
    assert_eq!(status, 400, "{body}");
    let (_, state) = srv.get("/state").await;
    assert_eq!(
        state["reconcile"]["repaired"], 0,
        "the page shows the last report"
    );
}

#[tokio::test]
async fn faults_and_worker_control_over_http() {
    let srv = TestServer::start().await;
    let mut feed = srv.events().await;
    feed.next(WAIT).await.expect("snapshot");
    let (status, body) = srv.post("/fault", "kind=duplicate&count=1").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["pending"]["duplicate"], 1);
    srv.post("/update", "id=cat-001&field=name&value=dup").await;
    feed.expect(WAIT, "duplicate refused", |e| {
        matches!(e, LiveEvent::Fault { kind, outcome: Some(o), .. } if kind == "duplicated" && o == "stale")
    })
    .await;
    let (status, body) = srv.post("/fault", "kind=drop").await;
    assert_eq!(status, 200, "{body}");
    srv.post("/update", "id=cat-003&field=name&value=lost")
        .await;
    feed.expect(WAIT, "dropped", |e| {
        matches!(e, LiveEvent::Fault { kind, outcome: None, id } if kind == "dropped" && id == "cat-003")
    })
    .await;
    srv.engine().settle(WAIT).await.unwrap();
    let (_, body) = srv.post("/reconcile", "").await;
    assert_eq!(
        body["stale"],
        serde_json::json!(["cat-003"]),
        "the drop shows as a lost event"
    );

    let (status, body) = srv.post("/worker", "action=pause").await;
    assert_eq!(
        (status, body["worker"].as_str()),
        (200, Some("paused")),
        "{body}"
    );
    srv.post("/update", "id=cat-002&field=name&value=queued")
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (_, read) = srv.get("/read?id=cat-002").await;
    assert_eq!(read["record"]["name"], "Bakery", "paused: nothing applied");
    // Paused, TTL renewal stops (keys would expire): the stats and the
    // metrics say so, and why.
    let (_, stats) = srv.get("/stats").await;
    assert_eq!(
        stats["ttl_renewal"], "suspended: the sync worker is paused",
        "{stats}"
    );
    let metrics = reqwest::get(srv.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("prefetch_ttl_renewal_active 0"),
        "{metrics}"
    );
    let (status, body) = srv.post("/worker", "action=resume").await;
    assert_eq!(
        (status, body["worker"].as_str()),
        (200, Some("running")),
        "{body}"
    );
    srv.engine().settle(WAIT).await.unwrap();
    // Every resume answers the state the worker reached (it answered
    // "paused" two times in three before).
    for _ in 0..10 {
        let (_, paused) = srv.post("/worker", "action=pause").await;
        let (_, resumed) = srv.post("/worker", "action=resume").await;
        assert_eq!(
            (paused["worker"].as_str(), resumed["worker"].as_str()),
            (Some("paused"), Some("running"))
        );
    }
    let (_, read) = srv.get("/read?id=cat-002").await;
    assert_eq!(read["record"]["name"], "queued");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, stats) = srv.get("/stats").await;
    assert_eq!(stats["ttl_renewal"], "on", "{stats}");

    for (form, needle) in [
        ("kind=explode", "'kind' must be"),
        ("", "Missing 'kind'"),
        ("kind=drop&count=0", "'count' must be"),
        ("kind=delay&ms=abc", "'ms' must be"),
    ] {
        let (status, body) = srv.post("/fault", form).await;
        assert_eq!(status, 400, "{form}: {body}");
        assert!(body["error"].as_str().unwrap().contains(needle), "{body}");
    }
    let (status, _) = srv.post("/worker", "action=explode").await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn periodic_reconciliation_runs_by_itself() {
    let srv = TestServer::start_on(
        prefetch::testing::TestRedis::start(),
        &["--reconcile-every", "1"],
    )
    .await;
    let mut feed = srv.events().await;
    feed.next(WAIT).await.expect("snapshot");
    feed.expect(
        Duration::from_secs(3),
        "a periodic report",
        |e| matches!(e, LiveEvent::Reconciled(r) if r.checked == 5),
    )
    .await;
}
