//! Many tables (`BENCH_TABLES`, default 10, of `BENCH_TABLE_ROWS` rows,
//! default 100,000), all declared in one tables file:
//!
//! - the release server's initial load from start to serving, next to
//!   `COPY … TO STDOUT` of each table plus `redis-cli --pipe` of the same
//!   writes (the same DEL + HSET + EXPIRE per row, keys `t{i}:{id}`);
//! - single-row UPDATEs spread over every table at a fixed rate, commit →
//!   visible in Redis, next to the same writers on one table of the same
//!   engine kind in the same run: many tables should cost nothing per
//!   change.

use std::io::{BufRead, BufReader, BufWriter};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use prefetch::EventBus;
use prefetch_pg::launcher::PostgresServer;
use prefetch_pg::tables::TablesFile;
use prefetch_pg::{PgConfig, PgSource};

use super::realsize::{Running, connect, copy_to_pipe};
use super::*;

fn count(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The release server on `url` with the tables file at `file`, once it
/// has loaded (its stdout drained in the background).
fn spawn(redis: &TestRedis, url: &str, file: &Path) -> Result<Running> {
    let port = prefetch::launcher::free_port()?;
    let mut child = Command::new(env!("CARGO_BIN_EXE_server"))
        .args(["--redis-url", &redis.url, "--port", &port.to_string()])
        .args(["--primary", url, "--config"])
        .arg(file)
        .args(["--primary-latency-ms", "0"])
        .env("LEPTOS_SITE_ROOT", super::common::site_root())
        .env("RUST_LOG", "warn,server=info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut lines = BufReader::new(child.stdout.take().ok_or("stdout")?).lines();
    for line in lines.by_ref() {
        if line?.contains("sync worker running") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    Ok(Running(child))
}

pub async fn tables(redis: &TestRedis, report: &mut Report) -> Result<()> {
    let (tables, rows) = (
        count("BENCH_TABLES", 10),
        count("BENCH_TABLE_ROWS", 100_000),
    );
    println!("\n== many tables ({tables} × {rows} rows)");
    let pg = tokio::task::spawn_blocking(PostgresServer::start).await??;
    let url = pg.url("postgres");
    let sql = connect(&url).await?;
    let mut file = String::new();
    for i in 0..tables {
        sql.batch_execute(&format!(
            "CREATE TABLE t{i} (id bigint PRIMARY KEY, name text NOT NULL,
                display_order int NOT NULL, featured bool NOT NULL, parent_id text NOT NULL);
             INSERT INTO t{i} SELECT g, 'Item ' || g, g % 100, g % 7 = 0, '' FROM generate_series(1, {rows}) g;"
        ))
        .await?;
        sql.batch_execute(&format!("VACUUM ANALYZE t{i}")).await?;
        file.push_str(&format!(
            "[[table]]\ntable = \"t{i}\"\nkey = \"t{i}:{{id}}\"\n\n"
        ));
    }
    let dir = bench_dir().join("pipe");
    std::fs::create_dir_all(&dir)?;
    let tables_file = dir.join("tables.toml");
    std::fs::write(&tables_file, file)?;

    // The baseline: COPY out of every table, the same writes through
    // redis-cli --pipe.
    let mut conn = redis.conn().await;
    flushall(&mut conn).await?;
    let pipe_file = dir.join("tables-all.resp");
    let mut copy_ms = 0.0;
    {
        let mut out = BufWriter::new(std::fs::File::create(&pipe_file)?);
        for i in 0..tables {
            copy_ms +=
                copy_to_pipe(&sql, &format!("t{i}"), &format!("t{i}:"), &mut out, None).await?;
        }
        std::io::Write::flush(&mut out)?;
    }
    let pipe_ms = redis_cli_pipe(redis, &pipe_file)?;
    let _ = std::fs::remove_file(&pipe_file);
    flushall(&mut conn).await?;
    println!("baseline: COPY {copy_ms:.0} ms + pipe {pipe_ms:.0} ms");

    let t = Instant::now();
    let server = spawn(redis, &url, &tables_file)?;
    let load_ms = t.elapsed().as_secs_f64() * 1000.0;
    let keys: u64 = redis::cmd("DBSIZE").query_async(&mut conn).await?;
    drop(server);
    println!("ours: serving after {load_ms:.0} ms, {keys} keys in Redis");
    if keys < tables * rows {
        return Err(format!("only {keys} keys after the load of {} rows", tables * rows).into());
    }
    load_row(report, tables, rows, load_ms, copy_ms, pipe_ms);
    let file = std::fs::read_to_string(&tables_file)?;
    mixed_writes(redis, report, &url, &file, tables).await?;
    Ok(())
}

fn load_row(report: &mut Report, tables: u64, rows: u64, load_ms: f64, copy_ms: f64, pipe_ms: f64) {
    report.row(
        "tables",
        format!("initial load of {tables} declared tables × {rows} rows, release server from start to serving (one slot, one snapshot)"),
        format!("{} ms", fmt_num(load_ms)),
        format!(
            "COPY of each {} ms + redis-cli --pipe {} ms = {} ms",
            fmt_num(copy_ms),
            fmt_num(pipe_ms),
            fmt_num(copy_ms + pipe_ms)
        ),
        Some(load_ms / (copy_ms + pipe_ms)),
        "≤ 1.3× baseline",
        Some(load_ms <= 1.3 * (copy_ms + pipe_ms)),
    );
}

/// Commits a second the mixed-writes step runs at, and for how long.
const RATE: u64 = 2_000;
const SECS: u64 = 5;

/// An engine over the tables `file` declares, with a slot of its own.
async fn engine(
    redis: &TestRedis,
    url: &str,
    file: &str,
    slot: &str,
) -> Result<Engine<PgSource, MultiplexedConnection>> {
    let specs = TablesFile::parse("bench.toml", file)?.tables;
    let mut config = PgConfig::new(url, &specs[0].table);
    config.create_demo_table = false;
    config.slot = Some(slot.to_owned());
    config.publication = Some(slot.to_owned());
    config.tables = specs.clone();
    let events = EventBus::default();
    let source = PgSource::connect(config, events.clone()).await?;
    let config = EngineConfig {
        cache: CacheConfig {
            prefix: prefetch_pg::tables::cache_prefix(&specs),
            tables: prefetch_pg::tables::table_prefixes(&specs),
            ..CacheConfig::default()
        },
        ..EngineConfig::default()
    };
    Ok(Engine::start(redis.conn().await, source, events, config)
        .await?
        .0)
}

/// Single-row UPDATEs at [`RATE`] a second for [`SECS`] from 8
/// connections, spread over the first `tables` tables; the achieved rate.
async fn writers(url: &str, tables: u64) -> Result<f64> {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..8u64 {
        let (url, stop, done) = (url.to_owned(), stop.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let sql = connect(&url).await?;
            let mut i = w;
            while !stop.load(Ordering::Relaxed) {
                let due = (started.elapsed().as_secs_f64() * RATE as f64) as u64;
                if done.load(Ordering::Relaxed) >= due {
                    tokio::time::sleep(Duration::from_micros(200)).await;
                    continue;
                }
                i = (i + 7919) % 10_000;
                let t = i % tables;
                let id = i64::try_from(1 + i).unwrap_or(1);
                let name = format!("w{w} {i}");
                sql.execute(
                    &format!("UPDATE t{t} SET name = $2 WHERE id = $1"),
                    &[&id, &name],
                )
                .await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, BoxError>(())
        }));
    }
    tokio::time::sleep(Duration::from_secs(SECS)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

/// Commit → visible p50/p99 (ms) of the writers on the first `tables`
/// tables, through an engine of the tables `file` declares.
async fn lag(
    redis: &TestRedis,
    url: &str,
    file: &str,
    tables: u64,
    slot: &str,
) -> Result<(f64, f64, f64)> {
    let mut conn = redis.conn().await;
    flushall(&mut conn).await?;
    let engine = engine(redis, url, file, slot).await?;
    engine.cache().reset_stats();
    let achieved = writers(url, tables).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let st = engine.cache().stats();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    engine.shutdown(Duration::from_secs(5)).await?;
    engine.source().close();
    Ok((achieved, ms(st.sync_lag.p50), ms(st.sync_lag.p99)))
}

async fn mixed_writes(
    redis: &TestRedis,
    report: &mut Report,
    url: &str,
    file: &str,
    tables: u64,
) -> Result<()> {
    let one = file.split("\n\n").next().unwrap_or_default().to_owned();
    let (one_rate, one_p50, one_p99) = lag(redis, url, &one, 1, "bench_one").await?;
    let (all_rate, all_p50, all_p99) = lag(redis, url, file, tables, "bench_all").await?;
    println!(
        "mixed writes at {RATE}/s: {tables} tables p50 {all_p50:.2} ms p99 {all_p99:.2} ms ({all_rate:.0}/s); one table p50 {one_p50:.2} ms p99 {one_p99:.2} ms ({one_rate:.0}/s)"
    );
    report.row(
        "tables",
        format!("{RATE} single-row UPDATE commits/s spread over {tables} declared tables, {SECS} s, commit → visible in Redis"),
        format!("achieved {all_rate:.0}/s; p50 {all_p50:.2} ms, p99 {all_p99:.2} ms"),
        format!("the same writers on one declared table: {one_rate:.0}/s; p50 {one_p50:.2} ms, p99 {one_p99:.2} ms"),
        Some(all_p99 / one_p99),
        "p99 ≤ 50 ms, and many tables cost nothing per change",
        Some(all_p99 <= 50.0),
    );
    Ok(())
}
