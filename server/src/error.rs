//! Why the server could not start ([`Error`]).

use std::net::SocketAddr;

/// Why the server could not start.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The given Redis did not answer.
    #[error("cannot reach Redis at {url}: {source}")]
    RedisUnreachable {
        /// The Redis URL (password redacted).
        url: String,
        /// What went wrong.
        #[source]
        source: redis::RedisError,
    },
    /// The embedded redis-server could not be started.
    #[error("cannot start the embedded Redis: {0}")]
    Embedded(#[source] std::io::Error),
    /// The embedded PostgreSQL could not be started.
    #[error("cannot start the embedded PostgreSQL: {0}")]
    EmbeddedPostgres(#[source] std::io::Error),
    /// PostgreSQL could not be reached or the table cannot be mirrored.
    #[error("PostgreSQL at {url}: {source}")]
    Postgres {
        /// The URL (password redacted).
        url: String,
        /// What went wrong.
        #[source]
        source: prefetch_pg::PgError,
    },
    /// The change stream named by `--primary stream:<key>` cannot be followed.
    #[error("change stream '{stream}': {source}")]
    Stream {
        /// The stream's key.
        stream: String,
        /// What went wrong.
        #[source]
        source: prefetch::Error,
    },
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// The initial prefetch failed.
    #[error("initial prefetch failed: {0}")]
    Prefetch(#[source] prefetch::Error),
    /// The HTTP server failed.
    #[error("http server: {0}")]
    Serve(#[source] std::io::Error),
    /// The configuration is unsafe or contradictory.
    #[error("{0}")]
    Config(String),
}

impl From<prefetch::Error> for Error {
    fn from(e: prefetch::Error) -> Self {
        // A refusal a flag lifts names the flag.
        if let prefetch::Error::Source(inner) = &e
            && inner.downcast_ref::<prefetch_cdc::HistoryLost>().is_some()
        {
            return Error::Config(format!(
                "initial prefetch failed: {e}: start with --stream-allow-trimmed to load it anyway"
            ));
        }
        Error::Prefetch(e)
    }
}
