//! Noticing cache changes made outside the app (`redis-cli DEL`, `HSET`,
//! `EXPIRE`, TTL expiry): Redis keyspace notifications on the cache prefix.

use std::time::Duration;

use futures::StreamExt;
use prefetch::Connection;
use redis::aio::ConnectionLike;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Flags this feature needs: keyspace channel (K), generic commands (g:
/// DEL, EXPIRE, RENAME…), strings ($), hashes (h), expired (x), evicted (e).
const NEEDED: &str = "Kg$hxe";

/// What happened to a key, as far as the live feed cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOp {
    /// Its TTL ran out.
    Expired,
    /// Redis evicted it under `maxmemory`.
    Evicted,
    /// Someone deleted it (`del`, `unlink`).
    Deleted,
    /// Anything else (`del`, `hset`, `expire`, `rename_to`, …): re-read it.
    Touched,
}

impl KeyOp {
    /// The notification payload's meaning.
    pub fn of(event: &str) -> Self {
        match event {
            "expired" => KeyOp::Expired,
            "evicted" => KeyOp::Evicted,
            "del" | "unlink" => KeyOp::Deleted,
            _ => KeyOp::Touched,
        }
    }
}

/// Something happened to a key under the prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyEvent {
    /// `id` was touched.
    Key { id: String, op: KeyOp },
    /// Events may have been missed (reconnect, overflow): resynchronise.
    Resync,
}

/// Adds the flags we need to `notify-keyspace-events`, keeping the ones
/// already set. Returns false (and the caller falls back to polling) when the
/// server refuses `CONFIG` (managed Redis, ACLs).
pub async fn enable<C: ConnectionLike + Send>(conn: &mut C) -> bool {
    let current: redis::RedisResult<Vec<String>> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("notify-keyspace-events")
        .query_async(conn)
        .await;
    let current = match current {
        Ok(pair) => pair.get(1).cloned().unwrap_or_default(),
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoPerm) => {
            // A least-privilege user (see --print-redis-acl): expected.
            tracing::info!(
                "the Redis user may not run CONFIG: the live feed polls for changes made outside the server"
            );
            return false;
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read notify-keyspace-events; polling instead");
            return false;
        }
    };
    let covered =
        |c: char| current.contains(c) || (current.contains('A') && "g$lshzxetd".contains(c));
    let mut flags = current.clone();
    flags.extend(NEEDED.chars().filter(|&c| !covered(c)));
    if flags == current {
        return true;
    }
    let set: redis::RedisResult<()> = redis::cmd("CONFIG")
        .arg("SET")
        .arg("notify-keyspace-events")
        .arg(&flags)
        .query_async(conn)
        .await;
    match set {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "cannot enable keyspace notifications; polling instead");
            false
        }
    }
}

/// Listens on `__keyspace@{db}__:{prefix}*` and forwards key events, until
/// `shutdown`.
///
/// Reconnects (and re-enables the flags, which a restarted Redis
/// forgets) with a short backoff; each (re)connect asks for a resync.
pub fn spawn_listener<C: ConnectionLike + Send + 'static>(
    client: redis::Client,
    mut conn: C,
    prefix: String,
    tx: mpsc::Sender<KeyEvent>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let db = client.get_connection_info().redis_settings().db();
    let channel_prefix = format!("__keyspace@{db}__:");
    let pattern = format!("{channel_prefix}{}*", prefetch::escape_glob(&prefix));
    let span = tracing::info_span!("keyspace_listener", pattern = %pattern);
    tokio::spawn(
        async move {
            let mut connected_before = false;
            loop {
                let subscribed = async {
                    let mut pubsub = client.get_async_pubsub().await?;
                    pubsub.psubscribe(&pattern).await?;
                    redis::RedisResult::Ok(pubsub)
                };
                let pubsub = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = subscribed => r,
                };
                match pubsub {
                    Ok(mut pubsub) => {
                        enable(&mut conn).await;
                        if connected_before {
                            let _ = tx.send(KeyEvent::Resync).await;
                        }
                        connected_before = true;
                        let mut messages = pubsub.on_message();
                        let mut overflowed = false;
                        loop {
                            let msg = tokio::select! {
                                _ = shutdown.cancelled() => return,
                                m = messages.next() => m,
                            };
                            let Some(msg) = msg else { break };
                            let id = msg
                                .get_channel_name()
                                .strip_prefix(channel_prefix.as_str())
                                .and_then(|key| key.strip_prefix(prefix.as_str()));
                            let (Some(id), Ok(event)) = (id, msg.get_payload::<String>()) else {
                                continue;
                            };
                            let event = KeyEvent::Key {
                                id: id.to_owned(),
                                op: KeyOp::of(&event),
                            };
                            // Never wait for the hub: redis-rs would buffer every
                            // notification meanwhile. While it is behind, one
                            // resync, sent once it has room, covers them all.
                            if overflowed || tx.try_send(event).is_err() {
                                overflowed = tx.try_send(KeyEvent::Resync).is_err();
                            }
                        }
                        tracing::warn!("keyspace subscription ended; reconnecting");
                    }
                    Err(e) => tracing::debug!(error = %e, "keyspace subscribe failed; retrying"),
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        }
        .instrument(span),
    )
}

/// [`enable`] on every primary of `conn` (one node, or each primary of a
/// cluster: notifications are node-local). False if any refuses.
pub async fn enable_everywhere(conn: &prefetch::Redis) -> bool {
    let nodes = match conn.primaries().await {
        Ok(nodes) => nodes,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the Redis primaries; polling instead");
            return false;
        }
    };
    let mut all = true;
    for mut node in nodes {
        all &= enable(&mut node).await;
    }
    all
}

/// The URL of the cluster node at `host:port`: `template` (one of the URLs
/// the cluster was given) with its address replaced, so that the node is
/// reached with the same scheme, user and password.
fn node_url(template: &str, host: &str, port: u16) -> String {
    let fallback = || format!("redis://{host}:{port}/");
    let Ok(mut url) = url::Url::parse(template) else {
        return fallback();
    };
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    if url.set_host(Some(&host)).is_err() || url.set_port(Some(port)).is_err() {
        return fallback();
    }
    url.to_string()
}

/// On a Redis Cluster, one [`spawn_listener`] per primary.
///
/// They start again whenever the set of primaries changes (a failover, a
/// node added): the listeners of the old set stop, and the hub is told to
/// resynchronise.
pub fn spawn_cluster_listener(
    conn: prefetch::Redis,
    template: String,
    tls: Option<crate::settings::RedisTls>,
    prefix: String,
    tx: mpsc::Sender<KeyEvent>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let span = tracing::info_span!("keyspace_cluster");
    tokio::spawn(
        async move {
            let mut first = true;
            loop {
                let nodes = match conn.primaries().await {
                    Ok(nodes) => nodes,
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot list the primaries; retrying");
                        Vec::new()
                    }
                };
                let known = addresses(&nodes);
                let generation = shutdown.child_token();
                for (node, (host, port)) in nodes.into_iter().zip(&known) {
                    let url = node_url(&template, host, *port);
                    match crate::settings::RedisTls::client(tls.as_ref(), &url) {
                        Ok(client) => {
                            spawn_listener(
                                client,
                                node,
                                prefix.clone(),
                                tx.clone(),
                                generation.clone(),
                            );
                        }
                        Err(e) => tracing::warn!(error = %e, %host, port, "bad node address"),
                    }
                }
                if !first {
                    let _ = tx.send(KeyEvent::Resync).await;
                }
                first = false;
                // Watch the set of primaries.
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                    let now = conn.primaries().await.ok().map(|n| addresses(&n));
                    if now.as_ref().is_some_and(|now| *now != known) || known.is_empty() {
                        tracing::info!("the cluster's primaries changed; subscribing again");
                        generation.cancel();
                        break;
                    }
                }
            }
        }
        .instrument(span),
    )
}

/// The cluster primaries' addresses, in the order given.
fn addresses(nodes: &[prefetch::RedisNode]) -> Vec<(String, u16)> {
    nodes
        .iter()
        .filter_map(|n| match n {
            prefetch::RedisNode::Cluster(c) => {
                let (host, port) = c.address();
                Some((host.to_owned(), port))
            }
            prefetch::RedisNode::Single(_) => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::node_url;

    #[test]
    fn a_node_is_reached_with_the_given_urls_scheme_and_credentials() {
        assert_eq!(
            node_url("rediss://pf:s3cret@10.0.0.1:7000/", "10.0.0.2", 7001),
            "rediss://pf:s3cret@10.0.0.2:7001/"
        );
        assert_eq!(
            node_url("redis://127.0.0.1:7000", "::1", 7002),
            "redis://[::1]:7002"
        );
        assert_eq!(node_url("not a url", "h", 1), "redis://h:1/");
    }
}
