//! The first change after a quiet moment: a change through the API after
//! 0.3 s idle, then at once the read a page would make. Counts the reads
//! that still saw the old value, and the server's sync lag of those
//! changes. With `REFERENCE_BIN` (the published plain-axum Rust demo, built
//! by hand from redis/docs; nothing here builds it) the same client runs
//! against it in alternating rounds, same Redis, same run.

use super::http::{get_json, post_update, start_server};
use super::*;

/// Idle before each change.
const IDLE: Duration = Duration::from_millis(300);

/// One server under test: its name in the report, and its port.
struct Target {
    name: &'static str,
    port: u16,
}

/// A change after `IDLE`, then the read; whether the read was stale.
async fn one_try(client: &reqwest::Client, port: u16, i: usize) -> Result<bool> {
    tokio::time::sleep(IDLE).await;
    let base = format!("http://127.0.0.1:{port}");
    let value = format!("idle-{i}-{}", std::process::id());
    let res = post_update(client, &base, "cat-001", &value).await?;
    if !res.status().is_success() {
        return Err(format!("POST /update answered {}", res.status()).into());
    }
    res.bytes().await?;
    let read = get_json(client, &format!("{base}/read?id=cat-001")).await?;
    Ok(read["record"]["name"] != value.as_str())
}

/// The reference demo on `redis`, on a free port.
fn start_reference(bin: &str, redis: &TestRedis) -> Result<(Child, u16)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let child = Command::new(bin)
        .args(["--port", &port.to_string()])
        .args(["--redis-port", &redis.port.to_string()])
        .args(["--cache-prefix", "bench:ref:"])
        .env("REDIS_HOST", "127.0.0.1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run REFERENCE_BIN {bin}: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok((child, port));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err("the reference demo did not start".into())
}

pub async fn idle(redis: &TestRedis, s: &Settings, report: &mut Report) -> Result<()> {
    let ours = start_server(redis)?;
    let mut targets = vec![Target {
        name: "ours",
        port: ours.port,
    }];
    let mut reference = None;
    if let Ok(bin) = std::env::var("REFERENCE_BIN") {
        let (child, port) = start_reference(&bin, redis)?;
        reference = Some(child);
        targets.push(Target {
            name: "reference",
            port,
        });
    }
    let client = reqwest::Client::new();
    let (rounds, tries) = if s.reps <= 2 { (1, 20) } else { (3, 150) };
    // Warm both up (first connections, first writes).
    for t in &targets {
        for i in 0..3 {
            one_try(&client, t.port, i).await?;
        }
    }
    // Our sync lag over the measured changes only.
    client
        .post(format!("http://127.0.0.1:{}/reset", ours.port))
        .send()
        .await?;
    let mut stale: Vec<Vec<usize>> = vec![Vec::new(); targets.len()];
    for round in 0..rounds {
        for (t, counts) in targets.iter().zip(stale.iter_mut()) {
            let mut n = 0;
            for i in 0..tries {
                n += usize::from(one_try(&client, t.port, round * tries + i).await?);
            }
            println!("  idle round {round}: {} stale {n}/{tries}", t.name);
            counts.push(n);
        }
    }
    let stats = get_json(&client, &format!("http://127.0.0.1:{}/stats", ours.port)).await?;
    if let Some(mut child) = reference {
        let _ = child.kill();
        let _ = child.wait();
    }
    let shown = |counts: &[usize]| {
        let each: Vec<String> = counts.iter().map(|n| format!("{n}/{tries}")).collect();
        format!(
            "{}/{} stale ({})",
            counts.iter().sum::<usize>(),
            rounds * tries,
            each.join(", ")
        )
    };
    let ours_stale: usize = stale[0].iter().sum();
    let (baseline, ratio, met) = match stale.get(1) {
        Some(theirs) => {
            let theirs_stale: usize = theirs.iter().sum();
            (
                format!("reference demo, same client: {}", shown(theirs)),
                Some(ours_stale as f64 / theirs_stale.max(1) as f64),
                Some(ours_stale <= theirs_stale),
            )
        }
        None => ("reference demo: set REFERENCE_BIN".into(), None, None),
    };
    report.row(
        "idle",
        "change after 0.3 s idle, then the read at once",
        shown(&stale[0]),
        baseline,
        ratio,
        "stale no more often than the reference",
        met,
    );
    let p99 = stats["sync_lag_ms_p99"].as_f64().unwrap_or(f64::NAN);
    report.row(
        "idle",
        "sync lag of those changes (commit → visible)",
        format!(
            "p50 {:.2} ms, p99 {p99:.2} ms, max {:.2} ms",
            stats["sync_lag_ms_p50"].as_f64().unwrap_or(f64::NAN),
            stats["sync_lag_ms_max"].as_f64().unwrap_or(f64::NAN)
        ),
        "–",
        None,
        "p99 ≤ 2 ms",
        Some(p99 <= 2.0),
    );
    report.data(
        "idle",
        serde_json::json!({"tries": rounds * tries, "stale": stale, "sync_lag_ms_p99": p99}),
    );
    fenced_after_writes(&client, ours.port, tries.max(100) * 3, report).await
}

/// Back to back: a change, then the read asking for the change's position;
/// from the change's answer to the read's, next to the same changes'
/// commit → visible.
async fn fenced_after_writes(
    client: &reqwest::Client,
    port: u16,
    n: usize,
    report: &mut Report,
) -> Result<()> {
    let base = format!("http://127.0.0.1:{port}");
    client.post(format!("{base}/reset")).send().await?;
    let mut waits = Vec::with_capacity(n);
    for i in 0..n {
        let value = format!("fenced-{i}");
        let res = post_update(client, &base, "cat-002", &value).await?;
        let at = res
            .headers()
            .get("prefetch-position")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or("a write answered without Prefetch-Position")?;
        res.bytes().await?;
        let started = Instant::now();
        let body = client
            .get(format!("{base}/read?id=cat-002"))
            .header("prefetch-min-position", at)
            .send()
            .await?
            .bytes()
            .await?;
        waits.push(started.elapsed().as_secs_f64() * 1000.0);
        let read: serde_json::Value = serde_json::from_slice(&body)?;
        if read["record"]["name"] != value.as_str() {
            return Err(format!("a fenced read missed its write: {read}").into());
        }
    }
    let stats = get_json(client, &format!("{base}/stats")).await?;
    waits.sort_by(f64::total_cmp);
    let at = |q: f64| waits[((waits.len() - 1) as f64 * q) as usize];
    report.row(
        "idle",
        format!("{n} changes, each read back with its position, back to back"),
        format!(
            "change answered → read answered p50 {:.2} ms, p99 {:.2} ms; every read saw its change",
            at(0.5),
            at(0.99)
        ),
        format!(
            "the same changes' commit → visible p50 {:.2} ms, p99 {:.2} ms",
            stats["sync_lag_ms_p50"].as_f64().unwrap_or(f64::NAN),
            stats["sync_lag_ms_p99"].as_f64().unwrap_or(f64::NAN)
        ),
        None,
        "–",
        None,
    );
    Ok(())
}
