//! The sync path: bursts and sustained rates of versioned applies, the
//! guard's cost next to a raw `MULTI`/`EXEC` of the same writes, and a
//! re-prefetch under 32 readers.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use prefetch::{Change, EventBus, MockPrimary, Version};

use super::*;

pub(super) type SyncEngine = Engine<MockPrimary, MultiplexedConnection>;

/// An engine over the mock holding `recs`; with `split`, writes get a
/// connection of their own (as the server runs it).
pub(super) async fn mock_engine(
    redis: &TestRedis,
    prefix: &str,
    recs: Vec<Record>,
    split: bool,
) -> Result<(SyncEngine, prefetch::PrefetchReport)> {
    let events = EventBus::new(16);
    let primary = Arc::new(MockPrimary::with_records(
        recs,
        Duration::ZERO,
        events.clone(),
    ));
    let config = EngineConfig {
        cache: CacheConfig {
            prefix: prefix.into(),
            ..CacheConfig::default()
        },
        ..EngineConfig::default()
    };
    let reads = redis.conn().await;
    let writes = if split {
        redis.conn().await
    } else {
        reads.clone()
    };
    Ok(Engine::start_with_writer(reads, writes, primary, events, config).await?)
}

pub async fn sync_path(redis: &TestRedis, s: &Settings, report: &mut Report) -> Result<()> {
    println!("\n== sync");
    let n_ids = 10_000usize;
    let recs = records(n_ids);
    let (engine, _) = mock_engine(redis, "bench:sync:", recs.clone(), true).await?;

    // Burst: 1,000 updates on distinct ids, until the worker has applied all.
    let mut burst = Vec::new();
    let mut raw = Vec::new();
    let mut conn = redis.conn().await;
    for rep in 0..s.reps {
        let t = Instant::now();
        for i in 0..1000 {
            engine.source().update_field(
                &format!("rec-{i:07}"),
                "name",
                &format!("burst {rep} {i}"),
            )?;
        }
        engine.settle(Duration::from_secs(10)).await?;
        burst.push(t.elapsed().as_secs_f64() * 1000.0);
        raw.push(raw_multi_exec(&mut conn, &recs[..1000]).await?);
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
        // One run; a rate that misses is run twice more and judged on the
        // median p99 of the three (one scheduler hiccup on this shared VM
        // can put a single run's p99 at 20 ms).
        let mut runs = vec![sustain_once(&engine, rate, s, n_ids).await?];
        if !runs[0].held(rate) {
            for _ in 0..2 {
                runs.push(sustain_once(&engine, rate, s, n_ids).await?);
            }
        }
        runs.sort_by(|a, b| a.p99.total_cmp(&b.p99));
        let tries = runs.len();
        let run = runs.swap_remove(tries / 2);
        let held = run.held(rate);
        let SustainRun {
            achieved,
            p50,
            p99,
            max,
            batches,
            events,
        } = run;
        println!(
            "  target {rate}/s: achieved {achieved:.0}/s, lag p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms, {batches} batches (median of {tries})",
        );
        steps.push(
            serde_json::json!({"target": rate, "achieved": achieved, "p50": p50,
            "p99": p99, "max": max, "batches": batches, "events": events, "runs": tries}),
        );
        report.row(
            "sync",
            format!(
                "sustained {rate} updates/s for {} s ({n_ids} ids), versioned",
                s.sustain_secs
            ),
            format!(
                "achieved {achieved:.0}/s; lag p50 {p50:.2} ms, p99 {p99:.2} ms{}",
                if tries > 1 { " (median of 3 runs)" } else { "" }
            ),
            format!("{batches} calls for {events} events"),
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
        "highest rate held with p99 lag ≤ 10 ms (versioned applies)",
        format!("{best_rate} events/s"),
        "–",
        None,
        "≥ 100,000/s",
        Some(best_rate >= 100_000),
    );
    report.data(
        "sync_sustained",
        serde_json::json!({"steps": steps, "best": best_rate}),
    );
    guard_cost(redis, s, report, &engine, &recs).await?;
    engine.shutdown(Duration::from_secs(5)).await?;
    Ok(())
}

/// One sustained run's figures (lag in ms).
struct SustainRun {
    achieved: f64,
    p50: f64,
    p99: f64,
    max: f64,
    batches: u64,
    events: u64,
}

impl SustainRun {
    fn held(&self, rate: u64) -> bool {
        self.p99 <= 10.0 && self.achieved >= rate as f64 * 0.95
    }
}

async fn sustain_once(
    engine: &SyncEngine,
    rate: u64,
    s: &Settings,
    n_ids: usize,
) -> Result<SustainRun> {
    engine.settle(Duration::from_secs(10)).await?;
    engine.cache().reset_stats();
    let achieved = sustain(engine, rate, Duration::from_secs(s.sustain_secs), n_ids).await;
    engine.settle(Duration::from_secs(30)).await?;
    let st = engine.cache().stats();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    Ok(SustainRun {
        achieved,
        p50: ms(st.sync_lag.p50),
        p99: ms(st.sync_lag.p99),
        max: ms(st.sync_lag.max),
        batches: st.sync_batches,
        events: st.sync_events_applied,
    })
}

/// The guard's cost: upserts in 4,096-change calls, versioned (`pf1_apply`)
/// against raw `MULTI`/`EXEC` (`DEL` + `HSET` + `EXPIRE`) of the same
/// writes. Runs last: its versions are far ahead of the mock's, so every
/// later change of the mock to these ids would be refused as stale.
async fn guard_cost(
    redis: &TestRedis,
    s: &Settings,
    report: &mut Report,
    engine: &SyncEngine,
    recs: &[Record],
) -> Result<()> {
    let n_ids = recs.len();
    // The guard's cost: 100,000 upserts in 4,096-change calls, versioned
    // (pf1_apply) against raw MULTI/EXEC (DEL + HSET + EXPIRE), same writes.
    let total = if s.reps <= 2 { 20_000 } else { 100_000 };
    let mut guarded = Vec::new();
    let mut unguarded = Vec::new();
    let cache = engine.cache().clone();
    let mut conn = redis.conn().await;
    let mut commit = 1u64 << 40;
    for _ in 0..s.reps {
        let t = Instant::now();
        let mut done = 0;
        while done < total {
            let batch: Vec<Change> = (0..4096.min(total - done))
                .map(|i| {
                    commit += 1;
                    let r = &recs[(done + i) % n_ids];
                    Change::upsert(
                        r.id().unwrap_or_default(),
                        r.fields().clone(),
                        Version::new(commit, 0),
                    )
                })
                .collect();
            cache
                .apply_batch(&batch, Some(Version::new(commit, 0)))
                .await?;
            done += batch.len();
        }
        guarded.push(total as f64 / t.elapsed().as_secs_f64());
        let t = Instant::now();
        let mut done = 0;
        while done < total {
            let n = 4096.min(total - done);
            let chunk: Vec<Record> = (0..n).map(|i| recs[(done + i) % n_ids].clone()).collect();
            raw_multi_exec(&mut conn, &chunk).await?;
            done += n;
        }
        unguarded.push(total as f64 / t.elapsed().as_secs_f64());
    }
    let (g, u) = (Spread::of(guarded), Spread::of(unguarded));
    report.row(
        "sync",
        format!("apply {total} upserts in 4,096-change calls (version-guarded)"),
        g.show("writes/s"),
        format!("raw MULTI/EXEC of the same writes {}", u.show("writes/s")),
        Some(g.median / u.median),
        "–",
        None,
    );
    report.data(
        "sync_guard_cost",
        serde_json::json!({"guarded_per_s": g.median, "raw_per_s": u.median}),
    );

    Ok(())
}

/// The same upserts as the guard writes, without the guard: one atomic
/// `MULTI`/`EXEC` of `DEL` + `HSET` + `EXPIRE` per record. Returns ms.
async fn raw_multi_exec(conn: &mut MultiplexedConnection, recs: &[Record]) -> Result<f64> {
    let mut pipe = redis::pipe();
    pipe.atomic();
    for r in recs {
        let key = format!("bench:raw:{}", r.id().unwrap_or_default());
        pipe.del(&key).ignore();
        pipe.cmd("HSET").arg(&key).arg(r.fields()).ignore();
        pipe.expire(&key, 3600).ignore();
    }
    let t = Instant::now();
    pipe.query_async::<()>(conn).await?;
    Ok(t.elapsed().as_secs_f64() * 1000.0)
}

/// Mutates at `rate` per second for `duration` from a dedicated thread;
/// returns the achieved rate.
async fn sustain(engine: &SyncEngine, rate: u64, duration: Duration, ids: usize) -> f64 {
    let primary = engine.source().clone();
    let thread = std::thread::spawn(move || {
        let started = Instant::now();
        let mut sent = 0u64;
        let mut i = 0usize;
        while started.elapsed() < duration {
            let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
            while sent < due {
                i = (i + 7919) % ids;
                let _ = primary.update_field(&format!("rec-{i:07}"), "name", "sustained");
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

/// Re-prefetch of 100,000 records while 32 readers read ids that exist
/// throughout: their misses (must be 0), and their p99 during the
/// re-prefetch next to the same readers idle.
pub async fn reprefetch(redis: &TestRedis, s: &Settings, report: &mut Report) -> Result<()> {
    println!("\n== re-prefetch under readers");
    let n = if s.reps <= 2 { 10_000 } else { 100_000 };
    let readers = 32usize;
    // As the server runs (reads and writes on two connections), then with
    // one shared connection for comparison.
    let split = under_readers(redis, s, n, readers, true).await?;
    let shared = under_readers(redis, s, n, readers, false).await?;
    let (t, d, i) = (&split.took, &split.during, &split.idle);
    let (misses, reads) = (split.misses + shared.misses, split.reads + shared.reads);
    report.row(
        "re-prefetch",
        format!("{n} records, no pause, while {readers} readers read"),
        format!("{}; {misses} misses in {reads} reads", t.show("ms")),
        "–",
        None,
        "0 misses",
        Some(misses == 0),
    );
    report.row(
        "re-prefetch",
        format!(
            "reader p99 during the re-prefetch ({readers} readers, writes on their own connection)"
        ),
        d.show("ms"),
        format!("same readers, idle {}", i.show("ms")),
        Some(d.median / i.median),
        "–",
        None,
    );
    report.row(
        "re-prefetch",
        "reader p99 during the re-prefetch, reads and writes sharing one connection".to_owned(),
        shared.during.show("ms"),
        format!("same readers, idle {}", shared.idle.show("ms")),
        Some(shared.during.median / shared.idle.median),
        "–",
        None,
    );
    report.data(
        "reprefetch_under_readers",
        serde_json::json!({"records": n, "elapsed_ms": t.median, "misses": misses, "reads": reads,
            "p99_during_ms": d.median, "p99_idle_ms": i.median,
            "shared_connection": {"elapsed_ms": shared.took.median,
                "p99_during_ms": shared.during.median, "p99_idle_ms": shared.idle.median}}),
    );
    Ok(())
}

/// What the readers saw around re-prefetches of one engine.
struct UnderReaders {
    idle: Spread,
    during: Spread,
    took: Spread,
    misses: u64,
    reads: usize,
}

async fn under_readers(
    redis: &TestRedis,
    s: &Settings,
    n: usize,
    readers: usize,
    split: bool,
) -> Result<UnderReaders> {
    let prefix = if split {
        "bench:reprefetch:"
    } else {
        "bench:reprefetch1:"
    };
    let (engine, _) = mock_engine(redis, prefix, records(n), split).await?;
    let ids: Arc<Vec<String>> = Arc::new((0..n).map(|i| format!("rec-{i:07}")).collect());

    let run = |during: bool| {
        let engine = engine.clone();
        let ids = ids.clone();
        async move {
            let stop = Arc::new(AtomicBool::new(false));
            let misses = Arc::new(AtomicU64::new(0));
            let tasks: Vec<_> = (0..readers)
                .map(|r| {
                    let (engine, ids, stop, misses) =
                        (engine.clone(), ids.clone(), stop.clone(), misses.clone());
                    tokio::spawn(async move {
                        let mut lat = Vec::new();
                        let mut i = r * 3001;
                        while !stop.load(Ordering::Relaxed) {
                            let t = Instant::now();
                            let hit = engine.cache().get(&ids[i % ids.len()]).await?.hit();
                            lat.push(u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX));
                            if !hit {
                                misses.fetch_add(1, Ordering::Relaxed);
                            }
                            i += 7919;
                        }
                        Ok::<_, BoxError>(lat)
                    })
                })
                .collect();
            let took = if during {
                let t = Instant::now();
                engine.reprefetch().await?;
                t.elapsed()
            } else {
                tokio::time::sleep(Duration::from_secs(2)).await;
                Duration::ZERO
            };
            stop.store(true, Ordering::Relaxed);
            let mut all = Vec::new();
            for t in tasks {
                all.extend(t.await??);
            }
            all.sort_unstable();
            let p99 = all
                .get((all.len() * 99 / 100).min(all.len().saturating_sub(1)))
                .copied()
                .unwrap_or(0) as f64
                / 1e6;
            Ok::<_, BoxError>((p99, misses.load(Ordering::Relaxed), all.len(), took))
        }
    };
    let mut idle = Vec::new();
    let mut during = Vec::new();
    let mut took = Vec::new();
    let mut misses = 0;
    let mut reads = 0;
    for _ in 0..s.reps.min(3) {
        idle.push(run(false).await?.0);
        let (p99, m, r, t) = run(true).await?;
        during.push(p99);
        misses += m;
        reads += r;
        took.push(t.as_secs_f64() * 1000.0);
    }
    engine.shutdown(Duration::from_secs(5)).await?;
    // The shared-connection engine's keys go, so memory figures later see
    // one copy.
    engine.cache().reset().await?;
    Ok(UnderReaders {
        idle: Spread::of(idle),
        during: Spread::of(during),
        took: Spread::of(took),
        misses,
        reads,
    })
}
