//! The lease holder: publishing, fencing, trimming.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use prefetch::Redis;
use prefetch::{BoxFuture, Error, Result, Source, Transaction, Version};
use redis::{FromRedisValue, Value};
use tokio_util::sync::CancellationToken;

use crate::config::*;
use crate::lease::Lease;
use crate::wire::encode_tx;

/// Publishes a batch only while `ARGV[1]` holds the lease (KEYS[1]); sets
/// the published position (KEYS[2]). KEYS[3..] are the entries' streams;
/// ARGV: holder, position, then per entry its field count and fields.
const PUBLISH: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('PFNOTLEADER the publishing lease is held by another replica')
end
local a = 3
for k = 3, #KEYS do
  local n = tonumber(ARGV[a])
  redis.call('XADD', KEYS[k], '*', unpack(ARGV, a + 1, a + n))
  a = a + n + 1
end
redis.call('SET', KEYS[2], ARGV[2])
return #KEYS - 2
"#;

/// A source the leader publishes from, made anew at every takeover (a
/// replication slot reader cannot be restarted once closed).
pub type SourceFactory = Arc<dyn Fn() -> BoxFuture<'static, Result<Arc<dyn Source>>> + Send + Sync>;

/// A replica's leader loop, until `cancel`: wait for the lease, publish.
///
/// While holding the lease it publishes and trims what every group
/// acknowledged; it starts over when the lease is lost. `leading` follows
/// whether this replica publishes right now.
pub async fn run_leader(
    conn: Redis,
    config: PipelineConfig,
    make_source: SourceFactory,
    leading: tokio::sync::watch::Sender<bool>,
    cancel: CancellationToken,
) {
    let lease = Lease::new(conn.clone(), &config);
    let every = config.lease_ttl / 3;
    while !cancel.is_cancelled() {
        match lease.acquire().await {
            Ok(true) => {
                tracing::info!(pipeline = %config.name, consumer = %config.consumer, "holding the publishing lease");
                leading.send_replace(true);
                let term = cancel.child_token();
                let publisher = publish_term(conn.clone(), &config, &make_source, &lease, &term);
                let keeper = keep_lease(&lease, every, &term);
                let trimmer = trim_loop(conn.clone(), &config, &term);
                tokio::pin!(publisher);
                let outcome = tokio::select! {
                    r = &mut publisher => r,
                    () = keeper => Err(Error::source_unavailable("the publishing lease was lost")),
                    () = trimmer => Ok(()),
                };
                term.cancel();
                leading.send_replace(false);
                if let Err(e) = &outcome {
                    tracing::warn!(error = %e, pipeline = %config.name, "stopped publishing");
                }
                if let Err(e) = lease.release().await {
                    tracing::warn!(error = %e, "cannot release the publishing lease");
                }
                if cancel.is_cancelled() {
                    break;
                }
                // Let another replica take over after a term ended (a
                // failure, a lost lease, a source that ended).
                sleep_or_cancel(config.lease_ttl, &cancel).await;
            }
            Ok(false) => sleep_or_cancel(every, &cancel).await,
            Err(e) => {
                tracing::warn!(error = %e, "cannot reach Redis for the publishing lease");
                sleep_or_cancel(every, &cancel).await;
            }
        }
    }
}

/// Renews the lease every `every`; returns when it is lost.
async fn keep_lease(lease: &Lease, every: Duration, term: &CancellationToken) {
    loop {
        sleep_or_cancel(every, term).await;
        if term.is_cancelled() {
            return;
        }
        match lease.renew().await {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                // Unreachable Redis: the lease runs out on its own; stop
                // before it does rather than publish without it.
                tracing::warn!(error = %e, "cannot renew the publishing lease");
                return;
            }
        }
    }
}

/// One term as leader: open the source where the feed stands and publish
/// until cancelled.
async fn publish_term(
    mut conn: Redis,
    config: &PipelineConfig,
    make_source: &SourceFactory,
    lease: &Lease,
    term: &CancellationToken,
) -> Result<()> {
    let source = make_source().await?;
    let published: Option<String> = redis::cmd("GET")
        .arg(config.published_key())
        .query_async(&mut conn)
        .await?;
    let published = published.and_then(|p| p.parse::<Version>().ok());
    let resumed = source.open(published).await?;
    if !resumed {
        // The source starts from a snapshot of its own: take it (a
        // replication slot holds it until read) and tell every replica
        // that the feed does not reach back past it. Also on the very first
        // start: a replica's snapshot taken before this point would miss
        // what committed in between.
        drop(source.snapshot().await?);
        let _: i64 = redis::cmd("INCR")
            .arg(config.resync_key())
            .query_async(&mut conn)
            .await?;
    }
    tracing::info!(pipeline = %config.name, ?published, resumed, "publishing");
    let mut resyncs = source.status().resync_requests;
    loop {
        let txs = tokio::select! {
            () = term.cancelled() => return Ok(()),
            txs = source.pull(1000) => txs?,
        };
        if txs.is_empty() {
            return Ok(()); // the source ended
        }
        let Some(position) = publish(&mut conn, config, lease.holder_id(), &txs).await? else {
            continue;
        };
        replicated(&conn, config).await?;
        // Durable in the feed: only now may the source forget it.
        source.ack(position).await?;
        let now = source.status().resync_requests;
        if now > resyncs {
            resyncs = now;
            let _: i64 = redis::cmd("INCR")
                .arg(config.resync_key())
                .query_async(&mut conn)
                .await?;
        }
    }
}

/// Appends `txs` to their partitions, fenced by the lease.
///
/// The entries and the newest position (as published) are written in one
/// atomic step that fails (`PFNOTLEADER`) unless `holder` holds the lease.
/// Returns the newest position (`None` for no transactions).
pub async fn publish(
    conn: &mut Redis,
    config: &PipelineConfig,
    holder: &str,
    txs: &[Arc<Transaction>],
) -> Result<Option<Version>> {
    let Some(position) = txs.iter().map(|tx| tx.position).max() else {
        return Ok(None);
    };
    let script = redis::Script::new(PUBLISH);
    let mut call = script.prepare_invoke();
    call.key(config.leader_key()).key(config.published_key());
    call.arg(holder).arg(position.to_string());
    for tx in txs {
        let fields = encode_tx(tx);
        call.key(config.stream(config.partition_of(tx.position)));
        call.arg(fields.len() * 2);
        for (k, v) in fields {
            call.arg(k).arg(v);
        }
    }
    let _: i64 = call.invoke_async(conn).await?;
    Ok(Some(position))
}

/// With [`PipelineConfig::wait_replicas`], waits until that many replicas
/// of every primary hold what was published (`WAIT` on the connection that
/// published, to each primary).
async fn replicated(conn: &Redis, config: &PipelineConfig) -> Result<()> {
    let wanted = config.wait_replicas;
    if wanted == 0 {
        return Ok(());
    }
    let ms = u64::try_from(config.wait_timeout.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    for mut node in prefetch::Connection::primaries(conn).await? {
        let acked: u32 = redis::cmd("WAIT")
            .arg(wanted)
            .arg(ms)
            .query_async(&mut node)
            .await?;
        if acked < wanted {
            return Err(Error::NotReplicated {
                wanted,
                acked,
                timeout: config.wait_timeout,
            });
        }
    }
    Ok(())
}

/// Trims every partition below what every group acknowledged.
async fn trim_loop(conn: Redis, config: &PipelineConfig, term: &CancellationToken) {
    loop {
        sleep_or_cancel(config.trim_every, term).await;
        if term.is_cancelled() {
            return;
        }
        for stream in config.streams() {
            if let Err(e) = trim(conn.clone(), &stream).await {
                tracing::warn!(error = %e, %stream, "cannot trim the feed");
            }
        }
    }
}

/// `XTRIM MINID` at the oldest entry some group still needs.
///
/// That is a group's oldest pending entry, or the last one it was given
/// when nothing is pending. Returns the entries removed. A stream without a
/// group is left alone.
pub async fn trim(mut conn: Redis, stream: &str) -> Result<u64> {
    let groups: Vec<BTreeMap<String, Value>> = match redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(&mut conn)
        .await
    {
        Ok(g) => g,
        Err(e) if e.to_string().contains("no such key") => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    let mut keep: Option<Version> = None;
    for g in &groups {
        let text = |k: &str| -> Option<String> {
            g.get(k)
                .cloned()
                .and_then(|v| String::from_redis_value(v).ok())
        };
        let (Some(name), Some(last)) = (text("name"), text("last-delivered-id")) else {
            continue;
        };
        let pending = g
            .get("pending")
            .cloned()
            .and_then(|v| u64::from_redis_value(v).ok())
            .unwrap_or(0);
        let mut needed = parse_entry_id(&last)?;
        if pending > 0 {
            // XPENDING summary: [count, smallest, greatest, consumers].
            let summary: (u64, Option<String>, Option<String>, Value) = redis::cmd("XPENDING")
                .arg(stream)
                .arg(&name)
                .query_async(&mut conn)
                .await?;
            if let Some(oldest) = summary.1 {
                needed = needed.min(parse_entry_id(&oldest)?);
            }
        }
        keep = Some(keep.map_or(needed, |k| k.min(needed)));
    }
    let Some(keep) = keep else {
        return Ok(0);
    };
    Ok(redis::cmd("XTRIM")
        .arg(stream)
        .arg("MINID")
        .arg(entry_id_text(keep))
        .query_async(&mut conn)
        .await?)
}
