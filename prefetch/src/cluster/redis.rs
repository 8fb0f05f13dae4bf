//! [`Redis`]: a connection to one node or to a cluster, picked at run time,
//! and [`RedisClient`], where it connects.

use std::future::Future;

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

use super::{ClusterNode, Connection, SlotMap};

/// A connection to one Redis node or to a Redis Cluster, chosen at run
/// time (the server's `--redis-url` or `--redis-cluster`).
#[derive(Clone)]
pub enum Redis {
    /// One node, reconnecting by itself.
    Single(ConnectionManager),
    /// A Redis Cluster: one multiplexed connection per node, following
    /// `MOVED` and `ASK` and the slot map's changes.
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Single(_) => "Redis::Single",
            Self::Cluster(_) => "Redis::Cluster",
        })
    }
}

impl From<ConnectionManager> for Redis {
    fn from(conn: ConnectionManager) -> Self {
        Self::Single(conn)
    }
}

impl From<ClusterConnection> for Redis {
    fn from(conn: ClusterConnection) -> Self {
        Self::Cluster(conn)
    }
}

/// `ConnectionLike` for an enum of two connections, by delegation.
macro_rules! delegate_connection_like {
    ($ty:ident) => {
        impl ConnectionLike for $ty {
            fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
                match self {
                    Self::Single(c) => c.req_packed_command(cmd),
                    Self::Cluster(c) => c.req_packed_command(cmd),
                }
            }

            fn req_packed_commands<'a>(
                &'a mut self,
                pipeline: &'a Pipeline,
                offset: usize,
                count: usize,
            ) -> RedisFuture<'a, Vec<Value>> {
                match self {
                    Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
                    Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
                }
            }

            fn get_db(&self) -> i64 {
                match self {
                    Self::Single(c) => c.get_db(),
                    Self::Cluster(c) => c.get_db(),
                }
            }
        }
    };
}

delegate_connection_like!(Redis);

/// Where a [`Redis`] connects: one node, or a Redis Cluster given by some
/// of its nodes.
#[derive(Clone)]
#[allow(clippy::large_enum_variant)] // one per process, cloned rarely
pub enum RedisClient {
    /// One node.
    Single(redis::Client),
    /// A Redis Cluster.
    Cluster(redis::cluster::ClusterClient),
}

impl std::fmt::Debug for RedisClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Single(_) => "RedisClient::Single",
            Self::Cluster(_) => "RedisClient::Cluster",
        })
    }
}

impl From<redis::Client> for RedisClient {
    fn from(client: redis::Client) -> Self {
        Self::Single(client)
    }
}

impl RedisClient {
    /// A client for the cluster some of whose nodes are at `urls` (the
    /// others are discovered), retrying a command through a failover for
    /// a few seconds.
    pub fn cluster<S: AsRef<str>>(urls: &[S]) -> RedisResult<Self> {
        Self::cluster_from(redis::cluster::ClusterClient::builder(
            urls.iter().map(AsRef::as_ref),
        ))
    }

    /// [`cluster`](Self::cluster) from a builder the caller set up (TLS
    /// certificates, credentials), with the same retries and timeouts.
    pub fn cluster_from(builder: redis::cluster::ClusterClientBuilder) -> RedisResult<Self> {
        let client = builder
            .retries(8)
            .min_retry_wait(50)
            .max_retry_wait(1000)
            .connection_timeout(std::time::Duration::from_secs(1))
            .response_timeout(std::time::Duration::from_secs(5))
            .build()?;
        Ok(Self::Cluster(client))
    }

    /// A new connection whose replies may take up to `response_timeout`
    /// (a blocking read needs its block time and more). On one node it
    /// reconnects by itself; on a cluster it follows the slot map.
    pub async fn connect(&self, response_timeout: std::time::Duration) -> RedisResult<Redis> {
        Ok(match self {
            Self::Single(client) => Redis::Single(
                client
                    .get_connection_manager_with_config(
                        redis::aio::ConnectionManagerConfig::new()
                            .set_number_of_retries(2)
                            .set_min_delay(std::time::Duration::from_millis(50))
                            .set_max_delay(std::time::Duration::from_millis(500))
                            .set_connection_timeout(Some(std::time::Duration::from_secs(1)))
                            .set_response_timeout(Some(response_timeout)),
                    )
                    .await?,
            ),
            Self::Cluster(client) => Redis::Cluster(
                client
                    .get_async_connection_with_config(
                        redis::cluster::ClusterConfig::new()
                            .set_connection_timeout(std::time::Duration::from_secs(1))
                            .set_response_timeout(response_timeout),
                    )
                    .await?,
            ),
        })
    }
}

/// One primary behind a [`Redis`].
#[derive(Clone, Debug)]
pub enum RedisNode {
    /// The single node.
    Single(ConnectionManager),
    /// One primary of the cluster.
    Cluster(ClusterNode),
}

delegate_connection_like!(RedisNode);

impl Connection for Redis {
    type Node = RedisNode;

    fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    fn primaries(&self) -> impl Future<Output = RedisResult<Vec<RedisNode>>> + Send {
        let map = self.slot_map();
        async move { Ok(map.await?.nodes) }
    }

    fn slot_map(&self) -> impl Future<Output = RedisResult<SlotMap<RedisNode>>> + Send {
        let this = self.clone();
        async move {
            Ok(match this {
                Self::Single(c) => SlotMap::single(RedisNode::Single(c)),
                Self::Cluster(c) => c.slot_map().await?.map_nodes(RedisNode::Cluster),
            })
        }
    }
}
