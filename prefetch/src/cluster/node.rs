//! One primary of a Redis Cluster, and the cluster's slot map read from
//! `CLUSTER SLOTS`.

use std::future::Future;

use redis::aio::ConnectionLike;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

use super::{Connection, SlotMap};

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
