//! The connections a cache runs on: one Redis node, or a Redis Cluster.
//!
//! Every operation of the cache goes through [`Connection`]. On one node a
//! command may name any keys and a pipeline may mix them; on a cluster every
//! command and pipeline must keep to one hash slot, and node-local commands
//! (`SCAN`, `INFO`) must be sent to each primary in turn. The cache groups
//! its work by slot only when [`Connection::is_cluster`] says so, so a
//! single node keeps its one-call batches.
//!
//! | module | what |
//! |---|---|
//! | `node` | one primary of a cluster ([`ClusterNode`]) and the cluster's slot map |
//! | `redis` | [`Redis`] and [`RedisClient`]: one node or a cluster, chosen at run time |
//! | `route` | work split by slot and sent as per-primary pipelines |

mod node;
mod redis;
mod route;

use std::future::Future;

use ::redis::RedisResult;
use ::redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};

pub use node::ClusterNode;
pub use redis::{Redis, RedisClient, RedisNode};
pub(crate) use route::{Part, as_pipeline, pipelined, run_parts, split};

/// A Redis connection a [`PrefetchCache`](crate::PrefetchCache) can use.
///
/// Implemented for the single-node connections of redis-rs
/// ([`ConnectionManager`], [`MultiplexedConnection`]), for its cluster
/// connection ([`ClusterConnection`](::redis::cluster_async::ClusterConnection)) and for [`Redis`], which is either.
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
