//! Bulk load against `redis-cli --pipe`.

use super::*;

pub async fn bulk_load(redis: &TestRedis, s: &Settings, report: &mut Report) -> Result<()> {
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
            let cache = bench_cache(redis, prefix).await;
            let t = Instant::now();
            let loaded = cache.bulk_load(&recs, prefetch::Version::ZERO).await?;
            ours.push(t.elapsed().as_secs_f64() * 1000.0);
            assert_eq!(loaded, n);

            flushall(&mut conn).await?;
            pipe.push(redis_cli_pipe(redis, &file)?);
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
