//! Which Redis, and the connections to it.
//!
//! The one given (a node or a cluster), else the one on localhost:6379,
//! else the embedded default: a private `redis-server` child on a free loopback port, without
//! persistence, stopped when the server stops (and by the kernel if the
//! server dies without stopping it).

use std::time::Duration;

use prefetch::launcher::{RedisOptions, RedisServer};
use prefetch::{Redis, RedisClient};

use crate::error::Error;
use crate::settings::{RedisTarget, RedisTls};

/// How long a Redis reply may take before the command fails.
pub const REDIS_TIMEOUT: Duration = Duration::from_secs(5);

/// The Redis the cache lives in.
#[derive(Debug)]
pub struct RedisSetup {
    /// Its URL (a comma-separated list for a cluster).
    pub url: String,
    /// Where new connections go.
    pub client: RedisClient,
    /// Reads of the engine (the HTTP loops get their own).
    pub reads: Redis,
    /// Writes: a read never queues behind a re-prefetch's batches.
    pub writes: Redis,
    /// The private redis-server, when one was started.
    pub embedded: Option<EmbeddedRedis>,
    /// The certificates of its `rediss://` connections.
    pub tls: Option<RedisTls>,
}

impl RedisSetup {
    /// Finds (or starts) the Redis `target` names and connects to it.
    pub async fn connect(target: &RedisTarget, tls: Option<&RedisTls>) -> Result<Self, Error> {
        let (url, embedded) = match target {
            RedisTarget::Cluster(urls) => (urls.join(","), None),
            RedisTarget::Url(url) => (url.clone(), None),
            RedisTarget::Default { forced: false } if ping(6379).await => {
                ("redis://127.0.0.1:6379/".to_owned(), None)
            }
            RedisTarget::Default { forced } => {
                let embedded = EmbeddedRedis::start().await?;
                let why = if *forced {
                    "--embedded-redis"
                } else {
                    "No Redis given and none on localhost:6379"
                };
                tracing::info!(
                    reason = why,
                    url = %embedded.url(),
                    "started a private redis-server (no persistence; stopped on exit)"
                );
                (embedded.url(), Some(embedded))
            }
        };
        let unreachable = |source| Error::RedisUnreachable {
            url: crate::redacted(&url),
            source,
        };
        let client = match target {
            RedisTarget::Cluster(urls) => {
                let mut builder =
                    redis::cluster::ClusterClient::builder(urls.iter().map(String::as_str));
                if let Some(tls) = tls {
                    builder = builder.certs(tls.certificates());
                }
                RedisClient::cluster_from(builder).map_err(unreachable)?
            }
            _ => RedisClient::Single(RedisTls::client(tls, &url).map_err(unreachable)?),
        };
        let reads = client.connect(REDIS_TIMEOUT).await.map_err(unreachable)?;
        let writes = client.connect(REDIS_TIMEOUT).await.map_err(unreachable)?;
        Ok(Self {
            url,
            client,
            reads,
            writes,
            embedded,
            tls: tls.cloned(),
        })
    }

    /// Another connection, for a task of its own.
    pub async fn connection(&self) -> Result<Redis, Error> {
        self.client
            .connect(REDIS_TIMEOUT)
            .await
            .map_err(|source| Error::RedisUnreachable {
                url: crate::redacted(&self.url),
                source,
            })
    }
}

/// A running private redis-server.
#[derive(Debug)]
pub struct EmbeddedRedis {
    server: RedisServer,
}

impl EmbeddedRedis {
    /// Starts `redis-server` (or `$REDIS_SERVER`) on a free loopback port and
    /// waits until it answers.
    pub async fn start() -> Result<Self, Error> {
        let options = RedisOptions {
            die_with_parent: true,
            ..RedisOptions::default()
        };
        let server = tokio::task::spawn_blocking(move || RedisServer::start(options))
            .await
            .map_err(|e| Error::Embedded(std::io::Error::other(e)))?
            .map_err(Error::Embedded)?;
        Ok(Self { server })
    }

    /// Its URL.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Stops the child and removes its directory.
    pub async fn stop(self) {
        // Killing and reaping a child is quick, but it is a blocking wait.
        let _ = tokio::task::spawn_blocking(move || drop(self.server)).await;
    }
}

/// True when a Redis answers `PING` on 127.0.0.1:`port` within 300 ms.
pub async fn ping(port: u16) -> bool {
    tokio::task::spawn_blocking(move || prefetch::launcher::ping(port, Duration::from_millis(300)))
        .await
        .unwrap_or(false)
}
