#![recursion_limit = "256"]
//! The demo server: the flags resolved into settings, start-up wiring, the
//! HTTP edge, the live feed and shutdown. `main.rs` only parses flags and
//! calls [`run`]; tests call [`start`] with a listener on port 0.
//!
//! # Layout
//!
//! | module | what |
//! |---|---|
//! | `config` | [`Config`]: the command-line flags, with environment fallbacks |
//! | `settings` | [`Settings`]: the flags resolved and checked, typed |
//! | `acl` | `--print-redis-acl`: the Redis ACL rule the flags need |
//! | `error` | [`Error`]: why the server could not start |
//! | `telemetry` | logging |
//! | `boot` | start-up wiring: Redis, the primary, the pipeline, the engine |
//! | `live` | the live-feed hub: fan-out, projection, outside changes, keyspace events |
//! | `metrics` | `GET /metrics`: the engine's figures as OpenMetrics text |
//! | `state` | [`AppState`]: what every handler shares |
//! | `reload` | the tables file read again: `SIGHUP`, `POST /tables/reload` |
//! | `http` | the HTTP edge: event loops, router, edge layer, security, errors |
//! | `shutdown` | signals and the stop sequence of a [`Running`] server |
//!
//! Each module uses only the ones listed before it.

pub mod acl;
pub mod config;
pub mod error;
pub mod settings;
pub mod telemetry;

pub mod boot;

pub mod live;
pub mod metrics;
pub mod state;

pub mod reload;

pub mod http;

pub mod shutdown;

use std::net::SocketAddr;

use app::api::ServerContext;
use leptos::prelude::LeptosOptions;
use prefetch::EventBus;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use error::{Error, TROUBLESHOOTING};
pub use settings::{PrimaryKind, Settings};
pub use shutdown::{Running, SHUTDOWN_BUDGET};

use boot::redis::RedisSetup;
use shutdown::Signals;
use state::AppState;

/// Connects to Redis (or starts the embedded one), opens the primary,
/// prefetches, starts the sync worker and the live feed, and serves HTTP on
/// `listener` (or on `--host:--port` when `None`).
pub async fn start(config: Config, listener: Option<TcpListener>) -> Result<Running, Error> {
    let settings = config
        .with_secret_files()
        .map_err(Error::Config)?
        .resolve()?;
    install_crypto();
    let redis = RedisSetup::connect(&settings.redis, settings.redis_tls.as_ref()).await?;
    let shutdown = CancellationToken::new();
    // Whatever fails from here on stops the tasks already started (the
    // pipeline's leader releases its lease).
    let stop_on_error = shutdown.clone().drop_guard();
    let started = boot::engine(&settings, &redis, &EventBus::default(), &shutdown).await?;
    let mut background = started.background;
    let ctx = ServerContext {
        engine: started.engine.clone(),
        primary: started.primary.clone(),
        external: live::watch_mode(false),
        faults: started.faults,
        paused: Default::default(),
        dead_letters: started.dead_letters,
    };
    let (ctx, keys) = follow_keyspace(ctx, &redis, &shutdown, &mut background).await;
    if let Some(every) = settings.reconcile_every {
        background.push(boot::reconcile_loop(
            ctx.engine.clone(),
            every,
            shutdown.clone(),
        ));
    }
    let (hub, hub_task) = live::start(ctx.clone(), keys, shutdown.clone());
    background.push(hub_task);
    let listener = bind(listener, settings.listen).await?;
    let addr = listener.local_addr().map_err(Error::Serve)?;
    let state = AppState::new(
        state::Shared {
            leptos_options: leptos_options(addr),
            metrics: metrics::registry(ctx.clone()),
            hub,
            shutdown: shutdown.clone(),
            admin_token: settings.admin_token.clone(),
            client_timeout: settings.client_timeout,
            tables: state::describe(&settings, started.pg.as_deref()).into(),
            reloader: match (&settings.pg.file, &started.pg, &settings.pipeline) {
                (Some(path), Some(pg), None) => Some(reload::reloader(pg.clone(), path.clone())),
                _ => None,
            },
        },
        ctx,
    );
    if state.reloader.is_some() {
        background.push(reload::on_sighup(state.clone(), shutdown.clone()));
    }
    let loops = (settings.http_threads, redis.url.as_str());
    let http = match http::start_http(listener, &state, &redis.client, loops, &shutdown).await {
        Ok(http) => http,
        Err(e) => {
            // Loops that did start stop with the token.
            shutdown.cancel();
            return Err(e);
        }
    };
    announce(addr, &redis.url, &settings, &started.report);
    stop_on_error.disarm();
    Ok(Running {
        addr,
        redis_url: redis.url,
        engine: started.engine,
        primary: started.primary,
        shutdown,
        http,
        background,
        embedded: redis.embedded,
        pg_source: started.pg,
        embedded_pg: started.embedded_pg,
    })
}

/// `listener`, or a new one on `addr`.
async fn bind(listener: Option<TcpListener>, addr: SocketAddr) -> Result<TcpListener, Error> {
    match listener {
        Some(l) => Ok(l),
        None => TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Bind { addr, source }),
    }
}

/// The TLS of `rediss://` and of PostgreSQL (rustls) takes the process's
/// crypto provider: *ring*, which builds from source with a C compiler
/// alone (aws-lc, rustls's default, needs cmake and a long C build; its
/// post-quantum key exchange is what ring's provider lacks, hence the
/// deprecation). A second install (another server in the same process) is
/// refused and the first stays.
#[allow(deprecated)]
fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Turns keyspace notifications on and listens to them (on every primary
/// of a cluster); where they cannot be enabled the live feed polls.
async fn follow_keyspace(
    mut ctx: ServerContext,
    redis: &RedisSetup,
    shutdown: &CancellationToken,
    background: &mut Vec<tokio::task::JoinHandle<()>>,
) -> (
    ServerContext,
    Option<mpsc::Receiver<live::keyspace::KeyEvent>>,
) {
    let enabled = live::keyspace::enable_everywhere(&redis.reads).await;
    ctx.external = live::watch_mode(enabled);
    if !enabled {
        return (ctx, None);
    }
    let prefix = ctx.engine.cache().prefix().to_owned();
    let (tx, rx) = mpsc::channel(1024);
    background.push(match &redis.client {
        prefetch::RedisClient::Single(client) => live::keyspace::spawn_listener(
            client.clone(),
            redis.reads.clone(),
            prefix,
            tx,
            shutdown.clone(),
        ),
        prefetch::RedisClient::Cluster(_) => live::keyspace::spawn_cluster_listener(
            redis.reads.clone(),
            redis.url.split(',').next().unwrap_or_default().to_owned(),
            redis.tls.clone(),
            prefix,
            tx,
            shutdown.clone(),
        ),
    });
    (ctx, Some(rx))
}

/// The start-up lines a newcomer reads.
fn announce(
    addr: SocketAddr,
    redis_url: &str,
    settings: &Settings,
    report: &prefetch::PrefetchReport,
) {
    let cache = &settings.engine.cache;
    let ttl_s = cache.ttl.as_secs();
    tracing::info!(url = %format!("http://{addr}"), "Redis prefetch-cache demo listening on http://{addr}");
    let keys = if cache.tables.is_empty() {
        format!("cache prefix '{}'", cache.prefix)
    } else {
        format!("key prefixes '{}'", cache.tables.join("', '"))
    };
    tracing::info!(
        redis = %redacted(redis_url),
        prefix = %cache.prefix,
        ttl_s,
        "Using Redis at {} with {} and TTL {}s",
        redacted(redis_url),
        keys,
        ttl_s
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
