//! The tail: every transaction published, whichever replica applies it,
//! announced on this replica's event bus (so every dashboard stays live).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use prefetch::{Error, Event, EventBus, Redis, Result};
use prefetch_cdc::DecodeOptions;
use redis::{FromRedisValue, Value};

use crate::config::*;
use crate::wire::decode_tx;

/// Announces every published transaction on `events` (no group: every
/// replica sees every entry).
pub(crate) async fn tail(
    mut conn: Redis,
    streams: Vec<String>,
    block: Duration,
    debezium: DecodeOptions,
    events: EventBus,
) {
    // Start after each stream's newest entry. Not `$`: a blocked XREAD
    // answers for the stream that woke it only, and `$` on the next call
    // would skip what the others received meanwhile.
    let mut from: Vec<String> = Vec::with_capacity(streams.len());
    for s in &streams {
        loop {
            match last_id(&mut conn, s).await {
                Ok(id) => {
                    from.push(id);
                    break;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "feed tail: will retry");
                    tokio::time::sleep(block).await;
                }
            }
        }
    }
    loop {
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(1000)
            .arg("BLOCK")
            .arg(block.as_millis().max(1) as u64)
            .arg("STREAMS")
            .arg(&streams)
            .arg(&from);
        let reply: redis::RedisResult<Value> = cmd.query_async(&mut conn).await;
        let reply = match reply {
            Ok(Value::Array(r)) => r,
            Ok(_) => continue,
            Err(e) => {
                tracing::debug!(error = %e, "feed tail: will retry");
                tokio::time::sleep(block).await;
                continue;
            }
        };
        for s in reply {
            let Ok((name, items)) = <(String, Value)>::from_redis_value(s) else {
                continue;
            };
            let (Some(i), Ok(items)) = (streams.iter().position(|x| *x == name), parse_raw(items))
            else {
                tracing::debug!(stream = %name, "feed tail: an unreadable reply");
                tokio::time::sleep(block).await;
                continue;
            };
            for (raw, fields) in items {
                from[i] = raw;
                let Ok(id) = parse_entry_id(&from[i]) else {
                    continue;
                };
                if let Ok(tx) = decode_tx(id, &fields, &debezium)
                    && !tx.changes.is_empty()
                {
                    let tx = Arc::new(tx);
                    events.publish(|| Event::Primary(tx));
                }
            }
        }
    }
}

/// The id of the last entry ever added to `stream` (`0-0` for none).
async fn last_id(conn: &mut Redis, stream: &str) -> Result<String> {
    let info: redis::RedisResult<BTreeMap<String, Value>> = redis::cmd("XINFO")
        .arg("STREAM")
        .arg(stream)
        .query_async(conn)
        .await;
    match info {
        Ok(map) => map
            .get("last-generated-id")
            .cloned()
            .map(String::from_redis_value)
            .transpose()
            .map_err(Error::source_failed)?
            .ok_or_else(|| Error::source_failed("XINFO STREAM has no last-generated-id")),
        Err(e) if e.to_string().contains("no such key") => Ok("0-0".into()),
        Err(e) => Err(e.into()),
    }
}
