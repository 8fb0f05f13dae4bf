//! The embedded default: a private `redis-server` child on a free loopback
//! port, without persistence, stopped when the server stops (and by the
//! kernel if the server dies without stopping it).

use std::time::Duration;

use prefetch::launcher::{RedisOptions, RedisServer};

use crate::error::Error;

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
