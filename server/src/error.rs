//! The server's errors: why it could not start ([`Error`]), and the one
//! error answer every HTTP path gives ([`ApiError`]).

use std::net::SocketAddr;

use app::error::AppError;
use axum::Json;
use axum::response::{IntoResponse, Response};
use http::StatusCode;

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
        Error::Prefetch(e)
    }
}

/// An error answer: `{"error": message}` with `status`. Every error the
/// server makes itself (outside the server functions, which answer through
/// [`AppError`] with the same body) goes through here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A message safe to show.
    pub message: String,
}

impl ApiError {
    /// An error with this status and message.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    /// 400: the request cannot be understood.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 408: the body did not arrive within `timeout`.
    pub fn body_timeout(timeout: std::time::Duration) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            format!("Request body not received within {} s.", timeout.as_secs()),
        )
    }

    /// 413: the body is over the limit.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("Request body too large (limit {limit} bytes)."),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(AppError::new(self.message))).into_response()
    }
}
