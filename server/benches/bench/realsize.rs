//! A table of real size (`BENCH_REAL_ROWS`, default 10,000,000; 1,000,000
//! with `BENCH_QUICK=1`): the release server binary on a PostgreSQL table
//! generated with `generate_series`, its resident memory sampled all along.
//!
//! - the initial load, next to `COPY … TO STDOUT` plus `redis-cli --pipe`
//!   of the same writes, with the server's peak RSS and Redis's
//!   `used_memory` on both sides;
//! - the dashboard's open time in Chromium (navigation to hydrated), and
//!   the size and time of `/`, `/state` and `/categories`;
//! - the TTL renewal's steady cost on Redis (CPU share, `EXPIRE`s a second,
//!   CPU per key) next to the same count of raw `EXPIRE … GT` through
//!   `redis-cli --pipe`;
//! - an `UPDATE` of 1,000,000 rows in one transaction, commit → the last
//!   row visible in Redis, next to `pg_recvlogical` receiving the same
//!   transaction (to /dev/null) and `redis-cli --pipe` of 1,000,000 rows.

use std::io::{BufRead, BufReader, BufWriter};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt;
use prefetch_pg::launcher::PostgresServer;
use tokio_postgres::{Client, NoTls};

use super::*;

const PREFIX: &str = "big:";
const UPDATED: u64 = 1_000_000;

pub(super) async fn connect(url: &str) -> Result<Client> {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

fn rows(s: &Settings) -> u64 {
    std::env::var("BENCH_REAL_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if s.reps <= 2 { 1_000_000 } else { 10_000_000 })
}

/// `used_memory` of `redis`, in MiB.
async fn used_memory(conn: &mut MultiplexedConnection) -> Result<f64> {
    let info: String = redis::cmd("INFO").arg("memory").query_async(conn).await?;
    let bytes: f64 = info
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or("no used_memory")?;
    Ok(bytes / 1048576.0)
}

/// Samples a process's resident set every 200 ms: `(seconds, MiB)`.
struct RssCurve {
    stop: Arc<AtomicBool>,
    samples: std::thread::JoinHandle<Vec<(f64, f64)>>,
}

impl RssCurve {
    fn start(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let samples = std::thread::spawn(move || {
            let started = Instant::now();
            let mut out = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                if let Some(kb) = status_kb(pid, "VmRSS:") {
                    out.push((started.elapsed().as_secs_f64(), kb / 1024.0));
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            out
        });
        Self { stop, samples }
    }

    fn finish(self) -> Vec<(f64, f64)> {
        self.stop.store(true, Ordering::Relaxed);
        self.samples.join().unwrap_or_default()
    }
}

fn status_kb(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The curve every ~`step` seconds, for the report.
fn thin(curve: &[(f64, f64)], step: f64) -> Vec<(f64, f64)> {
    let mut out: Vec<(f64, f64)> = Vec::new();
    for &(t, mib) in curve {
        if out.last().is_none_or(|(last, _)| t - last >= step) {
            out.push(((t * 10.0).round() / 10.0, mib.round()));
        }
    }
    out
}

/// `table`'s rows as `COPY` gives them, written as the same DEL + HSET +
/// EXPIRE per row the engine's load sends (`pipe_file`'s format), keys
/// `{key_prefix}{id}`, streamed to `all` (and the first `first.1` rows also
/// to `first.0`): the baseline's input. Returns the `COPY` time in ms.
pub(super) async fn copy_to_pipe(
    sql: &Client,
    table: &str,
    key_prefix: &str,
    all: &mut dyn std::io::Write,
    mut first: Option<(&mut dyn std::io::Write, u64)>,
) -> Result<f64> {
    let t = Instant::now();
    let stream = sql
        .copy_out(&format!("COPY (SELECT id::text, name, display_order::text, featured::text, parent_id FROM {table}) TO STDOUT"))
        .await?;
    futures::pin_mut!(stream);
    let mut text = Vec::new();
    let version = prefetch::Version::ZERO.to_string();
    let mut copy_ms = 0.0;
    let mut buf = Vec::new();
    let mut written = 0u64;
    loop {
        let chunk = stream.next().await.transpose()?;
        let done = chunk.is_none();
        if let Some(chunk) = chunk {
            text.extend_from_slice(&chunk);
        } else {
            copy_ms = t.elapsed().as_secs_f64() * 1000.0;
        }
        let end = if done {
            text.len()
        } else {
            text.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1)
        };
        for line in String::from_utf8_lossy(&text[..end]).lines() {
            let Some(record) = copy_record(line) else {
                continue;
            };
            let id = record.id().unwrap_or_default();
            let key = format!("{key_prefix}{id}");
            let hash = prefetch::hash_text(record.fields());
            buf.clear();
            resp(&["DEL", &key], &mut buf);
            let mut hset = vec!["HSET", key.as_str()];
            for (k, v) in record.fields() {
                hset.extend([k.as_str(), v.as_str()]);
            }
            hset.extend(["__v", version.as_str(), "__h", hash.as_str()]);
            resp(&hset, &mut buf);
            resp(&["EXPIRE", &key, "3600"], &mut buf);
            all.write_all(&buf)?;
            written += 1;
            if let Some((first, upto)) = first.as_mut()
                && written <= *upto
            {
                first.write_all(&buf)?;
            }
        }
        text.drain(..end);
        if done {
            break;
        }
    }
    Ok(copy_ms)
}

/// The release server binary on `url`'s `items` under [`PREFIX`], on
/// `redis` and `port`, serving the benchmark's site.
fn server_command(redis: &TestRedis, url: &str, port: u16) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_server"));
    cmd.args(["--redis-url", &redis.url, "--port", &port.to_string()])
        .args(["--primary", url, "--pg-table", "items"])
        .args(["--cache-prefix", PREFIX, "--primary-latency-ms", "0"])
        .env("LEPTOS_SITE_ROOT", super::common::site_root());
    cmd
}

/// The release server on `url`'s `items`, once it has loaded, and its
/// memory curve from the start; its stdout drained in the background.
fn spawn_server(redis: &TestRedis, url: &str, port: u16) -> Result<(Child, RssCurve)> {
    let mut child = server_command(redis, url, port)
        .env("RUST_LOG", "warn,server=info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let curve = RssCurve::start(child.id());
    let mut lines = BufReader::new(child.stdout.take().ok_or("stdout")?).lines();
    for line in lines.by_ref() {
        let line = line?;
        if line.contains("sync worker running") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    Ok((child, curve))
}

/// GET `path` five times: median ms and the answer's bytes.
async fn answer(base: &str, path: &str) -> Result<(f64, usize)> {
    let http = reqwest::Client::new();
    let mut times = Vec::new();
    let mut bytes = 0;
    for _ in 0..5 {
        let t = Instant::now();
        let body = http
            .get(format!("{base}{path}"))
            .send()
            .await?
            .bytes()
            .await?;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        bytes = body.len();
    }
    Ok((Spread::of(times).median, bytes))
}

/// The page-open spec in Chromium against `base`; its JSON result.
fn page_open(base: &str) -> Option<serde_json::Value> {
    let status = Command::new("npx")
        .args(["playwright", "test", "page-open.spec.ts"])
        .current_dir("end2end")
        .env("PF_BENCH", "1")
        .env("PF_OPEN_URL", base)
        .status()
        .ok()?;
    if !status.success() {
        return None;
    }
    let found = PathBuf::from("end2end/test-results/page-open.json");
    serde_json::from_str(&std::fs::read_to_string(found).ok()?).ok()
}

pub async fn real_size(redis: &TestRedis, s: &Settings, report: &mut Report) -> Result<()> {
    let n = rows(s);
    println!("\n== real size ({n} rows)");
    let pg = tokio::task::spawn_blocking(PostgresServer::start).await??;
    let url = pg.url("postgres");
    let sql = connect(&url).await?;
    let t = Instant::now();
    sql.batch_execute(&format!(
        "DROP TABLE IF EXISTS items;
         CREATE TABLE items (id bigint PRIMARY KEY, name text NOT NULL,
            display_order int NOT NULL DEFAULT 99, featured bool NOT NULL DEFAULT false,
            parent_id text NOT NULL DEFAULT '');
         INSERT INTO items SELECT g, 'Item ' || g, g % 100, g % 7 = 0, '' FROM generate_series(1, {n}) g;"
    ))
    .await?;
    sql.batch_execute("VACUUM ANALYZE items").await?;
    println!("generated in {:.1} s", t.elapsed().as_secs_f64());

    // The baseline: COPY out, the same writes through redis-cli --pipe.
    let mut conn = redis.conn().await;
    let dir = bench_dir().join("pipe");
    std::fs::create_dir_all(&dir)?;
    let (all, first) = (dir.join("real-all.resp"), dir.join("real-first.resp"));
    flushall(&mut conn).await?;
    let copy_ms = {
        let mut all = BufWriter::new(std::fs::File::create(&all)?);
        let mut first = BufWriter::new(std::fs::File::create(&first)?);
        let ms = copy_to_pipe(&sql, "items", PREFIX, &mut all, Some((&mut first, UPDATED))).await?;
        std::io::Write::flush(&mut all)?;
        std::io::Write::flush(&mut first)?;
        ms
    };
    let pipe_ms = redis_cli_pipe(redis, &all)?;
    let pipe_mib = used_memory(&mut conn).await?;
    flushall(&mut conn).await?;
    let pipe_first_ms = redis_cli_pipe(redis, &first)?;
    flushall(&mut conn).await?;
    let _ = std::fs::remove_file(&all);
    println!("baseline: COPY {copy_ms:.0} ms + pipe {pipe_ms:.0} ms, Redis {pipe_mib:.0} MiB");

    // Ours: the release server binary, from start to serving.
    let port = prefetch::launcher::free_port()?;
    let t = Instant::now();
    let (child, curve) = spawn_server(redis, &url, port)?;
    // Killed however this section ends (an error included).
    let child = Running(child);
    let load_ms = t.elapsed().as_secs_f64() * 1000.0;
    let pid = child.0.id();
    let load_peak = status_kb(pid, "VmHWM:").unwrap_or(0.0) / 1024.0;
    let ours_mib = used_memory(&mut conn).await?;
    println!(
        "ours: serving after {load_ms:.0} ms, peak RSS {load_peak:.0} MiB, Redis {ours_mib:.0} MiB"
    );
    report.row(
        "realsize",
        format!("initial load of {n} rows, release server from start to serving (peak RSS, Redis used_memory)"),
        format!("{} ms; peak RSS {load_peak:.0} MiB; Redis {ours_mib:.0} MiB", fmt_num(load_ms)),
        format!(
            "COPY {} ms + redis-cli --pipe {} ms = {} ms; Redis {pipe_mib:.0} MiB",
            fmt_num(copy_ms),
            fmt_num(pipe_ms),
            fmt_num(copy_ms + pipe_ms)
        ),
        Some(load_ms / (copy_ms + pipe_ms)),
        "peak RSS ≤ 256 MiB",
        Some(load_peak <= 256.0),
    );

    // The dashboard and the API on the loaded table.
    let base = format!("http://127.0.0.1:{port}");
    let mut answers = serde_json::Map::new();
    for path in ["/", "/state", "/categories", "/state?q=12345"] {
        let (ms, bytes) = answer(&base, path).await?;
        println!("GET {path}: {ms:.1} ms, {bytes} bytes");
        answers.insert(path.into(), serde_json::json!({"ms": ms, "bytes": bytes}));
    }
    let (html_ms, html_bytes) = (answers["/"]["ms"].as_f64(), answers["/"]["bytes"].as_u64());
    let open = page_open(&base);
    let p50 = open.as_ref().and_then(|v| v["p50"].as_f64());
    report.row(
        "realsize",
        format!("dashboard open at {n} rows: navigation → hydrated in Chromium (p50 of 5)"),
        p50.map_or("not measured".into(), |p| format!("{} ms", fmt_num(p))),
        format!(
            "GET / alone: {} ms, {} bytes",
            fmt_num(html_ms.unwrap_or(f64::NAN)),
            html_bytes.unwrap_or(0)
        ),
        None,
        "≤ 1000 ms",
        p50.map(|p| p <= 1000.0),
    );

    membership(&base, n, report).await?;

    // A million-row UPDATE in one transaction.
    let updated = UPDATED.min(n);
    sql.batch_execute("CREATE PUBLICATION bench_raw FOR TABLE items")
        .await?;
    // On its own: a slot cannot be created in a transaction that wrote.
    sql.batch_execute("SELECT pg_create_logical_replication_slot('bench_raw', 'pgoutput')")
        .await?;
    let t = Instant::now();
    sql.batch_execute(&format!(
        "UPDATE items SET name = name || ' v2' WHERE id <= {updated}"
    ))
    .await?;
    let committed = Instant::now();
    let update_ms = t.elapsed().as_secs_f64() * 1000.0;
    let probe = format!("{PREFIX}{updated}");
    let want = format!("Item {updated} v2");
    loop {
        let name: Option<String> = redis::cmd("HGET")
            .arg(&probe)
            .arg("name")
            .query_async(&mut conn)
            .await?;
        if name.as_deref() == Some(want.as_str()) {
            break;
        }
        if committed.elapsed() > Duration::from_secs(1800) {
            return Err("the UPDATE never reached Redis".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let visible_ms = committed.elapsed().as_secs_f64() * 1000.0;
    let end: String = sql
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await?
        .get(0);
    let t = Instant::now();
    let raw = Command::new(pg_bin("pg_recvlogical"))
        .args([
            "-d",
            &url,
            "--slot",
            "bench_raw",
            "--start",
            "--endpos",
            &end,
        ])
        .args([
            "-o",
            "proto_version=1",
            "-o",
            "publication_names=bench_raw",
            "-f",
            "/dev/null",
        ])
        .status()?;
    let recv_ms = t.elapsed().as_secs_f64() * 1000.0;
    if !raw.success() {
        return Err("pg_recvlogical failed".into());
    }
    let curve = curve.finish();
    let peak = status_kb(pid, "VmHWM:").unwrap_or(0.0) / 1024.0;
    println!(
        "UPDATE {update_ms:.0} ms; visible {visible_ms:.0} ms after commit; pg_recvlogical {recv_ms:.0} ms; peak RSS {peak:.0} MiB"
    );
    report.row(
        "realsize",
        format!("UPDATE of {updated} rows in one transaction: commit → last row visible in Redis (peak RSS through it all)"),
        format!("{} ms; peak RSS {peak:.0} MiB", fmt_num(visible_ms)),
        format!(
            "pg_recvlogical receiving it to /dev/null {} ms + redis-cli --pipe of {updated} rows {} ms = {} ms",
            fmt_num(recv_ms),
            fmt_num(pipe_first_ms),
            fmt_num(recv_ms + pipe_first_ms)
        ),
        Some(visible_ms / (recv_ms + pipe_first_ms)),
        "peak RSS ≤ 256 MiB",
        Some(peak <= 256.0),
    );
    let thinned = thin(&curve, 5.0);
    println!("RSS curve from the start (s, MiB): {thinned:?}");
    report.data(
        "real_size",
        serde_json::json!({
            "rows": n, "load_ms": load_ms, "load_peak_rss_mib": load_peak,
            "redis_mib": ours_mib, "copy_ms": copy_ms, "pipe_ms": pipe_ms, "pipe_redis_mib": pipe_mib,
            "answers": answers, "page_open": open, "update_rows": updated,
            "update_commit_ms": update_ms, "visible_ms": visible_ms, "pg_recvlogical_ms": recv_ms,
            "pipe_updated_ms": pipe_first_ms, "peak_rss_mib": peak, "rss_curve": thinned,
        }),
    );

    drop(child);
    renewal_cost(redis, &mut conn, &url, n, &dir, report).await?;
    flushall(&mut conn).await?;
    drop(sql);
    tokio::task::spawn_blocking(move || drop(pg)).await?;
    Ok(())
}

/// Redis's CPU seconds (user + sys) and its `EXPIRE` and `SCAN` calls.
/// The membership filter at this size: its bytes per row (from
/// `/metrics`), and what 10,000 ids the table does not have cost: the
/// misses it took for lost keys (its false positives) and the primary
/// reads they made.
async fn membership(base: &str, n: u64, report: &mut Report) -> Result<()> {
    let client = reqwest::Client::new();
    let metric = |text: &str, name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(f64::NAN)
    };
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let bytes = metric(&text, "prefetch_membership_filter_bytes ");
    let before = http::get_json(&client, &format!("{base}/stats")).await?;
    let unknown = 10_000u64;
    let mut lost = 0u64;
    for i in 1..=unknown {
        let res = client
            .get(format!("{base}/read?id={}", n + i))
            .send()
            .await?;
        lost += u64::from(
            res.headers()
                .get("prefetch-miss")
                .is_some_and(|v| v == "lost"),
        );
    }
    // The repairs run in the background; give them a moment to count.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = http::get_json(&client, &format!("{base}/stats")).await?;
    let reads = after["primary_reads_total"].as_u64().unwrap_or(0)
        - before["primary_reads_total"].as_u64().unwrap_or(0);
    let per_row = bytes / n as f64;
    // The optimum for a 0.1 % Bloom filter: 1.44 · log2(1000) bits.
    let optimum = 1.44 * 1000f64.log2() / 8.0;
    println!(
        "membership filter: {bytes:.0} bytes ({per_row:.2} per row); {unknown} unknown ids: {lost} classified lost, {reads} primary reads"
    );
    report.row(
        "realsize",
        format!("membership filter at {n} rows: bytes per row; {unknown} unknown ids read (misses taken for lost, primary reads)"),
        format!(
            "{per_row:.2} bytes/row ({:.1} MiB); {lost} taken for lost ({:.2} %), {reads} primary reads",
            bytes / 1048576.0,
            100.0 * lost as f64 / unknown as f64
        ),
        format!("Bloom optimum at 0.1 % (theory): {optimum:.2} bytes/row, 10 false positives"),
        Some(per_row / optimum),
        "a few bytes per row; primary reads ≤ the false positives",
        Some(per_row <= 4.0 && reads <= lost),
    );
    Ok(())
}

async fn redis_usage(conn: &mut MultiplexedConnection) -> Result<(f64, u64, u64)> {
    let info: String = redis::cmd("INFO").arg("all").query_async(conn).await?;
    let num = |prefix: &str| -> f64 {
        info.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    };
    let calls = |cmd: &str| -> u64 {
        info.lines()
            .find_map(|l| l.strip_prefix(&format!("cmdstat_{cmd}:calls=")))
            .and_then(|v| v.split(',').next()?.parse().ok())
            .unwrap_or(0)
    };
    Ok((
        num("used_cpu_user:") + num("used_cpu_sys:"),
        calls("expire"),
        calls("scan"),
    ))
}

/// One TTL renewal walk over the `n` loaded keys, next to `n` raw
/// `EXPIRE … GT` at full speed. The server starts again on the same Redis
/// (it loads nothing) with a 120 s TTL: its first walk starts after a
/// third of it, paced to spread over 32 s, which `n` keys outrun, so the
/// walk goes as fast as it can. Every key holds about an hour, so neither
/// side changes a TTL: both pay for `EXPIRE … GT`'s check.
async fn renewal_cost(
    redis: &TestRedis,
    conn: &mut MultiplexedConnection,
    url: &str,
    n: u64,
    dir: &Path,
    report: &mut Report,
) -> Result<()> {
    const TTL: &str = "120";
    let port = prefetch::launcher::free_port()?;
    let child = Running(
        server_command(redis, url, port)
            .args(["--ttl-seconds", TTL])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    // Wait for the walk to start (EXPIRE calls move), then for it to have
    // covered every key.
    let deadline = Instant::now() + Duration::from_secs(600);
    let (_, before, _) = redis_usage(conn).await?;
    let (mut cpu0, mut exp0, mut scan0) = redis_usage(conn).await?;
    while exp0 == before {
        if Instant::now() > deadline {
            return Err("the renewal walk never started".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        (cpu0, exp0, scan0) = redis_usage(conn).await?;
    }
    let t = Instant::now();
    let (mut cpu1, mut exp1, mut scan1) = (cpu0, exp0, scan0);
    while exp1 - before < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        (cpu1, exp1, scan1) = redis_usage(conn).await?;
    }
    let secs = t.elapsed().as_secs_f64();
    drop(child);
    let (cpu, expires, scans) = (cpu1 - cpu0, exp1 - exp0, scan1 - scan0);
    let ours_rate = expires as f64 / secs;
    let ours_us = cpu * 1e6 / (expires.max(1) as f64);
    let file = dir.join("real-expire.resp");
    {
        let mut out = BufWriter::new(std::fs::File::create(&file)?);
        let mut buf = Vec::new();
        for id in 1..=n {
            buf.clear();
            resp(&["EXPIRE", &format!("{PREFIX}{id}"), TTL, "GT"], &mut buf);
            std::io::Write::write_all(&mut out, &buf)?;
        }
        std::io::Write::flush(&mut out)?;
    }
    let (raw0, _, _) = redis_usage(conn).await?;
    let raw_ms = redis_cli_pipe(redis, &file)?;
    let (raw1, _, _) = redis_usage(conn).await?;
    let _ = std::fs::remove_file(&file);
    let raw_us = (raw1 - raw0) * 1e6 / n as f64;
    let raw_rate = n as f64 / (raw_ms / 1000.0);
    println!(
        "renewal walk: {expires} EXPIRE + {scans} SCAN in {secs:.1} s, Redis CPU {:.0} %, {ours_us:.2} µs/key; raw: {raw_rate:.0}/s, {raw_us:.2} µs/key",
        cpu * 100.0 / secs
    );
    report.row(
        "realsize",
        format!(
            "one TTL renewal walk over {n} keys (120 s TTL: paced over 32 s, or as fast as it goes)"
        ),
        format!(
            "{} s, {} keys/s, Redis CPU {:.0} %, {ours_us:.2} µs Redis CPU per key (SCAN included)",
            fmt_num(secs),
            fmt_num(ours_rate),
            cpu * 100.0 / secs
        ),
        format!(
            "{n} raw EXPIRE … GT through redis-cli --pipe: {}/s, {raw_us:.2} µs Redis CPU per key",
            fmt_num(raw_rate)
        ),
        Some(ours_us / raw_us),
        "–",
        None,
    );
    report.data(
        "ttl_renewal",
        serde_json::json!({"keys": n, "walk_s": secs, "expires": expires, "scans": scans,
            "redis_cpu_s": cpu, "us_per_key": ours_us, "raw_per_s": raw_rate, "raw_us_per_key": raw_us}),
    );
    Ok(())
}

/// A server process, killed when dropped.
pub(super) struct Running(pub(super) Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A PostgreSQL client program from Debian's versioned directory.
fn pg_bin(name: &str) -> PathBuf {
    std::fs::read_dir("/usr/lib/postgresql")
        .ok()
        .into_iter()
        .flatten()
        .flatten()
        .map(|d| d.path().join("bin").join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(name))
}
