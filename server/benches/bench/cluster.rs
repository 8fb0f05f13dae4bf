//! A local 3-primary Redis Cluster next to one node, in the same run: reads
//! through the cache (32 callers), an engine's first load (on a cluster it
//! also writes the guard's state into all 16,384 slots) with the memory it
//! leaves, and sustained sync (one engine applying single-row transactions
//! from the mock as fast as they come). All nodes
//! share this machine's cores, so the figures show the client-side cost of
//! slot routing, not a cluster's capacity.

use std::sync::Arc;

use prefetch::testing::TestCluster;
use prefetch::{Connection, EventBus, MockPrimary};

use super::*;

const IDS: usize = 10_000;
const UPDATES: usize = 20_000;
const CALLERS: usize = 32;

/// Reads per second and p99 (µs) of `total` cache reads from 32 callers.
async fn reads<C: Connection>(conn: C, prefix: &str, total: usize) -> Result<(f64, f64)> {
    let cache = PrefetchCache::new(
        conn,
        CacheConfig {
            prefix: prefix.into(),
            ..CacheConfig::default()
        },
        "bench",
    );
    cache
        .bulk_load(&records(IDS), prefetch::Version::new(1, 0))
        .await?;
    let n = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (mut lat, elapsed) = read::run_reads(total, CALLERS, move || {
        let cache = cache.clone();
        let i = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % IDS;
        async move {
            let hit = cache.get(&format!("rec-{i:07}")).await?;
            assert!(hit.hit());
            Ok(())
        }
    })
    .await?;
    lat.sort_unstable();
    Ok((
        total as f64 / elapsed.as_secs_f64(),
        read::percentile(&lat, 0.99),
    ))
}

/// `used_memory` summed over the nodes at `urls`.
async fn used_memory(urls: &[String]) -> Result<u64> {
    let mut total = 0;
    for url in urls {
        let mut conn = redis::Client::open(url.as_str())?
            .get_multiplexed_async_connection()
            .await?;
        let info: String = redis::cmd("INFO")
            .arg("memory")
            .query_async(&mut conn)
            .await?;
        total += info
            .lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or("INFO memory has no used_memory")?;
    }
    Ok(total)
}

/// One engine over the mock: how long its first load took (ms), the Redis
/// memory it added (bytes, summed over `urls`), and the transactions per
/// second it then applies.
struct SyncRun {
    load_ms: f64,
    memory: u64,
    rate: f64,
}

async fn sync<C: Connection>(
    conn: C,
    urls: &[String],
    prefix: &str,
    round: usize,
) -> Result<SyncRun> {
    let mock = Arc::new(MockPrimary::with_records(
        records(IDS),
        Duration::ZERO,
        EventBus::new(16),
    ));
    let config = EngineConfig {
        cache: CacheConfig {
            prefix: prefix.into(),
            ..CacheConfig::default()
        },
        ..EngineConfig::default()
    };
    let before = used_memory(urls).await?;
    let t = Instant::now();
    let (engine, _) = Engine::start(conn, Arc::clone(&mock), EventBus::new(16), config).await?;
    let load_ms = t.elapsed().as_secs_f64() * 1000.0;
    let memory = used_memory(urls).await?.saturating_sub(before);
    let t = Instant::now();
    for i in 0..UPDATES {
        mock.update_field(
            &format!("rec-{:07}", i % IDS),
            "name",
            &format!("r{round} u{i}"),
        )?;
    }
    engine.settle(Duration::from_secs(120)).await?;
    let rate = UPDATES as f64 / t.elapsed().as_secs_f64();
    engine.shutdown(Duration::from_secs(2)).await?;
    Ok(SyncRun {
        load_ms,
        memory,
        rate,
    })
}

/// One figure measured on one node and on the cluster, round by round.
#[derive(Default)]
struct Versus {
    single: Vec<f64>,
    cluster: Vec<f64>,
}

impl Versus {
    /// Medians (one node, cluster).
    fn medians(&self) -> (Spread, Spread) {
        (
            Spread::of(self.single.clone()),
            Spread::of(self.cluster.clone()),
        )
    }

    /// A report row: the cluster's figure, one node's as the baseline.
    fn row(&self, report: &mut Report, metric: impl Into<String>, unit: &str, extra: [String; 2]) {
        let (one, three) = self.medians();
        report.row(
            "cluster",
            metric,
            format!("{}{}", three.show(unit), extra[1]),
            format!("one node {}{}", one.show(unit), extra[0]),
            Some(three.median / one.median),
            "–",
            None,
        );
    }

    fn data(&self) -> serde_json::Value {
        let (one, three) = self.medians();
        serde_json::json!({"cluster": three.median, "single": one.median})
    }
}

pub async fn cluster(redis: &TestRedis, s: &Settings, report: &mut Report) -> Result<()> {
    println!("\n== cluster");
    let cluster = TestCluster::start(3, 0);
    let reps = s.reps.min(3);
    let total = s.reads.min(100_000);
    let (mut rate, mut p99) = (Versus::default(), Versus::default());
    let (mut sync_rate, mut load, mut memory) =
        (Versus::default(), Versus::default(), Versus::default());
    let (one, three) = (vec![redis.url.clone()], cluster.urls());
    for round in 0..reps {
        let (r, p) = reads(redis.conn().await, &format!("bench:cl:r1:{round}:"), total).await?;
        rate.single.push(r);
        p99.single.push(p);
        let (r, p) = reads(
            cluster.conn().await,
            &format!("bench:cl:r3:{round}:"),
            total,
        )
        .await?;
        rate.cluster.push(r);
        p99.cluster.push(p);
        let run = sync(
            redis.conn().await,
            &one,
            &format!("bench:cl:s1:{round}:"),
            round,
        )
        .await?;
        sync_rate.single.push(run.rate);
        load.single.push(run.load_ms);
        memory.single.push(run.memory as f64 / 1e6);
        let run = sync(
            cluster.conn().await,
            &three,
            &format!("bench:cl:s3:{round}:"),
            round,
        )
        .await?;
        sync_rate.cluster.push(run.rate);
        load.cluster.push(run.load_ms);
        memory.cluster.push(run.memory as f64 / 1e6);
    }
    let (p99_one, p99_three) = p99.medians();
    rate.row(
        report,
        format!("{total} cache reads, {CALLERS} callers, 3-primary cluster"),
        "/s",
        [
            format!(" (p99 {:.0} µs)", p99_one.median),
            format!(" (p99 {:.0} µs)", p99_three.median),
        ],
    );
    load.row(
        report,
        format!("engine start: first load of {IDS} records (and, on the cluster, the guard's state in 16,384 slots)"),
        "ms",
        Default::default(),
    );
    memory.row(
        report,
        "Redis memory added by that load (used_memory, summed over the primaries)",
        "MB",
        Default::default(),
    );
    sync_rate.row(
        report,
        format!("{UPDATES} single-row transactions applied, 3-primary cluster"),
        "/s",
        Default::default(),
    );
    report.data(
        "cluster",
        serde_json::json!({
            "reads_per_s": rate.data(),
            "read_p99_us": p99.data(),
            "sync_per_s": sync_rate.data(),
            "load_ms": load.data(),
            "load_memory_mb": memory.data(),
        }),
    );
    Ok(())
}
