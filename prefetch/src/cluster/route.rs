//! Work split by slot: on one node a batch stays whole (or in runs of a
//! chunk); on a cluster every command keeps to one slot, and the parts of
//! each primary go out together as a few large pipelines.

use std::collections::BTreeMap;

use futures::future::BoxFuture;
use redis::{Cmd, Pipeline, RedisResult, Value};

use super::{Connection, SlotMap};
use crate::keys::slot;

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
    let sends: Vec<BoxFuture<'static, NodeReply>> = node_batches(&map, &parts)
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
    retry_failed(conn, parts, &mut out, in_flight, retry).await?;
    Ok(out.into_iter().map(Option::unwrap_or_default).collect())
}

/// Per primary, the parts it serves, packed into pipelines of at most
/// [`NODE_PIPELINE`] commands: (node index, part indices).
fn node_batches<N>(map: &SlotMap<N>, parts: &[Part]) -> Vec<(usize, Vec<usize>)> {
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
    batches
}

/// Sends every part without a reply in `out` again, alone, by `retry`.
async fn retry_failed<C, F>(
    conn: &C,
    parts: Vec<Part>,
    out: &mut [Option<Vec<Value>>],
    in_flight: usize,
    retry: F,
) -> crate::Result<()>
where
    C: Connection,
    F: Fn(C, Part) -> BoxFuture<'static, crate::Result<Vec<Value>>>,
{
    use futures::{StreamExt, TryStreamExt};
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
    Ok(())
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
