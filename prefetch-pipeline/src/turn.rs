//! Whose turn it is to load: a replica loads the cache only while it holds
//! the pipeline's lease, or once the holder has finished loading it.

use std::time::{Duration, Instant};

use prefetch::{CacheConfig, Error, PrefetchCache, Redis, Result};
use tokio::sync::watch;

use crate::config::PipelineConfig;

/// How long a replica waits with nobody holding the lease.
const PATIENCE: Duration = Duration::from_secs(60);

/// Returns once this replica may start its engine.
///
/// That is when it holds the lease (`leading`), or the cache under `cache`
/// holds `source`'s state and no load is under way. Two replicas loading an empty Redis at once could
/// each overwrite what the other applied. It waits as long as some replica
/// holds the lease (a large first load takes time), and gives up after a
/// minute with nobody holding it.
pub async fn wait_for_turn(
    conn: &Redis,
    cache: CacheConfig,
    source: &str,
    pipeline: &PipelineConfig,
    leading: watch::Receiver<bool>,
) -> Result<()> {
    let cache = PrefetchCache::new(conn.clone(), cache, source);
    let mut last_holder = Instant::now();
    loop {
        if *leading.borrow() {
            return Ok(());
        }
        let state = cache.state().await?;
        if state.source.as_deref() == Some(source)
            && state.loading.is_none()
            && state.position.is_some()
        {
            return Ok(());
        }
        let mut c = conn.clone();
        let holder: Option<String> = redis::cmd("GET")
            .arg(pipeline.leader_key())
            .query_async(&mut c)
            .await?;
        if holder.is_some() {
            last_holder = Instant::now();
        } else if last_holder.elapsed() > PATIENCE {
            return Err(Error::InvalidConfig(format!(
                "no replica held the pipeline's lease and loaded the cache within {PATIENCE:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
