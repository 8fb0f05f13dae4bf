//! The PostgreSQL source against a real PostgreSQL (one private server per
//! test binary, one database per test) and a real redis-server per test.

// Test code: a failed unwrap is a failed test, with its place.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod declared;
mod edge;
mod resnapshot;
mod stream;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prefetch::testing::{TestRedis, engine_config};
use prefetch::{Engine, EventBus, Faults, FaultySource, Source, Version};
use prefetch_pg::launcher::PostgresServer;
use prefetch_pg::{PgConfig, PgSource};
use redis::aio::MultiplexedConnection;
use tokio_postgres::{Client, NoTls};

pub type PgEngine = Engine<PgSource, MultiplexedConnection>;

/// A source that is PostgreSQL underneath (plain, or behind the fault
/// wrapper), so the checks below can read the table through its editor.
pub trait OverPg: Source {
    fn pg(&self) -> &PgSource;
}

impl OverPg for PgSource {
    fn pg(&self) -> &PgSource {
        self
    }
}

impl OverPg for FaultySource<PgSource> {
    fn pg(&self) -> &PgSource {
        self.inner()
    }
}

static SERVER: OnceLock<std::sync::Mutex<PostgresServer>> = OnceLock::new();
static NEXT: AtomicUsize = AtomicUsize::new(0);

/// The test binary's PostgreSQL (started on first use).
pub fn server() -> &'static std::sync::Mutex<PostgresServer> {
    SERVER.get_or_init(|| {
        std::sync::Mutex::new(PostgresServer::start().expect("start a private PostgreSQL"))
    })
}

pub fn server_url(db: &str) -> String {
    server().lock().unwrap_or_else(|p| p.into_inner()).url(db)
}

/// A fresh database for one test; its URL.
pub async fn database(test: &str) -> String {
    let name = format!("t_{}_{}", test, NEXT.fetch_add(1, Ordering::Relaxed));
    let admin = connect(&server_url("postgres")).await;
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create database");
    server_url(&name)
}

/// A plain SQL client.
pub async fn connect(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .expect("connect to the test PostgreSQL");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// A PostgreSQL source for `table` in `url`.
pub async fn source(url: &str, table: &str, events: &EventBus) -> Arc<PgSource> {
    let mut config = PgConfig::new(url, table);
    config.heartbeat = Duration::from_millis(200);
    PgSource::connect(config, events.clone())
        .await
        .expect("source connects")
}

/// An engine over `table` in `url`, on its own Redis prefix.
pub async fn engine(
    redis: &TestRedis,
    url: &str,
    table: &str,
    test: &str,
) -> (PgEngine, prefetch::PrefetchReport) {
    engine_with(redis, url, table, engine_config(test)).await
}

/// [`engine`] with a configuration of the test's own.
pub async fn engine_with(
    redis: &TestRedis,
    url: &str,
    table: &str,
    config: prefetch::EngineConfig,
) -> (PgEngine, prefetch::PrefetchReport) {
    let events = EventBus::default();
    let source = source(url, table, &events).await;
    Engine::start(redis.conn().await, source, events, config)
        .await
        .expect("engine starts")
}

/// An engine over `table` in `url` whose source is behind the fault
/// wrapper, and its fault plan.
pub async fn faulty_engine(
    redis: &TestRedis,
    url: &str,
    table: &str,
    test: &str,
) -> (
    Engine<FaultySource<PgSource>, MultiplexedConnection>,
    Faults,
) {
    let events = EventBus::default();
    let faults = Faults::default();
    let source = FaultySource::new(
        source(url, table, &events).await,
        faults.clone(),
        events.clone(),
    );
    let (engine, _) = Engine::start(redis.conn().await, source, events, engine_config(test))
        .await
        .expect("engine starts");
    (engine, faults)
}

/// Waits until every transaction committed so far is in Redis.
pub async fn caught_up<S: Source + ?Sized, C: prefetch::Connection>(
    engine: &Engine<S, C>,
    sql: &Client,
) {
    // A transactional message after everything: its end is the mark.
    sql.execute(
        "SELECT pg_logical_emit_message(true, 'test.mark', 'x')",
        &[],
    )
    .await
    .unwrap();
    let lsn: i64 = sql
        .query_one("SELECT (pg_current_wal_lsn() - '0/0')::int8", &[])
        .await
        .unwrap()
        .get(0);
    engine
        .sync()
        .wait_applied(Version::new(lsn.unsigned_abs(), 0), Duration::from_secs(20))
        .await
        .expect("the cache catches up with PostgreSQL");
}

/// Asserts Redis holds exactly the table.
pub async fn assert_mirrors<S: OverPg>(engine: &Engine<S, MultiplexedConnection>, sql: &Client) {
    caught_up(engine, sql).await;
    let editor = engine.source().pg().editor();
    let (primary, cache) = prefetch::testing::both_sides_of(engine, &editor).await;
    assert_eq!(
        primary.len(),
        cache.len(),
        "row count: table {} vs cache {}",
        primary.len(),
        cache.len()
    );
    for (id, fields) in &primary {
        assert_eq!(cache.get(id), Some(fields), "row {id}");
    }
}
