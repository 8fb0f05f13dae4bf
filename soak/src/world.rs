//! The system under test: PostgreSQL, Redis (one node, or a cluster of
//! three primaries with a replica each), fault proxies, and two server
//! replicas of one pipeline, each a real process that can be killed,
//! paused and restarted.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use prefetch::launcher::{RedisOptions, RedisServer};
use prefetch::testing::TestCluster;
use prefetch_pg::launcher::PostgresServer;

use crate::proxy::Proxy;
use crate::{Error, Topology};

/// The key prefix of the mirrored table.
pub const PREFIX: &str = "soak:";
/// The mirrored table.
pub const TABLE: &str = "items";

/// Redis, as the topology has it.
pub enum Redis {
    /// One node, persistent (every write fsynced), behind a proxy.
    Single { server: RedisServer, proxy: Proxy },
    /// Three primaries with a replica each (the servers reach the nodes
    /// directly: the slot map names their real addresses).
    Cluster(TestCluster),
}

/// One server replica.
pub struct Replica {
    /// Its name in the pipeline.
    pub name: String,
    /// Its HTTP port.
    pub port: u16,
    args: Vec<String>,
    bin: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    /// Paused with `SIGSTOP`.
    pub paused: bool,
}

impl Replica {
    fn start(&mut self) -> Result<(), Error> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(&self.bin)
            .args(&self.args)
            .env("RUST_LOG", "warn,server=info")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(|e| format!("run {}: {e}", self.bin.display()))?;
        self.child = Some(child);
        self.paused = false;
        Ok(())
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.paused = false;
    }

    /// Starts it again (after [`kill`](Self::kill)) with the same flags.
    pub fn restart(&mut self) -> Result<(), Error> {
        self.kill();
        self.start()
    }

    /// Whether it runs (not killed, not exited).
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `GET /stats` answers.
    pub async fn ready(&self) -> bool {
        let url = format!("http://127.0.0.1:{}/stats", self.port);
        matches!(reqwest::get(&url).await, Ok(r) if r.status().is_success())
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            signal(pid, libc::SIGCONT);
        }
        self.kill();
    }
}

/// Sends `sig` to `pid` (a process this run started).
pub fn signal(pid: u32, sig: i32) {
    if let Ok(pid) = i32::try_from(pid) {
        // SAFETY: kill(2) on a child this process started, with a valid signal.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

/// Everything, started.
pub struct World {
    /// PostgreSQL.
    pub pg: PostgresServer,
    /// The proxy between the servers and PostgreSQL.
    pub pg_proxy: Proxy,
    /// Redis.
    pub redis: Redis,
    /// The server replicas (two by default).
    pub replicas: Vec<Replica>,
    /// The database's URL (direct, as the writers and the checker use it).
    pub pg_url: String,
}

impl World {
    /// Starts PostgreSQL with the table, Redis, the proxies and the servers.
    pub async fn start(
        topology: Topology,
        replicas_wanted: usize,
        bin: &Path,
        dir: &Path,
    ) -> Result<Self, Error> {
        let pg = tokio::task::spawn_blocking(PostgresServer::start)
            .await
            .map_err(|e| e.to_string())??;
        let pg_url = pg.url("postgres");
        crate::load::create_table(&pg_url).await?;
        let pg_proxy = Proxy::start(pg.port()).await?;
        let redis = match topology {
            Topology::Single => {
                let server = RedisServer::start(RedisOptions {
                    persistent: true,
                    die_with_parent: true,
                    ..RedisOptions::default()
                })?;
                let proxy = Proxy::start(server.port()).await?;
                Redis::Single { server, proxy }
            }
            Topology::Cluster => Redis::Cluster(
                tokio::task::spawn_blocking(|| TestCluster::start(3, 1))
                    .await
                    .map_err(|e| e.to_string())?,
            ),
        };
        let redis_flags: Vec<String> = match &redis {
            Redis::Single { proxy, .. } => vec![
                "--redis-url".into(),
                format!("redis://127.0.0.1:{}/", proxy.port),
            ],
            Redis::Cluster(c) => vec![
                "--redis-cluster".into(),
                c.urls().join(","),
                "--redis-wait-replicas".into(),
                "1".into(),
            ],
        };
        let primary = format!("postgres://postgres@127.0.0.1:{}/postgres", pg_proxy.port);
        let mut replicas = Vec::new();
        for i in 1..=replicas_wanted.max(1) {
            let port = prefetch::launcher::free_port()?;
            let mut args = redis_flags.clone();
            args.extend(
                [
                    "--port",
                    &port.to_string(),
                    "--primary",
                    &primary,
                    "--pg-table",
                    TABLE,
                    "--cache-prefix",
                    PREFIX,
                    "--pipeline",
                    "soak",
                    "--replica",
                    &format!("r{i}"),
                    "--restore-lost",
                    "always",
                ]
                .iter()
                .map(|s| (*s).to_owned()),
            );
            let mut replica = Replica {
                name: format!("r{i}"),
                port,
                args,
                bin: bin.to_owned(),
                log: dir.join(format!("server-r{i}.log")),
                child: None,
                paused: false,
            };
            replica.start()?;
            replicas.push(replica);
        }
        let world = Self {
            pg,
            pg_proxy,
            redis,
            replicas,
            pg_url,
        };
        world.wait_ready(Duration::from_secs(120)).await?;
        Ok(world)
    }

    /// Waits until every replica answers.
    pub async fn wait_ready(&self, within: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + within;
        for r in &self.replicas {
            while !r.ready().await {
                if Instant::now() > deadline {
                    return Err(format!(
                        "replica {} not ready within {within:?} (see {})",
                        r.name,
                        r.log.display()
                    )
                    .into());
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Ok(())
    }

    /// A direct client of Redis (not through the proxy), for the readers
    /// that bypass the API and for the checker.
    pub fn redis_client(&self) -> Result<prefetch::RedisClient, Error> {
        Ok(match &self.redis {
            Redis::Single { server, .. } => {
                prefetch::RedisClient::Single(redis::Client::open(server.url())?)
            }
            Redis::Cluster(c) => prefetch::RedisClient::cluster(&c.urls())?,
        })
    }

    /// The URLs of Redis's primaries right now, for a full scan.
    pub fn redis_nodes(&self) -> Vec<String> {
        match &self.redis {
            Redis::Single { server, .. } => vec![server.url()],
            Redis::Cluster(c) => c.urls(),
        }
    }
}
