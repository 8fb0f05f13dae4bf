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

pub async fn cluster(redis: &TestRedis, s: &Settings, report: &mut Report) -> Result<()> {
    println!("\n== cluster");
    let cluster = TestCluster::start(3, 0);
    let reps = s.reps.min(3);
    let total = s.reads.min(100_000);
    let (mut single_r, mut cluster_r, mut single_p, mut cluster_p) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut single_s, mut cluster_s) = (Vec::new(), Vec::new());
    let (mut single_l, mut cluster_l) = (Vec::new(), Vec::new());
    let (mut single_m, mut cluster_m) = (Vec::new(), Vec::new());
    let (one, three) = (vec![redis.url.clone()], cluster.urls());
    for round in 0..reps {
        let (r, p) = reads(redis.conn().await, &format!("bench:cl:r1:{round}:"), total).await?;
        single_r.push(r);
        single_p.push(p);
        let (r, p) = reads(
            cluster.conn().await,
            &format!("bench:cl:r3:{round}:"),
            total,
        )
        .await?;
        cluster_r.push(r);
        cluster_p.push(p);
        let run = sync(
            redis.conn().await,
            &one,
            &format!("bench:cl:s1:{round}:"),
            round,
        )
        .await?;
        single_s.push(run.rate);
        single_l.push(run.load_ms);
        single_m.push(run.memory as f64 / 1e6);
        let run = sync(
            cluster.conn().await,
            &three,
            &format!("bench:cl:s3:{round}:"),
            round,
        )
        .await?;
        cluster_s.push(run.rate);
        cluster_l.push(run.load_ms);
        cluster_m.push(run.memory as f64 / 1e6);
    }
    let (sr, cr) = (Spread::of(single_r), Spread::of(cluster_r));
    let (sp, cp) = (Spread::of(single_p), Spread::of(cluster_p));
    report.row(
        "cluster",
        format!("{total} cache reads, {CALLERS} callers, 3-primary cluster"),
        format!("{} (p99 {:.0} µs)", cr.show("/s"), cp.median),
        format!("one node {} (p99 {:.0} µs)", sr.show("/s"), sp.median),
        Some(cr.median / sr.median),
        "–",
        None,
    );
    let (sl, cl) = (Spread::of(single_l), Spread::of(cluster_l));
    report.row(
        "cluster",
        format!("engine start: first load of {IDS} records (and, on the cluster, the guard's state in 16,384 slots)"),
        cl.show("ms"),
        format!("one node {}", sl.show("ms")),
        Some(cl.median / sl.median),
        "–",
        None,
    );
    let (sm, cm) = (Spread::of(single_m), Spread::of(cluster_m));
    report.row(
        "cluster",
        "Redis memory added by that load (used_memory, summed over the primaries)",
        cm.show("MB"),
        format!("one node {}", sm.show("MB")),
        Some(cm.median / sm.median),
        "–",
        None,
    );
    let (ss, cs) = (Spread::of(single_s), Spread::of(cluster_s));
    report.row(
        "cluster",
        format!("{UPDATES} single-row transactions applied, 3-primary cluster"),
        cs.show("/s"),
        format!("one node {}", ss.show("/s")),
        Some(cs.median / ss.median),
        "–",
        None,
    );
    report.data(
        "cluster",
        serde_json::json!({
            "reads_per_s": {"cluster": cr.median, "single": sr.median},
            "read_p99_us": {"cluster": cp.median, "single": sp.median},
            "sync_per_s": {"cluster": cs.median, "single": ss.median},
            "load_ms": {"cluster": cl.median, "single": sl.median},
            "load_memory_mb": {"cluster": cm.median, "single": sm.median},
        }),
    );
    Ok(())
}
