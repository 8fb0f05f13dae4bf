//! Records, raw RESP files and Redis helpers shared by the sections.

use super::*;

/// The site the release server serves (`bench.sh` sets `LEPTOS_SITE_ROOT`
/// to the release site; `target/site` otherwise).
pub fn site_root() -> PathBuf {
    PathBuf::from(std::env::var("LEPTOS_SITE_ROOT").unwrap_or_else(|_| "target/site".into()))
}

pub fn records(n: usize) -> Vec<Record> {
    (0..n)
        .map(|i| {
            [
                ("id", format!("rec-{i:07}")),
                ("name", format!("Category number {i}")),
                ("display_order", i.to_string()),
                ("featured", (i % 3 == 0).to_string()),
                (
                    "parent_id",
                    if i % 5 == 0 {
                        String::new()
                    } else {
                        format!("rec-{:07}", i / 5)
                    },
                ),
            ]
            .into_iter()
            .collect()
        })
        .collect()
}

/// A record of the demo's shape from one line of `COPY … TO STDOUT` (id,
/// name, display_order, featured, parent_id, tab-separated).
pub fn copy_record(line: &str) -> Option<Record> {
    let cols: Vec<&str> = line.split('\t').collect();
    let [id, name, order, featured, parent] = cols[..] else {
        return None;
    };
    Some(
        [
            ("id", id),
            ("name", name),
            ("display_order", order),
            ("featured", featured),
            ("parent_id", parent),
        ]
        .into_iter()
        .collect(),
    )
}

pub async fn flushall(conn: &mut MultiplexedConnection) -> Result<()> {
    redis::cmd("FLUSHALL").query_async::<()>(conn).await?;
    Ok(())
}

pub fn resp(args: &[&str], out: &mut Vec<u8>) {
    let _ = write!(out, "*{}\r\n", args.len());
    for a in args {
        let _ = write!(out, "${}\r\n{}\r\n", a.len(), a);
    }
}

/// The same DEL + HSET + EXPIRE per record as `bulk_load` (the HSET with
/// the same version and content-hash fields), as raw RESP for
/// `redis-cli --pipe`.
pub fn pipe_file(records: &[Record], prefix: &str, ttl: u64, path: &Path) -> Result<()> {
    let mut buf = Vec::with_capacity(records.len() * 240);
    let ttl = ttl.to_string();
    let version = prefetch::Version::ZERO.to_string();
    for r in records {
        let key = format!("{prefix}{}", r.id().unwrap_or_default());
        resp(&["DEL", &key], &mut buf);
        let hash = prefetch::hash_text(r.fields());
        let mut hset = vec!["HSET", key.as_str()];
        for (k, v) in r.fields() {
            hset.push(k);
            hset.push(v);
        }
        hset.extend(["__v", version.as_str(), "__h", hash.as_str()]);
        resp(&hset, &mut buf);
        resp(&["EXPIRE", &key, &ttl], &mut buf);
    }
    std::fs::write(path, buf)?;
    Ok(())
}

/// Feeds `file` to `redis-cli --pipe` against `redis`; the wall time in ms.
pub fn redis_cli_pipe(redis: &TestRedis, file: &Path) -> Result<f64> {
    let t = Instant::now();
    let out = Command::new("redis-cli")
        .args(["-p", &redis.port.to_string(), "--pipe"])
        .stdin(std::fs::File::open(file)?)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()?;
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    let text = String::from_utf8_lossy(&out.stdout);
    if !text.contains("errors: 0") {
        return Err(format!("redis-cli --pipe failed: {text}").into());
    }
    Ok(ms)
}

/// A standalone cache on its own connection to `redis`, under `prefix`.
pub async fn bench_cache(redis: &TestRedis, prefix: &str) -> PrefetchCache<MultiplexedConnection> {
    PrefetchCache::new(
        redis.conn().await,
        CacheConfig {
            prefix: prefix.into(),
            ..CacheConfig::default()
        },
        "bench",
    )
}
