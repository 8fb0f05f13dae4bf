//! Reading the consumer group: creating it on every partition, reading
//! new entries and one's own pending ones (`XREADGROUP`), claiming what a
//! dead consumer left (`XAUTOCLAIM`), and delivery counts (`XPENDING`).

use std::collections::BTreeMap;

use prefetch::{Error, Result, Source, Version};
use redis::{FromRedisValue, Value};

use crate::config::*;
use crate::feed::{Entry, FeedSource};

impl<P: Source + ?Sized> FeedSource<P> {
    /// Creates the group on every partition; true when it existed on all.
    pub(crate) async fn ensure_group(&self) -> Result<bool> {
        let mut conn = self.commands.clone();
        let mut existed = true;
        for stream in &self.streams {
            let r: redis::RedisResult<()> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(stream)
                .arg(&self.config.group)
                .arg("0")
                .arg("MKSTREAM")
                .query_async(&mut conn)
                .await;
            match r {
                Ok(()) => existed = false,
                Err(e) if e.code() == Some("BUSYGROUP") => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(existed)
    }

    pub(crate) async fn read_group(
        &self,
        from: &str,
        block: bool,
        max: usize,
    ) -> Result<Vec<Entry>> {
        let mut conn = self.blocking.clone();
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&self.config.group)
            .arg(&self.config.consumer)
            .arg("COUNT")
            .arg(max.div_ceil(self.streams.len().max(1)).max(1));
        if block {
            cmd.arg("BLOCK")
                .arg(self.config.block.as_millis().max(1) as u64);
        }
        cmd.arg("STREAMS").arg(&self.streams);
        for _ in &self.streams {
            cmd.arg(from);
        }
        let reply: redis::RedisResult<Value> = cmd.query_async(&mut conn).await;
        let reply = match reply {
            Ok(v) => v,
            Err(e) if e.code() == Some("NOGROUP") => {
                // Redis lost the feed (restarted empty, flushed): recreate
                // it; the engine notices the lost state and re-prefetches.
                self.ensure_group().await?;
                return Ok(Vec::new());
            }
            Err(e) => return Err(e.into()),
        };
        let Value::Array(streams) = reply else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for s in streams {
            let (name, items): (String, Value) =
                FromRedisValue::from_redis_value(s).map_err(Error::source_failed)?;
            let (good, bad) = split_ids(parse_raw(items)?);
            for (raw, fields) in bad {
                self.bury(&name, &raw, &fields, BAD_ID).await?;
            }
            for (id, fields) in good {
                out.push((name.clone(), id, fields));
            }
        }
        Ok(out)
    }

    /// `XAUTOCLAIM` on every partition: entries a dead consumer left.
    pub(crate) async fn claim(&self, max: usize) -> Result<Vec<Entry>> {
        let mut conn = self.commands.clone();
        let mut out = Vec::new();
        for stream in &self.streams {
            let reply: redis::RedisResult<(String, Value, Value)> = redis::cmd("XAUTOCLAIM")
                .arg(stream)
                .arg(&self.config.group)
                .arg(&self.config.consumer)
                .arg(self.config.claim_idle.as_millis() as u64)
                .arg("0-0")
                .arg("COUNT")
                .arg(max.div_ceil(self.streams.len().max(1)).max(1))
                .query_async(&mut conn)
                .await;
            let (_, items, _) = match reply {
                Ok(r) => r,
                Err(e) if e.code() == Some("NOGROUP") => continue,
                Err(e) => return Err(e.into()),
            };
            let (claimed, bad) = split_ids(parse_raw(items)?);
            for (raw, fields) in bad {
                self.bury(stream, &raw, &fields, BAD_ID).await?;
            }
            if claimed.is_empty() {
                continue;
            }
            // Delivery counts of what we now hold (the claim counted one).
            let counts = self.deliveries(stream, &claimed).await?;
            for (id, fields) in claimed {
                let n = counts.get(&id).copied().unwrap_or(0);
                if n > self.config.max_deliveries {
                    let why = format!("delivered {n} times without being acknowledged");
                    self.bury(stream, &entry_id_text(id), &fields, &why).await?;
                } else {
                    out.push((stream.clone(), id, fields));
                }
            }
        }
        if !out.is_empty() {
            tracing::info!(entries = out.len(), consumer = %self.config.consumer, "claimed entries a stopped consumer left pending");
        }
        Ok(out)
    }

    pub(crate) async fn deliveries(
        &self,
        stream: &str,
        entries: &[Item],
    ) -> Result<BTreeMap<Version, u64>> {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return Ok(BTreeMap::new());
        };
        let mut conn = self.commands.clone();
        let rows: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
            .arg(stream)
            .arg(&self.config.group)
            .arg(entry_id_text(first.0))
            .arg(entry_id_text(last.0))
            .arg(entries.len() * 2)
            .arg(&self.config.consumer)
            .query_async(&mut conn)
            .await?;
        rows.into_iter()
            .map(|(id, _, _, n)| Ok((parse_entry_id(&id)?, n)))
            .collect()
    }
}
