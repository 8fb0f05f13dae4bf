//! What can go wrong between PostgreSQL and the cache.

use std::time::Duration;

/// A PostgreSQL source error.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// A SQL statement failed (with PostgreSQL's own message, detail and
    /// hint when the server answered).
    #[error("{}", sql_message(.0))]
    Sql(#[from] tokio_postgres::Error),
    /// The replication connection failed.
    #[error(transparent)]
    Replication(#[from] pg_walstream::ReplicationError),
    /// The table cannot be mirrored as it is.
    #[error("{0}")]
    Schema(String),
    /// Creating the replication slot waited too long for transactions that
    /// were already running.
    #[error(
        "creating replication slot '{slot}' waited {waited:?} for running transactions to finish; {blockers}"
    )]
    SlotBlocked {
        /// The slot.
        slot: String,
        /// How long it waited.
        waited: Duration,
        /// The transactions in the way, as PostgreSQL reports them.
        blockers: String,
    },
    /// The replication protocol said something this source cannot follow.
    #[error("replication protocol: {0}")]
    Protocol(String),
}

/// `e` as PostgreSQL put it: its severity, message, detail and hint, or
/// the client's own text when the server did not answer.
fn sql_message(e: &tokio_postgres::Error) -> String {
    let Some(db) = e.as_db_error() else {
        // The client's words ("error connecting to server") and why.
        return match std::error::Error::source(e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        };
    };
    let mut out = format!("{}: {}", db.severity(), db.message());
    if let Some(detail) = db.detail() {
        out.push_str(&format!(" ({detail})"));
    }
    if let Some(hint) = db.hint() {
        out.push_str(&format!("; hint: {hint}"));
    }
    out
}

impl PgError {
    /// Whether the database is just not reachable right now.
    pub fn is_unavailable(&self) -> bool {
        match self {
            PgError::Sql(e) => e.is_closed() || e.as_db_error().is_none(),
            PgError::Replication(e) => !e.is_permanent(),
            _ => false,
        }
    }
}

impl From<PgError> for prefetch::Error {
    fn from(e: PgError) -> Self {
        if let PgError::Sql(sql) = &e
            && let Some(db) = sql.as_db_error()
        {
            let code = db.code().code();
            // Integrity and data errors are the request's fault: 400/409.
            if code == "23505" {
                return prefetch::Error::AlreadyExists(
                    db.detail().unwrap_or(db.message()).to_owned(),
                );
            }
            if code.starts_with("22") || code.starts_with("23") || code == "42703" {
                return prefetch::Error::InvalidField(db.message().to_owned());
            }
        }
        if e.is_unavailable() {
            prefetch::Error::source_unavailable(e)
        } else {
            prefetch::Error::source_failed(e)
        }
    }
}
