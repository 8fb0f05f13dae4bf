//! Many tables (`BENCH_TABLES`, default 10, of `BENCH_TABLE_ROWS` rows,
//! default 100,000): the release server with a tables file declaring them
//! all, its initial load from start to serving, next to `COPY … TO STDOUT`
//! of each table plus `redis-cli --pipe` of the same writes (the same
//! DEL + HSET + EXPIRE per row, keys `t{i}:{id}`), in the same run.

use std::io::{BufRead, BufReader, BufWriter};

use prefetch_pg::launcher::PostgresServer;

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
    Ok(())
}
