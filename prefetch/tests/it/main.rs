//! The cache core against real redis-servers, one test binary: each module
//! starts its own servers on free loopback ports.

// Test and benchmark code: a failed unwrap is a failed run, with its place.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cache;
mod cluster;
mod guard;
mod heal;
mod interleavings;
mod misses;
mod ops;
mod primary;
mod read_your_writes;
mod removal;
mod reprefetch;
mod sync;
mod ttl;

use std::time::Duration;

use prefetch::testing::prefix;
use prefetch::{CacheConfig, Connection, Fields, PrefetchCache, Record, Version};

/// Fields from pairs.
pub fn fields(pairs: &[(&str, &str)]) -> Fields {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A cache configuration on a fresh prefix.
pub fn config(prefix: String, ttl_secs: u64) -> CacheConfig {
    CacheConfig {
        prefix,
        ttl: Duration::from_secs(ttl_secs),
        ..CacheConfig::default()
    }
}

/// `n` records `rec-000000`… with the demo's five fields.
pub fn records(n: usize) -> Vec<Record> {
    (0..n)
        .map(|i| {
            [
                ("id", format!("rec-{i:06}")),
                ("name", format!("Record {i}")),
                ("display_order", i.to_string()),
                ("featured", (i % 2 == 0).to_string()),
                ("parent_id", String::new()),
            ]
            .into_iter()
            .collect()
        })
        .collect()
}

/// A standalone cache whose state Redis holds (as after a load at version
/// zero), so guarded writes apply.
pub async fn claimed<C: Connection>(conn: C, test: &str, ttl_secs: u64) -> PrefetchCache<C> {
    let cache = PrefetchCache::new(conn, config(prefix(test), ttl_secs), "test-source");
    cache.begin_load(Version::ZERO).await.expect("claim state");
    cache.finish_load(Version::ZERO).await.expect("claim state");
    cache
}

/// A tiny deterministic generator, so failures replay.
pub struct Lcg(pub u64);

impl Lcg {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}
