//! Redis memory per record.

use super::*;

pub async fn memory(redis: &TestRedis, report: &mut Report) -> Result<()> {
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
    let cache = bench_cache(redis, "bench:mem:").await;
    cache
        .bulk_load(&records(n), prefetch::Version::ZERO)
        .await?;
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
