//! The publishing lease.

use std::time::{Duration, UNIX_EPOCH};

use prefetch::Redis;
use prefetch::Result;

use crate::config::PipelineConfig;

/// Who publishes: a key holding the holder's name and a token unique to
/// this `Lease`, with a TTL that the holder renews.
///
/// Two processes started under one name never both hold it. Every publish
/// checks it in the same atomic step, so a replica that lost the lease
/// cannot publish (fencing).
#[derive(Clone)]
pub struct Lease {
    conn: Redis,
    key: String,
    me: String,
    ttl: Duration,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("key", &self.key)
            .field("me", &self.me)
            .finish_non_exhaustive()
    }
}

const RENEW: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0";
const RELEASE: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";

impl Lease {
    /// The lease of `config`'s pipeline, for its consumer, with a fresh token.
    pub fn new(conn: Redis, config: &PipelineConfig) -> Self {
        Self {
            conn,
            key: config.leader_key(),
            me: format!("{}#{:016x}", config.consumer, token()),
            ttl: config.lease_ttl,
        }
    }

    /// What this lease writes into the key: `<consumer>#<token>`.
    pub fn holder_id(&self) -> &str {
        &self.me
    }

    fn ttl_ms(&self) -> u64 {
        self.ttl.as_millis().max(1) as u64
    }

    /// Takes the lease if nobody holds it (or renews it if we do).
    pub async fn acquire(&self) -> Result<bool> {
        let mut conn = self.conn.clone();
        let set: Option<String> = redis::cmd("SET")
            .arg(&self.key)
            .arg(&self.me)
            .arg("NX")
            .arg("PX")
            .arg(self.ttl_ms())
            .query_async(&mut conn)
            .await?;
        Ok(set.is_some() || self.renew().await?)
    }

    /// Extends the lease if we still hold it.
    pub async fn renew(&self) -> Result<bool> {
        let mut conn = self.conn.clone();
        let n: i64 = redis::Script::new(RENEW)
            .key(&self.key)
            .arg(&self.me)
            .arg(self.ttl_ms())
            .invoke_async(&mut conn)
            .await?;
        Ok(n == 1)
    }

    /// Gives the lease up if we hold it.
    pub async fn release(&self) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: i64 = redis::Script::new(RELEASE)
            .key(&self.key)
            .arg(&self.me)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Who holds it now.
    pub async fn holder(&self) -> Result<Option<String>> {
        let mut conn = self.conn.clone();
        Ok(redis::cmd("GET")
            .arg(&self.key)
            .query_async(&mut conn)
            .await?)
    }
}

/// 64 random bits, from the standard library's per-process hash seed, the
/// clock and the process id.
fn token() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.write_u32(std::process::id());
    h.finish()
}

/// The consumer name in a lease value (`<consumer>#<token>`).
///
/// ```
/// assert_eq!(prefetch_pipeline::holder_name("replica-a#00ff"), "replica-a");
/// ```
pub fn holder_name(value: &str) -> &str {
    value.rsplit_once('#').map_or(value, |(name, _)| name)
}
