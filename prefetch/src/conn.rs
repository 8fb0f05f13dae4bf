//! The connections a cache runs on: one Redis node, or a Redis Cluster.
//!
//! Every operation of the cache goes through [`Connection`]. On one node a
//! command may name any keys and a pipeline may mix them; on a cluster every
//! command and pipeline must keep to one hash slot, and node-local commands
//! (`SCAN`, `INFO`) must be sent to each primary in turn. The cache groups
//! its work by slot only when [`Connection::is_cluster`] says so, so a
//! single node keeps its one-call batches.

use std::collections::BTreeMap;
use std::future::Future;

use futures::future::BoxFuture;
use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

use crate::keys::slot;

/// A Redis connection a [`PrefetchCache`](crate::PrefetchCache) can use.
///
/// Implemented for the single-node connections of redis-rs
/// ([`ConnectionManager`], [`MultiplexedConnection`]), for its cluster
/// connection ([`ClusterConnection`]) and for [`Redis`], which is either.
pub trait Connection: ConnectionLike + Clone + Send + Sync + 'static {
    /// A connection to one primary, for commands that only see one node's
    /// keys.
    type Node: ConnectionLike + Clone + Send + Sync + 'static;

    /// Whether keys are spread over the slots of a Redis Cluster: then a
    /// command or pipeline must keep to one slot.
    fn is_cluster(&self) -> bool;

    /// Every primary (the connection itself on a single node).
    fn primaries(&self) -> impl Future<Output = RedisResult<Vec<Self::Node>>> + Send;

    /// Every primary and the slots it serves (everything on a single node).
    fn slot_map(&self) -> impl Future<Output = RedisResult<SlotMap<Self::Node>>> + Send;
}

/// Which primary serves each hash slot.
#[derive(Clone, Debug)]
pub struct SlotMap<N> {
    /// The primaries.
    pub nodes: Vec<N>,
    /// Per slot, an index into `nodes` (`None` when no node serves it).
    owner: Vec<Option<u16>>,
}

impl<N> SlotMap<N> {
    /// One node serving every slot.
    pub fn single(node: N) -> Self {
        Self {
            nodes: vec![node],
            owner: vec![Some(0); usize::from(crate::keys::SLOTS)],
        }
    }

    /// The same map over other handles to the same nodes.
    pub fn map_nodes<M>(self, f: impl FnMut(N) -> M) -> SlotMap<M> {
        SlotMap {
            nodes: self.nodes.into_iter().map(f).collect(),
            owner: self.owner,
        }
    }

    /// The index in [`nodes`](Self::nodes) of the primary serving `slot`.
    pub fn owner(&self, slot: u16) -> Option<usize> {
        self.owner
            .get(usize::from(slot))
            .copied()
            .flatten()
            .map(usize::from)
    }
}

/// [`Connection`] for a single-node connection: it is its own one primary.
macro_rules! single_node_connection {
    ($ty:ty) => {
        impl Connection for $ty {
            type Node = Self;

            fn is_cluster(&self) -> bool {
                false
            }

            fn primaries(&self) -> impl Future<Output = RedisResult<Vec<Self>>> + Send {
                std::future::ready(Ok(vec![self.clone()]))
            }

            fn slot_map(&self) -> impl Future<Output = RedisResult<SlotMap<Self>>> + Send {
                std::future::ready(Ok(SlotMap::single(self.clone())))
            }
        }
    };
}

single_node_connection!(MultiplexedConnection);
single_node_connection!(ConnectionManager);

/// One primary of a Redis Cluster: every command sent here goes to it.
#[derive(Clone)]
pub struct ClusterNode {
    conn: ClusterConnection,
    host: String,
    port: u16,
}

impl std::fmt::Debug for ClusterNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClusterNode({}:{})", self.host, self.port)
    }
}

impl ClusterNode {
    /// The node's address.
    pub fn address(&self) -> (&str, u16) {
        (&self.host, self.port)
    }

    fn route(&self) -> SingleNodeRoutingInfo {
        SingleNodeRoutingInfo::ByAddress {
            host: self.host.clone(),
            port: self.port,
        }
    }
}

impl ConnectionLike for ClusterNode {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let routing = RoutingInfo::SingleNode(self.route());
        Box::pin(self.conn.route_command(cmd.clone(), routing))
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let route = self.route();
        Box::pin(
            self.conn
                .route_pipeline(pipeline.clone(), offset, count, route),
        )
    }

    fn get_db(&self) -> i64 {
        0
    }
}

impl Connection for ClusterConnection {
    type Node = ClusterNode;

    fn is_cluster(&self) -> bool {
        true
    }

    fn primaries(&self) -> impl Future<Output = RedisResult<Vec<ClusterNode>>> + Send {
        let map = self.slot_map();
        async move { Ok(map.await?.nodes) }
    }

    fn slot_map(&self) -> impl Future<Output = RedisResult<SlotMap<ClusterNode>>> + Send {
        let mut conn = self.clone();
        async move {
            let slots: Value = redis::cmd("CLUSTER")
                .arg("SLOTS")
                .query_async(&mut conn)
                .await?;
            let (addresses, ranges) = primary_addresses(&slots);
            let mut owner = vec![None; usize::from(crate::keys::SLOTS)];
            for (from, to, node) in ranges {
                for s in from..=to.min(crate::keys::SLOTS - 1) {
                    owner[usize::from(s)] = u16::try_from(node).ok();
                }
            }
            Ok(SlotMap {
                nodes: addresses
                    .into_iter()
                    .map(|(host, port)| ClusterNode {
                        conn: conn.clone(),
                        host,
                        port,
                    })
                    .collect(),
                owner,
            })
        }
    }
}

/// Slot ranges with their primary's index.
type Ranges = Vec<(u16, u16, usize)>;

/// The distinct primary addresses in a `CLUSTER SLOTS` reply, and each
/// slot range with the index of its primary among them.
fn primary_addresses(slots: &Value) -> (Vec<(String, u16)>, Ranges) {
    let mut out: Vec<(String, u16)> = Vec::new();
    let mut ranges = Vec::new();
    let Value::Array(entries) = slots else {
        return (out, ranges);
    };
    for range in entries {
        let Value::Array(parts) = range else { continue };
        let (Some(Value::Int(from)), Some(Value::Int(to)), Some(Value::Array(node))) =
            (parts.first(), parts.get(1), parts.get(2))
        else {
            continue;
        };
        let host = match node.first() {
            Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
            Some(Value::SimpleString(s)) => s.clone(),
            _ => continue,
        };
        let Some(Value::Int(port)) = node.get(1) else {
            continue;
        };
        let Ok(port) = u16::try_from(*port) else {
            continue;
        };
        let index = match out.iter().position(|(h, p)| *h == host && *p == port) {
            Some(i) => i,
            None => {
                out.push((host, port));
                out.len() - 1
            }
        };
        if let (Ok(from), Ok(to)) = (u16::try_from(*from), u16::try_from(*to)) {
            ranges.push((from, to, index));
        }
    }
    (out, ranges)
}

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
        let client = redis::cluster::ClusterClient::builder(urls.iter().map(AsRef::as_ref))
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

/// Commands that keep to one slot (on a cluster), sent together.
pub(crate) struct Part {
    /// Their slot (`None` on one node).
    pub(crate) slot: Option<u16>,
    /// The commands; each one's reply is returned.
    pub(crate) cmds: Vec<Cmd>,
}

/// The parts one node pipeline carried, and its replies.
type NodeReply = (Vec<usize>, RedisResult<Vec<Value>>);
/// A part's index and its replies.
type PartReply = (usize, Vec<Value>);

/// How many commands one pipeline to a cluster node carries at most.
const NODE_PIPELINE: usize = 2048;

/// The replies to each part, in order.
pub(crate) type Replies = Vec<Vec<Value>>;

/// Sends every part and returns each one's replies.
///
/// On one node each part goes out as one pipeline. On a cluster the parts
/// of each primary go out together, as a few large pipelines to that node
/// (routing every part on its own costs about 50 µs each in redis-rs,
/// which a load over 16,384 slots cannot afford); a part some of whose
/// commands failed there (its slot moved, the node failed over, a script
/// error) is then sent again alone by `retry`, which routes it by its slot
/// and follows `MOVED`. Every command here may be sent twice.
pub(crate) async fn run_parts<C, F>(
    conn: &C,
    parts: Vec<Part>,
    in_flight: usize,
    retry: F,
) -> crate::Result<Replies>
where
    C: Connection,
    F: Fn(C, Part) -> BoxFuture<'static, crate::Result<Vec<Value>>>,
{
    use futures::{StreamExt, TryStreamExt};
    if !conn.is_cluster() {
        let calls: Vec<BoxFuture<'static, crate::Result<Vec<Value>>>> = parts
            .into_iter()
            .map(|part| retry(conn.clone(), part))
            .collect();
        return futures::stream::iter(calls)
            .buffered(in_flight.max(1))
            .try_collect()
            .await;
    }
    let map = conn.slot_map().await?;
    let mut out: Vec<Option<Vec<Value>>> = vec![None; parts.len()];
    // Per node, the parts it serves, packed into pipelines.
    let mut batches: Vec<(usize, Vec<usize>)> = Vec::new();
    let mut per_node: Vec<(Vec<usize>, usize)> = vec![(Vec::new(), 0); map.nodes.len()];
    for (i, part) in parts.iter().enumerate() {
        let Some(node) = part.slot.and_then(|s| map.owner(s)) else {
            continue;
        };
        let (batch, size) = &mut per_node[node];
        if *size + part.cmds.len() > NODE_PIPELINE && !batch.is_empty() {
            batches.push((node, std::mem::take(batch)));
            *size = 0;
        }
        batch.push(i);
        *size += part.cmds.len();
    }
    for (node, (batch, _)) in per_node.into_iter().enumerate() {
        if !batch.is_empty() {
            batches.push((node, batch));
        }
    }
    let sends: Vec<BoxFuture<'static, NodeReply>> = batches
        .into_iter()
        .map(|(node, batch)| {
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for &i in &batch {
                for cmd in &parts[i].cmds {
                    pipe.add_command(cmd.clone());
                }
            }
            let mut node = map.nodes[node].clone();
            Box::pin(async move {
                let reply = pipe.query_async::<Vec<Value>>(&mut node).await;
                (batch, reply)
            }) as BoxFuture<'static, _>
        })
        .collect();
    for (batch, reply) in futures::future::join_all(sends).await {
        let Ok(values) = reply else { continue };
        let mut values = values.into_iter();
        for i in batch {
            let replies: Vec<Value> = values.by_ref().take(parts[i].cmds.len()).collect();
            let failed = replies.len() < parts[i].cmds.len()
                || replies.iter().any(|v| matches!(v, Value::ServerError(_)));
            if !failed {
                out[i] = Some(replies);
            }
        }
    }
    let mut again: Vec<BoxFuture<'static, crate::Result<PartReply>>> = Vec::new();
    for (i, part) in parts.into_iter().enumerate() {
        if out[i].is_none() {
            let call = retry(conn.clone(), part);
            again.push(Box::pin(async move { Ok((i, call.await?)) }));
        }
    }
    if !again.is_empty() {
        tracing::debug!(parts = again.len(), "sending parts again, routed by slot");
        let done: Vec<(usize, Vec<Value>)> = futures::stream::iter(again)
            .buffer_unordered(in_flight.max(1))
            .try_collect()
            .await?;
        for (i, replies) in done {
            out[i] = Some(replies);
        }
    }
    Ok(out.into_iter().map(Option::unwrap_or_default).collect())
}

/// The default `retry` of [`run_parts`]: the part as one pipeline, routed
/// by its slot.
pub(crate) fn as_pipeline<C: Connection>(
    mut conn: C,
    part: Part,
) -> BoxFuture<'static, crate::Result<Vec<Value>>> {
    Box::pin(async move {
        let mut pipe = redis::pipe();
        for cmd in part.cmds {
            pipe.add_command(cmd);
        }
        Ok(pipe.query_async::<Vec<Value>>(&mut conn).await?)
    })
}

/// Work split so that each part may go out as one command or pipeline:
/// on one node, runs of at most `chunk` items (all of them with `None`);
/// on a cluster, the items of each slot, in runs of at most `chunk`.
/// Each part lists indices into `keys`, in their order, and its slot.
pub(crate) fn split<C: Connection>(
    conn: &C,
    keys: &[String],
    chunk: Option<usize>,
) -> Vec<(Option<u16>, Vec<usize>)> {
    let chunk = chunk.unwrap_or(usize::MAX).max(1);
    if !conn.is_cluster() {
        let all: Vec<usize> = (0..keys.len()).collect();
        return all.chunks(chunk).map(|c| (None, c.to_vec())).collect();
    }
    let mut by_slot: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
    for (i, key) in keys.iter().enumerate() {
        by_slot.entry(slot(key)).or_default().push(i);
    }
    by_slot
        .into_iter()
        .flat_map(|(s, ids)| {
            ids.chunks(chunk)
                .map(|c| (Some(s), c.to_vec()))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Pipelines `build(key)` for every key, `replies` replies per key, and
/// returns every reply in key order: one pipeline on a single node, one per
/// slot (packed per primary) on a cluster.
pub(crate) async fn pipelined<C, F>(
    conn: &C,
    keys: &[String],
    replies: usize,
    build: F,
) -> crate::Result<Vec<Value>>
where
    C: Connection,
    F: Fn(&mut Pipeline, &str),
{
    let split = split(conn, keys, None);
    let parts: Vec<Part> = split
        .iter()
        .map(|(slot, ids)| {
            let mut pipe = redis::pipe();
            for &i in ids {
                build(&mut pipe, &keys[i]);
            }
            Part {
                slot: *slot,
                cmds: pipe.cmd_iter().cloned().collect(),
            }
        })
        .collect();
    let done = run_parts(conn, parts, 16, as_pipeline).await?;
    let mut out = vec![Value::Nil; keys.len() * replies];
    for ((_, ids), values) in split.iter().zip(done) {
        for (n, &i) in ids.iter().enumerate() {
            for r in 0..replies {
                if let Some(v) = values.get(n * replies + r) {
                    out[i * replies + r] = v.clone();
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primaries_are_read_from_cluster_slots() {
        let node = |port: i64| {
            Value::Array(vec![
                Value::BulkString(b"127.0.0.1".to_vec()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node(7000),
                node(7003),
            ]),
            Value::Array(vec![Value::Int(5461), Value::Int(10922), node(7001)]),
            Value::Array(vec![Value::Int(10923), Value::Int(16383), node(7000)]),
        ]);
        let (nodes, ranges) = primary_addresses(&reply);
        assert_eq!(
            nodes,
            vec![
                ("127.0.0.1".to_owned(), 7000),
                ("127.0.0.1".to_owned(), 7001)
            ]
        );
        assert_eq!(
            ranges,
            vec![(0, 5460, 0), (5461, 10922, 1), (10923, 16383, 0)]
        );
    }
}
