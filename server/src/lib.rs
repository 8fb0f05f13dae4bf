#![recursion_limit = "256"]
//! The demo server: configuration, the engine's tasks, HTTP, the live feed
//! and shutdown. `main.rs` only parses flags and calls [`run`]; tests call
//! [`start`] with a listener on port 0.

pub mod config;
pub mod feed;
pub mod keyspace;
pub mod redis_embedded;
pub mod routes;
pub mod security;
pub mod sse;
pub mod state;
pub mod telemetry;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use app::api::ServerContext;
use axum::serve::ListenerExt;
use leptos::prelude::LeptosOptions;
use prefetch::{CacheConfig, Engine, EngineConfig};
use redis::aio::ConnectionManagerConfig;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use config::Config;
use redis_embedded::EmbeddedRedis;
use state::AppState;

/// Why the server could not start.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The given Redis did not answer.
    #[error("cannot reach Redis at {url}: {source}")]
    RedisUnreachable {
        url: String,
        #[source]
        source: redis::RedisError,
    },
    /// The embedded redis-server could not be started.
    #[error("cannot start the embedded Redis: {0}")]
    Embedded(String),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The initial prefetch failed.
    #[error("initial prefetch failed: {0}")]
    Prefetch(#[from] prefetch::Error),
    /// The HTTP server failed.
    #[error("http server: {0}")]
    Serve(#[source] std::io::Error),
    /// The configuration would expose the admin endpoints.
    #[error("{0}")]
    Insecure(String),
}

/// Total time shutdown may take before the process gives up waiting.
pub const SHUTDOWN_BUDGET: Duration = Duration::from_millis(1500);

/// A started server.
pub struct Running {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The Redis URL in use.
    pub redis_url: String,
    /// The engine (for tests and embedding).
    pub engine: Engine,
    shutdown: CancellationToken,
    http: JoinHandle<std::io::Result<()>>,
    background: Vec<JoinHandle<()>>,
    embedded: Option<EmbeddedRedis>,
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
    let admin_token = config.admin_token().map_err(Error::Insecure)?;
    let (redis_url, embedded) = match config.given_redis_url() {
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
                "{why}: started a private redis-server at {} (no persistence; stopped on exit)",
                embedded.url()
            );
            (embedded.url(), Some(embedded))
        }
    };
    let unreachable = |source| Error::RedisUnreachable {
        url: redis_url.clone(),
        source,
    };
    let client = redis::Client::open(redis_url.as_str()).map_err(unreachable)?;
    let manager_config = ConnectionManagerConfig::new()
        .set_number_of_retries(2)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_millis(500))
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(Duration::from_secs(5)));
    let conn = client
        .get_connection_manager_with_config(manager_config)
        .await
        .map_err(unreachable)?;

    let engine_config = EngineConfig {
        cache: CacheConfig {
            prefix: config.cache_prefix.clone(),
            ttl: Duration::from_secs(config.ttl_seconds),
        },
        primary_read_latency: Duration::from_millis(config.primary_latency_ms),
        ..EngineConfig::default()
    };
    let (engine, report) = Engine::start(conn.clone(), engine_config).await?;

    let shutdown = CancellationToken::new();
    let mut background = Vec::new();
    let keyspace = keyspace::enable(&mut conn.clone()).await;
    let keys = if keyspace {
        let (tx, rx) = mpsc::channel(1024);
        background.push(keyspace::spawn_listener(
            client.clone(),
            conn.clone(),
            config.cache_prefix.clone(),
            tx,
            shutdown.clone(),
        ));
        Some(rx)
    } else {
        None
    };
    let ctx = ServerContext {
        engine: engine.clone(),
        external: feed::watch_mode(keyspace),
    };
    let (hub, hub_task) = feed::LiveHub::start(ctx.clone(), keys, shutdown.clone());
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
    let state = AppState::new(state::Shared {
        leptos_options: leptos_options(addr),
        ctx,
        hub,
        shutdown: shutdown.clone(),
        admin_token,
    });
    let app = routes::router(state);
    let token = shutdown.clone();
    // Small writes (SSE frames, short JSON replies) go out at once instead
    // of waiting up to 40 ms for a delayed ACK (Nagle).
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    let http = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(token.cancelled_owned())
            .await
    });

    tracing::info!("Redis prefetch-cache demo listening on http://{addr}");
    tracing::info!(
        "Using Redis at {} with cache prefix '{}' and TTL {}s",
        redacted(&redis_url),
        config.cache_prefix,
        config.ttl_seconds
    );
    tracing::info!(
        "Prefetched {} records in {:.1} ms; sync worker running",
        report.loaded,
        report.elapsed.as_secs_f64() * 1000.0
    );

    Ok(Running {
        addr,
        redis_url,
        engine,
        shutdown,
        http,
        background,
        embedded,
    })
}

impl Running {
    /// Stops accepting, ends live streams, drains the sync worker, stops the
    /// embedded Redis. Bounded by [`SHUTDOWN_BUDGET`].
    pub async fn shutdown(self) {
        let started = Instant::now();
        self.shutdown.cancel();
        let deadline = started + SHUTDOWN_BUDGET;
        let remaining = || deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining(), self.http).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "http server error at shutdown"),
            Ok(Err(e)) => tracing::warn!(error = %e, "http task failed"),
            Err(_) => tracing::warn!("open connections did not close in time; leaving them"),
        }
        let worker_budget = remaining().max(Duration::from_millis(100));
        if let Err(e) = self.engine.shutdown(worker_budget).await {
            tracing::warn!(error = %e, "sync worker stop");
        }
        for task in self.background {
            task.abort();
        }
        if let Some(embedded) = self.embedded {
            embedded.stop().await;
        }
        tracing::info!(
            "Stopped in {:.0} ms",
            started.elapsed().as_secs_f64() * 1000.0
        );
    }
}

/// Runs until SIGINT or SIGTERM, then shuts down.
pub async fn run(config: Config) -> Result<(), Error> {
    let running = start(config, None).await?;
    shutdown_signal().await;
    tracing::info!("Shutting down");
    running.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}

/// Site options: cargo-leptos's environment when present, else the
/// workspace defaults (so the binary also runs on its own).
fn leptos_options(addr: SocketAddr) -> LeptosOptions {
    let env = |k: &str, default: &str| std::env::var(k).unwrap_or_else(|_| default.to_owned());
    LeptosOptions::builder()
        .output_name(env("LEPTOS_OUTPUT_NAME", app::OUTPUT_NAME))
        .site_root(env("LEPTOS_SITE_ROOT", "target/site"))
        .site_pkg_dir(env("LEPTOS_SITE_PKG_DIR", "pkg"))
        .site_addr(addr)
        .build()
}

/// A URL with any password replaced, for logs.
fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}
