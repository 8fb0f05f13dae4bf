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
    C: ConnectionLike + Clone + Send + Sync + 'static,
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
    C: ConnectionLike + Clone + Send + Sync + 'static,
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

/// Primary and cache contents by id.
pub async fn both_sides<S, C>(
    engine: &Engine<S, C>,
) -> (BTreeMap<String, Fields>, BTreeMap<String, Fields>)
where
    S: Primary + ?Sized,
    C: ConnectionLike + Clone + Send + Sync + 'static,
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

/// Asserts the cache holds exactly the primary's records.
pub async fn assert_converged<S, C>(engine: &Engine<S, C>)
where
    S: Primary + ?Sized,
    C: ConnectionLike + Clone + Send + Sync + 'static,
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
