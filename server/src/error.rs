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
    /// The change stream was trimmed past what the cache needs, and
    /// `--stream-allow-trimmed` was not given.
    #[error("initial prefetch failed: {0}: start with --stream-allow-trimmed to load it anyway")]
    StreamTrimmed(#[source] prefetch::Error),
    /// The tables file (`--config`) cannot be read or declares something
    /// that cannot work.
    #[error("{0}")]
    TablesFile(String),
    /// The `--pg-init` script could not be read or failed.
    #[error("--pg-init {path}: {why}")]
    PgInit {
        /// The script's path.
        path: String,
        /// What went wrong.
        why: String,
    },
}

impl From<prefetch::Error> for Error {
    fn from(e: prefetch::Error) -> Self {
        // A refusal a flag lifts names the flag.
        if let prefetch::Error::Source(inner) = &e
            && inner.downcast_ref::<prefetch_cdc::HistoryLost>().is_some()
        {
            return Error::StreamTrimmed(e);
        }
        Error::Prefetch(e)
    }
}

/// Where the troubleshooting guide explains each refusal.
pub const TROUBLESHOOTING: &str = "docs/troubleshooting.md";

impl Error {
    /// The anchor of the section of [`TROUBLESHOOTING`] that explains this
    /// refusal and what to do about it.
    pub fn help_anchor(&self) -> &'static str {
        match self {
            Error::RedisUnreachable { .. } => "cannot-reach-redis",
            Error::Embedded(_) => "the-embedded-redis-does-not-start",
            Error::EmbeddedPostgres(_) => "the-embedded-postgresql-does-not-start",
            Error::Postgres { source, .. } => postgres_anchor(source),
            Error::Stream { .. } => "the-change-stream-cannot-be-read",
            Error::StreamTrimmed(_) => "the-stream-was-trimmed",
            Error::Bind { .. } => "cannot-listen",
            Error::Prefetch(e) => prefetch_anchor(e),
            Error::Serve(_) => "cannot-listen",
            Error::Config(_) => "flags-that-do-not-go-together",
            Error::TablesFile(_) => "the-tables-file-is-refused",
            Error::PgInit { .. } => "the-pg-init-script-fails",
        }
    }
}

/// The section for a refusal of the initial load.
fn prefetch_anchor(e: &prefetch::Error) -> &'static str {
    match e {
        prefetch::Error::MemoryBudget { .. } => "the-working-set-does-not-fit",
        prefetch::Error::InvalidConfig(_) | prefetch::Error::InvalidTemplate(_) => {
            "the-key-prefix-is-refused"
        }
        prefetch::Error::NotReplicated { .. } => "too-few-redis-replicas",
        prefetch::Error::Redis(r) => {
            let text = r.to_string();
            if r.code() == Some("NOPERM") || text.contains("NOPERM") {
                "redis-refuses-a-command"
            } else if text.contains("unknown command") || text.contains("FUNCTION") {
                "redis-is-too-old"
            } else {
                "cannot-reach-redis"
            }
        }
        prefetch::Error::Source(inner) => match inner.downcast_ref::<prefetch_pg::PgError>() {
            Some(pg) => postgres_anchor(pg),
            None => "the-initial-load-fails",
        },
        prefetch::Error::SourceUnavailable(inner) if inner.is::<prefetch_pg::PgError>() => {
            "cannot-reach-postgresql"
        }
        _ => "the-initial-load-fails",
    }
}

/// The section for a PostgreSQL refusal, from what PostgreSQL said.
fn postgres_anchor(e: &prefetch_pg::PgError) -> &'static str {
    use prefetch_pg::PgError;
    match e {
        PgError::SlotBlocked { .. } => "creating-the-replication-slot-waits",
        PgError::Schema(_) => "a-table-cannot-be-mirrored",
        _ => {
            let text = e.to_string();
            let has = |s: &str| text.contains(s);
            if has("wal_level") {
                "postgresql-is-not-set-up-for-logical-replication"
            } else if has("replication slots are in use")
                || has("max_wal_senders")
                || has("max_replication_slots")
                || (has("replication slot") && has("is active"))
            {
                "no-replication-slot-or-sender-is-free"
            } else if has("permission denied")
                || has("must be superuser")
                || has("must be owner")
                || has("authentication failed")
                || has("no pg_hba.conf entry")
                || has("does not exist")
            {
                "postgresql-refuses-the-user"
            } else if e.is_unavailable() {
                "cannot-reach-postgresql"
            } else {
                "postgresql-refuses-something-else"
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prefetch_pg::PgError;
    use redis::ErrorKind;
    use std::collections::BTreeSet;

    fn redis_error(text: &'static str) -> redis::RedisError {
        redis::RedisError::from((ErrorKind::Extension, "refused", text.to_owned()))
    }

    fn pg(source: PgError) -> Error {
        Error::Postgres {
            url: "postgres://x".into(),
            source,
        }
    }

    /// One refusal of each kind, as the server would print it.
    fn one_of_each() -> Vec<Error> {
        let io = || std::io::Error::other("x");
        let prefetch = |e| Error::Prefetch(e);
        let protocol = |text: &str| pg(PgError::Protocol(text.into()));
        vec![
            Error::RedisUnreachable {
                url: "redis://x".into(),
                source: redis::RedisError::from((ErrorKind::Io, "refused")),
            },
            prefetch(prefetch::Error::Redis(redis_error(
                "NOPERM this user has no permissions to run the 'fcall' command",
            ))),
            prefetch(prefetch::Error::Redis(redis_error(
                "ERR unknown command 'FUNCTION'",
            ))),
            prefetch(prefetch::Error::NotReplicated {
                wanted: 1,
                acked: 0,
                timeout: std::time::Duration::from_secs(1),
            }),
            prefetch(prefetch::Error::MemoryBudget {
                needed: 2,
                budget: 1,
                max: 1,
                headroom_pct: 10,
            }),
            prefetch(prefetch::Error::InvalidConfig("reserved".into())),
            Error::Embedded(io()),
            Error::EmbeddedPostgres(io()),
            prefetch(prefetch::Error::source_unavailable(PgError::Protocol(
                "connection refused".into(),
            ))),
            protocol("FATAL: password authentication failed for user \"app\""),
            protocol("ERROR: logical decoding requires wal_level >= logical"),
            protocol("ERROR: all replication slots are in use"),
            pg(PgError::SlotBlocked {
                slot: "s".into(),
                waited: std::time::Duration::from_secs(1),
                blockers: String::new(),
            }),
            pg(PgError::Schema("no primary key".into())),
            protocol("ERROR: syntax error"),
            Error::PgInit {
                path: "x.sql".into(),
                why: "no such file".into(),
            },
            Error::Stream {
                stream: "s".into(),
                source: prefetch::Error::Redis(redis_error("WRONGTYPE")),
            },
            Error::from(prefetch::Error::source_failed(prefetch_cdc::HistoryLost {
                stream: "s".into(),
                removed: 1,
            })),
            Error::TablesFile("t.toml:1: bad".into()),
            Error::Config("--pipeline needs …".into()),
            Error::Bind {
                addr: ([127, 0, 0, 1], 1).into(),
                source: io(),
            },
            prefetch(prefetch::Error::source_failed(std::io::Error::other("x"))),
        ]
    }

    /// The anchors GitHub gives the guide's headings.
    fn documented() -> BTreeSet<String> {
        let guide = include_str!("../../docs/troubleshooting.md");
        guide
            .lines()
            .filter_map(|l| l.strip_prefix("### "))
            .map(|h| {
                h.to_lowercase()
                    .chars()
                    .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-')
                    .map(|c| if c == ' ' { '-' } else { c })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn every_refusal_names_a_section_of_the_guide_and_every_section_is_named() {
        let named: BTreeSet<String> = one_of_each()
            .iter()
            .map(|e| e.help_anchor().to_owned())
            .collect();
        assert_eq!(named, documented());
    }

    #[test]
    fn each_refusal_finds_its_own_section() {
        let anchors: Vec<&str> = one_of_each().iter().map(Error::help_anchor).collect();
        let distinct: BTreeSet<&str> = anchors.iter().copied().collect();
        assert_eq!(anchors.len(), distinct.len(), "{anchors:?}");
    }
}
