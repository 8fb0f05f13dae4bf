//! The fault schedule, drawn from the seed: each step picks a fault, holds
//! it a moment, heals it, then measures how long a fresh change takes to
//! reach Redis (a probe row updated on PostgreSQL, read straight from
//! Redis).

use std::time::{Duration, Instant};

use crate::Error;
use crate::load::{Log, Op, Shared, TxLog, connect};
use crate::rng::Rng;
use crate::world::{PREFIX, Redis, TABLE, World, signal};

/// One fault as it happened.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FaultRecord {
    /// What.
    pub kind: String,
    /// Milliseconds since the run started, when it began.
    pub at_ms: u64,
    /// Milliseconds since the run started, when it was healed.
    pub healed_ms: u64,
    /// How long after healing a probe change took to reach Redis (None:
    /// not within the bound).
    pub converged_ms: Option<u64>,
}

const KINDS_SINGLE: &[&str] = &[
    "kill-server",
    "pause-server",
    "kill-redis-keep-data",
    "kill-redis-empty",
    "pause-redis",
    "kill-postgres",
    "pause-postgres",
    "latency-redis",
    "latency-postgres",
    "reset-redis",
    "reset-postgres",
    "cut-redis",
    "cut-postgres",
    "kill-server-during-redis-cut",
    "kill-server-during-redis-latency",
];
const KINDS_CLUSTER: &[&str] = &[
    "kill-server",
    "pause-server",
    "kill-cluster-primary",
    "pause-cluster-primary",
    "kill-postgres",
    "pause-postgres",
    "latency-postgres",
    "reset-postgres",
    "cut-postgres",
    "kill-server-during-primary-pause",
];

/// Runs faults until `until`, logging the probe's writes to `writes`.
pub async fn run(
    world: &mut World,
    rng: &mut Rng,
    shared: &Shared,
    writes: &Log,
    until: Instant,
) -> Result<Vec<FaultRecord>, Error> {
    let kinds = match world.redis {
        Redis::Single { .. } => KINDS_SINGLE,
        Redis::Cluster(_) => KINDS_CLUSTER,
    };
    let mut probe = Probe::new(world, shared).await?;
    let mut done = Vec::new();
    while Instant::now() < until {
        let kind = kinds[usize::try_from(rng.below(kinds.len() as u64)).unwrap_or(0)];
        let hold = Duration::from_millis(rng.between(500, 3000));
        let at_ms = shared.now_ms();
        inject(world, kind, hold, rng).await?;
        let healed_ms = shared.now_ms();
        let converged_ms = probe.converge(writes, Duration::from_secs(60)).await?;
        println!(
            "  fault {kind:<34} held {:>5} ms, converged {}",
            hold.as_millis(),
            converged_ms.map_or("NOT within 60 s".to_owned(), |ms| format!("in {ms} ms"))
        );
        done.push(FaultRecord {
            kind: kind.to_owned(),
            at_ms,
            healed_ms,
            converged_ms,
        });
        tokio::time::sleep(Duration::from_millis(rng.between(200, 1500))).await;
    }
    Ok(done)
}

/// Applies `kind` for `hold`, then heals it.
async fn inject(world: &mut World, kind: &str, hold: Duration, rng: &mut Rng) -> Result<(), Error> {
    let which = usize::try_from(rng.below(world.replicas.len() as u64)).unwrap_or(0);
    match kind {
        "kill-server" => {
            world.replicas[which].kill();
            tokio::time::sleep(hold).await;
            world.replicas[which].restart()?;
        }
        "kill-server-during-redis-cut" => {
            // Changes pile up in the servers while Redis is out of reach;
            // one server dies holding them.
            if let Redis::Single { proxy, .. } = &world.redis {
                proxy.cut(true);
                tokio::time::sleep(hold).await;
                world.replicas[which].kill();
                proxy.cut(false);
                tokio::time::sleep(Duration::from_millis(500)).await;
                world.replicas[which].restart()?;
            }
        }
        "kill-server-during-redis-latency" => {
            // Every round trip slowed: a server dies between two of them
            // (between taking changes and writing them, or writing them
            // and saying so).
            if let Redis::Single { proxy, .. } = &world.redis {
                proxy.set_delay(rng.between(100, 300));
                tokio::time::sleep(hold).await;
                world.replicas[which].kill();
                proxy.set_delay(0);
                world.replicas[which].restart()?;
            }
        }
        "kill-server-during-primary-pause" => {
            if let Redis::Cluster(cluster) = &world.redis
                && let Some(node) = primary_node(cluster, rng)
                && let Some(pid) = cluster.pid(node)
            {
                // Short of the failover timeout: the primary comes back.
                signal(pid, libc::SIGSTOP);
                tokio::time::sleep(hold.min(Duration::from_millis(1000))).await;
                world.replicas[which].kill();
                signal(pid, libc::SIGCONT);
                tokio::time::sleep(Duration::from_millis(500)).await;
                world.replicas[which].restart()?;
            }
        }
        "pause-server" => {
            let pid = world.replicas[which].pid();
            pause(pid, hold).await;
        }
        "kill-redis-keep-data" | "kill-redis-empty" => {
            if let Redis::Single { server, .. } = &mut world.redis {
                server.kill();
                tokio::time::sleep(hold).await;
                if kind == "kill-redis-empty" {
                    server.restart_empty()?;
                } else {
                    server.restart()?;
                }
            }
        }
        "pause-redis" => {
            if let Redis::Single { server, .. } = &world.redis {
                pause(server.pid(), hold).await;
            }
        }
        "kill-cluster-primary" | "pause-cluster-primary" => {
            if let Redis::Cluster(cluster) = &mut world.redis {
                let Some(node) = primary_node(cluster, rng) else {
                    return Ok(());
                };
                if kind == "pause-cluster-primary" {
                    pause(cluster.pid(node), hold).await;
                } else {
                    cluster.kill(node);
                    // Long enough for the replica to take over.
                    tokio::time::sleep(hold.max(Duration::from_millis(2500))).await;
                    cluster.restart(node)?;
                }
                let cluster = &*cluster;
                tokio::task::block_in_place(|| cluster.wait_healthy(Duration::from_secs(30)));
            }
        }
        "pause-postgres" => {
            // The postmaster and every backend (the walsenders too).
            let pids = process_tree(world.pg.pid());
            for pid in &pids {
                signal(*pid, libc::SIGSTOP);
            }
            tokio::time::sleep(hold).await;
            for pid in pids.iter().rev() {
                signal(*pid, libc::SIGCONT);
            }
        }
        "kill-postgres" => {
            tokio::task::block_in_place(|| world.pg.kill());
            tokio::time::sleep(hold).await;
            let pg = &mut world.pg;
            tokio::task::block_in_place(|| pg.restart())?;
        }
        _ => {
            let proxy = match (kind.ends_with("-redis"), &world.redis) {
                (true, Redis::Single { proxy, .. }) => proxy,
                _ => &world.pg_proxy,
            };
            if kind.starts_with("latency") {
                proxy.set_delay(rng.between(20, 200));
                tokio::time::sleep(hold).await;
                proxy.set_delay(0);
            } else if kind.starts_with("reset") {
                proxy.reset();
            } else {
                proxy.cut(true);
                tokio::time::sleep(hold).await;
                proxy.cut(false);
            }
        }
    }
    Ok(())
}

/// `root` and its children (from `/proc`), parents first.
fn process_tree(root: Option<u32>) -> Vec<u32> {
    let Some(root) = root else {
        return Vec::new();
    };
    let mut out = vec![root];
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // `pid (comm) state ppid …`: the command may hold spaces, not ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(root) {
            out.push(pid);
        }
    }
    out
}

/// `SIGSTOP`, `hold`, `SIGCONT`.
async fn pause(pid: Option<u32>, hold: Duration) {
    if let Some(pid) = pid {
        signal(pid, libc::SIGSTOP);
        tokio::time::sleep(hold).await;
        signal(pid, libc::SIGCONT);
    }
}

/// A node that is a primary now.
fn primary_node(cluster: &prefetch::testing::TestCluster, rng: &mut Rng) -> Option<usize> {
    let mut primaries = Vec::new();
    for (i, m) in cluster.members.iter().enumerate() {
        let Ok(client) = redis::Client::open(m.url()) else {
            continue;
        };
        let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_millis(500)) else {
            continue;
        };
        let role: redis::RedisResult<String> =
            redis::cmd("INFO").arg("replication").query(&mut conn);
        if role.is_ok_and(|r| r.contains("role:master")) {
            primaries.push(i);
        }
    }
    let n = u64::try_from(primaries.len()).ok()?;
    (n > 0).then(|| primaries[usize::try_from(rng.below(n)).unwrap_or(0)])
}

/// The probe row: updated on PostgreSQL, awaited in Redis.
struct Probe {
    url: String,
    redis: prefetch::RedisClient,
    shared: Shared,
    seq: u64,
}

impl Probe {
    async fn new(world: &World, shared: &Shared) -> Result<Self, Error> {
        Ok(Self {
            url: world.pg_url.clone(),
            redis: world.redis_client()?,
            shared: shared.clone(),
            seq: 0,
        })
    }

    /// Commits a new probe value and waits until Redis shows it; how long
    /// that took.
    async fn converge(&mut self, writes: &Log, within: Duration) -> Result<Option<u64>, Error> {
        let started = Instant::now();
        self.seq += 1;
        let v = format!("probe-{}", self.seq);
        // PostgreSQL may still be starting: try until it takes the write.
        let n: i64 = loop {
            let attempt = async {
                let c = connect(&self.url).await?;
                let row = c
                    .query_one(
                        &format!("UPDATE {TABLE} SET n = nextval('{TABLE}_n'), v = $1 WHERE id = 'probe' RETURNING n"),
                        &[&v],
                    )
                    .await?;
                Ok::<i64, Error>(row.get(0))
            };
            match attempt.await {
                Ok(n) => break n,
                Err(_) if started.elapsed() < within => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e),
            }
        };
        writes.write(&TxLog {
            writer: "probe".into(),
            status: "committed".into(),
            ops: vec![Op {
                id: "probe".into(),
                kind: 'u',
                n: Some(n),
                v: Some(v.clone()),
            }],
            lsn_after: None,
            at_ms: self.shared.now_ms(),
        });
        let key = format!("{PREFIX}probe");
        let mut conn = None;
        while started.elapsed() < within {
            if conn.is_none() {
                conn = self.redis.connect(Duration::from_secs(1)).await.ok();
            }
            if let Some(c) = conn.as_mut() {
                match redis::cmd("HGET")
                    .arg(&key)
                    .arg("v")
                    .query_async::<Option<String>>(c)
                    .await
                {
                    Ok(Some(seen)) if seen == v => {
                        let ms = started.elapsed().as_millis();
                        return Ok(Some(u64::try_from(ms).unwrap_or(u64::MAX)));
                    }
                    Ok(_) => {}
                    Err(_) => conn = None,
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(None)
    }
}
