//! [`TestCluster`]: a local Redis Cluster of private `redis-server`s, each
//! with an explicit `--cluster-port` (port + 10000 overflows for high free
//! ports), joined by hand.

use std::time::Duration;

use redis::Cmd;

use crate::launcher::{RedisOptions, RedisServer};

/// One node of a [`TestCluster`].
pub struct ClusterMember {
    server: RedisServer,
    /// Its cluster bus port (given explicitly: the default, port + 10000,
    /// overflows for high free ports).
    pub bus_port: u16,
    /// Its node id.
    pub id: String,
    /// Whether it started as a primary.
    pub primary: bool,
}

impl ClusterMember {
    /// Its client port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// `redis://127.0.0.1:{port}/`.
    pub fn url(&self) -> String {
        self.server.url()
    }

    fn sync_conn(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .expect("node url")
            .get_connection_with_timeout(Duration::from_secs(2))
            .expect("connect to cluster node")
    }

    fn query<T: redis::FromRedisValue>(&self, cmd: &mut Cmd) -> redis::RedisResult<T> {
        cmd.query(&mut self.sync_conn())
    }
}

/// A local Redis Cluster on loopback, made of private redis-servers (killed
/// on drop): `primaries` primaries sharing the 16384 slots evenly, each
/// with `replicas` replicas.
///
/// Built by hand (`CLUSTER ADDSLOTSRANGE`, `MEET`, `REPLICATE`), which
/// takes well under a second where `redis-cli --cluster create` waits 3 s.
pub struct TestCluster {
    /// The nodes, primaries first (node `i` of the replicas follows
    /// primary `i % primaries`).
    pub members: Vec<ClusterMember>,
}

impl TestCluster {
    /// Starts and joins the cluster, and waits until every node sees it
    /// whole (and every replica is in sync with its primary).
    pub fn start(primaries: usize, replicas: usize) -> Self {
        Self::start_with(primaries, replicas, |_| Vec::new())
    }

    /// [`start`](Self::start), node `i` started with the extra
    /// `redis-server` arguments `extra(i)` (TLS ports and certificates, for
    /// example).
    pub fn start_with(
        primaries: usize,
        replicas: usize,
        extra: impl Fn(usize) -> Vec<String>,
    ) -> Self {
        assert!(primaries > 0);
        let total = primaries * (1 + replicas);
        let mut members = Vec::with_capacity(total);
        for i in 0..total {
            let bus_port = crate::launcher::free_port().expect("a free port");
            let server = RedisServer::start(RedisOptions {
                persistent: false,
                args: [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-port",
                    &bus_port.to_string(),
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "1500",
                    "--cluster-replica-validity-factor",
                    "0",
                ]
                .iter()
                .map(|a| (*a).to_owned())
                .chain(extra(i))
                .collect(),
                die_with_parent: true,
                env: Vec::new(),
            })
            .expect("start a cluster node (is redis-server installed?)");
            let mut member = ClusterMember {
                server,
                bus_port,
                id: String::new(),
                primary: i < primaries,
            };
            member.id = member
                .query(redis::cmd("CLUSTER").arg("MYID"))
                .expect("CLUSTER MYID");
            let epoch = u64::try_from(i + 1).expect("small");
            member
                .query::<()>(redis::cmd("CLUSTER").arg("SET-CONFIG-EPOCH").arg(epoch))
                .expect("CLUSTER SET-CONFIG-EPOCH");
            members.push(member);
        }
        let slots = usize::from(crate::SLOTS);
        for (i, m) in members.iter().take(primaries).enumerate() {
            let (from, to) = (i * slots / primaries, (i + 1) * slots / primaries - 1);
            m.query::<()>(redis::cmd("CLUSTER").arg("ADDSLOTSRANGE").arg(from).arg(to))
                .expect("CLUSTER ADDSLOTSRANGE");
        }
        let (first_port, first_bus) = (members[0].port(), members[0].bus_port);
        for m in &members[1..] {
            m.query::<()>(
                redis::cmd("CLUSTER")
                    .arg("MEET")
                    .arg("127.0.0.1")
                    .arg(first_port)
                    .arg(first_bus),
            )
            .expect("CLUSTER MEET");
        }
        let cluster = Self { members };
        cluster.wait(Duration::from_secs(20), |m| {
            let nodes: String = m.query(redis::cmd("CLUSTER").arg("NODES"))?;
            Ok(nodes.lines().count() == total && !nodes.contains("handshake"))
        });
        for (i, m) in cluster.members.iter().enumerate().skip(primaries) {
            let of = &cluster.members[i % primaries].id;
            m.query::<()>(redis::cmd("CLUSTER").arg("REPLICATE").arg(of))
                .expect("CLUSTER REPLICATE");
        }
        cluster.wait_healthy(Duration::from_secs(30));
        cluster
    }

    /// Waits until every live node reports `cluster_state:ok` with every
    /// slot served, and every live replica's link to its primary is up.
    pub fn wait_healthy(&self, timeout: Duration) {
        self.wait(timeout, |m| {
            let info: String = m.query(redis::cmd("CLUSTER").arg("INFO"))?;
            let ok = info.contains("cluster_state:ok") && info.contains("cluster_slots_ok:16384");
            let role: String = m.query(redis::cmd("INFO").arg("replication"))?;
            let linked = role.contains("role:master") || role.contains("master_link_status:up");
            Ok(ok && linked)
        });
    }

    fn wait(&self, timeout: Duration, ready: impl Fn(&ClusterMember) -> redis::RedisResult<bool>) {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let all = self
                .members
                .iter()
                .filter(|m| crate::launcher::ping(m.port(), Duration::from_millis(200)))
                .all(|m| ready(m).unwrap_or(false));
            if all {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the test cluster did not settle within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every node's URL (any of them is enough to connect).
    pub fn urls(&self) -> Vec<String> {
        self.members.iter().map(ClusterMember::url).collect()
    }

    /// A cluster client with short retry delays (for the drills).
    pub fn client(&self) -> redis::cluster::ClusterClient {
        redis::cluster::ClusterClient::builder(self.urls())
            .retries(20)
            .min_retry_wait(20)
            .max_retry_wait(500)
            .connection_timeout(Duration::from_millis(500))
            .response_timeout(Duration::from_secs(10))
            .build()
            .expect("cluster client")
    }

    /// A cluster connection.
    pub async fn conn(&self) -> redis::cluster_async::ClusterConnection {
        self.client()
            .get_async_connection()
            .await
            .expect("connect to the test cluster")
    }

    /// A [`crate::Redis`] on the cluster.
    pub async fn redis(&self) -> crate::Redis {
        crate::Redis::Cluster(self.conn().await)
    }

    /// SIGKILL node `i` (no shutdown, no save).
    pub fn kill(&mut self, i: usize) {
        self.members[i].server.kill();
    }

    /// Starts node `i` again after [`kill`](Self::kill), on its port and
    /// with its node id (its `nodes.conf`): it rejoins, as a replica when
    /// its slots failed over meanwhile, and syncs from its primary.
    pub fn restart(&mut self, i: usize) -> std::io::Result<()> {
        self.members[i].server.restart()
    }

    /// The process id of node `i`, while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].server.pid()
    }

    /// `CLUSTER KEYSLOT`, asked of node 0.
    pub fn keyslot(&self, key: &str) -> u16 {
        self.members[0]
            .query(redis::cmd("CLUSTER").arg("KEYSLOT").arg(key))
            .expect("CLUSTER KEYSLOT")
    }

    /// Which live primary serves `slot` now (by its client port).
    pub fn owner_port(&self, slot: u16) -> Option<u16> {
        self.members.iter().find_map(|m| {
            if !crate::launcher::ping(m.port(), Duration::from_millis(200)) {
                return None;
            }
            let nodes: String = m.query(redis::cmd("CLUSTER").arg("NODES")).ok()?;
            let me = nodes.lines().find(|l| l.contains("myself"))?;
            if !me.contains("master") {
                return None;
            }
            let serves = me.split(' ').skip(8).any(|r| match r.split_once('-') {
                Some((a, b)) => {
                    a.parse::<u16>().is_ok_and(|a| a <= slot)
                        && b.parse::<u16>().is_ok_and(|b| slot <= b)
                }
                None => r.parse::<u16>() == Ok(slot),
            });
            serves.then(|| m.port())
        })
    }
}
