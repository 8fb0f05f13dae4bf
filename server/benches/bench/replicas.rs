//! Sync throughput through the durable change feed with 1, 2 and 3 replicas
//! (engines in this process, each a member of the consumer group, one of
//! them publishing under the lease), next to one engine reading the same
//! source directly, in the same run.

use std::sync::Arc;

use futures::FutureExt;
use prefetch::{EventBus, MockPrimary, Source};
use prefetch_pipeline::{FeedSource, PipelineConfig, SourceFactory, run_leader};
use tokio_util::sync::CancellationToken;

use super::*;

const UPDATES: usize = 20_000;
const IDS: usize = 10_000;

fn config(prefix: &str) -> EngineConfig {
    EngineConfig {
        cache: CacheConfig {
            prefix: prefix.into(),
            ..CacheConfig::default()
        },
        ..EngineConfig::default()
    }
}

fn mock() -> Arc<MockPrimary> {
    Arc::new(MockPrimary::with_records(
        records(IDS),
        Duration::ZERO,
        EventBus::new(16),
    ))
}

/// `UPDATES` single-row transactions into the mock, as fast as it takes them.
fn write_all(mock: &MockPrimary, round: usize) -> Result<()> {
    for i in 0..UPDATES {
        mock.update_field(
            &format!("rec-{:07}", i % IDS),
            "name",
            &format!("r{round} u{i}"),
        )?;
    }
    Ok(())
}

/// The direct path: one engine pulling from the mock.
async fn direct(redis: &TestRedis, round: usize) -> Result<f64> {
    let mock = mock();
    let (engine, _) = Engine::start(
        redis.conn().await,
        Arc::clone(&mock),
        EventBus::new(16),
        config(&format!("bench:rep:direct:{round}:")),
    )
    .await?;
    let t = Instant::now();
    write_all(&mock, round)?;
    engine.settle(Duration::from_secs(60)).await?;
    let secs = t.elapsed().as_secs_f64();
    engine.shutdown(Duration::from_secs(2)).await?;
    Ok(UPDATES as f64 / secs)
}

/// Whether every partition's group has read everything and holds nothing.
async fn drained(conn: &mut MultiplexedConnection, cfg: &PipelineConfig) -> Result<bool> {
    for stream in cfg.streams() {
        let groups: Vec<BTreeMap<String, redis::Value>> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&stream)
            .query_async(conn)
            .await?;
        for g in groups {
            let n = |k: &str| {
                g.get(k)
                    .cloned()
                    .and_then(|v| redis::from_redis_value::<i64>(v).ok())
                    .unwrap_or(-1)
            };
            if n("pending") != 0 || n("lag") != 0 {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// `n` replicas on one feed: the rate at which `UPDATES` transactions went
/// from the mock through the feed into Redis.
async fn through_feed(redis: &TestRedis, n: usize, round: usize) -> Result<f64> {
    let mock = mock();
    let name = format!("bench{n}r{round}");
    let prefix = format!("bench:rep:{n}:{round}:");
    let cancel = CancellationToken::new();
    let mut engines = Vec::new();
    let mut leaders = Vec::new();
    for r in 0..n {
        let events = EventBus::new(16);
        let mut cfg = PipelineConfig::new(&name, format!("r{r}"));
        cfg.partitions = 4;
        let feed = FeedSource::connect(
            redis.client(),
            Arc::clone(&mock),
            cfg.clone(),
            events.clone(),
        )
        .await?;
        let (engine, _) = Engine::start(redis.conn().await, feed, events, config(&prefix)).await?;
        engines.push(engine);
        let source = Arc::clone(&mock);
        let factory: SourceFactory = Arc::new(move || {
            let s: Arc<dyn Source> = source.clone();
            async move { Ok(s) }.boxed()
        });
        let (tx, _) = tokio::sync::watch::channel(false);
        leaders.push(tokio::spawn(run_leader(
            redis.redis().await,
            cfg,
            factory,
            tx,
            cancel.clone(),
        )));
    }
    let cfg = PipelineConfig::new(&name, "observer");
    let mut conn = redis.conn().await;
    // Wait for a publisher.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let holder: Option<String> = redis::cmd("GET")
            .arg(cfg.leader_key())
            .query_async(&mut conn)
            .await?;
        if holder.is_some() {
            break;
        }
        if Instant::now() > deadline {
            return Err("no replica took the lease".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The publisher's first start asks every replica for a fresh snapshot
    // (its source began from one of its own): let that settle first.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (asked, covered): (Option<u64>, Option<u64>) = redis::pipe()
            .cmd("GET")
            .arg(cfg.resync_key())
            .cmd("GET")
            .arg(cfg.covered_key())
            .query_async(&mut conn)
            .await?;
        if asked.is_some() && covered >= asked {
            break;
        }
        if Instant::now() > deadline {
            return Err("the first re-prefetch never happened".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let head = mock.head().unwrap_or_default();
    let t = Instant::now();
    write_all(&mock, round)?;
    let last = mock.head().unwrap_or_default();
    assert!(last > head);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let published: Option<String> = redis::cmd("GET")
            .arg(cfg.published_key())
            .query_async(&mut conn)
            .await?;
        let published = published.and_then(|p| p.parse::<prefetch::Version>().ok());
        if published >= Some(last) && drained(&mut conn, &cfg).await? {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("{n} replicas did not drain the feed").into());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let secs = t.elapsed().as_secs_f64();
    cancel.cancel();
    for l in leaders {
        l.await?;
    }
    for e in engines {
        e.shutdown(Duration::from_secs(2)).await?;
    }
    Ok(UPDATES as f64 / secs)
}

pub async fn replicas(redis: &TestRedis, s: &Settings, report: &mut Report) -> Result<()> {
    println!("\n== replicas");
    let reps = s.reps.min(3);
    let mut base = Vec::new();
    let mut by_n: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    for round in 0..reps {
        base.push(direct(redis, round).await?);
        for n in 1..=3 {
            by_n.entry(n)
                .or_default()
                .push(through_feed(redis, n, round).await?);
        }
    }
    let base = Spread::of(base);
    for (n, rates) in by_n {
        let r = Spread::of(rates);
        report.row(
            "replicas",
            format!("{UPDATES} single-row transactions through the feed, {n} replica(s)"),
            r.show("/s"),
            format!("one engine reading the source directly {}", base.show("/s")),
            Some(r.median / base.median),
            "–",
            None,
        );
        report.data(
            &format!("replicas_{n}_per_s"),
            serde_json::json!({"ours": r.median, "min": r.min, "max": r.max, "direct": base.median}),
        );
    }
    Ok(())
}
