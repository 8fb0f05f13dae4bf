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
    /// query) are the client's fault (400); everything else is ours.
    fn from_server_fn_error(value: ServerFnErrorErr) -> Self {
        let (status, message) = match &value {
            ServerFnErrorErr::Args(m) | ServerFnErrorErr::Deserialization(m) => {
                if m.contains("length limit") {
                    (413, "Request body too large.".to_owned())
                } else {
                    (400, format!("Malformed request: {m}"))
                }
            }
            ServerFnErrorErr::MissingArg(m) => (400, format!("Missing argument: {m}")),
            ServerFnErrorErr::Request(m) => (503, format!("Server unreachable: {m}")),
            other => (500, other.to_string()),
        };
        #[cfg(feature = "ssr")]
        ssr::set_status(status);
        #[cfg(not(feature = "ssr"))]
        let _ = status;
        AppError::new(message)
    }
}

#[cfg(feature = "ssr")]
pub(crate) mod ssr {
    use super::AppError;
    use http::StatusCode;
    use leptos::prelude::use_context;
    use leptos_axum::ResponseOptions;
    use prefetch::Error;

    /// Sets the HTTP status of the current server-function response.
    pub fn set_status(status: u16) {
        if let (Some(opts), Ok(code)) = (
            use_context::<ResponseOptions>(),
            StatusCode::from_u16(status),
        ) {
            opts.set_status(code);
        }
    }

    /// Fails the current request with `status` and `message`.
    pub fn fail<T>(status: u16, message: impl Into<String>) -> Result<T, AppError> {
        set_status(status);
        Err(AppError::new(message))
    }

    /// Maps an engine error to a status and a message safe to show, logging
    /// server-side failures in full.
    pub fn engine_error(e: Error) -> AppError {
        let (status, message) = match &e {
            Error::InvalidId(m) => (400, format!("Invalid id: {m}.")),
            Error::InvalidField(m) => (400, format!("Invalid field: {m}.")),
            Error::NotFound(id) => (404, format!("Unknown category '{id}'.")),
            Error::AlreadyExists(id) => (409, format!("Category '{id}' already exists.")),
            Error::PauseTimeout(t) => (
                503,
                format!(
                    "The sync worker did not pause within {t:?}; nothing was changed. Try again."
                ),
            ),
            Error::WorkerStopped => (503, "The server is shutting down.".to_owned()),
            e if e.is_unavailable() => {
                tracing::warn!(error = %e, "redis unavailable");
                (503, "Redis is unavailable; try again shortly.".to_owned())
            }
            e => {
                tracing::error!(error = %e, "request failed");
                (500, format!("Internal error: {e}"))
            }
        };
        set_status(status);
        AppError::new(message)
    }
}
