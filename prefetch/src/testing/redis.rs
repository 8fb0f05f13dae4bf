//! [`TestRedis`]: one private `redis-server` on a free loopback port (or
//! the one `REDIS_URL` names).

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};

use crate::launcher::{RedisOptions, RedisServer};

/// A redis-server for one test (or `REDIS_URL`); killed on drop.
pub struct TestRedis {
    /// `redis://127.0.0.1:{port}/`.
    pub url: String,
    /// The port (0 under `REDIS_URL`).
    pub port: u16,
    server: Option<RedisServer>,
}

impl TestRedis {
    /// A throw-away server without persistence (or `REDIS_URL`).
    pub fn start() -> Self {
        if let Ok(url) = std::env::var("REDIS_URL") {
            return Self {
                url,
                port: 0,
                server: None,
            };
        }
        Self::spawn_own(false)
    }

    /// A server of this test's own, even under `REDIS_URL`. With
    /// `persistent`, every write is fsynced to an append-only file, so the
    /// data survives `kill -9` and `restart`.
    pub fn spawn_own(persistent: bool) -> Self {
        Self::spawn_with(persistent, &[])
    }

    /// Like [`spawn_own`](Self::spawn_own), with extra `redis-server`
    /// arguments (for example `--rename-command CONFIG ""` to play a
    /// managed Redis that refuses `CONFIG`).
    pub fn spawn_with(persistent: bool, extra: &[&str]) -> Self {
        Self::spawn_options(RedisOptions {
            persistent,
            args: extra.iter().map(|a| (*a).to_owned()).collect(),
            die_with_parent: true,
            env: Vec::new(),
        })
    }

    /// A server of this test's own, started with `options`.
    pub fn spawn_options(options: RedisOptions) -> Self {
        let server = RedisServer::start(options).expect("start redis-server (is it installed?)");
        Self {
            url: server.url(),
            port: server.port(),
            server: Some(server),
        }
    }

    /// The server's process id (to pause it with `SIGSTOP`), when this
    /// test started it.
    pub fn pid(&self) -> Option<u32> {
        self.server.as_ref().and_then(RedisServer::pid)
    }

    /// Whether this is a server of the test's own.
    pub fn owns_server(&self) -> bool {
        self.server.is_some()
    }

    /// SIGKILL the server (no shutdown, no save).
    pub fn kill(&mut self) {
        if let Some(server) = self.server.as_mut() {
            server.kill();
        }
    }

    /// Start it again on the same port (and, if persistent, the same data).
    pub fn restart(&mut self) {
        if let Some(server) = self.server.as_mut() {
            server
                .restart()
                .expect("redis-server comes back on its port");
        }
    }

    /// A client for it.
    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url.as_str()).expect("redis url")
    }

    /// A connection manager that reconnects quickly (for the drills).
    pub async fn manager(&self) -> ConnectionManager {
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(100))
            .set_connection_timeout(Some(Duration::from_millis(500)))
            .set_response_timeout(Some(Duration::from_secs(5)));
        self.client()
            .get_connection_manager_with_config(config)
            .await
            .expect("connect to test redis")
    }

    /// A [`crate::Redis`] on it (its [`manager`](Self::manager)).
    pub async fn redis(&self) -> crate::Redis {
        crate::Redis::Single(self.manager().await)
    }

    /// A multiplexed connection to it.
    ///
    /// Its response timeout is 10 s (redis-rs defaults to 500 ms, which a
    /// 100,000-record bulk load in one round trip can exceed).
    pub async fn conn(&self) -> MultiplexedConnection {
        let config =
            redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(10)));
        self.client()
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .expect("connect to test redis")
    }
}
