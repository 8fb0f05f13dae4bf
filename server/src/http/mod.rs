//! The HTTP edge: the event loops, the router, the edge layer around every
//! request, security, the HTTP/1 connection loop, the live feed's
//! endpoint, and the error answer.
//!
//! | module | what |
//! |---|---|
//! | `error` | [`ApiError`]: the one error answer every path gives |
//! | `security` | the API guard: body limit, UTF-8, admin token; security headers |
//! | `edge` | the layer around every request: `HEAD`, the guard, JSON errors, headers |
//! | `position` | read-your-writes: `Prefetch-Position`, `Prefetch-Min-Position` |
//! | `sse` | `GET /events`: the live feed a client reads |
//! | `router` | every route: the reference API, the page, the feed, metrics, files |
//! | `tables` | `GET /tables`: the tables held, their keys, rows in Redis, lag |
//! | `http1` | hyper's HTTP/1 per connection, with the client timeouts |

pub mod error;
pub mod http1;
pub mod position;
pub mod router;
pub mod security;
pub mod tables;

mod edge;
mod sse;

use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use error::ApiError;

use crate::boot::redis::REDIS_TIMEOUT;
use crate::error::Error;
use crate::redacted;
use crate::state::AppState;

/// Starts `--http-threads` HTTP loops on `listener`, each with its own
/// Redis connection, and returns what each will report when it ends.
pub async fn start_http(
    listener: TcpListener,
    state: &AppState,
    target: &prefetch::RedisClient,
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
            let app = router::router(state.with_reader(conn));
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
