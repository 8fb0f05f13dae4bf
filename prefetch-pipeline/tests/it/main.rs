//! The durable feed against a real redis-server: several engines ("replicas")
//! in one process, one shared source of truth (the mock), one Redis.

// Test code: a failed unwrap is a failed test, with its place.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use prefetch::testing::{TestCluster, TestRedis, converged_within_of, engine_config};
use prefetch::{
    Change, Engine, EngineConfig, EventBus, Fields, MockPrimary, Source, Transaction, Version,
};
use prefetch_pipeline::{
    FeedSource, Lease, PipelineConfig, SourceFactory, dead_letters, publish, replay_dead_letters,
    run_leader, trim,
};
use redis::aio::MultiplexedConnection;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

type Replica = Engine<FeedSource<MockPrimary>, MultiplexedConnection>;

fn config(name: &str, consumer: &str) -> PipelineConfig {
    let mut c = PipelineConfig::new(name, consumer);
    c.partitions = 2;
    c.lease_ttl = Duration::from_millis(900);
    c.claim_idle = Duration::from_millis(300);
    c.claim_every = Duration::from_millis(100);
    c.block = Duration::from_millis(100);
    c.trim_every = Duration::from_millis(200);
    c
}

struct Node {
    engine: Replica,
    leading: watch::Receiver<bool>,
    leader: tokio::task::JoinHandle<()>,
    cancel: CancellationToken,
}

async fn replica(
    redis: &TestRedis,
    mock: &Arc<MockPrimary>,
    pipeline: &str,
    consumer: &str,
    engine: EngineConfig,
) -> Node {
    let events = EventBus::default();
    let cfg = config(pipeline, consumer);
    let feed = FeedSource::connect(
        redis.client(),
        Arc::clone(mock),
        cfg.clone(),
        events.clone(),
    )
    .await
    .unwrap();
    let (engine, _) = Engine::start(redis.conn().await, feed, events, engine)
        .await
        .unwrap();
    let source = Arc::clone(mock);
    let factory: SourceFactory = Arc::new(move || {
        let s: Arc<dyn Source> = source.clone();
        async move { Ok(s) }.boxed()
    });
    let (tx, leading) = watch::channel(false);
    let cancel = CancellationToken::new();
    let leader = tokio::spawn(run_leader(
        redis.redis().await,
        cfg,
        factory,
        tx,
        cancel.clone(),
    ));
    Node {
        engine,
        leading,
        leader,
        cancel,
    }
}

fn leaders(nodes: &[Node]) -> usize {
    nodes.iter().filter(|n| *n.leading.borrow()).count()
}

fn mutate(mock: &MockPrimary, round: usize) {
    for i in 0..20 {
        let id = format!("k{:02}", (round * 7 + i) % 30);
        let r = match (round + i) % 4 {
            0 => mock.delete(&id).map(|_| ()),
            1 => mock
                .add([("id", id.as_str()), ("name", "new")].into_iter().collect())
                .map(|_| ()),
            _ => mock
                .update_field(&id, "name", &format!("r{round}i{i}"))
                .map(|_| ()),
        };
        // Unknown or duplicate ids are refused by the mock; that is fine.
        drop(r);
    }
}

#[tokio::test]
async fn three_replicas_apply_one_feed_and_a_dead_leader_is_replaced() {
    let redis = TestRedis::start();
    let mock = Arc::new(MockPrimary::with_records(
        (0..30)
            .map(|i| {
                let id = format!("k{i:02}");
                [("id", id.as_str()), ("name", "v0")].into_iter().collect()
            })
            .collect::<Vec<prefetch::Record>>(),
        Duration::ZERO,
        EventBus::default(),
    ));
    let engine = engine_config("replicas");
    let mut nodes = Vec::new();
    for name in ["r1", "r2", "r3"] {
        nodes.push(replica(&redis, &mock, "replicas", name, engine.clone()).await);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while leaders(&nodes) != 1 {
        assert!(Instant::now() < deadline, "nobody took the lease");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Never two publishers at once, sampled while the rows change.
    let flags: Vec<watch::Receiver<bool>> = nodes.iter().map(|n| n.leading.clone()).collect();
    let sampling = CancellationToken::new();
    let sampler = {
        let stop = sampling.clone();
        tokio::spawn(async move {
            let mut samples = 0;
            while !stop.is_cancelled() {
                let n = flags.iter().filter(|f| *f.borrow()).count();
                assert!(n <= 1, "{n} publishers at once");
                samples += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            samples
        })
    };
    for round in 0..10 {
        mutate(&mock, round);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    converged_within_of(
        &nodes[0].engine,
        nodes[0].engine.source().inner().as_ref(),
        Duration::from_secs(10),
    )
    .await;
    sampling.cancel();
    assert!(sampler.await.unwrap() > 10);
    let applied: Vec<u64> = nodes
        .iter()
        .map(|n| n.engine.stats().cache.sync_events_applied)
        .collect();
    assert!(
        applied.iter().all(|&n| n > 0),
        "every replica applies its share: {applied:?}"
    );

    // The leader dies without a word: its task is gone, its lease runs out.
    let dead = nodes.iter().position(|n| *n.leading.borrow()).unwrap();
    let node = nodes.remove(dead);
    node.leader.abort();
    node.engine.shutdown(Duration::from_secs(1)).await.unwrap();
    drop(node);
    let started = Instant::now();
    for round in 10..20 {
        mutate(&mock, round);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while leaders(&nodes) != 1 {
        assert!(Instant::now() < deadline, "no takeover");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = started.elapsed();
    converged_within_of(
        &nodes[0].engine,
        nodes[0].engine.source().inner().as_ref(),
        Duration::from_secs(10),
    )
    .await;
    assert!(took < Duration::from_secs(3), "takeover took {took:?}");
    for n in &nodes {
        n.cancel.cancel();
    }
    for n in nodes {
        n.leader.await.unwrap();
        n.engine.shutdown(Duration::from_secs(1)).await.unwrap();
    }
    // Everything published was acknowledged by the group and trimmed away
    // or is still needed: nothing pending is left behind.
    let mut conn = redis.conn().await;
    for p in 0..2 {
        let summary: (u64, Option<String>, Option<String>, redis::Value) = redis::cmd("XPENDING")
            .arg(config("replicas", "x").stream(p))
            .arg("appliers")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(
            summary.0, 0,
            "partition {p} has entries nobody acknowledged"
        );
    }
}

fn tx(commit: u64, id: &str, name: &str) -> Arc<Transaction> {
    let v = Version::new(commit, 0);
    let fields: Fields = [("id", id), ("name", name)]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    Arc::new(Transaction::new(v, vec![Change::upsert(id, fields, v)]))
}

/// One Redis node or a 3-primary cluster, for the tests that run on both.
enum Where {
    One(TestRedis),
    Cluster(TestCluster),
}

impl Where {
    fn one() -> Self {
        Self::One(TestRedis::start())
    }

    fn cluster() -> Self {
        Self::Cluster(TestCluster::start(3, 0))
    }

    async fn redis(&self) -> prefetch::Redis {
        match self {
            Self::One(r) => r.redis().await,
            Self::Cluster(c) => c.redis().await,
        }
    }

    fn client(&self) -> prefetch::RedisClient {
        match self {
            Self::One(r) => r.client().into(),
            Self::Cluster(c) => prefetch::RedisClient::Cluster(c.client()),
        }
    }
}

/// A connection and a lease held on `cfg`'s pipeline.
async fn lease_for(redis: &Where, cfg: &PipelineConfig) -> (prefetch::Redis, Lease) {
    let conn = redis.redis().await;
    let lease = Lease::new(conn.clone(), cfg);
    assert!(lease.acquire().await.unwrap());
    (conn, lease)
}

#[tokio::test]
async fn a_publisher_without_the_lease_cannot_publish() {
    fencing(Where::one()).await;
}

#[tokio::test]
async fn on_a_cluster_a_publisher_without_the_lease_cannot_publish() {
    fencing(Where::cluster()).await;
}

async fn fencing(redis: Where) {
    let cfg = config("fence", "r1");
    let (mut conn, lease) = lease_for(&redis, &cfg).await;
    publish(&mut conn, &cfg, lease.holder_id(), &[tx(1, "a", "x")])
        .await
        .unwrap();
    for other in ["r2", "r1", "r1#0000000000000000"] {
        let e = publish(&mut conn, &cfg, other, &[tx(2, "a", "y")])
            .await
            .unwrap_err();
        assert!(e.to_string().contains("PFNOTLEADER"), "{other}: {e}");
    }
    // Another process under the same name has a lease of its own.
    let twin = Lease::new(redis.redis().await, &cfg);
    assert!(
        !twin.acquire().await.unwrap(),
        "a twin must not share the lease"
    );
    twin.release().await.unwrap();
    assert!(
        lease.renew().await.unwrap(),
        "a twin cannot release it either"
    );
    let mut raw = redis.redis().await;
    let lens: Vec<u64> = futures::future::join_all(cfg.streams().into_iter().map(|s| {
        let mut raw = raw.clone();
        async move {
            redis::cmd("XLEN")
                .arg(s)
                .query_async::<u64>(&mut raw)
                .await
                .unwrap()
        }
    }))
    .await;
    assert_eq!(lens.iter().sum::<u64>(), 1, "only the holder's entry");
    let published: String = redis::cmd("GET")
        .arg(cfg.published_key())
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(published, Version::new(1, 0).to_string());
    // The lease expires unless renewed; renewing someone else's fails.
    let other = Lease::new(redis.redis().await, &config("fence", "r2"));
    assert!(!other.renew().await.unwrap());
    assert!(!other.acquire().await.unwrap());
    lease.release().await.unwrap();
    assert!(other.acquire().await.unwrap());
}

/// A member of the group that is not inside an engine.
async fn member(redis: &Where, cfg: PipelineConfig) -> Arc<FeedSource<MockPrimary>> {
    let mock = Arc::new(MockPrimary::with_records(
        Vec::new(),
        Duration::ZERO,
        EventBus::default(),
    ));
    let feed = FeedSource::connect(redis.client(), mock, cfg, EventBus::default())
        .await
        .unwrap();
    feed.open(None).await.unwrap();
    feed
}

/// One pull, which must bring something within 5 s.
async fn pull(feed: &FeedSource<MockPrimary>) -> Vec<Arc<Transaction>> {
    tokio::time::timeout(Duration::from_secs(5), feed.pull(100))
        .await
        .expect("entries within 5 s")
        .unwrap()
}

fn names(txs: &[Arc<Transaction>]) -> Vec<u64> {
    txs.iter().map(|t| t.position.commit).collect()
}

#[tokio::test]
async fn a_dead_consumers_entries_are_claimed_and_poison_goes_to_the_dead_letters() {
    claims(Where::one()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_a_dead_consumers_entries_are_claimed_and_poison_goes_to_the_dead_letters() {
    claims(Where::cluster()).await;
}

async fn claims(redis: Where) {
    let mut cfg = config("claims", "dead");
    cfg.partitions = 1;
    cfg.max_deliveries = 2;
    let (mut conn, lease) = lease_for(&redis, &cfg).await;
    let dead = member(&redis, cfg.clone()).await;
    let txs: Vec<_> = (1..=4).map(|i| tx(i, "a", &format!("v{i}"))).collect();
    publish(&mut conn, &cfg, lease.holder_id(), &txs)
        .await
        .unwrap();
    let got = pull(&dead).await;
    assert_eq!(names(&got), vec![1, 2, 3, 4]);
    dead.ack(Version::new(2, 0)).await.unwrap(); // 1 and 2 done, 3 and 4 in hand
    drop(dead); // …and it dies.

    let mut live_cfg = cfg.clone();
    live_cfg.consumer = "live".into();
    let live = member(&redis, live_cfg.clone()).await;
    let claimed = pull(&live).await;
    assert_eq!(names(&claimed), vec![3, 4], "only what the dead one left");
    // `live` dies too before acknowledging; a third claims them again, and
    // the entries are now past their delivery budget.
    drop(live);
    let mut third_cfg = cfg.clone();
    third_cfg.consumer = "third".into();
    let third = member(&redis, third_cfg).await;
    // An undecodable entry goes straight to the dead letters.
    let mut raw = redis.redis().await;
    let _: String = redis::cmd("XADD")
        .arg(cfg.stream(0))
        .arg("*")
        .arg("v")
        .arg("1:0:0")
        .arg("changes")
        .arg("{broken")
        .query_async(&mut raw)
        .await
        .unwrap();
    let fresh = tx(5, "b", "fine");
    publish(
        &mut conn,
        &cfg,
        lease.holder_id(),
        std::slice::from_ref(&fresh),
    )
    .await
    .unwrap();
    tokio::time::sleep(cfg.claim_idle).await; // `live` held them that long
    let got = pull(&third).await;
    assert_eq!(names(&got), vec![5], "the poison is not handed out");
    third.ack(Version::new(5, 0)).await.unwrap();
    let letters = dead_letters(redis.redis().await, &cfg, 10).await.unwrap();
    let reasons: Vec<&str> = letters.iter().map(|(_, r)| r.as_str()).collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert_eq!(
        reasons
            .iter()
            .filter(|r| r.contains("delivered 3 times"))
            .count(),
        2,
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("not the feed's JSON")),
        "{reasons:?}"
    );
    let status = third.status();
    assert!(
        status
            .details
            .iter()
            .any(|(k, v)| k == "dead letters" && v == "3"),
        "{:?}",
        status.details
    );

    // Replay: the two transactions come back and apply cleanly; the broken
    // one comes back to the dead letters.
    assert_eq!(
        replay_dead_letters(redis.redis().await, &cfg, 10)
            .await
            .unwrap(),
        3
    );
    let mut back = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while back.len() < 2 {
        assert!(Instant::now() < deadline, "replayed entries never came");
        let got = tokio::time::timeout(Duration::from_secs(1), third.pull(100)).await;
        if let Ok(got) = got {
            back.extend(names(&got.unwrap()));
        }
    }
    back.sort_unstable();
    assert_eq!(back, vec![3, 4]);
    let letters = dead_letters(redis.redis().await, &cfg, 10).await.unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
}

#[tokio::test]
async fn trimming_keeps_every_entry_a_group_still_needs() {
    let redis = Where::one();
    let mut cfg = config("trim", "r1");
    cfg.partitions = 1;
    let (mut conn, lease) = lease_for(&redis, &cfg).await;
    let member = member(&redis, cfg.clone()).await;
    let txs: Vec<_> = (1..=10).map(|i| tx(i, "a", "v")).collect();
    publish(&mut conn, &cfg, lease.holder_id(), &txs[..6])
        .await
        .unwrap();
    let got = pull(&member).await;
    assert_eq!(got.len(), 6);
    member.ack(Version::new(4, 0)).await.unwrap();
    publish(&mut conn, &cfg, lease.holder_id(), &txs[6..])
        .await
        .unwrap();
    let stream = cfg.stream(0);
    let removed = trim(redis.redis().await, &stream).await.unwrap();
    assert_eq!(
        removed, 4,
        "1–4 acknowledged; 5 and 6 pending, 7–10 undelivered"
    );
    member.ack(Version::new(6, 0)).await.unwrap();
    let removed = trim(redis.redis().await, &stream).await.unwrap();
    assert_eq!(
        removed, 1,
        "the last delivered entry stays as the group's mark"
    );
    let mut raw = redis.redis().await;
    let left: u64 = redis::cmd("XLEN")
        .arg(&stream)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(left, 5);
    let got = pull(&member).await;
    assert_eq!(
        names(&got),
        vec![7, 8, 9, 10],
        "nothing undelivered was trimmed"
    );
    // A second group that has read nothing holds everything.
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg("late")
        .arg("0")
        .query_async(&mut raw)
        .await
        .unwrap();
    member.ack(Version::new(10, 0)).await.unwrap();
    assert_eq!(trim(redis.redis().await, &stream).await.unwrap(), 0);
}

#[tokio::test]
async fn every_replica_announces_every_transaction() {
    let redis = Where::one();
    let mut cfg = config("tail", "r1");
    cfg.partitions = 3;
    let (mut conn, lease) = lease_for(&redis, &cfg).await;
    let mut buses = Vec::new();
    let mut members = Vec::new();
    for name in ["r1", "r2"] {
        let mut c = cfg.clone();
        c.consumer = name.into();
        let events = EventBus::default();
        let rx = events.subscribe();
        let mock = Arc::new(MockPrimary::with_records(
            Vec::new(),
            Duration::ZERO,
            EventBus::default(),
        ));
        members.push(
            FeedSource::connect(redis.client(), mock, c, events)
                .await
                .unwrap(),
        );
        buses.push(rx);
    }
    tokio::time::sleep(Duration::from_millis(200)).await; // tails are reading
    let txs: Vec<_> = (1..=9).map(|i| tx(i, &format!("k{i}"), "v")).collect();
    publish(&mut conn, &cfg, lease.holder_id(), &txs)
        .await
        .unwrap();
    for rx in &mut buses {
        let mut seen = BTreeMap::new();
        let deadline = Instant::now() + Duration::from_secs(3);
        while seen.len() < 9 {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, rx.recv()).await {
                Ok(Ok(prefetch::Event::Primary(tx))) => {
                    seen.insert(tx.position.commit, ());
                }
                Ok(Ok(_)) => {}
                other => panic!("only {} of 9 announced: {other:?}", seen.len()),
            }
        }
    }
    drop(members);
}

#[tokio::test]
async fn a_replayed_debezium_entry_keeps_its_original_version() {
    let redis = Where::one();
    let mut cfg = config("replayv", "r1");
    cfg.partitions = 1;
    let mut raw = redis.redis().await;
    // Buried long ago as entry 1-0 of the partition, in Debezium's format.
    let _: String = redis::cmd("XADD")
        .arg(cfg.dlq_key())
        .arg("*")
        .arg("__reason")
        .arg("delivered 6 times without being acknowledged")
        .arg("__stream")
        .arg(cfg.stream(0))
        .arg("__id")
        .arg("1-0")
        .arg(r#"{"id":"a"}"#)
        .arg(r#"{"before":null,"after":{"id":"a","name":"old"},"op":"u"}"#)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(
        replay_dead_letters(redis.redis().await, &cfg, 10)
            .await
            .unwrap(),
        1
    );
    let member = member(&redis, cfg.clone()).await;
    let got = pull(&member).await;
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].changes[0].version,
        Version::new(1, 0),
        "not the replayed entry's new id"
    );
    assert_eq!(got[0].changes[0].id, "a");
}

/// With `wait_replicas`, the leader tells its source that a batch is
/// durable only once a replica of Redis holds it: the replica paused,
/// nothing new is acknowledged; resumed, all of it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_acknowledges_only_what_a_redis_replica_holds() {
    let primary = TestRedis::spawn_own(false);
    let replica = TestRedis::spawn_own(false);
    let mut r = replica
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(primary.port)
        .query_async(&mut r)
        .await
        .unwrap();
    // Replicating once a write is acknowledged by the replica.
    let mut p = primary
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let _: () = redis::cmd("SET")
            .arg("probe")
            .arg(1)
            .query_async(&mut p)
            .await
            .unwrap();
        let n: u32 = redis::cmd("WAIT")
            .arg(1)
            .arg(200)
            .query_async(&mut p)
            .await
            .unwrap();
        if n == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the replica never acknowledged a write"
        );
    }
    let mock = Arc::new(MockPrimary::with_records(
        Vec::<prefetch::Record>::new(),
        Duration::ZERO,
        EventBus::default(),
    ));
    let mut cfg = config("waits", "leader");
    cfg.wait_replicas = 1;
    cfg.wait_timeout = Duration::from_millis(200);
    let source = Arc::clone(&mock);
    let factory: SourceFactory = Arc::new(move || {
        let s: Arc<dyn Source> = source.clone();
        async move { Ok(s) }.boxed()
    });
    let (tx, _leading) = watch::channel(false);
    let cancel = CancellationToken::new();
    let leader = tokio::spawn(run_leader(
        primary.redis().await,
        cfg,
        factory,
        tx,
        cancel.clone(),
    ));
    let backlog = || Source::status(&*mock).backlog;
    let drained = |within: Duration| {
        let mock = Arc::clone(&mock);
        async move {
            let deadline = Instant::now() + within;
            while Source::status(&*mock).backlog > 0 {
                if Instant::now() > deadline {
                    return false;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            true
        }
    };
    let add = |id: &str| {
        mock.add([("id", id), ("name", "n")].into_iter().collect())
            .unwrap();
    };
    add("a");
    assert!(
        drained(Duration::from_secs(5)).await,
        "published and acknowledged"
    );
    let pid = replica.pid().unwrap().to_string();
    let signal = |sig: &str| {
        assert!(
            std::process::Command::new("kill")
                .args([sig, &pid])
                .status()
                .unwrap()
                .success()
        );
    };
    signal("-STOP");
    add("b");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let held = backlog();
    signal("-CONT");
    assert!(held > 0, "acknowledged while no replica held it");
    // Back: the next batch's acknowledgement covers the held one too.
    add("c");
    assert!(
        drained(Duration::from_secs(10)).await,
        "acknowledged once the replica is back"
    );
    cancel.cancel();
    let _ = leader.await;
}
