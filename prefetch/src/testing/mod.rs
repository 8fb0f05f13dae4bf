//! Test support (feature `test-support`): a real `redis-server` per test on
//! a free loopback port, a local Redis Cluster, a round-trip counter, a
//! mock-backed engine, and convergence checks.
//!
//! Set `REDIS_URL` to run against an existing server instead (each test still
//! uses its own key prefix, so tests never see each other's keys); drills
//! that kill and restart Redis always start a server of their own.
//!
//! | module | what |
//! |---|---|
//! | `redis` | [`TestRedis`]: one private `redis-server` |
//! | `cluster` | [`TestCluster`]: a local Redis Cluster with explicit bus ports |
//! | `counting` | [`Counting`]: a connection that counts its round trips |
//! | `tls` | [`TestCerts`]: a CA, server and client certificates made with `openssl` |
//! | `engines` | engines over a [`MockPrimary`](crate::MockPrimary), and convergence checks |
#![allow(clippy::expect_used, clippy::missing_panics_doc)]

mod cluster;
mod counting;
mod engines;
mod redis;
mod tls;

use std::sync::atomic::{AtomicUsize, Ordering};

pub use cluster::{ClusterMember, TestCluster};
pub use counting::Counting;
pub use engines::{
    FaultyEngine, assert_converged, assert_converged_of, both_sides, both_sides_of,
    converged_within, converged_within_of, engine_config, faulty_mock_engine, mock_engine,
    mock_engine_with,
};
pub use redis::TestRedis;
pub use tls::TestCerts;

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A unique key prefix for one test.
pub fn prefix(test: &str) -> String {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("t:{test}:{}:{n}:", std::process::id())
}
