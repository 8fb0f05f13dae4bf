//! The version guard's cost inside Redis: the CPU time Redis itself spends
//! (`INFO cpu`, user + system) on the same upserts of the same records in
//! 512-write calls, three ways: a raw `MULTI`/`EXEC` of `DEL` + `HSET` +
//! `EXPIRE` per record, a minimal guarded function (one `HGET` of a numeric
//! version, a compare, `HSET`, `EXPIRE`: the least a per-key guard can
//! do), and ours (`PrefetchCache::apply_batch`, the engine's own call).
//! Then deletes: raw `DEL` + a tombstone `SET … PX` against ours.

use prefetch::{Change, Version};

use super::sync::mock_engine;
use super::*;

/// The minimal guard: per write a numeric version, the record's fields and
/// `__v`; applies when newer than the stored `__v`.
const MINIMAL_GUARD: &str = r"#!lua name=bench_minimal_guard
redis.register_function('bench_min_apply', function(keys, args)
  local n, a = 0, 1
  for k = 1, #keys do
    local v = tonumber(args[a])
    local pairs = tonumber(args[a + 1])
    local cur = tonumber(redis.call('HGET', keys[k], '__v'))
    if cur == nil or v > cur then
      redis.call('HSET', keys[k], '__v', args[a], unpack(args, a + 2, a + 1 + 2 * pairs))
      redis.call('EXPIRE', keys[k], 3600)
      n = n + 1
    end
    a = a + 2 + 2 * pairs
  end
  return n
end)";

const CALL: usize = 512;

async fn redis_cpu(conn: &mut MultiplexedConnection) -> Result<f64> {
    let info: String = redis::cmd("INFO").arg("cpu").query_async(conn).await?;
    let num = |prefix: &str| -> f64 {
        info.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    };
    Ok(num("used_cpu_user:") + num("used_cpu_sys:"))
}

/// Per command: (calls, µs inside Redis), from `INFO commandstats`.
async fn command_stats(
    conn: &mut MultiplexedConnection,
) -> Result<std::collections::BTreeMap<String, (u64, u64)>> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await?;
    let mut out = std::collections::BTreeMap::new();
    for line in info.lines() {
        let Some((name, rest)) = line
            .strip_prefix("cmdstat_")
            .and_then(|l| l.split_once(':'))
        else {
            continue;
        };
        let field = |key: &str| -> u64 {
            rest.split(',')
                .find_map(|kv| kv.strip_prefix(key))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        out.insert(name.to_owned(), (field("calls="), field("usec=")));
    }
    Ok(out)
}

/// Prints what Redis ran between two `command_stats`, per write.
fn print_breakdown(
    what: &str,
    before: &std::collections::BTreeMap<String, (u64, u64)>,
    after: &std::collections::BTreeMap<String, (u64, u64)>,
    writes: usize,
) {
    let mut parts = Vec::new();
    for (name, (calls, usec)) in after {
        let (c0, u0) = before.get(name).copied().unwrap_or((0, 0));
        if calls > &c0 && name != "info" {
            parts.push(format!(
                "{name} {} calls {:.2} µs/write",
                calls - c0,
                (usec - u0) as f64 / writes as f64
            ));
        }
    }
    println!("  {what}: {}", parts.join(", "));
}

/// Microseconds of Redis CPU per write since `since` (a `redis_cpu`).
async fn per_write(conn: &mut MultiplexedConnection, since: f64, writes: usize) -> Result<f64> {
    Ok((redis_cpu(conn).await? - since) * 1e6 / writes as f64)
}

/// The same hashes as the guard stores (the record's fields, `__v` and a
/// 62-character `__h`), written without a guard.
async fn raw_upserts(conn: &mut MultiplexedConnection, recs: &[Record]) -> Result<()> {
    let h = format!("{:062}", 0);
    for chunk in recs.chunks(CALL) {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for r in chunk {
            let key = format!("bench:gc:raw:{}", r.id().unwrap_or_default());
            pipe.del(&key).ignore();
            pipe.cmd("HSET")
                .arg(&key)
                .arg(r.fields())
                .arg("__v")
                .arg("1:2:3")
                .arg("__h")
                .arg(&h)
                .ignore();
            pipe.expire(&key, 3600).ignore();
        }
        pipe.query_async::<()>(conn).await?;
    }
    Ok(())
}

async fn raw_deletes(conn: &mut MultiplexedConnection, recs: &[Record]) -> Result<()> {
    for chunk in recs.chunks(CALL) {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for r in chunk {
            let key = format!("bench:gc:raw:{}", r.id().unwrap_or_default());
            pipe.del(&key).ignore();
            pipe.cmd("SET")
                .arg(format!("bench:gc:rawt:{key}"))
                .arg("1:2:3")
                .arg("PX")
                .arg(86_400_000)
                .ignore();
        }
        pipe.query_async::<()>(conn).await?;
    }
    Ok(())
}

async fn minimal_upserts(
    conn: &mut MultiplexedConnection,
    recs: &[Record],
    version: u64,
) -> Result<()> {
    for chunk in recs.chunks(CALL) {
        let mut cmd = redis::cmd("FCALL");
        cmd.arg("bench_min_apply").arg(chunk.len());
        for r in chunk {
            cmd.arg(format!("bench:gc:min:{}", r.id().unwrap_or_default()));
        }
        for r in chunk {
            cmd.arg(version).arg(r.fields().len()).arg(r.fields());
        }
        cmd.query_async::<i64>(conn).await?;
    }
    Ok(())
}

/// Upserts (or deletes) of every record through the engine's guard, each
/// at a new commit.
async fn guarded(
    engine: &sync::SyncEngine,
    recs: &[Record],
    commit: &mut u64,
    delete: bool,
) -> Result<()> {
    for chunk in recs.chunks(CALL) {
        let batch: Vec<Change> = chunk
            .iter()
            .map(|r| {
                *commit += 1;
                let id = r.id().unwrap_or_default();
                let v = Version::new(*commit, 0);
                if delete {
                    Change::delete(id, v)
                } else {
                    Change::upsert(id, r.fields().clone(), v)
                }
            })
            .collect();
        engine
            .cache()
            .apply_batch(&batch, Some(Version::new(*commit, 0)))
            .await?;
    }
    Ok(())
}

pub async fn guard_cost(redis: &TestRedis, s: &Settings, report: &mut Report) -> Result<()> {
    println!("\n== guard cost in Redis");
    let n = if s.reps <= 2 { 51_200 } else { 102_400 };
    let recs = records(n);
    let (engine, _) = mock_engine(redis, "bench:gc:ours:", Vec::new(), true).await?;
    let mut conn = redis.conn().await;
    redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg("REPLACE")
        .arg(MINIMAL_GUARD)
        .query_async::<()>(&mut conn)
        .await?;
    // Every key exists first, so that every measured write is an update
    // with the same field names (the common case of a live change).
    let mut commit = 1u64 << 40;
    guarded(&engine, &recs, &mut commit, false).await?;
    raw_upserts(&mut conn, &recs).await?;
    minimal_upserts(&mut conn, &recs, 1).await?;
    let mut work = redis.conn().await;
    let (mut ours, mut raw, mut min) = (Vec::new(), Vec::new(), Vec::new());
    for rep in 0..s.reps.max(3) {
        let t = redis_cpu(&mut conn).await?;
        raw_upserts(&mut work, &recs).await?;
        raw.push(per_write(&mut conn, t, n).await?);
        let t = redis_cpu(&mut conn).await?;
        minimal_upserts(&mut work, &recs, rep as u64 + 2).await?;
        min.push(per_write(&mut conn, t, n).await?);
        let stats = command_stats(&mut conn).await?;
        let t = redis_cpu(&mut conn).await?;
        guarded(&engine, &recs, &mut commit, false).await?;
        ours.push(per_write(&mut conn, t, n).await?);
        if rep == 0 {
            print_breakdown("ours", &stats, &command_stats(&mut conn).await?, n);
        }
    }
    let (o, r, m) = (Spread::of(ours), Spread::of(raw), Spread::of(min));
    report.row(
        "guard",
        format!("Redis CPU per live upsert, {n} in {CALL}-write calls (ours)"),
        o.show("µs"),
        format!("raw MULTI/EXEC of the same hashes (DEL + HSET + EXPIRE) {}; a minimal guard (HGET, compare, HSET, EXPIRE) {}", r.show("µs"), m.show("µs")),
        Some(o.median / r.median),
        "≤ 1.05× raw",
        Some(o.median <= 1.05 * r.median),
    );
    report.data(
        "guard_cpu_upsert_us",
        serde_json::json!({"ours": o.median, "raw": r.median, "minimal": m.median}),
    );

    let (mut ours, mut raw) = (Vec::new(), Vec::new());
    for _ in 0..s.reps.max(3) {
        let t = redis_cpu(&mut conn).await?;
        guarded(&engine, &recs, &mut commit, true).await?;
        ours.push(per_write(&mut conn, t, n).await?);
        let t = redis_cpu(&mut conn).await?;
        raw_deletes(&mut work, &recs).await?;
        raw.push(per_write(&mut conn, t, n).await?);
        // Back again for the next round's deletes.
        guarded(&engine, &recs, &mut commit, false).await?;
        raw_upserts(&mut work, &recs).await?;
    }
    let (o, r) = (Spread::of(ours), Spread::of(raw));
    report.row(
        "guard",
        format!("Redis CPU per delete (tombstone), {n} in {CALL}-write calls (ours)"),
        o.show("µs"),
        format!("raw MULTI/EXEC (DEL + SET … PX) {}", r.show("µs")),
        Some(o.median / r.median),
        "≤ 1.2× raw",
        Some(o.median <= 1.2 * r.median),
    );
    report.data(
        "guard_cpu_delete_us",
        serde_json::json!({"ours": o.median, "raw": r.median}),
    );
    engine.shutdown(Duration::from_secs(5)).await?;
    Ok(())
}
