//! Start-up wiring: the Redis, the primary, the pipeline (one file each),
//! and the engine and its background tasks over them.
//!
//! | module | what |
//! |---|---|
//! | `redis` | which Redis (given, local, or a private one) and the connections |
//! | `primary` | the source of truth: the engine's source and the demo's view of it |
//! | `pipeline` | running as one replica of a pipeline |

pub mod pipeline;
pub mod primary;
pub mod redis;

use std::sync::Arc;
use std::time::Duration;

use app::serve::DemoEngine;
use prefetch::{
    Connections, Engine, EventBus, Faults, FaultyConnection, FaultySource, PrefetchReport, Primary,
    Source,
};
use prefetch_pg::PgSource;
use prefetch_pg::launcher::PostgresServer;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::error::Error;
use crate::settings::Settings;
use primary::PrimarySetup;
use redis::RedisSetup;

/// The engine, started, and what came with it.
pub struct Started {
    /// The engine.
    pub engine: DemoEngine,
    /// The demo's view and editor of the source of truth.
    pub primary: Arc<dyn Primary>,
    /// The fault plan (`None`: `/fault` is off).
    pub faults: Option<Faults>,
    /// The pipeline's dead letters, on a replica.
    pub dead_letters: Option<Arc<dyn app::serve::DeadLetters>>,
    /// The first load.
    pub report: PrefetchReport,
    /// Tasks to stop at shutdown.
    pub background: Vec<JoinHandle<()>>,
    /// A PostgreSQL source, closed at shutdown.
    pub pg: Option<Arc<PgSource>>,
    /// The private PostgreSQL, stopped at shutdown.
    pub embedded_pg: Option<PostgresServer>,
}

/// Opens the primary, joins the pipeline when asked, and starts the engine
/// (which loads, or resumes from what Redis holds).
pub async fn engine(
    settings: &Settings,
    redis: &RedisSetup,
    events: &EventBus,
    shutdown: &CancellationToken,
) -> Result<Started, Error> {
    let primary = PrimarySetup::open(settings, &redis.client, events).await?;
    let mut background = Vec::new();
    let (source, dead_letters) = match &settings.pipeline {
        None => (Arc::clone(&primary.source), None),
        Some(config) => {
            let joined =
                pipeline::join(config, &settings.engine, redis, &primary, events, shutdown).await?;
            background.push(joined.leader);
            (joined.source, Some(joined.dead_letters))
        }
    };
    // Fault injection wraps the source and the writer, only when it is on.
    let faults = settings.faults.then(Faults::default);
    let (source, writes): (Arc<dyn Source>, _) = match &faults {
        Some(f) => (
            FaultySource::new(source, f.clone(), events.clone()),
            FaultyConnection::new(redis.writes.clone(), f.clone()),
        ),
        None => (source, FaultyConnection::clean(redis.writes.clone())),
    };
    let connections = Connections {
        reads: FaultyConnection::clean(redis.reads.clone()),
        writes,
        // TTL renewal's pages never queue ahead of a read or a write.
        background: FaultyConnection::clean(redis.connection().await?),
    };
    let (engine, report) =
        Engine::start_on(connections, source, events.clone(), settings.engine.clone()).await?;
    Ok(Started {
        engine,
        primary: primary.primary,
        faults,
        dead_letters,
        report,
        background,
        pg: primary.pg,
        embedded_pg: primary.embedded_pg,
    })
}

/// Reconciles every `every` (report only; keys found correct get their TTL
/// refreshed), until shutdown.
pub fn reconcile_loop(
    engine: DemoEngine,
    every: Duration,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(
        reconcile_every(engine, every, shutdown).instrument(tracing::info_span!("reconcile")),
    )
}

async fn reconcile_every(engine: DemoEngine, every: Duration, shutdown: CancellationToken) {
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
                missing = r.totals.missing,
                orphaned = r.totals.orphaned,
                stale = r.totals.stale,
                changed_outside = r.totals.changed_outside,
                "reconciliation found drift (POST /reconcile with repair=true fixes it)"
            ),
            Err(e) => tracing::warn!(error = %e, "reconciliation failed"),
        }
    }
}
