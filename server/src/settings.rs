//! [`Settings`]: the flags resolved once, checked against each other, into
//! typed values the start-up code takes as they are.

use std::net::SocketAddr;
use std::time::Duration;

use prefetch::{CacheConfig, EngineConfig, MemoryCheck, RestoreLost};
use prefetch_pg::tables::{self, TableSpec, TablesFile};
use prefetch_pipeline::PipelineConfig;

use crate::config::Config;
use crate::error::Error;

/// What the server runs with, resolved from [`Config`].
#[derive(Clone, Debug)]
pub struct Settings {
    /// Where to listen.
    pub listen: SocketAddr,
    /// Which Redis.
    pub redis: RedisTarget,
    /// `--redis-tls-*`.
    pub redis_tls: Option<RedisTls>,
    /// The source of truth.
    pub primary: PrimaryKind,
    /// Running as a replica of a pipeline.
    pub pipeline: Option<PipelineConfig>,
    /// The engine's configuration.
    pub engine: EngineConfig,
    /// The token the mutation and admin endpoints require.
    pub admin_token: Option<String>,
    /// Whether `/fault` is on.
    pub faults: bool,
    /// How often to reconcile on a schedule (`None`: only on request).
    pub reconcile_every: Option<Duration>,
    /// HTTP event loops.
    pub http_threads: u16,
    /// How long a client may take to send a request.
    pub client_timeout: Duration,
    /// The PostgreSQL side of `--primary postgres…`.
    pub pg: PgSettings,
    /// The stream side of `--primary stream:<key>`.
    pub stream: StreamSettings,
    /// The mock's read latency.
    pub mock_latency: Duration,
}

/// The certificates for `rediss://` connections (`--redis-tls-*`), read
/// at start.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisTls {
    /// The CA that signed the server's certificate (PEM); the system's
    /// roots when `None`.
    pub ca: Option<Vec<u8>>,
    /// A client certificate and its key (PEM).
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for RedisTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("RedisTls")
            .field("ca", &self.ca.is_some())
            .field("client", &self.client.is_some())
            .finish()
    }
}

impl RedisTls {
    /// As redis-rs takes them.
    pub fn certificates(&self) -> redis::TlsCertificates {
        redis::TlsCertificates {
            client_tls: self
                .client
                .as_ref()
                .map(|(cert, key)| redis::ClientTlsConfig {
                    client_cert: cert.clone(),
                    client_key: key.clone(),
                }),
            root_cert: self.ca.clone(),
        }
    }

    /// A client for the node at `url`: with these certificates when it is
    /// a `rediss://` URL.
    pub fn client(tls: Option<&Self>, url: &str) -> redis::RedisResult<redis::Client> {
        match tls {
            Some(tls) if url.starts_with("rediss://") => {
                redis::Client::build_with_tls(url, tls.certificates())
            }
            _ => redis::Client::open(url),
        }
    }
}

/// Which Redis the cache lives in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedisTarget {
    /// One node at this URL.
    Url(String),
    /// A Redis Cluster, given by some of its nodes.
    Cluster(Vec<String>),
    /// Nothing given: the one on localhost:6379 if it answers, else a
    /// private one; with `forced`, a private one in any case.
    Default {
        /// `--embedded-redis`.
        forced: bool,
    },
}

/// The source of truth the server mirrors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrimaryKind {
    /// The embedded mock table.
    Mock,
    /// A private PostgreSQL started for this run.
    EmbeddedPostgres,
    /// The PostgreSQL at this URL.
    Postgres(String),
    /// A Debezium Server or RDI change stream with this key.
    Stream(String),
}

impl PrimaryKind {
    /// Whether every replica of a pipeline could reach it (the mock and a
    /// private PostgreSQL belong to one process).
    pub fn shared(&self) -> bool {
        matches!(self, PrimaryKind::Postgres(_) | PrimaryKind::Stream(_))
    }
}

/// `--pg-*` and `--config`.
#[derive(Clone, Debug)]
pub struct PgSettings {
    /// The table.
    pub table: String,
    /// The tables declared in the tables file (`--config`).
    pub specs: Vec<TableSpec>,
    /// The tables file (`--config`), read again on `SIGHUP`.
    pub file: Option<String>,
    /// The SQL file the private PostgreSQL runs first (`--pg-init`).
    pub init: Option<String>,
    /// The replication slot.
    pub slot: Option<String>,
    /// The publication.
    pub publication: Option<String>,
}

/// `--stream-*`.
#[derive(Clone, Debug)]
pub struct StreamSettings {
    /// The Redis holding the stream (default: the cache's).
    pub redis_url: Option<String>,
    /// Columns naming records instead of the events' key.
    pub id_columns: Vec<String>,
    /// Load even when the stream lost entries.
    pub allow_trimmed: bool,
}

/// The TTLs the declared tables ask for: the one they all ask for (the
/// cache's TTL then), or each asking table's own, by key prefix.
fn table_ttls(specs: &[TableSpec]) -> (Option<u64>, Vec<(String, Duration)>) {
    let asked: Vec<u64> = specs.iter().filter_map(|s| s.ttl_secs).collect();
    match asked.first() {
        Some(&ttl) if asked.len() == specs.len() && asked.iter().all(|&t| t == ttl) => {
            (Some(ttl), Vec::new())
        }
        _ => (
            None,
            specs
                .iter()
                .filter_map(|s| Some((s.key_prefix(), Duration::from_secs(s.ttl_secs?))))
                .collect(),
        ),
    }
}

impl Config {
    /// Every flag checked, alone and against the others.
    pub fn resolve(&self) -> Result<Settings, Error> {
        let admin_token = self.admin_token().map_err(Error::Config)?;
        let primary = self.primary_kind().map_err(Error::Config)?;
        let pipeline = self.pipeline_config(&primary)?;
        let specs = self.table_specs(&primary)?;
        let mut engine = self.engine_config();
        if !specs.is_empty() {
            engine.cache.prefix = tables::cache_prefix(&specs);
            engine.cache.tables = tables::table_prefixes(&specs);
            let (all, own) = table_ttls(&specs);
            if let Some(ttl) = all {
                engine.cache.ttl = Duration::from_secs(ttl);
            }
            engine.cache.table_ttls = own;
            engine.cache.json_tables = tables::json_prefixes(&specs);
        }
        if self.pg_init.is_some() && primary != PrimaryKind::EmbeddedPostgres {
            return Err(Error::Config(
                "--pg-init runs a schema file on the private PostgreSQL only (--primary postgres); on your own database, run it with psql".into(),
            ));
        }
        Ok(Settings {
            listen: SocketAddr::new(self.host, self.port),
            redis: self.redis_target(),
            redis_tls: self.redis_tls()?,
            primary,
            pipeline,
            engine,
            admin_token,
            faults: self.faults || self.host.is_loopback(),
            reconcile_every: (self.reconcile_every > 0)
                .then(|| Duration::from_secs(self.reconcile_every)),
            http_threads: self.http_threads,
            client_timeout: Duration::from_secs(self.client_timeout_secs),
            pg: PgSettings {
                table: specs
                    .first()
                    .map_or_else(|| self.pg_table.clone(), |s| s.table.clone()),
                file: (!specs.is_empty())
                    .then(|| self.tables_file.clone())
                    .flatten(),
                specs,
                init: self.pg_init.clone(),
                slot: self.pg_slot.clone(),
                publication: self.pg_publication.clone(),
            },
            stream: StreamSettings {
                redis_url: self.stream_redis_url.clone(),
                id_columns: self.stream_id_columns.clone(),
                allow_trimmed: self.stream_allow_trimmed,
            },
            mock_latency: Duration::from_millis(self.primary_latency_ms),
        })
    }

    /// Which primary `--primary` names.
    fn primary_kind(&self) -> Result<PrimaryKind, String> {
        let p = self.primary.trim();
        match p {
            "mock" => Ok(PrimaryKind::Mock),
            "postgres" | "postgresql" => Ok(PrimaryKind::EmbeddedPostgres),
            url if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Ok(PrimaryKind::Postgres(url.to_owned()))
            }
            stream if stream.starts_with("stream:") => match &stream["stream:".len()..] {
                "" => Err("--primary stream:<key> needs the stream's key".into()),
                key => Ok(PrimaryKind::Stream(key.to_owned())),
            },
            other => Err(format!(
                "--primary must be mock, postgres, a postgres:// URL or stream:<key>, not '{other}'"
            )),
        }
    }

    /// The tables `--config` declares (a PostgreSQL primary, or a stream
    /// carrying several tables).
    fn table_specs(&self, primary: &PrimaryKind) -> Result<Vec<TableSpec>, Error> {
        let Some(path) = &self.tables_file else {
            return Ok(Vec::new());
        };
        let stream = matches!(primary, PrimaryKind::Stream(_));
        if !stream
            && !matches!(
                primary,
                PrimaryKind::Postgres(_) | PrimaryKind::EmbeddedPostgres
            )
        {
            return Err(Error::Config(
                "--config needs a PostgreSQL primary (--primary postgres or a postgres:// URL) or a change stream (--primary stream:<key>)"
                    .into(),
            ));
        }
        let file = TablesFile::read(path).map_err(|e| Error::TablesFile(e.to_string()))?;
        if stream {
            if !self.stream_id_columns.is_empty() {
                return Err(Error::Config(
                    "--stream-id-columns and --config: name the rows with the tables file's key templates".into(),
                ));
            }
            if let Some(spec) = file.tables.iter().find(|s| s.filter.is_some()) {
                return Err(Error::TablesFile(
                    spec.error("`filter` is PostgreSQL's row filter; a change stream cannot apply it (filter in the connector, with Debezium's Filter transform)")
                        .to_string(),
                ));
            }
        }
        Ok(file.tables)
    }

    /// The `--redis-tls-*` files, read; they need `rediss://` URLs.
    fn redis_tls(&self) -> Result<Option<RedisTls>, Error> {
        if self.redis_tls_ca.is_none() && self.redis_tls_cert.is_none() {
            return Ok(None);
        }
        let urls: Vec<String> = match self.redis_target() {
            RedisTarget::Cluster(urls) => urls,
            RedisTarget::Url(url) => vec![url],
            RedisTarget::Default { .. } => Vec::new(),
        };
        if urls.is_empty() || urls.iter().any(|u| !u.starts_with("rediss://")) {
            return Err(Error::Config(
                "--redis-tls-ca/--redis-tls-cert/--redis-tls-key need a rediss:// URL (--redis-url or --redis-cluster)".into(),
            ));
        }
        let read = |flag: &str, path: &str| {
            std::fs::read(path).map_err(|e| Error::Config(format!("{flag} {path}: {e}")))
        };
        let ca = match &self.redis_tls_ca {
            Some(path) => Some(read("--redis-tls-ca", path)?),
            None => None,
        };
        let client = match (&self.redis_tls_cert, &self.redis_tls_key) {
            (Some(cert), Some(key)) => Some((
                read("--redis-tls-cert", cert)?,
                read("--redis-tls-key", key)?,
            )),
            _ => None,
        };
        Ok(Some(RedisTls { ca, client }))
    }

    fn redis_target(&self) -> RedisTarget {
        if !self.redis_cluster.is_empty() {
            return RedisTarget::Cluster(self.redis_cluster.clone());
        }
        match self.given_redis_url() {
            Some(url) => RedisTarget::Url(url),
            None => RedisTarget::Default {
                forced: self.embedded_redis,
            },
        }
    }

    fn engine_config(&self) -> EngineConfig {
        EngineConfig {
            cache: CacheConfig {
                prefix: self.cache_prefix.clone(),
                ttl: Duration::from_secs(self.ttl_seconds),
                wait_replicas: self.redis_wait_replicas,
                ..CacheConfig::default()
            },
            memory_check: if self.memory_check == "warn" {
                MemoryCheck::Warn
            } else {
                MemoryCheck::Refuse
            },
            restore_lost: match self.restore_lost.as_str() {
                "off" => RestoreLost::Off,
                "on-read" => RestoreLost::OnRead,
                _ => RestoreLost::Always,
            },
            // Replicas of a pipeline write the same cache: every load guarded.
            shared_writers: self.pipeline.is_some(),
            ..EngineConfig::default()
        }
    }

    /// `--pipeline` and what it needs: a primary every replica shares, a
    /// valid name, a cache prefix apart from the pipeline's keys.
    fn pipeline_config(&self, primary: &PrimaryKind) -> Result<Option<PipelineConfig>, Error> {
        let Some(name) = &self.pipeline else {
            return Ok(None);
        };
        if !primary.shared() {
            return Err(Error::Config(
                "--pipeline needs a primary every replica shares: a postgres:// URL or stream:<key> (the mock and --primary postgres are private to one process)".into(),
            ));
        }
        let mut pipeline = PipelineConfig::new(name, self.replica_name());
        pipeline.partitions = self.pipeline_partitions;
        pipeline.wait_replicas = self.redis_wait_replicas;
        pipeline
            .validate()
            .map_err(|e| Error::Config(format!("--pipeline/--replica: {e}")))?;
        if self.cache_prefix.starts_with(&pipeline.key_prefix())
            || pipeline.key_prefix().starts_with(&self.cache_prefix)
        {
            return Err(Error::Config(format!(
                "--cache-prefix '{}' overlaps the pipeline's keys ('{}…')",
                self.cache_prefix,
                pipeline.key_prefix()
            )));
        }
        Ok(Some(pipeline))
    }
}

#[cfg(test)]
mod tests;
