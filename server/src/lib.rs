#![recursion_limit = "256"]
//! The demo server: configuration, the engine's tasks, HTTP, the live feed
//! and shutdown. `main.rs` only parses flags and calls [`run`]; tests call
//! [`start`] with a listener on port 0.

// Modules, bottom up: each uses only the ones listed before it.
pub mod config;
pub mod error;
pub mod telemetry;

pub mod keyspace;
pub mod redis_embedded;

pub mod hub;
pub mod metrics;
pub mod state;

pub mod security;
pub mod sse;

pub mod routes;

mod http1;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use app::api::ServerContext;
use futures::FutureExt;
use leptos::prelude::LeptosOptions;
use prefetch::Source;
use prefetch::{
    CacheConfig, Engine, EngineConfig, EventBus, MemoryCheck, MockPrimary, Primary, RedisClient,
};
use prefetch_cdc::{
    FeedSource, PipelineConfig, SourceFactory, StreamConfig, StreamSource, run_leader,
};
use prefetch_pg::launcher::PostgresServer;
use prefetch_pg::{PgConfig, PgSource};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use config::{Config, PrimaryKind};
pub use error::Error;
use redis_embedded::EmbeddedRedis;
use state::AppState;

/// How long a Redis reply may take before the command fails.
const REDIS_TIMEOUT: Duration = Duration::from_secs(5);

/// Total time shutdown may take before the process gives up waiting.
pub const SHUTDOWN_BUDGET: Duration = Duration::from_millis(1500);

/// A started server.
pub struct Running {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The Redis URL in use.
    pub redis_url: String,
    /// The engine (for tests and embedding).
    pub engine: Engine<dyn Primary>,
    shutdown: CancellationToken,
    http: Vec<oneshot::Receiver<std::io::Result<()>>>,
    background: Vec<JoinHandle<()>>,
    embedded: Option<EmbeddedRedis>,
    pg_source: Option<Arc<PgSource>>,
    embedded_pg: Option<PostgresServer>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("addr", &self.addr)
            .field("redis_url", &self.redis_url)
            .finish_non_exhaustive()
    }
}

/// Connects to Redis (or starts the embedded one), prefetches, starts the
/// sync worker and the live feed, and serves HTTP on `listener` (or on
/// `--host:--port` when `None`).
pub async fn start(config: Config, listener: Option<TcpListener>) -> Result<Running, Error> {
    let admin_token = config.admin_token().map_err(Error::Config)?;
    let primary_kind = config.primary_kind().map_err(Error::Config)?;
    if let Some(name) = &config.pipeline {
        if matches!(
            primary_kind,
            PrimaryKind::Mock | PrimaryKind::EmbeddedPostgres
        ) {
            return Err(Error::Config(
                "--pipeline needs a primary every replica shares: a postgres:// URL or stream:<key> (the mock and --primary postgres are private to one process)".into(),
            ));
        }
        PipelineConfig::new(name, config.replica_name())
            .validate()
            .map_err(|e| Error::Config(format!("--pipeline/--replica: {e}")))?;
    }
    let (redis_url, embedded) = match config.given_redis_url() {
        _ if !config.redis_cluster.is_empty() => (config.redis_cluster.join(","), None),
        Some(url) => (url, None),
        None if !config.embedded_redis && redis_embedded::ping(6379).await => {
            ("redis://127.0.0.1:6379/".to_owned(), None)
        }
        None => {
            let embedded = EmbeddedRedis::start().await?;
            let why = if config.embedded_redis {
                "--embedded-redis"
            } else {
                "No Redis given and none on localhost:6379"
            };
            tracing::info!(
                reason = why,
                url = %embedded.url(),
                "started a private redis-server (no persistence; stopped on exit)"
            );
            (embedded.url(), Some(embedded))
        }
    };
    let unreachable = |source| Error::RedisUnreachable {
        url: redacted(&redis_url),
        source,
    };
    let target = if config.redis_cluster.is_empty() {
        RedisClient::Single(redis::Client::open(redis_url.as_str()).map_err(unreachable)?)
    } else {
        RedisClient::cluster(&config.redis_cluster).map_err(unreachable)?
    };
    let conn = target.connect(REDIS_TIMEOUT).await.map_err(unreachable)?;
    // Writes get a connection of their own: a read never queues behind a
    // re-prefetch's batches.
    let writes = target.connect(REDIS_TIMEOUT).await.map_err(unreachable)?;

    let engine_config = EngineConfig {
        cache: CacheConfig {
            prefix: config.cache_prefix.clone(),
            ttl: Duration::from_secs(config.ttl_seconds),
            wait_replicas: config.redis_wait_replicas,
            ..CacheConfig::default()
        },
        memory_check: if config.memory_check == "warn" {
            MemoryCheck::Warn
        } else {
            MemoryCheck::Refuse
        },
        // Replicas of a pipeline write the same cache: every load guarded.
        shared_writers: config.pipeline.is_some(),
        ..EngineConfig::default()
    };
    let events = EventBus::default();
    let mut embedded_pg = None;
    let mut pg_source = None;
    let mut publisher_pg = None;
    let mut publisher_stream = None;
    let primary: Arc<dyn Primary> = match primary_kind {
        PrimaryKind::Mock => Arc::new(MockPrimary::new(
            Duration::from_millis(config.primary_latency_ms),
            events.clone(),
        )),
        PrimaryKind::Stream(stream) => {
            let failed = |source| Error::Stream {
                stream: stream.clone(),
                source,
            };
            let stream_client = match (&config.stream_redis_url, &target) {
                (Some(url), _) => redis::Client::open(url.as_str())
                    .map_err(|e| failed(prefetch::Error::Redis(e)))?,
                (None, RedisClient::Single(client)) => client.clone(),
                (None, RedisClient::Cluster(_)) => {
                    return Err(Error::Config(
                        "--primary stream:<key> with --redis-cluster needs --stream-redis-url (the Redis node the CDC tool writes to)".into(),
                    ));
                }
            };
            let mut stream_config = StreamConfig::new(&stream);
            if !config.stream_id_columns.is_empty() {
                stream_config.decode.id_columns = Some(config.stream_id_columns.clone());
            }
            stream_config.allow_incomplete_history = config.stream_allow_trimmed;
            publisher_stream = Some((stream_client.clone(), stream_config.clone()));
            let source = StreamSource::connect(stream_client, stream_config, events.clone())
                .await
                .map_err(failed)?;
            tracing::info!(
                %stream,
                "Following the change stream {stream} (Debezium Server / RDI format) as the primary; it is read-only here"
            );
            source
        }
        kind => {
            let url = match kind {
                PrimaryKind::Postgres(url) => url,
                _ => {
                    let pg = tokio::task::spawn_blocking(PostgresServer::start)
                        .await
                        .map_err(|e| Error::EmbeddedPostgres(std::io::Error::other(e)))?
                        .map_err(Error::EmbeddedPostgres)?;
                    let url = pg.url("postgres");
                    tracing::info!(
                        url = %url,
                        "started a private PostgreSQL at {url} (temporary data directory, wal_level=logical; stopped on exit)"
                    );
                    embedded_pg = Some(pg);
                    url
                }
            };
            let mut pg_config = PgConfig::new(&url, &config.pg_table);
            pg_config.slot = config.pg_slot.clone();
            pg_config.publication = config.pg_publication.clone();
            publisher_pg = Some(pg_config.clone());
            let source = PgSource::connect(pg_config, events.clone())
                .await
                .map_err(|source| Error::Postgres {
                    url: redacted(&url),
                    source,
                })?;
            tracing::info!(
                primary = %redacted(&url),
                table = %config.pg_table,
                slot = %source.slot(),
                "Using PostgreSQL at {} as the primary: table {}, replication slot {}",
                redacted(&url),
                config.pg_table,
                source.slot()
            );
            pg_source = Some(Arc::clone(&source));
            source
        }
    };
    let shutdown = CancellationToken::new();
    // Whatever fails from here on stops the tasks already started (the
    // pipeline's leader releases its lease).
    let stop_on_error = shutdown.clone().drop_guard();
    let mut background = Vec::new();
    let mut dead_letters: Option<Arc<dyn app::serve::DeadLetters>> = None;
    let primary = match &config.pipeline {
        None => primary,
        Some(name) => {
            let factory: SourceFactory = match (publisher_pg, publisher_stream) {
                (Some(pg), _) => Arc::new(move || {
                    let pg = pg.clone();
                    async move {
                        // A bus nobody reads: every replica announces what
                        // the feed carries.
                        let s: Arc<dyn Source> = PgSource::connect(pg, EventBus::default())
                            .await
                            .map_err(prefetch::Error::source_failed)?;
                        Ok(s)
                    }
                    .boxed()
                }),
                (None, Some((client, stream))) => Arc::new(move || {
                    let (client, stream) = (client.clone(), stream.clone());
                    async move {
                        let s: Arc<dyn Source> =
                            StreamSource::connect(client, stream, EventBus::default()).await?;
                        Ok(s)
                    }
                    .boxed()
                }),
                (None, None) => {
                    return Err(Error::Config(
                        "--pipeline needs a primary every replica can reach: postgres, a postgres:// URL or stream:<key>, not the in-process mock".into(),
                    ));
                }
            };
            let mut pipeline = PipelineConfig::new(name, config.replica_name());
            pipeline.partitions = config.pipeline_partitions;
            if config.cache_prefix.starts_with(&pipeline.key_prefix())
                || pipeline.key_prefix().starts_with(&config.cache_prefix)
            {
                return Err(Error::Config(format!(
                    "--cache-prefix '{}' overlaps the pipeline's keys ('{}…')",
                    config.cache_prefix,
                    pipeline.key_prefix()
                )));
            }
            let pipeline_conn = target.connect(REDIS_TIMEOUT).await.map_err(unreachable)?;
            let (leading_tx, leading) = watch::channel(false);
            // A connection of its own: lease renewals never wait behind a
            // dashboard's snapshot read.
            let leader_conn = target.connect(REDIS_TIMEOUT).await.map_err(unreachable)?;
            background.push(tokio::spawn(
                run_leader(
                    leader_conn,
                    pipeline.clone(),
                    factory,
                    leading_tx,
                    shutdown.clone(),
                )
                .instrument(tracing::info_span!("pipeline_leader", pipeline = %name)),
            ));
            let feed =
                FeedSource::connect(target.clone(), primary, pipeline.clone(), events.clone())
                    .await?;
            tracing::info!(
                pipeline = %name,
                replica = %pipeline.consumer,
                partitions = pipeline.partitions,
                "Running as replica {} of pipeline {name}",
                pipeline.consumer
            );
            wait_for_turn(
                &pipeline_conn,
                &engine_config,
                &feed.id(),
                &pipeline,
                leading,
            )
            .await?;
            dead_letters = Some(Arc::new(FeedDeadLetters {
                conn: pipeline_conn,
                config: pipeline,
            }));
            feed
        }
    };
    let (engine, report) =
        Engine::start_with_writer(conn.clone(), writes, primary, events, engine_config).await?;

    let keyspace = keyspace::enable_everywhere(&conn).await;
    let keys = if keyspace {
        let (tx, rx) = mpsc::channel(1024);
        background.push(match &target {
            RedisClient::Single(client) => keyspace::spawn_listener(
                client.clone(),
                conn.clone(),
                config.cache_prefix.clone(),
                tx,
                shutdown.clone(),
            ),
            RedisClient::Cluster(_) => keyspace::spawn_cluster_listener(
                conn.clone(),
                config.cache_prefix.clone(),
                tx,
                shutdown.clone(),
            ),
        });
        Some(rx)
    } else {
        None
    };
    let ctx = ServerContext {
        engine: engine.clone(),
        external: hub::watch_mode(keyspace),
        faults: config.faults || config.host.is_loopback(),
        paused: Default::default(),
        dead_letters,
    };
    if config.reconcile_every > 0 {
        background.push(tokio::spawn(
            reconcile_loop(
                engine.clone(),
                Duration::from_secs(config.reconcile_every),
                shutdown.clone(),
            )
            .instrument(tracing::info_span!("reconcile")),
        ));
    }
    let (hub, hub_task) = hub::LiveHub::start(ctx.clone(), keys, shutdown.clone());
    background.push(hub_task);

    let listener = match listener {
        Some(l) => l,
        None => {
            let addr = SocketAddr::new(config.host, config.port);
            TcpListener::bind(addr)
                .await
                .map_err(|source| Error::Bind { addr, source })?
        }
    };
    let addr = listener.local_addr().map_err(Error::Serve)?;
    let state = AppState::new(
        state::Shared {
            leptos_options: leptos_options(addr),
            metrics: metrics::registry(ctx.clone()),
            hub,
            shutdown: shutdown.clone(),
            admin_token,
            client_timeout: Duration::from_secs(config.client_timeout_secs),
        },
        ctx,
    );
    let loops = (config.http_threads, redis_url.as_str());
    let http = match start_http(listener, &state, &target, loops, &shutdown).await {
        Ok(http) => http,
        Err(e) => {
            // Loops that did start stop with the token.
            shutdown.cancel();
            return Err(e);
        }
    };

    tracing::info!(url = %format!("http://{addr}"), "Redis prefetch-cache demo listening on http://{addr}");
    tracing::info!(
        redis = %redacted(&redis_url),
        prefix = %config.cache_prefix,
        ttl_s = config.ttl_seconds,
        "Using Redis at {} with cache prefix '{}' and TTL {}s",
        redacted(&redis_url),
        config.cache_prefix,
        config.ttl_seconds
    );
    let elapsed_ms = report.elapsed.as_secs_f64() * 1000.0;
    match report.version {
        Some(_) => tracing::info!(
            records = report.loaded,
            elapsed_ms,
            "Prefetched {} records in {:.1} ms; sync worker running",
            report.loaded,
            elapsed_ms
        ),
        None => tracing::info!(
            "Resumed from the position Redis holds (0 records reloaded); sync worker running"
        ),
    }

    stop_on_error.disarm();
    Ok(Running {
        addr,
        redis_url,
        engine,
        shutdown,
        http,
        background,
        embedded,
        pg_source,
        embedded_pg,
    })
}

impl Running {
    /// Stops accepting, ends live streams, drains the sync worker, stops the
    /// embedded Redis. Bounded by [`SHUTDOWN_BUDGET`].
    pub async fn shutdown(mut self) {
        let started = Instant::now();
        self.shutdown.cancel();
        let deadline = started + SHUTDOWN_BUDGET;
        let remaining = || deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(
            remaining(),
            futures::future::join_all(std::mem::take(&mut self.http)),
        )
        .await
        {
            Ok(results) => {
                for result in results {
                    match result {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => tracing::warn!(error = %e, "http server error at shutdown"),
                        Err(_) => tracing::warn!("an HTTP loop ended without a result"),
                    }
                }
            }
            Err(_) => tracing::warn!("open connections did not close in time; leaving them"),
        }
        let worker_budget = remaining().max(Duration::from_millis(100));
        if let Err(e) = self.engine.shutdown(worker_budget).await {
            tracing::warn!(error = %e, "sync worker stop");
        }
        for task in std::mem::take(&mut self.background) {
            task.abort();
        }
        if let Some(source) = &self.pg_source {
            source.close();
        }
        if let Some(pg) = self.embedded_pg.take() {
            // A private server's data is thrown away: immediate shutdown.
            let _ = tokio::task::spawn_blocking(move || drop(pg)).await;
        }
        if let Some(embedded) = self.embedded.take() {
            embedded.stop().await;
        }
        let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
        tracing::info!(elapsed_ms, "Stopped in {elapsed_ms:.0} ms");
    }
}

/// A server dropped without [`Running::shutdown`] still stops serving: its
/// HTTP loops run on threads of their own, which nothing else would end.
impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Starts `--http-threads` HTTP loops on `listener`, each with its own
/// Redis connection, and returns what each will report when it ends.
async fn start_http(
    listener: TcpListener,
    state: &AppState,
    target: &RedisClient,
    (threads, redis_url): (u16, &str),
    shutdown: &CancellationToken,
) -> Result<Vec<oneshot::Receiver<std::io::Result<()>>>, Error> {
    let listener = listener.into_std().map_err(Error::Serve)?;
    let mut http = Vec::new();
    for i in 0..threads {
        let listener = listener.try_clone().map_err(Error::Serve)?;
        let target = target.clone();
        let conn = move || async move { target.connect(REDIS_TIMEOUT).await };
        let (ready, done) = http_loop(i, listener, state.clone(), conn, shutdown.clone())?;
        match ready.await {
            Ok(Ok(())) => http.push(done),
            Ok(Err(source)) => {
                return Err(Error::RedisUnreachable {
                    url: redacted(redis_url),
                    source,
                });
            }
            Err(_) => {
                return Err(Error::Serve(std::io::Error::other(
                    "an HTTP loop failed to start",
                )));
            }
        }
    }
    Ok(http)
}

/// The oneshot that says an HTTP loop is serving (or why it could not
/// start), and the one that carries how it ended.
type LoopSignals = (
    oneshot::Receiver<redis::RedisResult<()>>,
    oneshot::Receiver<std::io::Result<()>>,
);

/// Starts HTTP event loop `i` on a thread of its own: a single-threaded
/// runtime with its own Redis connection for reads, accepting on
/// `listener`, until `shutdown`. A request never leaves the thread that
/// accepted it, so a read wakes no other thread (the multi-threaded
/// runtime's hand-offs cost more than a `GET /read` itself; see
/// docs/benchmarks.md).
fn http_loop<F>(
    i: u16,
    listener: std::net::TcpListener,
    state: AppState,
    connect: impl FnOnce() -> F + Send + 'static,
    shutdown: CancellationToken,
) -> Result<LoopSignals, Error>
where
    F: std::future::Future<Output = redis::RedisResult<prefetch::Redis>>,
{
    let (ready_tx, ready_rx) = oneshot::channel();
    let (done_tx, done_rx) = oneshot::channel();
    let run = move || {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                let _ = done_tx.send(Err(e));
                return;
            }
        };
        let serve = async move {
            let conn = match connect().await {
                Ok(conn) => conn,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return Ok(());
                }
            };
            let listener = TcpListener::from_std(listener)?;
            let head_timeout = state.client_timeout;
            let app = routes::router(state.with_reader(conn));
            let _ = ready_tx.send(Ok(()));
            http1::serve(listener, app, head_timeout, shutdown).await
        };
        let outcome = runtime.block_on(serve.instrument(tracing::info_span!("http", loop_ = i)));
        // Idle keep-alive connections are abandoned, not awaited.
        runtime.shutdown_timeout(Duration::from_millis(100));
        let _ = done_tx.send(outcome);
    };
    std::thread::Builder::new()
        .name(format!("http-{i}"))
        .spawn(run)
        .map_err(Error::Serve)?;
    Ok((ready_rx, done_rx))
}

/// The dead-letter stream of this replica's pipeline.
#[derive(Debug)]
struct FeedDeadLetters {
    conn: prefetch::Redis,
    config: PipelineConfig,
}

impl app::serve::DeadLetters for FeedDeadLetters {
    fn list(&self, max: usize) -> prefetch::BoxFuture<'_, prefetch::Result<Vec<(String, String)>>> {
        prefetch_cdc::pipeline::dead_letters(self.conn.clone(), &self.config, max).boxed()
    }

    fn count(&self) -> prefetch::BoxFuture<'_, prefetch::Result<u64>> {
        async move {
            let mut conn = self.conn.clone();
            Ok(redis::cmd("XLEN")
                .arg(self.config.dlq_key())
                .query_async(&mut conn)
                .await?)
        }
        .boxed()
    }

    fn replay(&self, max: usize) -> prefetch::BoxFuture<'_, prefetch::Result<usize>> {
        prefetch_cdc::pipeline::replay_dead_letters(self.conn.clone(), &self.config, max).boxed()
    }
}

/// A replica loads the cache only while it holds the pipeline's lease, or
/// once the holder has finished loading it: two replicas loading an empty
/// Redis at once could each overwrite what the other applied. It waits as
/// long as some replica holds the lease (a large first load takes time),
/// and gives up after a minute with nobody holding it.
async fn wait_for_turn(
    conn: &prefetch::Redis,
    engine: &EngineConfig,
    source: &str,
    pipeline: &PipelineConfig,
    leading: watch::Receiver<bool>,
) -> Result<(), Error> {
    const PATIENCE: Duration = Duration::from_secs(60);
    let cache = prefetch::PrefetchCache::new(conn.clone(), engine.cache.clone(), source);
    let mut last_holder = Instant::now();
    loop {
        if *leading.borrow() {
            return Ok(());
        }
        let state = cache.state().await?;
        if state.source.as_deref() == Some(source)
            && state.loading.is_none()
            && state.position.is_some()
        {
            return Ok(());
        }
        let mut c = conn.clone();
        let holder: Option<String> = redis::cmd("GET")
            .arg(pipeline.leader_key())
            .query_async(&mut c)
            .await
            .map_err(prefetch::Error::from)?;
        if holder.is_some() {
            last_holder = Instant::now();
        } else if last_holder.elapsed() > PATIENCE {
            return Err(Error::Config(format!(
                "no replica held the pipeline's lease and loaded the cache within {PATIENCE:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Reconciles every `every` (report only; keys found correct get their TTL
/// refreshed), until shutdown.
async fn reconcile_loop(engine: Engine<dyn Primary>, every: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match engine.reconcile(false).await {
            Ok(r) if r.is_clean() => tracing::debug!(
                checked = r.checked,
                elapsed_ms = r.elapsed.as_secs_f64() * 1000.0,
                "reconciled: no drift"
            ),
            Ok(r) => tracing::warn!(
                checked = r.checked,
                missing = r.missing.len(),
                orphaned = r.orphaned.len(),
                stale = r.stale.len(),
                changed_outside = r.changed_outside.len(),
                "reconciliation found drift (POST /reconcile with repair=true fixes it)"
            ),
            Err(e) => tracing::warn!(error = %e, "reconciliation failed"),
        }
    }
}

/// Runs until SIGINT or SIGTERM, then shuts down.
pub async fn run(config: Config) -> Result<(), Error> {
    // Listen before starting: a signal that arrives while the server starts
    // (or right after it said so) must not kill it with the default action.
    let signals = Signals::listen();
    let running = start(config, None).await?;
    signals.recv().await;
    tracing::info!("Shutting down");
    running.shutdown().await;
    Ok(())
}

/// SIGINT and SIGTERM, listened to from the moment this is made.
struct Signals {
    #[cfg(unix)]
    interrupt: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    terminate: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    #[cfg(unix)]
    fn listen() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        let listen = |kind: SignalKind, name: &str| match signal(kind) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for {name}");
                None
            }
        };
        Self {
            interrupt: listen(SignalKind::interrupt(), "SIGINT"),
            terminate: listen(SignalKind::terminate(), "SIGTERM"),
        }
    }

    #[cfg(not(unix))]
    fn listen() -> Self {
        Self {}
    }

    /// Waits for either signal.
    async fn recv(mut self) {
        #[cfg(unix)]
        {
            async fn next(s: &mut Option<tokio::signal::unix::Signal>) {
                match s {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            }
            tokio::select! {
                _ = next(&mut self.interrupt) => {},
                _ = next(&mut self.terminate) => {},
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Where `cargo leptos build` puts the site for this build's profile:
/// debug and release builds keep separate sites, so the demo (release) and
/// the tests (debug) can run side by side in one checkout.
pub const DEFAULT_SITE_ROOT: &str = if cfg!(debug_assertions) {
    "target/site"
} else {
    "target/site-release"
};

/// Site options: cargo-leptos's environment when present, else the
/// workspace defaults (so the binary also runs on its own).
fn leptos_options(addr: SocketAddr) -> LeptosOptions {
    let env = |k: &str, default: &str| std::env::var(k).unwrap_or_else(|_| default.to_owned());
    LeptosOptions::builder()
        .output_name(env("LEPTOS_OUTPUT_NAME", app::OUTPUT_NAME))
        .site_root(env("LEPTOS_SITE_ROOT", DEFAULT_SITE_ROOT))
        .site_pkg_dir(env("LEPTOS_SITE_PKG_DIR", "pkg"))
        .site_addr(addr)
        .build()
}

/// A URL (or a comma-separated list of them, as `--redis-cluster` takes)
/// with any password replaced, for logs.
pub fn redacted(url: &str) -> String {
    url.split(',')
        .map(|one| match url::Url::parse(one) {
            Ok(mut u) if u.password().is_some() => {
                let _ = u.set_password(Some("***"));
                u.to_string()
            }
            Ok(_) => one.to_owned(),
            // Unparsable: nothing of it goes to a log after an '@'.
            Err(_) => match one.rsplit_once('@') {
                Some((_, host)) => format!("***@{host}"),
                None => one.to_owned(),
            },
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_never_reach_the_logs_in_one_url_or_a_cluster_list() {
        assert_eq!(
            super::redacted("redis://:pw@127.0.0.1:6379/"),
            "redis://:***@127.0.0.1:6379/"
        );
        assert_eq!(
            super::redacted("redis://u:pw@a:7000,redis://u:pw@b:7001"),
            "redis://u:***@a:7000,redis://u:***@b:7001"
        );
        assert_eq!(super::redacted("redis://a:1"), "redis://a:1");
        assert!(!super::redacted("not a url:pw@host").contains("pw"));
    }
}
