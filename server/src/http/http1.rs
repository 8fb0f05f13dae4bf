//! The accept loop of one HTTP event loop: HTTP/1.1 on hyper, with a time
//! limit on reading each request's head.
//!
//! `axum::serve` gives no way to set hyper's timer, so without this loop a
//! client could open connections and never finish a request head (or keep
//! an idle connection forever), each holding a socket and a task. Here each
//! connection is served by hyper's HTTP/1 connection with a timer: a request
//! head must arrive within the client timeout, counted on a kept-alive
//! connection from the previous answer; otherwise the connection is
//! closed. A streaming answer (the live feed) is not a request head and
//! is not limited. The server speaks HTTP/1.1 only (no HTTP/2 is compiled
//! in, and nothing upgrades). Shutdown is graceful like `axum::serve`'s:
//! accepting stops, each connection finishes the request it is answering,
//! idle ones close, and the loop returns once all of them have.

use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Serves `app` on `listener` until `shutdown`, then waits for open
/// connections to finish (live streams end with the same token). A request
/// head must arrive within `head_timeout`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    head_timeout: Duration,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    // Every connection task holds a receiver; `closed()` resolves once the
    // last one is gone.
    let (open_tx, open_rx) = watch::channel(());
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(head_timeout)
        .keep_alive(true);
    loop {
        let tcp = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    pause_after_accept_error(e).await;
                    continue;
                }
            },
        };
        // Small writes (SSE frames, short JSON replies) go out at once
        // instead of waiting up to 40 ms for a delayed ACK (Nagle).
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let conn =
            builder.serve_connection(TokioIo::new(tcp), TowerToHyperService::new(app.clone()));
        let open = open_rx.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut conn = std::pin::pin!(conn);
            let ended = tokio::select! {
                result = conn.as_mut() => result,
                _ = shutdown.cancelled() => {
                    // Finish the request under way, then close.
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = ended {
                tracing::debug!(error = %e, "connection closed with an error");
            }
            drop(open);
        });
    }
    drop(listener);
    drop(open_rx);
    open_tx.closed().await;
    Ok(())
}

/// After a failed `accept`: a connection that died before it was accepted
/// is nothing to wait for; anything else (out of file descriptors, say)
/// waits a second, as `axum::serve` does, instead of spinning.
async fn pause_after_accept_error(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accept failed; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}
