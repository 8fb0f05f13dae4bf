//! Test support (feature `test-support`): a real `redis-server` per test on
//! a free loopback port, a round-trip counter, a mock-backed engine, and
//! convergence checks.
//!
//! Set `REDIS_URL` to run against an existing server instead (each test still
//! uses its own key prefix, so tests never see each other's keys); drills
//! that kill and restart Redis always start a server of their own.
#![allow(clippy::expect_used, clippy::missing_panics_doc)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::launcher::{RedisOptions, RedisServer};
use crate::{
    CacheConfig, Engine, EngineConfig, EventBus, Fields, MockPrimary, PrefetchReport, Primary,
    Record,
};
use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::{Cmd, Pipeline, RedisFuture, Value};

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A unique key prefix for one test.
pub fn prefix(test: &str) -> String {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("t:{test}:{}:{n}:", std::process::id())
}

/// A redis-server for one test (or `REDIS_URL`); killed on drop.
pub struct TestRedis {
    /// `redis://127.0.0.1:{port}/`.
    pub url: String,
    /// The port (0 under `REDIS_URL`).
    pub port: u16,
    server: Option<RedisServer>,
}

impl TestRedis {
    /// A throw-away server without persistence (or `REDIS_URL`).
    pub fn start() -> Self {
        if let Ok(url) = std::env::var("REDIS_URL") {
            return Self {
                url,
                port: 0,
                server: None,
            };
        }
        Self::spawn_own(false)
    }

    /// A server of this test's own, even under `REDIS_URL`. With
    /// `persistent`, every write is fsynced to an append-only file, so the
    /// data survives `kill -9` and `restart`.
    pub fn spawn_own(persistent: bool) -> Self {
        Self::spawn_with(persistent, &[])
    }

    /// Like [`spawn_own`](Self::spawn_own), with extra `redis-server`
    /// arguments (for example `--rename-command CONFIG ""` to play a
    /// managed Redis that refuses `CONFIG`).
    pub fn spawn_with(persistent: bool, extra: &[&str]) -> Self {
        Self::spawn_options(RedisOptions {
            persistent,
            args: extra.iter().map(|a| (*a).to_owned()).collect(),
            die_with_parent: true,
            env: Vec::new(),
        })
    }

    /// A server of this test's own, started with `options`.
    pub fn spawn_options(options: RedisOptions) -> Self {
        let server = RedisServer::start(options).expect("start redis-server (is it installed?)");
        Self {
            url: server.url(),
            port: server.port(),
            server: Some(server),
        }
    }

    /// Whether this is a server of the test's own.
    pub fn owns_server(&self) -> bool {
        self.server.is_some()
    }

    /// SIGKILL the server (no shutdown, no save).
    pub fn kill(&mut self) {
        if let Some(server) = self.server.as_mut() {
            server.kill();
        }
    }

    /// Start it again on the same port (and, if persistent, the same data).
    pub fn restart(&mut self) {
        if let Some(server) = self.server.as_mut() {
            server
                .restart()
                .expect("redis-server comes back on its port");
        }
    }

    /// A client for it.
    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url.as_str()).expect("redis url")
    }

    /// A connection manager that reconnects quickly (for the drills).
    pub async fn manager(&self) -> ConnectionManager {
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(100))
            .set_connection_timeout(Some(Duration::from_millis(500)))
            .set_response_timeout(Some(Duration::from_secs(5)));
        self.client()
            .get_connection_manager_with_config(config)
            .await
            .expect("connect to test redis")
    }

    /// A [`crate::Redis`] on it (its [`manager`](Self::manager)).
    pub async fn redis(&self) -> crate::Redis {
        crate::Redis::Single(self.manager().await)
    }

    /// A multiplexed connection to it.
    ///
    /// Its response timeout is 10 s (redis-rs defaults to 500 ms, which a
    /// 100,000-record bulk load in one round trip can exceed).
    pub async fn conn(&self) -> MultiplexedConnection {
        let config =
            redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(10)));
        self.client()
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .expect("connect to test redis")
    }
}

/// An engine over a [`MockPrimary`] holding `records` (the seed categories
/// when `None`), with no read latency, on its own prefix.
pub async fn mock_engine<C>(
    conn: C,
    test: &str,
    records: Option<Vec<Record>>,
) -> (Engine<MockPrimary, C>, PrefetchReport)
where
    C: crate::Connection,
{
    mock_engine_with(conn, engine_config(test), records, Duration::ZERO).await
}

/// An engine over a [`MockPrimary`] with the given configuration.
pub async fn mock_engine_with<C>(
    conn: C,
    config: EngineConfig,
    records: Option<Vec<Record>>,
    read_latency: Duration,
) -> (Engine<MockPrimary, C>, PrefetchReport)
where
    C: crate::Connection,
{
    let events = EventBus::default();
    let primary = match records {
        Some(records) => MockPrimary::with_records(records, read_latency, events.clone()),
        None => MockPrimary::new(read_latency, events.clone()),
    };
    Engine::start(conn, Arc::new(primary), events, config)
        .await
        .expect("engine starts")
}

/// An engine configuration on a fresh prefix for `test`.
pub fn engine_config(test: &str) -> EngineConfig {
    EngineConfig {
        cache: CacheConfig {
            prefix: prefix(test),
            ..CacheConfig::default()
        },
        ..EngineConfig::default()
    }
}

/// Wraps a connection and counts the requests made through it, and how many
/// were in flight at once (a pipelined sender does not wait in between).
#[derive(Clone)]
pub struct Counting<C> {
    /// The wrapped connection.
    pub inner: C,
    /// Requests sent (a pipeline counts once).
    pub round_trips: Arc<AtomicUsize>,
    in_flight: Arc<AtomicUsize>,
    max_in_flight: Arc<AtomicUsize>,
}

impl<C> Counting<C> {
    /// Wraps `inner`.
    pub fn new(inner: C) -> Self {
        Self {
            inner,
            round_trips: Arc::new(AtomicUsize::new(0)),
            in_flight: Arc::new(AtomicUsize::new(0)),
            max_in_flight: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Requests so far.
    pub fn count(&self) -> usize {
        self.round_trips.load(Ordering::SeqCst)
    }

    /// Most requests that were awaiting their replies at the same time.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight.load(Ordering::SeqCst)
    }

    /// Counts a request as sent now; returns the in-flight gauge for `finish`.
    fn start(&self) -> Arc<AtomicUsize> {
        self.round_trips.fetch_add(1, Ordering::SeqCst);
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        Arc::clone(&self.in_flight)
    }
}

/// Marks the request done when its reply has arrived.
fn finish<'a, T: Send + 'a>(
    in_flight: Arc<AtomicUsize>,
    fut: RedisFuture<'a, T>,
) -> RedisFuture<'a, T> {
    Box::pin(async move {
        let out = fut.await;
        in_flight.fetch_sub(1, Ordering::SeqCst);
        out
    })
}

impl<C: ConnectionLike + Send> ConnectionLike for Counting<C> {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let in_flight = self.start();
        finish(in_flight, self.inner.req_packed_command(cmd))
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let in_flight = self.start();
        finish(
            in_flight,
            self.inner.req_packed_commands(cmd, offset, count),
        )
    }

    fn get_db(&self) -> i64 {
        self.inner.get_db()
    }
}

impl<C: crate::Connection> crate::Connection for Counting<C> {
    type Node = Counting<C::Node>;

    fn is_cluster(&self) -> bool {
        self.inner.is_cluster()
    }

    fn primaries(
        &self,
    ) -> impl std::future::Future<Output = redis::RedisResult<Vec<Self::Node>>> + Send {
        let map = self.slot_map();
        async move { Ok(map.await?.nodes) }
    }

    fn slot_map(
        &self,
    ) -> impl std::future::Future<Output = redis::RedisResult<crate::SlotMap<Self::Node>>> + Send
    {
        let map = self.inner.slot_map();
        let this = self.clone();
        async move {
            // The nodes count into this wrapper's counters.
            Ok(map.await?.map_nodes(|inner| Counting {
                inner,
                round_trips: Arc::clone(&this.round_trips),
                in_flight: Arc::clone(&this.in_flight),
                max_in_flight: Arc::clone(&this.max_in_flight),
            }))
        }
    }
}

/// Primary and cache contents by id.
pub async fn both_sides<S, C>(
    engine: &Engine<S, C>,
) -> (BTreeMap<String, Fields>, BTreeMap<String, Fields>)
where
    S: Primary + ?Sized,
    C: crate::Connection,
{
    let primary = engine
        .source()
        .records()
        .await
        .expect("primary records")
        .into_iter()
        .map(|r| {
            (
                r.id().expect("primary records have ids").to_owned(),
                r.into_fields(),
            )
        })
        .collect();
    let cache = engine
        .entries()
        .await
        .expect("cache entries")
        .into_iter()
        .map(|e| (e.id, e.fields))
        .collect();
    (primary, cache)
}

/// Waits until the cache holds exactly the source's records, for at most
/// `within` (a refill or another replica's apply runs beside this engine's
/// worker, so its catching up is not enough).
pub async fn converged_within<S, C>(engine: &Engine<S, C>, within: Duration)
where
    S: Primary + ?Sized,
    C: crate::Connection,
{
    let deadline = std::time::Instant::now() + within;
    loop {
        let (primary, cache) = both_sides(engine).await;
        if primary == cache {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no convergence within {within:?}: {} in the primary, {} cached",
            primary.len(),
            cache.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Asserts the cache holds exactly the primary's records.
pub async fn assert_converged<S, C>(engine: &Engine<S, C>)
where
    S: Primary + ?Sized,
    C: crate::Connection,
{
    engine
        .settle(Duration::from_secs(10))
        .await
        .expect("sync worker catches up");
    let (primary, cache) = both_sides(engine).await;
    if primary != cache {
        let only_primary: Vec<_> = primary.keys().filter(|k| !cache.contains_key(*k)).collect();
        let only_cache: Vec<_> = cache.keys().filter(|k| !primary.contains_key(*k)).collect();
        let differing: Vec<_> = primary
            .iter()
            .filter(|(k, v)| cache.get(*k).is_some_and(|c| c != *v))
            .map(|(k, _)| k)
            .take(5)
            .collect();
        panic!(
            "cache != primary: {} only in primary {:?}, {} only in cache {:?}, differing {:?}",
            only_primary.len(),
            only_primary.iter().take(5).collect::<Vec<_>>(),
            only_cache.len(),
            only_cache.iter().take(5).collect::<Vec<_>>(),
            differing
        );
    }
}

/// One node of a [`TestCluster`].
pub struct ClusterMember {
    server: RedisServer,
    /// Its cluster bus port (given explicitly: the default, port + 10000,
    /// overflows for high free ports).
    pub bus_port: u16,
    /// Its node id.
    pub id: String,
    /// Whether it started as a primary.
    pub primary: bool,
}

impl ClusterMember {
    /// Its client port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// `redis://127.0.0.1:{port}/`.
    pub fn url(&self) -> String {
        self.server.url()
    }

    fn sync_conn(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .expect("node url")
            .get_connection_with_timeout(Duration::from_secs(2))
            .expect("connect to cluster node")
    }

    fn query<T: redis::FromRedisValue>(&self, cmd: &mut Cmd) -> redis::RedisResult<T> {
        cmd.query(&mut self.sync_conn())
    }
}

/// A local Redis Cluster on loopback, made of private redis-servers (killed
/// on drop): `primaries` primaries sharing the 16384 slots evenly, each
/// with `replicas` replicas.
///
/// Built by hand (`CLUSTER ADDSLOTSRANGE`, `MEET`, `REPLICATE`), which
/// takes well under a second where `redis-cli --cluster create` waits 3 s.
pub struct TestCluster {
    /// The nodes, primaries first (node `i` of the replicas follows
    /// primary `i % primaries`).
    pub members: Vec<ClusterMember>,
}

impl TestCluster {
    /// Starts and joins the cluster, and waits until every node sees it
    /// whole (and every replica is in sync with its primary).
    pub fn start(primaries: usize, replicas: usize) -> Self {
        assert!(primaries > 0);
        let total = primaries * (1 + replicas);
        let mut members = Vec::with_capacity(total);
        for i in 0..total {
            let bus_port = crate::launcher::free_port().expect("a free port");
            let server = RedisServer::start(RedisOptions {
                persistent: false,
                args: [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-port",
                    &bus_port.to_string(),
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "1500",
                    "--cluster-replica-validity-factor",
                    "0",
                ]
                .iter()
                .map(|a| (*a).to_owned())
                .collect(),
                die_with_parent: true,
                env: Vec::new(),
            })
            .expect("start a cluster node (is redis-server installed?)");
            let mut member = ClusterMember {
                server,
                bus_port,
                id: String::new(),
                primary: i < primaries,
            };
            member.id = member
                .query(redis::cmd("CLUSTER").arg("MYID"))
                .expect("CLUSTER MYID");
            let epoch = u64::try_from(i + 1).expect("small");
            member
                .query::<()>(redis::cmd("CLUSTER").arg("SET-CONFIG-EPOCH").arg(epoch))
                .expect("CLUSTER SET-CONFIG-EPOCH");
            members.push(member);
        }
        let slots = usize::from(crate::SLOTS);
        for (i, m) in members.iter().take(primaries).enumerate() {
            let (from, to) = (i * slots / primaries, (i + 1) * slots / primaries - 1);
            m.query::<()>(redis::cmd("CLUSTER").arg("ADDSLOTSRANGE").arg(from).arg(to))
                .expect("CLUSTER ADDSLOTSRANGE");
        }
        let (first_port, first_bus) = (members[0].port(), members[0].bus_port);
        for m in &members[1..] {
            m.query::<()>(
                redis::cmd("CLUSTER")
                    .arg("MEET")
                    .arg("127.0.0.1")
                    .arg(first_port)
                    .arg(first_bus),
            )
            .expect("CLUSTER MEET");
        }
        let cluster = Self { members };
        cluster.wait(Duration::from_secs(20), |m| {
            let nodes: String = m.query(redis::cmd("CLUSTER").arg("NODES"))?;
            Ok(nodes.lines().count() == total && !nodes.contains("handshake"))
        });
        for (i, m) in cluster.members.iter().enumerate().skip(primaries) {
            let of = &cluster.members[i % primaries].id;
            m.query::<()>(redis::cmd("CLUSTER").arg("REPLICATE").arg(of))
                .expect("CLUSTER REPLICATE");
        }
        cluster.wait_healthy(Duration::from_secs(30));
        cluster
    }

    /// Waits until every live node reports `cluster_state:ok` with every
    /// slot served, and every live replica's link to its primary is up.
    pub fn wait_healthy(&self, timeout: Duration) {
        self.wait(timeout, |m| {
            let info: String = m.query(redis::cmd("CLUSTER").arg("INFO"))?;
            let ok = info.contains("cluster_state:ok") && info.contains("cluster_slots_ok:16384");
            let role: String = m.query(redis::cmd("INFO").arg("replication"))?;
            let linked = role.contains("role:master") || role.contains("master_link_status:up");
            Ok(ok && linked)
        });
    }

    fn wait(&self, timeout: Duration, ready: impl Fn(&ClusterMember) -> redis::RedisResult<bool>) {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let all = self
                .members
                .iter()
                .filter(|m| crate::launcher::ping(m.port(), Duration::from_millis(200)))
                .all(|m| ready(m).unwrap_or(false));
            if all {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the test cluster did not settle within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every node's URL (any of them is enough to connect).
    pub fn urls(&self) -> Vec<String> {
        self.members.iter().map(ClusterMember::url).collect()
    }

    /// A cluster client with short retry delays (for the drills).
    pub fn client(&self) -> redis::cluster::ClusterClient {
        redis::cluster::ClusterClient::builder(self.urls())
            .retries(20)
            .min_retry_wait(20)
            .max_retry_wait(500)
            .connection_timeout(Duration::from_millis(500))
            .response_timeout(Duration::from_secs(10))
            .build()
            .expect("cluster client")
    }

    /// A cluster connection.
    pub async fn conn(&self) -> redis::cluster_async::ClusterConnection {
        self.client()
            .get_async_connection()
            .await
            .expect("connect to the test cluster")
    }

    /// A [`crate::Redis`] on the cluster.
    pub async fn redis(&self) -> crate::Redis {
        crate::Redis::Cluster(self.conn().await)
    }

    /// SIGKILL node `i` (no shutdown, no save).
    pub fn kill(&mut self, i: usize) {
        self.members[i].server.kill();
    }

    /// `CLUSTER KEYSLOT`, asked of node 0.
    pub fn keyslot(&self, key: &str) -> u16 {
        self.members[0]
            .query(redis::cmd("CLUSTER").arg("KEYSLOT").arg(key))
            .expect("CLUSTER KEYSLOT")
    }

    /// Which live primary serves `slot` now (by its client port).
    pub fn owner_port(&self, slot: u16) -> Option<u16> {
        self.members.iter().find_map(|m| {
            if !crate::launcher::ping(m.port(), Duration::from_millis(200)) {
                return None;
            }
            let nodes: String = m.query(redis::cmd("CLUSTER").arg("NODES")).ok()?;
            let me = nodes.lines().find(|l| l.contains("myself"))?;
            if !me.contains("master") {
                return None;
            }
            let serves = me.split(' ').skip(8).any(|r| match r.split_once('-') {
                Some((a, b)) => {
                    a.parse::<u16>().is_ok_and(|a| a <= slot)
                        && b.parse::<u16>().is_ok_and(|b| slot <= b)
                }
                None => r.parse::<u16>() == Ok(slot),
            });
            serves.then(|| m.port())
        })
    }
}
