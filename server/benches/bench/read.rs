//! The read path against bare redis-rs and `redis-benchmark`.

use super::*;

/// Latency percentiles (microseconds) of a set of reads.
#[derive(Clone, Copy, Debug)]
pub struct ReadRun {
    p50: f64,
    p99: f64,
    p999: f64,
}

pub fn percentile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[idx] as f64 / 1000.0
}

pub fn summarize(mut nanos: Vec<u64>) -> ReadRun {
    nanos.sort_unstable();
    ReadRun {
        p50: percentile(&nanos, 0.50),
        p99: percentile(&nanos, 0.99),
        p999: percentile(&nanos, 0.999),
    }
}

pub async fn run_reads<F, Fut>(total: usize, callers: usize, op: F) -> Result<(Vec<u64>, Duration)>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let per = total / callers;
    let started = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let op = op.clone();
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(per);
                for _ in 0..per {
                    let t = Instant::now();
                    op().await?;
                    lat.push(u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX));
                }
                Ok::<_, BoxError>(lat)
            })
        })
        .collect();
    let mut all = Vec::with_capacity(total);
    for t in tasks {
        all.extend(t.await??);
    }
    Ok((all, started.elapsed()))
}

/// `redis-benchmark … --csv HGETALL key`: (rps, p50 ms, p99 ms).
pub fn redis_benchmark(
    port: u16,
    clients: usize,
    requests: usize,
    key: &str,
) -> Result<(f64, f64, f64)> {
    let out = Command::new("redis-benchmark")
        .args([
            "-p",
            &port.to_string(),
            "-c",
            &clients.to_string(),
            "-n",
            &requests.to_string(),
        ])
        .args(["--csv", "HGETALL", key])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("\"HGETALL"))
        .ok_or_else(|| format!("unexpected redis-benchmark output: {text}"))?;
    let cols: Vec<f64> = line
        .split(',')
        .skip(1)
        .map(|c| c.trim_matches('"').parse().unwrap_or(f64::NAN))
        .collect();
    // rps, avg, min, p50, p95, p99, max
    Ok((cols[0], cols[3], cols[5]))
}

pub async fn read_path(redis: &TestRedis, s: &Settings, report: &mut Report) -> Result<()> {
    println!("\n== read path");
    let prefix = "bench:read:";
    let cache = bench_cache(redis, prefix).await;
    cache
        .bulk_load(&prefetch::seed_records(), prefetch::Version::ZERO)
        .await?;
    let key = format!("{prefix}cat-002");
    // Per client kind and concurrency: every latency sample of every
    // repetition (percentiles are taken over the pooled samples, which is
    // far steadier on a shared machine than a median of per-run p99s), and
    // the throughput of each repetition.
    let mut pooled: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    let mut rates: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut rb: BTreeMap<&str, Vec<(f64, f64, f64)>> = BTreeMap::new();
    for _ in 0..s.reps {
        for callers in [1usize, 32] {
            let c = cache.clone();
            let (ours, ours_t) = run_reads(s.reads, callers, move || {
                let c = c.clone();
                async move {
                    let hit = c.get("cat-002").await?.hit();
                    if hit { Ok(()) } else { Err("miss".into()) }
                }
            })
            .await?;
            let conn = redis.conn().await;
            let k = key.clone();
            let (bare, bare_t) = run_reads(s.reads, callers, move || {
                let mut conn = conn.clone();
                let k = k.clone();
                async move {
                    let v: Fields = redis::cmd("HGETALL").arg(&k).query_async(&mut conn).await?;
                    if v.is_empty() {
                        Err("miss".into())
                    } else {
                        Ok(())
                    }
                }
            })
            .await?;
            let (ok, bk) = if callers == 1 {
                ("ours_c1", "bare_c1")
            } else {
                ("ours_c32", "bare_c32")
            };
            rates
                .entry(ok)
                .or_default()
                .push(ours.len() as f64 / ours_t.as_secs_f64());
            rates
                .entry(bk)
                .or_default()
                .push(bare.len() as f64 / bare_t.as_secs_f64());
            pooled.entry(ok).or_default().extend(ours);
            pooled.entry(bk).or_default().extend(bare);
            rb.entry(ok)
                .or_default()
                .push(redis_benchmark(redis.port, callers, s.reads, &key)?);
        }
    }
    for (callers, ok, bk) in [(1, "ours_c1", "bare_c1"), (32, "ours_c32", "bare_c32")] {
        let label = if callers == 1 {
            "sequential"
        } else {
            "32 concurrent callers"
        };
        let ours = summarize(pooled.remove(ok).unwrap_or_default());
        let bare = summarize(pooled.remove(bk).unwrap_or_default());
        let rbs = &rb[ok];
        let rb_p50 = Spread::of(rbs.iter().map(|r| r.1 * 1000.0).collect()).median;
        let rb_p99 = Spread::of(rbs.iter().map(|r| r.2 * 1000.0).collect()).median;
        let rb_ops = Spread::of(rbs.iter().map(|r| r.0).collect()).median;
        for (name, o, b, extra) in [
            ("p50 µs", ours.p50, bare.p50, Some(rb_p50)),
            ("p99 µs", ours.p99, bare.p99, Some(rb_p99)),
            ("p99.9 µs", ours.p999, bare.p999, None),
        ] {
            let ratio = o / b;
            let (target, met) = if callers == 1 && name == "p99 µs" {
                ("p99 ≤ 1.3× bare", Some(ratio <= 1.3))
            } else {
                ("–", None)
            };
            let extra = extra
                .map(|x| format!("; redis-benchmark {}", fmt_num(x)))
                .unwrap_or_default();
            report.row(
                "read",
                format!("get(), {label}: {name} (pooled)"),
                fmt_num(o),
                format!("bare redis-rs HGETALL {}{extra}", fmt_num(b)),
                Some(ratio),
                target,
                met,
            );
            report.data(
                &format!("read_{ok}_{name}"),
                serde_json::json!({"ours": o, "bare": b, "ratio": ratio}),
            );
        }
        let o = Spread::of(rates.remove(ok).unwrap_or_default());
        let b = Spread::of(rates.remove(bk).unwrap_or_default());
        report.row(
            "read",
            format!("get(), {label}: ops/s"),
            o.show(""),
            format!(
                "bare redis-rs HGETALL {}; redis-benchmark {}",
                b.show(""),
                fmt_num(rb_ops)
            ),
            Some(o.median / b.median),
            "–",
            None,
        );
        report.data(
            &format!("read_{ok}_ops"),
            serde_json::json!({"ours": o.median, "bare": b.median, "redis_benchmark": rb_ops}),
        );
    }
    Ok(())
}
