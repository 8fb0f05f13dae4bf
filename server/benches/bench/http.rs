//! HTTP under wrk against raw HGETALL.

use super::read::redis_benchmark;
use super::*;

pub struct ServerProc {
    child: Child,
    pub port: u16,
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start_server(redis: &TestRedis) -> Result<ServerProc> {
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
        .env("LEPTOS_SITE_ROOT", super::common::site_root())
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

pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// `wrk --latency`: (requests/s, p50 ms, p99 ms).
pub fn wrk(url: &str, conns: usize, secs: u64) -> Result<(f64, f64, f64)> {
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

pub async fn http(redis: &TestRedis, s: &Settings, report: &mut Report) -> Result<()> {
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
                "≥ 65 % of raw HGETALL, p99 ≤ 2 ms",
                Some(share >= 0.65 && o_p99.median <= 2.0),
            )
        } else {
            ("p99 ≤ 0.7 ms", Some(o_p99.median <= 0.7))
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
    fenced_reads(server.port, s, report)?;
    sequential_updates(server.port, s, report).await?;
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

/// `POST /update` of one record's name.
pub async fn post_update(
    client: &reqwest::Client,
    base: &str,
    id: &str,
    name: &str,
) -> Result<reqwest::Response> {
    Ok(client
        .post(format!("{base}/update"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("id={id}&field=name&value={name}"))
        .send()
        .await?)
}

/// `GET url`, its body as JSON.
pub async fn get_json(client: &reqwest::Client, url: &str) -> Result<serde_json::Value> {
    let body = client.get(url).send().await?.bytes().await?;
    Ok(serde_json::from_slice(&body)?)
}

/// `GET /read` asking for a position the cache has already applied
/// (`min_position=0`: the fence is parsed and checked, nothing waits), next
/// to the plain read, alternating, 4 connections.
fn fenced_reads(port: u16, s: &Settings, report: &mut Report) -> Result<()> {
    let plain_url = format!("http://127.0.0.1:{port}/read?id=cat-001");
    let fenced_url = format!("{plain_url}&min_position=0");
    let (mut plain, mut fenced) = (Vec::new(), Vec::new());
    for _ in 0..s.reps.min(3) {
        plain.push(wrk(&plain_url, 4, s.http_secs)?);
        fenced.push(wrk(&fenced_url, 4, s.http_secs)?);
    }
    let rps = |v: &[(f64, f64, f64)]| Spread::of(v.iter().map(|o| o.0).collect());
    let p99 = |v: &[(f64, f64, f64)]| Spread::of(v.iter().map(|o| o.2).collect());
    let (f_rps, p_rps) = (rps(&fenced), rps(&plain));
    let ratio = f_rps.median / p_rps.median;
    report.row(
        "http",
        "GET /read with min_position already reached, 4 connections (wrk)",
        format!(
            "{} req/s; p99 {} ms",
            f_rps.show(""),
            fmt_num(p99(&fenced).median)
        ),
        format!(
            "plain GET /read, same run: {} req/s; p99 {} ms",
            p_rps.show(""),
            fmt_num(p99(&plain).median)
        ),
        Some(ratio),
        "≥ 0.95 of the plain read",
        Some(ratio >= 0.95),
    );
    Ok(())
}

/// Sequential `POST /update` from one keep-alive client (each change goes
/// to the primary, the worker writes it to Redis meanwhile), next to the
/// same client's sequential `GET /stats`: the HTTP round trip with no
/// change behind it.
async fn sequential_updates(port: u16, s: &Settings, report: &mut Report) -> Result<()> {
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let n = s.reads.min(1000);
    let (mut updates, mut stats) = (Vec::new(), Vec::new());
    for rep in 0..s.reps.min(3) {
        let started = Instant::now();
        for i in 0..n {
            let res = post_update(&client, &base, "cat-001", &format!("v{rep}-{i}")).await?;
            if !res.status().is_success() {
                return Err(format!("POST /update answered {}", res.status()).into());
            }
            res.bytes().await?;
        }
        updates.push(n as f64 / started.elapsed().as_secs_f64());
        let started = Instant::now();
        for _ in 0..n {
            let res = client.get(format!("{base}/stats")).send().await?;
            if !res.status().is_success() {
                return Err(format!("GET /stats answered {}", res.status()).into());
            }
            res.bytes().await?;
        }
        stats.push(n as f64 / started.elapsed().as_secs_f64());
    }
    let (updates, stats) = (Spread::of(updates), Spread::of(stats));
    report.row(
        "http",
        format!("{n} sequential POST /update, one keep-alive client (reqwest)"),
        format!("{} updates/s", updates.show("")),
        format!(
            "sequential GET /stats, same client: {} req/s",
            stats.show("")
        ),
        Some(updates.median / stats.median),
        "≥ the reference demo, same client (measured apart: docs/benchmarks.md)",
        None,
    );
    report.data(
        "http_sequential_updates",
        serde_json::json!({"updates_per_s": updates.median, "stats_per_s": stats.median}),
    );
    Ok(())
}
