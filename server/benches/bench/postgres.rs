//! PostgreSQL as the primary: the initial load of a large table next to
//! `COPY … TO STDOUT` plus `redis-cli --pipe` of the same rows, and changes
//! from concurrent writers (commit to visible in Redis) next to
//! PostgreSQL's own commit rate with no consumer attached.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use futures::StreamExt;
use prefetch::EventBus;
use prefetch_pg::launcher::PostgresServer;
use prefetch_pg::{PgConfig, PgSource};
use tokio_postgres::{Client, NoTls};

use super::*;

async fn connect(url: &str) -> Result<Client> {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

async fn fresh_table(sql: &Client, rows: usize) -> Result<()> {
    sql.batch_execute(&format!(
        "DROP TABLE IF EXISTS categories;
         CREATE TABLE categories (
            id text PRIMARY KEY,
            name text NOT NULL,
            display_order integer NOT NULL DEFAULT 99,
            featured boolean NOT NULL DEFAULT false,
            parent_id text NOT NULL DEFAULT ''
         );
         INSERT INTO categories
            SELECT 'rec-' || lpad(g::text, 7, '0'), 'Category number ' || g, g, g % 3 = 0,
                   CASE WHEN g % 5 = 0 THEN '' ELSE 'rec-' || lpad((g / 5)::text, 7, '0') END
            FROM generate_series(0, {}) g;",
        rows - 1
    ))
    .await?;
    // On its own: VACUUM refuses to run inside the batch's implicit
    // transaction.
    sql.batch_execute("VACUUM ANALYZE categories").await?;
    Ok(())
}

async fn drop_slots(sql: &Client) -> Result<()> {
    sql.batch_execute(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE NOT active",
    )
    .await?;
    Ok(())
}

async fn engine(
    redis: &TestRedis,
    url: &str,
    prefix: &str,
) -> Result<(
    Engine<PgSource, MultiplexedConnection>,
    prefetch::PrefetchReport,
)> {
    let events = EventBus::default();
    let source = PgSource::connect(PgConfig::new(url, "categories"), events.clone()).await?;
    let config = EngineConfig {
        cache: CacheConfig {
            prefix: prefix.into(),
            ..CacheConfig::default()
        },
        ..EngineConfig::default()
    };
    Ok(Engine::start(redis.conn().await, source, events, config).await?)
}

pub async fn postgres(redis: &TestRedis, s: &Settings, report: &mut Report) -> Result<()> {
    println!("\n== postgres");
    let pg = tokio::task::spawn_blocking(PostgresServer::start).await??;
    let url = pg.url("postgres");
    let sql = connect(&url).await?;
    let mut conn = redis.conn().await;
    initial_load(redis, s, report, &pg, &url, &sql, &mut conn).await?;
    sustained(redis, s, report, (&url, pg.bin()), &sql, &mut conn).await?;
    drop(sql);
    tokio::task::spawn_blocking(move || drop(pg)).await?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn initial_load(
    redis: &TestRedis,
    s: &Settings,
    report: &mut Report,
    pg: &PostgresServer,
    url: &str,
    sql: &Client,
    conn: &mut MultiplexedConnection,
) -> Result<()> {
    let rows = if s.reps <= 2 { 100_000 } else { 1_000_000 };
    fresh_table(sql, rows).await?;
    let reps = s.reps.min(3);
    let mut ours = Vec::new();
    let mut copy = Vec::new();
    let mut pipe = Vec::new();
    let dir = bench_dir().join("pipe");
    std::fs::create_dir_all(&dir)?;
    let file = dir.join(format!("pg-{rows}.resp"));
    for rep in 0..reps {
        flushall(conn).await?;
        drop_slots(sql).await?;
        let t = Instant::now();
        let (engine, loaded) = engine(redis, url, "bench:pg:").await?;
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        assert_eq!(loaded.loaded, rows, "every row loaded");
        ours.push(ms);
        engine.shutdown(Duration::from_secs(5)).await?;
        engine.source().close();
        drop(engine);

        // Baseline: the same rows out of PostgreSQL with COPY, then the same
        // writes into Redis with redis-cli --pipe.
        let t = Instant::now();
        let stream = sql
            .copy_out("COPY (SELECT id, name, display_order::text, featured::text, parent_id FROM categories) TO STDOUT")
            .await?;
        futures::pin_mut!(stream);
        let mut text: Vec<u8> = Vec::new();
        while let Some(chunk) = stream.next().await {
            text.extend_from_slice(&chunk?);
        }
        copy.push(t.elapsed().as_secs_f64() * 1000.0);
        if rep == 0 {
            let mut recs = Vec::with_capacity(rows);
            recs.extend(
                String::from_utf8_lossy(&text)
                    .lines()
                    .filter_map(copy_record),
            );
            pipe_file(&recs, "bench:pgpipe:", 3600, &file)?;
        }
        flushall(conn).await?;
        pipe.push(redis_cli_pipe(redis, &file)?);
    }
    let _ = pg;
    let (o, c, p) = (Spread::of(ours), Spread::of(copy), Spread::of(pipe));
    let baseline = c.median + p.median;
    report.row(
        "postgres",
        format!("initial load of {rows} rows (slot + snapshot + Redis), from start to serving"),
        o.show("ms"),
        format!(
            "COPY TO STDOUT {} + redis-cli --pipe {} = {} ms",
            c.show("ms"),
            p.show("ms"),
            fmt_num(baseline)
        ),
        Some(o.median / baseline),
        "–",
        None,
    );
    report.data(
        "pg_initial_load",
        serde_json::json!({"rows": rows, "ours_ms": o.median, "copy_ms": c.median, "pipe_ms": p.median}),
    );
    Ok(())
}

/// Writers run single-row UPDATEs (autocommit) for `secs` at `rate` per
/// second in total (0: as fast as they can); returns the achieved rate.
async fn writers(url: &str, rate: u64, secs: u64, n: usize) -> Result<f64> {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..n {
        let (url, stop, done) = (url.to_owned(), stop.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let sql = connect(&url).await?;
            let stmt = sql
                .prepare("UPDATE categories SET name = $2 WHERE id = $1")
                .await?;
            let mut i = w as u64;
            while !stop.load(Ordering::Relaxed) {
                if rate > 0 {
                    let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
                    if done.load(Ordering::Relaxed) >= due {
                        tokio::time::sleep(Duration::from_micros(200)).await;
                        continue;
                    }
                }
                i = (i + 7919) % 10_000;
                let id = format!("rec-{i:07}");
                sql.execute(&stmt, &[&id, &format!("w{w} {i}")]).await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, BoxError>(())
        }));
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

/// The writers flat out with PostgreSQL's own bare consumer attached:
/// `pg_recvlogical` decoding the same table with `pgoutput` to /dev/null
/// (the least a logical replication client can cost PostgreSQL).
async fn with_bare_consumer(
    url: &str,
    bin: &std::path::Path,
    sql: &Client,
    secs: u64,
    conns: usize,
) -> Result<f64> {
    sql.batch_execute(
        "DROP PUBLICATION IF EXISTS bench_bare;
         CREATE PUBLICATION bench_bare FOR TABLE categories",
    )
    .await?;
    let recv = bin.join("pg_recvlogical");
    let base = [
        "-d",
        url,
        "--slot",
        "bench_bare",
        "-P",
        "pgoutput",
        "-o",
        "proto_version=1",
        "-o",
        "publication_names=bench_bare",
    ];
    let created = std::process::Command::new(&recv)
        .args(base)
        .arg("--create-slot")
        .status()?;
    if !created.success() {
        return Err(format!("pg_recvlogical --create-slot: {created}").into());
    }
    let mut child = std::process::Command::new(&recv)
        .args(base)
        .args(["--start", "-F", "0", "-s", "1", "-f", "-"])
        .stdout(std::process::Stdio::null())
        .spawn()?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rate = writers(url, 0, secs, conns).await;
    // Let it catch up before it goes, so that nothing it left behind slows
    // the next measurement.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = child.kill();
    let _ = child.wait();
    drop_slots(sql).await?;
    sql.batch_execute("DROP PUBLICATION IF EXISTS bench_bare")
        .await?;
    rate
}

async fn sustained(
    redis: &TestRedis,
    s: &Settings,
    report: &mut Report,
    (url, bin): (&str, &std::path::Path),
    sql: &Client,
    conn: &mut MultiplexedConnection,
) -> Result<()> {
    fresh_table(sql, 10_000).await?;
    drop_slots(sql).await?;
    flushall(conn).await?;
    let secs = s.sustain_secs.clamp(1, 5);
    let conns = 8;
    // PostgreSQL alone: the same statements, flat out, nothing attached.
    let alone = writers(url, 0, secs, conns).await?;
    println!("  PostgreSQL alone: {alone:.0} commits/s");
    let bare = with_bare_consumer(url, bin, sql, secs, conns).await?;
    println!("  with pg_recvlogical attached: {bare:.0} commits/s");
    let (engine, _) = engine(redis, url, "bench:pgsync:").await?;
    let mut best = 0u64;
    let mut steps = Vec::new();
    for rate in [500u64, 1_000, 2_000, 4_000, 8_000, 12_000, 16_000] {
        if rate as f64 > alone * 1.2 {
            break;
        }
        engine.cache().reset_stats();
        let achieved = writers(url, rate, secs, conns).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let st = engine.cache().stats();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let (p50, p99) = (ms(st.sync_lag.p50), ms(st.sync_lag.p99));
        let held = p99 <= 50.0 && achieved >= rate as f64 * 0.9;
        println!(
            "  target {rate}/s: achieved {achieved:.0}/s, commit→Redis p50 {p50:.2} ms, p99 {p99:.2} ms ({} changes in {} batches)",
            st.sync_events_applied, st.sync_batches
        );
        steps.push(
            serde_json::json!({"target": rate, "achieved": achieved, "p50": p50, "p99": p99}),
        );
        report.row(
            "postgres",
            format!("{rate} single-row UPDATE commits/s from {conns} connections for {secs} s"),
            format!("achieved {achieved:.0}/s; commit → visible in Redis p50 {p50:.2} ms, p99 {p99:.2} ms"),
            format!("PostgreSQL alone, no consumer: {alone:.0} commits/s"),
            None,
            "p99 ≤ 50 ms",
            Some(held),
        );
        if held {
            best = rate;
        } else {
            break;
        }
    }
    // And flat out, with the consumer attached.
    engine.cache().reset_stats();
    let flat = writers(url, 0, secs, conns).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let st = engine.cache().stats();
    let p99 = st.sync_lag.p99.as_secs_f64() * 1000.0;
    report.row(
        "postgres",
        format!("writers flat out ({conns} connections), consumer attached"),
        format!("{flat:.0} commits/s; commit → Redis p99 {p99:.2} ms"),
        format!("PostgreSQL alone {alone:.0} commits/s"),
        Some(flat / alone),
        "the cache keeps up (p99 ≤ 50 ms)",
        Some(p99 <= 50.0),
    );
    report.row(
        "postgres",
        format!("writers flat out ({conns} connections): our consumer against the bare one"),
        format!("{flat:.0} commits/s"),
        format!("pg_recvlogical (pgoutput, to /dev/null) attached {bare:.0} commits/s"),
        Some(flat / bare),
        "≥ 0.9",
        Some(flat >= 0.9 * bare),
    );
    report.data(
        "pg_sustained",
        serde_json::json!({"alone": alone, "bare": bare, "steps": steps, "best": best, "flat": flat, "flat_p99": p99}),
    );
    engine.shutdown(Duration::from_secs(5)).await?;
    engine.source().close();
    Ok(())
}
