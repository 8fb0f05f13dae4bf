//! Command-line flags, each with an environment fallback; resolved into
//! [`Settings`](crate::settings::Settings) once, at start.

use std::net::IpAddr;

use clap::Parser;

/// A live Redis prefetch-cache demo: the cache core, the reference JSON API,
/// a live SSE feed and a Leptos dashboard.
#[derive(Parser, Debug, Clone)]
#[command(name = "prefetch-demo", version)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "PREFETCH_HOST", default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Port to listen on (0 picks a free one).
    #[arg(long, env = "PREFETCH_PORT", default_value_t = 8791)]
    pub port: u16,
    /// Redis URL (redis://host:port/db, or rediss:// for TLS; a user and
    /// password go before the host: redis://user:password@host). Overrides
    /// --redis-host/--redis-port.
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: Option<String>,
    /// A Redis Cluster instead of one node: the URLs of some of its nodes,
    /// comma-separated (the rest are discovered).
    #[arg(long, env = "REDIS_CLUSTER_URLS", value_delimiter = ',',
          conflicts_with_all = ["redis_url", "redis_host", "redis_port", "embedded_redis"])]
    pub redis_cluster: Vec<String>,
    /// With a `rediss://` URL: the CA certificate (PEM) that signed the
    /// Redis server's certificate, instead of the system's roots.
    #[arg(long, env = "PREFETCH_REDIS_TLS_CA", value_name = "FILE")]
    pub redis_tls_ca: Option<String>,
    /// With a `rediss://` URL: a client certificate (PEM) for a Redis that
    /// asks for one (`tls-auth-clients`); needs --redis-tls-key.
    #[arg(
        long,
        env = "PREFETCH_REDIS_TLS_CERT",
        value_name = "FILE",
        requires = "redis_tls_key"
    )]
    pub redis_tls_cert: Option<String>,
    /// The private key (PEM) of --redis-tls-cert.
    #[arg(
        long,
        env = "PREFETCH_REDIS_TLS_KEY",
        value_name = "FILE",
        requires = "redis_tls_cert"
    )]
    pub redis_tls_key: Option<String>,
    /// Replicas of each Redis primary that must hold a batch of sync writes
    /// (`WAIT`) before the source hears it is durable (0: none), and with
    /// --pipeline each batch the leader publishes to the change feed. Set it
    /// when the cache's Redis has replicas that may be promoted.
    #[arg(long, env = "PREFETCH_REDIS_WAIT_REPLICAS", default_value_t = 0)]
    pub redis_wait_replicas: u32,
    /// Redis host.
    #[arg(long, env = "REDIS_HOST")]
    pub redis_host: Option<String>,
    /// Redis port.
    #[arg(long, env = "REDIS_PORT")]
    pub redis_port: Option<u16>,
    /// Start a private redis-server (free loopback port, no persistence) even
    /// if one answers on localhost:6379. Without any Redis address this
    /// happens anyway when nothing answers there.
    #[arg(long, env = "PREFETCH_EMBEDDED_REDIS")]
    pub embedded_redis: bool,
    /// Prefix of every cache key.
    #[arg(long, env = "PREFETCH_CACHE_PREFIX", default_value = prefetch::DEFAULT_PREFIX)]
    pub cache_prefix: String,
    /// Safety-net TTL in seconds, refreshed on every sync write.
    #[arg(long, env = "PREFETCH_TTL_SECONDS", default_value_t = 3600,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub ttl_seconds: u64,
    /// Simulated read latency of the mock primary, in milliseconds (only
    /// prefetches pay it; reads never touch the primary).
    #[arg(long, env = "PREFETCH_PRIMARY_LATENCY_MS", default_value_t = 80)]
    pub primary_latency_ms: u64,
    /// The source of truth: `mock` (the embedded demo table), `postgres` (a
    /// private PostgreSQL started for this run), a `postgres://` URL, or
    /// `stream:<key>`: a Redis stream written by Debezium Server's Redis
    /// sink or RDI's collector (for example
    /// `stream:data:shop.public.categories`), read-only.
    #[arg(long, env = "PREFETCH_PRIMARY", default_value = "mock")]
    pub primary: String,
    /// The PostgreSQL table to mirror (`table` or `schema.table`); created
    /// as the demo's categories table, with its five rows, when missing.
    #[arg(long, env = "PREFETCH_PG_TABLE", default_value = "categories")]
    pub pg_table: String,
    /// A tables file (TOML): the tables to hold and how their rows become
    /// keys (key template, hash or JSON, columns, names, row filter, TTL);
    /// see docs/tables.md. Needs a PostgreSQL primary or a stream; replaces
    /// `--pg-table`, and the key templates' prefixes replace
    /// `--cache-prefix`. Read again on SIGHUP.
    #[arg(long = "config", env = "PREFETCH_CONFIG", value_name = "FILE")]
    pub tables_file: Option<String>,
    /// A SQL file the private PostgreSQL (`--primary postgres`) runs once
    /// before the snapshot: the schema and rows of a tables file's example.
    #[arg(long, env = "PREFETCH_PG_INIT", value_name = "FILE.sql")]
    pub pg_init: Option<String>,
    /// The replication slot (default `prefetch_<database>_<schema>_<table>`).
    #[arg(long, env = "PREFETCH_PG_SLOT")]
    pub pg_slot: Option<String>,
    /// The publication (default `prefetch_<schema>_<table>`).
    #[arg(long, env = "PREFETCH_PG_PUBLICATION")]
    pub pg_publication: Option<String>,
    /// The Redis holding the `--primary stream:<key>` stream (default: the
    /// cache's own Redis).
    #[arg(long, env = "PREFETCH_STREAM_REDIS_URL")]
    pub stream_redis_url: Option<String>,
    /// Name records by these row columns (comma-separated) instead of the
    /// change events' key (`--primary stream:<key>` only).
    #[arg(long, env = "PREFETCH_STREAM_ID_COLUMNS", value_delimiter = ',')]
    pub stream_id_columns: Vec<String>,
    /// Load a snapshot from the stream even when it lost entries to
    /// trimming or XDEL (records whose every entry is gone stay missing).
    #[arg(long, env = "PREFETCH_STREAM_ALLOW_TRIMMED")]
    pub stream_allow_trimmed: bool,
    /// Run as one replica of the pipeline with this name: the replicas share
    /// one primary and one Redis; one of them (the holder of a lease kept in
    /// Redis) publishes the primary's transactions into a change feed on
    /// Redis Streams, and every replica applies from it. Needs a primary
    /// every replica can reach (PostgreSQL or a stream), not the mock.
    #[arg(long, env = "PREFETCH_PIPELINE")]
    pub pipeline: Option<String>,
    /// This replica's name in the pipeline (unique per replica; keep it
    /// across restarts to pick up its own unfinished entries). Default:
    /// `<hostname>-<port>`, or `<hostname>-pid<pid>` on port 0.
    #[arg(long, env = "PREFETCH_REPLICA")]
    pub replica: Option<String>,
    /// Partition streams of the pipeline's change feed.
    #[arg(long, env = "PREFETCH_PIPELINE_PARTITIONS", default_value_t = 4,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    pub pipeline_partitions: u16,
    /// Reconcile the cache against the primary every this many seconds
    /// (report, and refresh the TTL of keys found correct); 0: only on
    /// demand (`POST /reconcile`).
    #[arg(long, env = "PREFETCH_RECONCILE_EVERY", default_value_t = 0)]
    pub reconcile_every: u64,
    /// When a lost key (the primary has the row, the key is gone: deleted
    /// by hand, expired, evicted) is written back from the primary:
    /// `always` (as soon as Redis reports it gone, or a read misses it),
    /// `on-read` (when a read misses it), `off` (at the next re-prefetch or
    /// reconciliation repair).
    #[arg(long, env = "PREFETCH_RESTORE_LOST", default_value = "always",
          value_parser = ["always", "on-read", "off"])]
    pub restore_lost: String,
    /// When a (re-)prefetch would take Redis past maxmemory less 10 %:
    /// `refuse` (nothing written) or `warn` (load anyway).
    #[arg(long, env = "PREFETCH_MEMORY_CHECK", default_value = "refuse",
          value_parser = ["refuse", "warn"])]
    pub memory_check: String,
    /// Enable `POST /fault` (fault injection) on a non-loopback address; on
    /// loopback it is always on.
    #[arg(long, env = "PREFETCH_FAULTS")]
    pub faults: bool,
    /// HTTP event loops: each a single-threaded runtime with its own Redis
    /// connection for reads, all accepting on the one listener. The engine
    /// (sync worker, live feed, source) runs on a runtime of its own.
    #[arg(long, env = "PREFETCH_HTTP_THREADS", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=256))]
    pub http_threads: u16,
    /// Seconds a client gets to send a request's head (on a kept-alive
    /// connection, counted from the previous answer) or its body. A head
    /// that takes longer closes the connection; a body that takes longer
    /// gets 408. Live streams (`/events`) are answers, not requests: they
    /// are not limited.
    #[arg(long, env = "PREFETCH_CLIENT_TIMEOUT_SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub client_timeout_secs: u64,
    /// Token required by the admin and mutation endpoints (`Authorization:
    /// Bearer <token>`, or a cookie set by opening `/?token=<token>`).
    /// Mandatory when --host is not a loopback address.
    #[arg(long, env = "PREFETCH_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Print the Redis ACL rule the other flags need (the commands and the
    /// keys they use, for `ACL SETUSER`) and exit.
    #[arg(long)]
    pub print_redis_acl: bool,
}

impl Config {
    /// The admin token to enforce, or why the configuration is unsafe: any
    /// address other than loopback needs one, so the admin operations are
    /// never open to the network by accident.
    pub fn admin_token(&self) -> Result<Option<String>, String> {
        match self.admin_token.as_deref().map(str::trim) {
            Some("") => Err("--admin-token must not be empty".into()),
            Some(token) => Ok(Some(token.to_owned())),
            None if self.host.is_loopback() => Ok(None),
            None => Err(format!(
                "listening on {} exposes the admin endpoints: give --admin-token (or PREFETCH_ADMIN_TOKEN)",
                self.host
            )),
        }
    }

    /// This replica's name in the pipeline.
    pub fn replica_name(&self) -> String {
        let host = std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
            .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty());
        match (&self.replica, host, self.port) {
            (Some(name), _, _) => name.clone(),
            (None, Some(host), 0) => format!("{host}-pid{}", std::process::id()),
            (None, Some(host), port) => format!("{host}-{port}"),
            // No host name: the process id keeps two hosts apart (a restart
            // then comes back under a new name; others claim what it left).
            (None, None, port) => format!("replica-pid{}-{port}", std::process::id()),
        }
    }

    /// Fills the settings that may carry a secret from `<VAR>_FILE`, when
    /// the variable `VAR` is not set and the flag was not given: the file's
    /// text, less a final newline (how container secrets are mounted).
    /// `REDIS_URL`, `REDIS_CLUSTER_URLS`, `PREFETCH_PRIMARY`,
    /// `PREFETCH_STREAM_REDIS_URL` and `PREFETCH_ADMIN_TOKEN` can be given
    /// so.
    pub fn with_secret_files(mut self) -> Result<Self, String> {
        let read = |var: &str| -> Result<Option<String>, String> {
            if std::env::var_os(var).is_some() {
                return Ok(None);
            }
            let file_var = format!("{var}_FILE");
            let Some(path) = std::env::var_os(&file_var) else {
                return Ok(None);
            };
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("{file_var} {}: {e}", path.to_string_lossy()))?;
            Ok(Some(text.trim_end_matches(['\n', '\r']).to_owned()))
        };
        if self.redis_url.is_none() {
            self.redis_url = read("REDIS_URL")?;
        }
        if self.redis_cluster.is_empty()
            && let Some(urls) = read("REDIS_CLUSTER_URLS")?
        {
            self.redis_cluster = urls.split(',').map(str::to_owned).collect();
        }
        if self.primary == "mock"
            && let Some(primary) = read("PREFETCH_PRIMARY")?
        {
            self.primary = primary;
        }
        if self.stream_redis_url.is_none() {
            self.stream_redis_url = read("PREFETCH_STREAM_REDIS_URL")?;
        }
        if self.admin_token.is_none() {
            self.admin_token = read("PREFETCH_ADMIN_TOKEN")?;
        }
        Ok(self)
    }

    /// The Redis URL to use, if one was given in any form.
    pub fn given_redis_url(&self) -> Option<String> {
        if let Some(url) = &self.redis_url {
            return Some(url.clone());
        }
        if self.redis_host.is_none() && self.redis_port.is_none() {
            return None;
        }
        let host = self.redis_host.as_deref().unwrap_or("127.0.0.1");
        let port = self.redis_port.unwrap_or(6379);
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_owned()
        };
        Some(format!("redis://{host}:{port}/"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_reference_demos() {
        let c = Config::try_parse_from(["server"]).unwrap();
        assert_eq!(c.host.to_string(), "127.0.0.1");
        assert_eq!(c.port, 8791);
        assert_eq!(c.cache_prefix, "cache:category:");
        assert_eq!(c.ttl_seconds, 3600);
        assert_eq!(c.primary_latency_ms, 80);
        assert_eq!(c.given_redis_url(), None);
    }

    #[test]
    fn redis_address_can_be_given_in_parts_or_as_a_url() {
        let c = Config::try_parse_from(["server", "--redis-port", "6390"]).unwrap();
        assert_eq!(
            c.given_redis_url().as_deref(),
            Some("redis://127.0.0.1:6390/")
        );
        let c =
            Config::try_parse_from(["server", "--redis-host", "::1", "--redis-port", "7"]).unwrap();
        assert_eq!(c.given_redis_url().as_deref(), Some("redis://[::1]:7/"));
        let c = Config::try_parse_from(["server", "--redis-url", "redis://x:1/2"]).unwrap();
        assert_eq!(c.given_redis_url().as_deref(), Some("redis://x:1/2"));
    }

    #[test]
    fn a_cluster_is_given_as_a_list_of_node_urls_and_excludes_a_single_node() {
        let c = Config::try_parse_from([
            "server",
            "--redis-cluster",
            "redis://127.0.0.1:7000,redis://127.0.0.1:7001",
        ])
        .unwrap();
        assert_eq!(c.redis_cluster.len(), 2);
        assert!(
            Config::try_parse_from([
                "server",
                "--redis-cluster",
                "redis://a:1",
                "--redis-url",
                "redis://b:2"
            ])
            .is_err()
        );
    }

    #[test]
    fn a_non_loopback_address_requires_an_admin_token() {
        let c = Config::try_parse_from(["server", "--host", "0.0.0.0"]).unwrap();
        assert!(c.admin_token().unwrap_err().contains("--admin-token"));
        let c = Config::try_parse_from(["server", "--host", "0.0.0.0", "--admin-token", "s3cret"])
            .unwrap();
        assert_eq!(c.admin_token().unwrap().as_deref(), Some("s3cret"));
        let c = Config::try_parse_from(["server", "--host", "::1"]).unwrap();
        assert_eq!(c.admin_token().unwrap(), None);
        let c = Config::try_parse_from(["server", "--admin-token", " "]).unwrap();
        assert!(c.admin_token().is_err());
    }

    #[test]
    fn a_zero_ttl_is_refused() {
        assert!(Config::try_parse_from(["server", "--ttl-seconds", "0"]).is_err());
    }
}
