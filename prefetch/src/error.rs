//! The crate's one error type.

use std::time::Duration;

/// A boxed error from a source of truth (a database driver, a stream
/// client, your own adapter).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in the cache core.
///
/// Callers map these to their own surface; `app` turns them into HTTP
/// statuses (see [`Error::is_unavailable`] for the 503 case). Wrapped errors
/// are transparent: their message is the wrapped error's, and
/// [`std::error::Error::source`] continues the chain.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Redis answered with an error, or could not be reached at all.
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    /// The source of truth failed or refused a request.
    #[error(transparent)]
    Source(BoxError),
    /// The source of truth cannot be reached right now.
    #[error("source unavailable: {0}")]
    SourceUnavailable(BoxError),
    /// A record id is empty, too long, or contains control characters.
    #[error("invalid id: {0}")]
    InvalidId(String),
    /// A field name or value is empty, too long, or otherwise unusable.
    #[error("invalid field: {0}")]
    InvalidField(String),
    /// A key template cannot name rows safely (see [`KeyTemplate`](crate::KeyTemplate)).
    #[error("{0}")]
    InvalidTemplate(String),
    /// The source holds no record with this id.
    #[error("unknown record '{0}'")]
    NotFound(String),
    /// The source already holds a record with this id.
    #[error("record '{0}' already exists")]
    AlreadyExists(String),
    /// The source cannot be edited from here: it follows a database through
    /// a change stream, and changes belong in that database.
    #[error("the source is read-only: {0}")]
    ReadOnly(String),
    /// The configuration cannot work (for example a reserved key prefix).
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// Loading the working set would take Redis past its memory budget
    /// (`maxmemory` less the headroom); nothing was written.
    #[error(
        "the working set needs about {} of Redis memory, the budget is {} (maxmemory {} less {}% headroom); raise maxmemory or start with --memory-check warn",
        bytes_text(.needed), bytes_text(.budget), bytes_text(.max), .headroom_pct
    )]
    MemoryBudget {
        /// Bytes Redis would use after the load (estimate).
        needed: u64,
        /// Bytes allowed.
        budget: u64,
        /// `maxmemory`.
        max: u64,
        /// The headroom kept free, in percent.
        headroom_pct: u64,
    },
    /// Redis no longer holds the cache's state (restarted empty, flushed,
    /// failed over to a replica that was behind, or taken over by another
    /// source): nothing was written; the engine re-prefetches by itself.
    #[error("redis lost the cache's state")]
    StateLost,
    /// Fewer replicas than asked for acknowledged a write in time
    /// ([`CacheConfig::wait_replicas`](crate::CacheConfig::wait_replicas));
    /// the write stays unacknowledged to the source and is retried.
    #[error("only {acked} of {wanted} Redis replicas acknowledged the writes within {timeout:?}")]
    NotReplicated {
        /// Replicas asked for.
        wanted: u32,
        /// The fewest any primary reported.
        acked: u32,
        /// How long each primary waited.
        timeout: Duration,
    },
    /// The sync worker did not park within the given time; nothing was paused.
    #[error("sync worker did not pause within {0:?}")]
    PauseTimeout(Duration),
    /// The sync worker did not finish within the given time and was cancelled.
    #[error("sync worker did not stop within {0:?}")]
    StopTimeout(Duration),
    /// The sync worker has stopped, so it can be neither paused nor awaited.
    #[error("sync worker is not running")]
    WorkerStopped,
    /// The sync worker did not catch up with the source within the given time.
    #[error("sync worker did not catch up within {0:?}")]
    SettleTimeout(Duration),
}

impl Error {
    /// True when the error means "Redis or the source is not reachable right
    /// now" (refused, dropped, timed out) rather than "this was rejected".
    pub fn is_unavailable(&self) -> bool {
        match self {
            Error::Redis(e) => {
                e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                    || e.is_timeout()
                    || e.is_unrecoverable_error()
            }
            Error::SourceUnavailable(_) | Error::StateLost | Error::NotReplicated { .. } => true,
            _ => false,
        }
    }

    /// True when Redis refused a write because it is at `maxmemory` (with
    /// `noeviction`): the write is retried until memory is freed.
    pub fn is_out_of_memory(&self) -> bool {
        matches!(self, Error::Redis(e) if e.code() == Some("OOM"))
    }

    /// Wraps a failure of the source of truth.
    pub fn source_failed(e: impl Into<BoxError>) -> Self {
        Error::Source(e.into())
    }

    /// Wraps "the source of truth cannot be reached".
    pub fn source_unavailable(e: impl Into<BoxError>) -> Self {
        Error::SourceUnavailable(e.into())
    }
}

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A size with three significant digits and its unit (`1.42 MB`, `980 kB`,
/// `512 B`), so that small budgets still say something.
///
/// ```
/// # use prefetch::Error;
/// let e = Error::MemoryBudget { needed: 1_420_000, budget: 980_000, max: 1_100_000, headroom_pct: 10 };
/// assert!(e.to_string().contains("needs about 1.42 MB"), "{e}");
/// assert!(e.to_string().contains("the budget is 980 kB"), "{e}");
/// ```
fn bytes_text<B: std::borrow::Borrow<u64>>(bytes: B) -> String {
    let b = *bytes.borrow() as f64;
    let (value, unit) = [(1e9, "GB"), (1e6, "MB"), (1e3, "kB")]
        .into_iter()
        .find(|(scale, _)| b >= *scale)
        .map_or((b, "B"), |(scale, unit)| (b / scale, unit));
    let decimals = if unit == "B" || value >= 100.0 {
        0
    } else if value >= 10.0 {
        1
    } else {
        2
    };
    format!("{value:.decimals$} {unit}")
}
