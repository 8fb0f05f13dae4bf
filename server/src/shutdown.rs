//! Stopping: SIGINT and SIGTERM, and the stop sequence of a [`Running`]
//! server (stop accepting, end live streams, drain the worker, stop what
//! was started), bounded by [`SHUTDOWN_BUDGET`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use app::serve::DemoEngine;
use prefetch::Primary;
use prefetch_pg::PgSource;
use prefetch_pg::launcher::PostgresServer;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::boot::redis::EmbeddedRedis;

/// Total time shutdown may take before the process gives up waiting.
pub const SHUTDOWN_BUDGET: Duration = Duration::from_millis(1500);

/// A started server.
pub struct Running {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The Redis URL in use.
    pub redis_url: String,
    /// The engine (for tests and embedding).
    pub engine: DemoEngine,
    /// The demo's view and editor of the source of truth.
    pub primary: Arc<dyn Primary>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) http: Vec<oneshot::Receiver<std::io::Result<()>>>,
    pub(crate) background: Vec<JoinHandle<()>>,
    pub(crate) embedded: Option<EmbeddedRedis>,
    pub(crate) pg_source: Option<Arc<PgSource>>,
    pub(crate) embedded_pg: Option<PostgresServer>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("addr", &self.addr)
            .field("redis_url", &self.redis_url)
            .finish_non_exhaustive()
    }
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

/// SIGINT and SIGTERM, listened to from the moment this is made.
pub(crate) struct Signals {
    #[cfg(unix)]
    interrupt: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    terminate: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    #[cfg(unix)]
    pub(crate) fn listen() -> Self {
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
    pub(crate) fn listen() -> Self {
        Self {}
    }

    /// Waits for either signal.
    pub(crate) async fn recv(mut self) {
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
