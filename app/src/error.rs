//! The one error type of the API: `{"error": "…"}` in JSON, with the HTTP
//! status set by the server (400, 404, 409, 413, 503, …).

use leptos::server_fn::codec::JsonEncoding;
use leptos::server_fn::error::{FromServerFnError, ServerFnErrorErr};
use serde::{Deserialize, Serialize};

/// An API error. Its JSON form is exactly `{"error": "<message>"}`; the
/// status travels as the HTTP status code, not in the body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{error}")]
pub struct AppError {
    /// A message safe to show to the user.
    pub error: String,
}

impl AppError {
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            error: message.into(),
        }
    }
}

impl FromServerFnError for AppError {
    type Encoder = JsonEncoding;

    /// Framework-level failures: undecodable arguments (a malformed body or
    /// query) are the client's fault (400); everything else is ours. Bodies
    /// over the limit never get here: the server answers 413 before.
    fn from_server_fn_error(value: ServerFnErrorErr) -> Self {
        #[cfg(feature = "ssr")]
        {
            use http::StatusCode;
            let (status, message) = match &value {
                ServerFnErrorErr::Args(m) | ServerFnErrorErr::Deserialization(m) => {
                    (StatusCode::BAD_REQUEST, format!("Malformed request: {m}"))
                }
                ServerFnErrorErr::MissingArg(m) => {
                    (StatusCode::BAD_REQUEST, format!("Missing argument: {m}"))
                }
                other => {
                    tracing::error!(error = %other, "server function failed");
                    (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "Internal error; see the server log.".to_owned(),
                    )
                }
            };
            ssr::set_status(status);
            AppError::new(message)
        }
        #[cfg(not(feature = "ssr"))]
        {
            // In the browser this is a failed request (the server is gone).
            AppError::new(match value {
                ServerFnErrorErr::Request(m) => format!("Server unreachable: {m}"),
                other => other.to_string(),
            })
        }
    }
}

#[cfg(feature = "ssr")]
pub use ssr::engine_status;

#[cfg(feature = "ssr")]
pub(crate) mod ssr {
    use super::AppError;
    use http::StatusCode;
    use prefetch::Error;

    /// 400, the status of most refusals.
    pub const BAD_REQUEST: StatusCode = StatusCode::BAD_REQUEST;

    /// Sets the HTTP status of the current server-function response.
    pub fn set_status(status: StatusCode) {
        crate::serve::set_status(status);
    }

    /// Fails the current request with `status` and `message`.
    pub fn fail<T>(status: StatusCode, message: impl Into<String>) -> Result<T, AppError> {
        set_status(status);
        Err(AppError::new(message))
    }

    /// Maps an engine error to a status and a message safe to show, logging
    /// server-side failures in full (never sending their detail).
    pub fn engine_error(e: Error) -> AppError {
        let (status, message) = engine_status(&e);
        set_status(status);
        AppError::new(message)
    }

    /// The status and the message safe to show for an engine error, for
    /// the server functions and the server's own routes alike; server-side
    /// failures are logged in full here (their detail is never sent).
    pub fn engine_status(e: &Error) -> (StatusCode, String) {
        match e {
            Error::InvalidId(m) => (StatusCode::BAD_REQUEST, format!("Invalid id: {m}.")),
            Error::InvalidField(m) => (StatusCode::BAD_REQUEST, format!("Invalid field: {m}.")),
            Error::NotFound(id) => (StatusCode::NOT_FOUND, format!("Unknown category '{id}'.")),
            Error::AlreadyExists(id) => (
                StatusCode::CONFLICT,
                format!("Category '{id}' already exists."),
            ),
            Error::ReadOnly(why) => (
                StatusCode::CONFLICT,
                format!("The primary cannot be edited here: {why}."),
            ),
            Error::InvalidConfig(m) => (StatusCode::CONFLICT, format!("Not possible here: {m}.")),
            Error::PauseTimeout(t) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "The sync worker did not pause within {t:?}; nothing was changed. Try again."
                ),
            ),
            Error::WorkerStopped => (
                StatusCode::SERVICE_UNAVAILABLE,
                "The server is shutting down.".to_owned(),
            ),
            Error::StateLost => (
                StatusCode::SERVICE_UNAVAILABLE,
                "Redis lost the cache's state; it is being refilled. Try again shortly.".to_owned(),
            ),
            Error::SourceUnavailable(_) => {
                tracing::warn!(error = %e, "source unavailable");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The primary is unavailable; try again shortly.".to_owned(),
                )
            }
            e if e.is_unavailable() => {
                tracing::warn!(error = %e, "redis unavailable");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Redis is unavailable; try again shortly.".to_owned(),
                )
            }
            e => {
                tracing::error!(error = %e, "request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Internal error; see the server log.".to_owned(),
                )
            }
        }
    }
}
