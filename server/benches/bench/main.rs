//! The benchmark suite: our cache next to the raw-Redis limit, in one run.
//!
//! Run with `./scripts/bench.sh` (release build, its own redis-server on a
//! free loopback port). Every figure is printed beside a baseline measured
//! in the same run, as a ratio, over several repetitions (median, min, max).
//! Prints a markdown table and writes `target/bench/report.{md,json}`.
//!
//! `BENCH_ONLY=bulk,read,sync,reprefetch,postgres,memory,http,idle,replicas,cluster,page,ui,realsize,tables` runs only some sections.
//! `REFERENCE_BIN=path/to/demo_server` adds the published plain-axum Rust demo
//! (built by hand from redis/docs) to the `idle` section, same run.
//! `BENCH_QUICK=1` shortens every phase (for a smoke run; figures are then
//! not comparable with a full run).

// Test and benchmark code: a failed unwrap is a failed run, with its place.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use prefetch::testing::TestRedis;
use prefetch::{CacheConfig, Engine, EngineConfig, Fields, PrefetchCache, Record};
use redis::aio::MultiplexedConnection;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Result<T, E = BoxError> = std::result::Result<T, E>;

mod bulk;
mod cluster;
mod common;
mod guardcost;
mod http;
mod idle;
mod memory;
mod page;
mod postgres;
mod read;
mod realsize;
mod replicas;
mod report;
mod sync;
mod tables;

use common::*;
use report::*;

pub struct Settings {
    pub reps: usize,
    pub bulk_sizes: Vec<usize>,
    pub reads: usize,
    pub http_secs: u64,
    pub sustain_secs: u64,
    pub sustain_rates: Vec<u64>,
}

impl Settings {
    fn from_env() -> Self {
        if std::env::var("BENCH_QUICK").is_ok_and(|v| v == "1") {
            Self {
                reps: 2,
                bulk_sizes: vec![1_000, 10_000],
                reads: 10_000,
                http_secs: 2,
                sustain_secs: 1,
                sustain_rates: vec![20_000, 50_000],
            }
        } else {
            Self {
                reps: 5,
                bulk_sizes: vec![1_000, 10_000, 100_000],
                reads: 100_000,
                http_secs: 10,
                sustain_secs: 10,
                sustain_rates: vec![25_000, 35_000, 50_000, 75_000, 100_000, 150_000],
            }
        }
    }
}

/// `BENCH_ONLY=bulk,http` runs only those sections (default: all).
fn wanted(section: &str) -> bool {
    match std::env::var("BENCH_ONLY") {
        Ok(only) if !only.trim().is_empty() => only.split(',').any(|s| s.trim() == section),
        _ => true,
    }
}

fn bench_dir() -> PathBuf {
    PathBuf::from("target/bench")
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_owned())
        })
        .and_then(|k| k.parse::<f64>().ok())
        .map(|k| format!("{:.0} GiB", k / 1024.0 / 1024.0))
        .unwrap_or_default();
    let redis = Command::new("redis-server")
        .arg("--version")
        .output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .nth(2)
                .unwrap_or("")
                .trim_start_matches("v=")
                .to_owned()
        })
        .unwrap_or_default();
    format!("{cores} cores ({cpu}), {mem} RAM, redis-server {redis}")
}

fn main() -> Result<()> {
    // Cargo runs benches from the package directory; paths here are relative
    // to the workspace root (target/release/server, target/site, end2end/).
    if let Some(root) = Path::new(env!("CARGO_MANIFEST_DIR")).parent() {
        std::env::set_current_dir(root)?;
    }
    let s = Settings::from_env();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut report = Report::default();
    let started = Instant::now();
    runtime.block_on(async {
        let redis = TestRedis::spawn_own(false);
        println!("benchmark redis-server on port {}", redis.port);
        if wanted("bulk") {
            bulk::bulk_load(&redis, &s, &mut report).await?;
        }
        if wanted("read") {
            read::read_path(&redis, &s, &mut report).await?;
        }
        if wanted("guard") {
            guardcost::guard_cost(&redis, &s, &mut report).await?;
        }
        if wanted("sync") {
            sync::sync_path(&redis, &s, &mut report).await?;
        }
        if wanted("reprefetch") {
            sync::reprefetch(&redis, &s, &mut report).await?;
        }
        if wanted("memory") {
            memory::memory(&redis, &mut report).await?;
        }
        if wanted("postgres") {
            postgres::postgres(&redis, &s, &mut report).await?;
        }
        if wanted("http") {
            http::http(&redis, &s, &mut report).await?;
        }
        if wanted("idle") {
            idle::idle(&redis, &s, &mut report).await?;
        }
        if wanted("replicas") {
            replicas::replicas(&redis, &s, &mut report).await?;
        }
        if wanted("cluster") {
            cluster::cluster(&redis, &s, &mut report).await?;
        }
        if wanted("realsize") {
            realsize::real_size(&redis, &s, &mut report).await?;
        }
        if wanted("tables") {
            tables::tables(&redis, &mut report).await?;
        }
        Ok::<_, BoxError>(())
    })?;
    if wanted("page") {
        page::page_weight(&mut report)?;
    }
    if wanted("ui") {
        page::ui_latency(&mut report);
        page::apply_cost(&mut report);
    }

    let header = format!(
        "Benchmark run: {} reps, {:.0} s, {}",
        s.reps,
        started.elapsed().as_secs_f64(),
        machine()
    );
    let md = report.markdown(&header);
    println!("\n{md}");
    std::fs::create_dir_all(bench_dir())?;
    std::fs::write(bench_dir().join("report.md"), &md)?;
    report.data("machine", serde_json::json!(machine()));
    report.data("reps", serde_json::json!(s.reps));
    std::fs::write(
        bench_dir().join("report.json"),
        serde_json::to_string_pretty(&report.json)?,
    )?;
    println!("wrote target/bench/report.md and target/bench/report.json");
    Ok(())
}
