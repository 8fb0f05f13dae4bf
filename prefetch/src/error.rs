use std::time::Duration;

/// Everything that can go wrong in the cache core.
///
/// Callers map these to their own surface; `app` turns them into HTTP
/// statuses (see [`Error::is_unavailable`] for the 503 case).
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Redis answered with an error, or could not be reached at all.
    #[error("redis error: {0}")]
    Redis(#[from] redis::RedisError),
    /// A record id is empty, too long, or contains control characters.
    #[error("invalid id: {0}")]
    InvalidId(String),
    /// A field name or value is empty, too long, or otherwise unusable.
    #[error("invalid field: {0}")]
    InvalidField(String),
    /// The primary holds no record with this id.
    #[error("unknown record '{0}'")]
    NotFound(String),
    /// The primary already holds a record with this id.
    #[error("record '{0}' already exists")]
    AlreadyExists(String),
    /// The sync worker did not park within the given time; nothing was paused.
    #[error("sync worker did not pause within {0:?}")]
    PauseTimeout(Duration),
    /// The sync worker did not finish within the given time and was cancelled.
    #[error("sync worker did not stop within {0:?}")]
    StopTimeout(Duration),
    /// The sync worker has stopped, so it can be neither paused nor awaited.
    #[error("sync worker is not running")]
    WorkerStopped,
    /// The sync worker did not catch up with the primary within the given time.
    #[error("sync worker did not catch up within {0:?}")]
    SettleTimeout(Duration),
}

impl Error {
    /// True when the error means "Redis is not reachable right now" (refused,
    /// dropped, timed out) rather than "Redis rejected this command".
    pub fn is_unavailable(&self) -> bool {
        match self {
            Error::Redis(e) => {
                e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                    || e.is_timeout()
                    || e.is_unrecoverable_error()
            }
            _ => false,
        }
    }
}

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
