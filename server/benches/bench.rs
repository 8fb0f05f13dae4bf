//! The benchmark suite: our cache next to the raw-Redis limit, in one run.
//!
//! Run with `./scripts/bench.sh` (release build, its own redis-server on a
//! free loopback port). Every figure is printed beside a baseline measured
//! in the same run, as a ratio, over several repetitions (median, min, max).
//! Prints a markdown table and writes `target/bench/report.{md,json}`.
//!
//! `BENCH_ONLY=bulk,read,sync,memory,http,page,ui` runs only some sections.
//! `BENCH_QUICK=1` shortens every phase (for a smoke run; figures are then
//! not comparable with a full run).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use prefetch::testing::TestRedis;
use prefetch::{CacheConfig, Engine, EngineConfig, Fields, PrefetchCache, Record};
use redis::aio::MultiplexedConnection;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Result<T, E = BoxError> = std::result::Result<T, E>;

struct Settings {
    reps: usize,
    bulk_sizes: Vec<usize>,
    reads: usize,
    http_secs: u64,
    sustain_secs: u64,
    sustain_rates: Vec<u64>,
}

impl Settings {
    fn from_env() -> Self {
        if std::env::var("BENCH_QUICK").is_ok_and(|v| v == "1") {
            Self {
                reps: 2,
                bulk_sizes: vec![1_000, 10_000],
                reads: 10_000,
                http_secs: 2,
                sustain_secs: 1,
                sustain_rates: vec![20_000, 50_000],
            }
        } else {
            Self {
                reps: 5,
                bulk_sizes: vec![1_000, 10_000, 100_000],
                reads: 100_000,
                http_secs: 10,
                sustain_secs: 10,
                sustain_rates: vec![25_000, 50_000, 75_000, 100_000, 150_000, 200_000],
            }
        }
    }
}

/// Median, min and max of repeated measurements.
#[derive(Clone, Copy, Debug)]
struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

impl Spread {
    fn of(mut xs: Vec<f64>) -> Self {
        xs.sort_by(f64::total_cmp);
        let n = xs.len().max(1);
        Self {
            median: xs.get(n / 2).copied().unwrap_or(f64::NAN),
            min: xs.first().copied().unwrap_or(f64::NAN),
            max: xs.last().copied().unwrap_or(f64::NAN),
        }
    }

    fn show(&self, unit: &str) -> String {
        format!(
            "{} {unit} ({}–{})",
            fmt_num(self.median),
            fmt_num(self.min),
            fmt_num(self.max)
        )
    }
}

fn fmt_num(x: f64) -> String {
    if !x.is_finite() {
        "n/a".into()
    } else if x >= 10_000.0 {
        format!("{:.0}", x)
    } else if x >= 100.0 {
        format!("{x:.1}")
    } else if x >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

/// One line of the report.
struct Row {
    section: &'static str,
    metric: String,
    ours: String,
    baseline: String,
    ratio: Option<f64>,
    target: String,
    met: Option<bool>,
}

#[derive(Default)]
struct Report {
    rows: Vec<Row>,
    json: BTreeMap<String, serde_json::Value>,
}

impl Report {
    #[allow(clippy::too_many_arguments)]
    fn row(
        &mut self,
        section: &'static str,
        metric: impl Into<String>,
        ours: impl Into<String>,
        baseline: impl Into<String>,
        ratio: Option<f64>,
        target: impl Into<String>,
        met: Option<bool>,
    ) {
        let row = Row {
            section,
            metric: metric.into(),
            ours: ours.into(),
            baseline: baseline.into(),
            ratio,
            target: target.into(),
            met,
        };
        println!(
            "  {:<10} {:<46} ours {:<28} baseline {:<28} ratio {}",
            row.section,
            row.metric,
            row.ours,
            row.baseline,
            row.ratio
                .map(|r| format!("{r:.2}"))
                .unwrap_or_else(|| "–".into())
        );
        self.rows.push(row);
    }

    fn data(&mut self, key: &str, value: serde_json::Value) {
        self.json.insert(key.to_owned(), value);
    }

    fn markdown(&self, header: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{header}\n");
        let _ = writeln!(
            out,
            "| section | metric | ours | baseline (same run) | ours / baseline | target | met |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|");
        for r in &self.rows {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} |",
                r.section,
                r.metric,
                r.ours,
                r.baseline,
                r.ratio
                    .map(|x| format!("{x:.2}"))
                    .unwrap_or_else(|| "–".into()),
                r.target,
                match r.met {
                    Some(true) => "yes",
                    Some(false) => "**no**",
                    None => "–",
                }
            );
        }
        out
    }
}

fn records(n: usize) -> Vec<Record> {
    (0..n)
        .map(|i| {
            [
                ("id", format!("rec-{i:07}")),
                ("name", format!("Category number {i}")),
                ("display_order", i.to_string()),
                ("featured", (i % 3 == 0).to_string()),
                (
                    "parent_id",
                    if i % 5 == 0 {
                        String::new()
                    } else {
                        format!("rec-{:07}", i / 5)
                    },
                ),
            ]
            .into_iter()
            .collect()
        })
        .collect()
}

async fn flushall(conn: &mut MultiplexedConnection) -> Result<()> {
    redis::cmd("FLUSHALL").query_async::<()>(conn).await?;
    Ok(())
}

fn resp(args: &[&str], out: &mut Vec<u8>) {
    let _ = write!(out, "*{}\r\n", args.len());
    for a in args {
        let _ = write!(out, "${}\r\n{}\r\n", a.len(), a);
    }
}

/// The same DEL + HSET + EXPIRE per record as `bulk_load`, as raw RESP for
/// `redis-cli --pipe`.
fn pipe_file(records: &[Record], prefix: &str, ttl: u64, path: &Path) -> Result<()> {
    let mut buf = Vec::with_capacity(records.len() * 200);
    let ttl = ttl.to_string();
    for r in records {
        let key = format!("{prefix}{}", r.id().unwrap_or_default());
        resp(&["DEL", &key], &mut buf);
        let mut hset = vec!["HSET", key.as_str()];
        for (k, v) in r.fields() {
            hset.push(k);
            hset.push(v);
        }
        resp(&hset, &mut buf);
        resp(&["EXPIRE", &key, &ttl], &mut buf);
    }
    std::fs::write(path, buf)?;
    Ok(())
}

async fn bulk_load(redis: &TestRedis, s: &Settings, report: &mut Report) -> Result<()> {
    println!("\n== bulk load");
    let dir = bench_dir().join("pipe");
    std::fs::create_dir_all(&dir)?;
    let mut conn = redis.conn().await;
    for &n in &s.bulk_sizes {
        let recs = records(n);
        let prefix = "bench:bulk:";
        let file = dir.join(format!("bulk-{n}.resp"));
        pipe_file(&recs, prefix, 3600, &file)?;
        let mut ours = Vec::new();
        let mut pipe = Vec::new();
        for _ in 0..s.reps {
            flushall(&mut conn).await?;
            let cache = PrefetchCache::new(
                redis.conn().await,
                CacheConfig {
                    prefix: prefix.into(),
                    ttl: Duration::from_secs(3600),
                },
            );
            let t = Instant::now();
            let loaded = cache.bulk_load(&recs).await?;
            ours.push(t.elapsed().as_secs_f64() * 1000.0);
            assert_eq!(loaded, n);

            flushall(&mut conn).await?;
            let t = Instant::now();
            let out = Command::new("redis-cli")
                .args(["-p", &redis.port.to_string(), "--pipe"])
                .stdin(std::fs::File::open(&file)?)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .output()?;
            pipe.push(t.elapsed().as_secs_f64() * 1000.0);
            let text = String::from_utf8_lossy(&out.stdout);
            if !text.contains("errors: 0") {
                return Err(format!("redis-cli --pipe failed: {text}").into());
            }
        }
        let (o, p) = (Spread::of(ours), Spread::of(pipe));
        let ratio = o.median / p.median;
        let target = if n == 100_000 {
            "≤ 1.15× at 100k"
        } else {
            "–"
        };
        let met = (n == 100_000).then_some(ratio <= 1.15);
        report.row(
            "bulk load",
            format!("{n} records (DEL+HSET+EXPIRE each)"),
            o.show("ms"),
            format!("redis-cli --pipe {}", p.show("ms")),
            Some(ratio),
            target,
            met,
        );
        report.data(
            &format!("bulk_load_{n}"),
            serde_json::json!({"ours_ms": o.median, "ours_min": o.min, "ours_max": o.max,
                               "pipe_ms": p.median, "pipe_min": p.min, "pipe_max": p.max, "ratio": ratio}),
        );
    }
    flushall(&mut conn).await?;
    Ok(())
}

/// Latency percentiles (microseconds) of a set of reads.
#[derive(Clone, Copy, Debug)]
struct ReadRun {
    p50: f64,
    p99: f64,
    p999: f64,
}

fn percentile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[idx] as f64 / 1000.0
}

fn summarize(mut nanos: Vec<u64>) -> ReadRun {
    nanos.sort_unstable();
    ReadRun {
        p50: percentile(&nanos, 0.50),
        p99: percentile(&nanos, 0.99),
        p999: percentile(&nanos, 0.999),
    }
}

async fn run_reads<F, Fut>(total: usize, callers: usize, op: F) -> Result<(Vec<u64>, Duration)>
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
fn redis_benchmark(
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

async fn read_path(redis: &TestRedis, s: &Settings, report: &mut Report) -> Result<()> {
    println!("\n== read path");
    let prefix = "bench:read:";
    let cache = PrefetchCache::new(
        redis.conn().await,
        CacheConfig {
            prefix: prefix.into(),
            ttl: Duration::from_secs(3600),
        },
    );
    cache.bulk_load(&prefetch::seed_records()).await?;
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
                    let hit = c.get("cat-002").await?.hit;
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

async fn sync_path(redis: &TestRedis, s: &Settings, report: &mut Report) -> Result<()> {
    println!("\n== sync");
    let n_ids = 10_000usize;
    let recs = records(n_ids);
    let events = prefetch::EventBus::new(16);
    let (primary, feed) =
        prefetch::MockPrimary::with_records(recs.clone(), Duration::ZERO, events.clone());
    let config = EngineConfig {
        cache: CacheConfig {
            prefix: "bench:sync:".into(),
            ttl: Duration::from_secs(3600),
        },
        primary_read_latency: Duration::ZERO,
        ..EngineConfig::default()
    };
    let (engine, _) = Engine::start_with(redis.conn().await, primary, feed, events, config).await?;

    // Burst: 1,000 updates on distinct ids, until the worker has applied all.
    let mut burst = Vec::new();
    let mut raw = Vec::new();
    let mut conn = redis.conn().await;
    for rep in 0..s.reps {
        let t = Instant::now();
        for i in 0..1000 {
            engine.update_field(&format!("rec-{i:07}"), "name", &format!("burst {rep} {i}"))?;
        }
        engine.settle(Duration::from_secs(10)).await?;
        burst.push(t.elapsed().as_secs_f64() * 1000.0);

        // The limit: the same 1,000 upserts as one MULTI/EXEC pipeline.
        let mut pipe = redis::pipe();
        pipe.atomic();
        for r in recs.iter().take(1000) {
            let key = format!("bench:raw:{}", r.id().unwrap_or_default());
            pipe.del(&key).ignore();
            pipe.cmd("HSET").arg(&key).arg(r.fields()).ignore();
            pipe.expire(&key, 3600).ignore();
        }
        let t = Instant::now();
        pipe.query_async::<()>(&mut conn).await?;
        raw.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let (b, r) = (Spread::of(burst), Spread::of(raw));
    report.row(
        "sync",
        "burst of 1,000 updates until all visible in Redis",
        b.show("ms"),
        format!("one raw MULTI/EXEC of the same writes {}", r.show("ms")),
        Some(b.median / r.median),
        "≤ 10 ms",
        Some(b.median <= 10.0),
    );
    report.data(
        "sync_burst_ms",
        serde_json::json!({"ours": b.median, "min": b.min, "max": b.max, "raw": r.median}),
    );

    // Sustained: rising rates for a fixed time each, until p99 lag > 10 ms.
    let mut best: Option<u64> = None;
    let mut steps = Vec::new();
    for &rate in &s.sustain_rates {
        engine.settle(Duration::from_secs(10)).await?;
        engine.cache().reset_stats();
        let achieved = sustain(&engine, rate, Duration::from_secs(s.sustain_secs), n_ids).await;
        engine.settle(Duration::from_secs(30)).await?;
        let st = engine.cache().stats();
        let held = st.sync_lag_ms_p99 <= 10.0 && achieved >= rate as f64 * 0.95;
        println!(
            "  target {rate}/s: achieved {achieved:.0}/s, lag p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, {} batches",
            st.sync_lag_ms_p50, st.sync_lag_ms_p99, st.sync_lag_ms_max, st.sync_batches
        );
        steps.push(
            serde_json::json!({"target": rate, "achieved": achieved, "p50": st.sync_lag_ms_p50,
            "p99": st.sync_lag_ms_p99, "max": st.sync_lag_ms_max, "batches": st.sync_batches,
            "events": st.sync_events_applied}),
        );
        report.row(
            "sync",
            format!(
                "sustained {rate} updates/s for {} s ({n_ids} ids)",
                s.sustain_secs
            ),
            format!(
                "achieved {achieved:.0}/s; lag p50 {:.2} ms, p99 {:.2} ms",
                st.sync_lag_ms_p50, st.sync_lag_ms_p99
            ),
            format!(
                "{} round trips for {} events",
                st.sync_batches, st.sync_events_applied
            ),
            None,
            "p99 ≤ 10 ms",
            Some(held),
        );
        if held {
            best = Some(rate);
        } else {
            break;
        }
    }
    let best_rate = best.unwrap_or(0);
    report.row(
        "sync",
        "highest rate held with p99 lag ≤ 10 ms",
        format!("{best_rate} events/s"),
        "–",
        None,
        "≥ 50,000/s",
        Some(best_rate >= 50_000),
    );
    report.data(
        "sync_sustained",
        serde_json::json!({"steps": steps, "best": best_rate}),
    );
    engine.shutdown(Duration::from_secs(5)).await?;
    Ok(())
}

/// Mutates at `rate` per second for `duration` from a dedicated thread;
/// returns the achieved rate.
async fn sustain(
    engine: &Engine<MultiplexedConnection>,
    rate: u64,
    duration: Duration,
    ids: usize,
) -> f64 {
    let engine = engine.clone();
    let thread = std::thread::spawn(move || {
        let started = Instant::now();
        let mut sent = 0u64;
        let mut i = 0usize;
        while started.elapsed() < duration {
            let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
            while sent < due {
                i = (i + 7919) % ids;
                let _ = engine.update_field(&format!("rec-{i:07}"), "name", "sustained");
                sent += 1;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        sent as f64 / started.elapsed().as_secs_f64()
    });
    tokio::task::spawn_blocking(move || thread.join().unwrap_or(0.0))
        .await
        .unwrap_or(0.0)
}

async fn memory(redis: &TestRedis, report: &mut Report) -> Result<()> {
    println!("\n== memory");
    let mut conn = redis.conn().await;
    flushall(&mut conn).await?;
    let used = |info: String| -> f64 {
        info.lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(f64::NAN)
    };
    let before = used(
        redis::cmd("INFO")
            .arg("memory")
            .query_async(&mut conn)
            .await?,
    );
    let n = 10_000;
    let cache = PrefetchCache::new(
        redis.conn().await,
        CacheConfig {
            prefix: "bench:mem:".into(),
            ttl: Duration::from_secs(3600),
        },
    );
    cache.bulk_load(&records(n)).await?;
    let after = used(
        redis::cmd("INFO")
            .arg("memory")
            .query_async(&mut conn)
            .await?,
    );
    let mut total = 0u64;
    let sample = 1000;
    for i in (0..n).step_by(n / sample) {
        let bytes: u64 = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(format!("bench:mem:rec-{i:07}"))
            .arg("SAMPLES")
            .arg(0)
            .query_async(&mut conn)
            .await?;
        total += bytes;
    }
    let per_key = total as f64 / sample as f64;
    let per_record = (after - before) / n as f64;
    report.row(
        "memory",
        "Redis bytes per cached record (5 fields, with TTL)",
        format!("{per_key:.0} B (MEMORY USAGE, mean of {sample})"),
        format!("{per_record:.0} B (used_memory delta / {n})"),
        None,
        "–",
        None,
    );
    report.data(
        "memory_per_record",
        serde_json::json!({"memory_usage": per_key, "used_memory_delta": per_record}),
    );
    flushall(&mut conn).await?;
    Ok(())
}

struct ServerProc {
    child: Child,
    port: u16,
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(redis: &TestRedis) -> Result<ServerProc> {
    let bin = std::env::var("SERVER_BIN").unwrap_or_else(|_| "target/release/server".into());
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut child = Command::new(&bin)
        .args([
            "--redis-url",
            &redis.url,
            "--port",
            &port.to_string(),
            "--primary-latency-ms",
            "0",
        ])
        .args(["--cache-prefix", "bench:http:"])
        .env("RUST_LOG", "warn")
        .env("LEPTOS_SITE_ROOT", "target/site")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| {
            format!("cannot run {bin}: {e} (build with `cargo leptos build --release`)")
        })?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("server exited: {status}").into());
        }
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(ServerProc { child, port });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err("server did not start".into())
}

fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// `wrk --latency`: (requests/s, p50 ms, p99 ms).
fn wrk(url: &str, conns: usize, secs: u64) -> Result<(f64, f64, f64)> {
    let threads = conns.min(2);
    let out = Command::new("wrk")
        .args([
            "-t",
            &threads.to_string(),
            "-c",
            &conns.to_string(),
            "-d",
            &format!("{secs}s"),
        ])
        .args(["--latency", url])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let ms = |v: &str| -> f64 {
        let v = v.trim();
        let (num, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len()));
        let x: f64 = num.parse().unwrap_or(f64::NAN);
        match unit {
            "us" => x / 1000.0,
            "ms" => x,
            "s" => x * 1000.0,
            _ => f64::NAN,
        }
    };
    let pct = |p: &str| -> f64 {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(p).map(ms))
            .unwrap_or(f64::NAN)
    };
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("unexpected wrk output: {text}"))?;
    if text.contains("Non-2xx") || text.contains("Socket errors") {
        return Err(format!("wrk saw errors: {text}").into());
    }
    Ok((rps, pct("50%"), pct("99%")))
}

async fn http(redis: &TestRedis, s: &Settings, report: &mut Report) -> Result<()> {
    println!("\n== HTTP GET /read");
    let server = start_server(redis)?;
    let url = format!("http://127.0.0.1:{}/read?id=cat-001", server.port);
    let key = "bench:http:cat-001";
    // Warm up connections and code paths.
    let _ = wrk(&url, 4, 1)?;
    for conns in [4usize, 32] {
        let mut ours = Vec::new();
        let mut raw = Vec::new();
        let reps = s.reps.min(3);
        for _ in 0..reps {
            ours.push(wrk(&url, conns, s.http_secs)?);
            // As many requests as our run served, so both run about as long.
            let n = ((ours.last().map(|o| o.0).unwrap_or(10_000.0)) * s.http_secs as f64) as usize;
            raw.push(redis_benchmark(redis.port, conns, n.max(10_000), key)?);
        }
        let o_rps = Spread::of(ours.iter().map(|o| o.0).collect());
        let o_p50 = Spread::of(ours.iter().map(|o| o.1).collect());
        let o_p99 = Spread::of(ours.iter().map(|o| o.2).collect());
        let r_rps = Spread::of(raw.iter().map(|r| r.0).collect());
        let r_p99 = Spread::of(raw.iter().map(|r| r.2).collect());
        let share = o_rps.median / r_rps.median;
        let (target, met) = if conns == 32 {
            (
                "≥ 75 % of raw HGETALL, p99 ≤ 3 ms",
                Some(share >= 0.75 && o_p99.median <= 3.0),
            )
        } else {
            ("–", None)
        };
        report.row(
            "http",
            format!("GET /read, {conns} connections, {} s (wrk)", s.http_secs),
            format!(
                "{} req/s; p50 {} ms, p99 {} ms",
                o_rps.show(""),
                fmt_num(o_p50.median),
                fmt_num(o_p99.median)
            ),
            format!(
                "redis-benchmark HGETALL {} req/s; p99 {} ms",
                r_rps.show(""),
                fmt_num(r_p99.median)
            ),
            Some(share),
            target,
            met,
        );
        report.data(
            &format!("http_c{conns}"),
            serde_json::json!({"rps": o_rps.median, "rps_min": o_rps.min, "rps_max": o_rps.max,
                "p50_ms": o_p50.median, "p99_ms": o_p99.median, "raw_rps": r_rps.median,
                "raw_p99_ms": r_p99.median, "share": share}),
        );
    }
    let rss = peak_rss_kib(server.child.id());
    report.row(
        "memory",
        "server peak RSS under the HTTP load",
        rss.map(|k| format!("{:.1} MiB", k as f64 / 1024.0))
            .unwrap_or_else(|| "n/a".into()),
        "–",
        None,
        "–",
        None,
    );
    report.data("server_peak_rss_kib", serde_json::json!(rss));
    Ok(())
}

fn gzip_len(path: &Path) -> Option<u64> {
    let out = Command::new("gzip")
        .args(["-9", "-c"])
        .arg(path)
        .output()
        .ok()?;
    Some(out.stdout.len() as u64)
}

fn page_weight(report: &mut Report) -> Result<()> {
    println!("\n== page weight");
    let pkg =
        PathBuf::from(std::env::var("LEPTOS_SITE_ROOT").unwrap_or_else(|_| "target/site".into()))
            .join("pkg");
    let mut total_raw = 0;
    let mut total_gz = 0;
    for ext in ["wasm", "js", "css"] {
        let path = pkg.join(format!("{}.{ext}", app::OUTPUT_NAME));
        let raw = std::fs::metadata(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .len();
        let gz = gzip_len(&path).unwrap_or(0);
        total_raw += raw;
        total_gz += gz;
        report.row(
            "page",
            format!("{}.{ext}", app::OUTPUT_NAME),
            format!(
                "{:.1} KB raw, {:.1} KB gzip",
                raw as f64 / 1000.0,
                gz as f64 / 1000.0
            ),
            "–",
            None,
            "–",
            None,
        );
    }
    report.row(
        "page",
        "total loaded by the page (wasm + js + css)",
        format!(
            "{:.1} KB raw, {:.1} KB gzip",
            total_raw as f64 / 1000.0,
            total_gz as f64 / 1000.0
        ),
        "–",
        None,
        "≤ 250 KB gzip",
        Some(total_gz <= 250_000),
    );
    report.data(
        "page_weight",
        serde_json::json!({"raw": total_raw, "gzip": total_gz}),
    );
    Ok(())
}

fn ui_latency(report: &mut Report) {
    let path = PathBuf::from("end2end/test-results/ui-latency.json");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return;
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
        return;
    };
    let ms = |side: &str, q: &str| v[side][q].as_f64().unwrap_or(f64::NAN);
    let ratio = ms("cache_column_ms", "p50") / ms("fetch_round_trip_ms", "p50");
    report.row(
        "ui",
        "mutation request → DOM, cache column (Playwright in Chromium, release build, 50 updates)",
        format!(
            "p50 {} ms, p95 {} ms (primary column p50 {} ms)",
            fmt_num(ms("cache_column_ms", "p50")),
            fmt_num(ms("cache_column_ms", "p95")),
            fmt_num(ms("primary_column_ms", "p50"))
        ),
        format!(
            "bare fetch round trip in the same page: p50 {} ms, p95 {} ms",
            fmt_num(ms("fetch_round_trip_ms", "p50")),
            fmt_num(ms("fetch_round_trip_ms", "p95"))
        ),
        Some(ratio),
        "–",
        None,
    );
    report.data("ui_latency", v);
}

/// `BENCH_ONLY=bulk,http` runs only those sections (default: all).
fn wanted(section: &str) -> bool {
    match std::env::var("BENCH_ONLY") {
        Ok(only) if !only.trim().is_empty() => only.split(',').any(|s| s.trim() == section),
        _ => true,
    }
}

fn bench_dir() -> PathBuf {
    PathBuf::from("target/bench")
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_owned())
        })
        .and_then(|k| k.parse::<f64>().ok())
        .map(|k| format!("{:.0} GiB", k / 1024.0 / 1024.0))
        .unwrap_or_default();
    let redis = Command::new("redis-server")
        .arg("--version")
        .output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .nth(2)
                .unwrap_or("")
                .trim_start_matches("v=")
                .to_owned()
        })
        .unwrap_or_default();
    format!("{cores} cores ({cpu}), {mem} RAM, redis-server {redis}")
}

fn main() -> Result<()> {
    // Cargo runs benches from the package directory; paths here are relative
    // to the workspace root (target/release/server, target/site, end2end/).
    if let Some(root) = Path::new(env!("CARGO_MANIFEST_DIR")).parent() {
        std::env::set_current_dir(root)?;
    }
    let s = Settings::from_env();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut report = Report::default();
    let started = Instant::now();
    runtime.block_on(async {
        let redis = TestRedis::spawn_own(false);
        println!("benchmark redis-server on port {}", redis.port);
        if wanted("bulk") {
            bulk_load(&redis, &s, &mut report).await?;
        }
        if wanted("read") {
            read_path(&redis, &s, &mut report).await?;
        }
        if wanted("sync") {
            sync_path(&redis, &s, &mut report).await?;
        }
        if wanted("memory") {
            memory(&redis, &mut report).await?;
        }
        if wanted("http") {
            http(&redis, &s, &mut report).await?;
        }
        Ok::<_, BoxError>(())
    })?;
    if wanted("page") {
        page_weight(&mut report)?;
    }
    if wanted("ui") {
        ui_latency(&mut report);
    }

    let header = format!(
        "Benchmark run: {} reps, {:.0} s, {}",
        s.reps,
        started.elapsed().as_secs_f64(),
        machine()
    );
    let md = report.markdown(&header);
    println!("\n{md}");
    std::fs::create_dir_all(bench_dir())?;
    std::fs::write(bench_dir().join("report.md"), &md)?;
    report.data("machine", serde_json::json!(machine()));
    report.data("reps", serde_json::json!(s.reps));
    std::fs::write(
        bench_dir().join("report.json"),
        serde_json::to_string_pretty(&report.json)?,
    )?;
    println!("wrote target/bench/report.md and target/bench/report.json");
    Ok(())
}
