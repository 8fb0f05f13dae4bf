//! A seeded chaos soak of the whole system: PostgreSQL, Redis (one node or
//! a cluster), two server replicas of one pipeline, writers and readers,
//! under a fault schedule drawn from the seed; then an independent checker
//! (`checker`) reads the writers' log, the readers' histories, PostgreSQL
//! and Redis, and prints a report. Exit status 1 on any violation.
//!
//! ```text
//! soak [--minutes N] [--seed S] [--topology single|cluster|both] [--server PATH]
//! ```
//!
//! | module | what |
//! |---|---|
//! | `rng` | the seeded generator |
//! | `proxy` | the TCP fault proxy |
//! | `world` | the processes: PostgreSQL, Redis, proxies, server replicas |
//! | `load` | writers and readers, and their logs |
//! | `faults` | the fault schedule and the probe of convergence |
//! | `checker` | the independent checker |

mod rng;

mod proxy;

mod load;
mod world;

mod checker;
mod faults;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;

use crate::load::{Log, Shared};
use crate::rng::Rng;
use crate::world::{Redis, World};

/// Errors of the harness itself (not findings: those are the verdict's).
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// Which Redis.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Topology {
    /// One node.
    Single,
    /// Three primaries with a replica each.
    Cluster,
}

#[derive(Parser, Debug)]
#[command(about = "A seeded chaos soak with an independent checker")]
struct Args {
    /// Minutes of faults per topology (fractions allowed).
    #[arg(long, default_value_t = 2.0)]
    minutes: f64,
    /// The seed of the fault schedule and of the load (default: the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// Which Redis: single, cluster, or both in turn.
    #[arg(long, default_value = "both")]
    topology: String,
    /// The server binary.
    #[arg(long, default_value = "target/debug/server")]
    server: PathBuf,
    /// Where the logs go (default: a new directory under the temp dir).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Server replicas of the pipeline. Two cover for each other (each
    /// applies the whole feed); one leaves every change to a single
    /// process, which is how a broken acknowledgement shows.
    #[arg(long, default_value_t = 2)]
    replicas: usize,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> ExitCode {
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs())
    });
    let topologies = match args.topology.as_str() {
        "single" => vec![Topology::Single],
        "cluster" => vec![Topology::Cluster],
        _ => vec![Topology::Single, Topology::Cluster],
    };
    let mut clean = true;
    for topology in topologies {
        match soak(&args, seed, topology).await {
            Ok(ok) => clean &= ok,
            Err(e) => {
                eprintln!("soak ({topology:?}): the harness failed: {e}");
                clean = false;
            }
        }
    }
    if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// One topology: start, load, faults, stop, check, report.
async fn soak(args: &Args, seed: u64, topology: Topology) -> Result<bool, Error> {
    let name = format!("{topology:?}").to_lowercase();
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(std::env::temp_dir)
        .join(format!(
            "prefetch-soak-{name}-{seed}-{}",
            std::process::id()
        ));
    std::fs::create_dir_all(&dir)?;
    let replay = format!(
        "scripts/soak.sh --minutes {} --seed {seed} --topology {name}",
        args.minutes
    );
    println!(
        "soak: {name}, seed {seed}, {} min of faults; logs in {}",
        args.minutes,
        dir.display()
    );
    let mut rng = Rng::new(seed);
    let mut world = World::start(topology, args.replicas, &args.server, &dir).await?;
    let shared = Shared {
        ids: Default::default(),
        start: Instant::now(),
        go: Arc::new(AtomicBool::new(true)),
    };
    let writes = Log::create(&dir.join("writes.jsonl"))?;
    let reads = Log::create(&dir.join("reads.jsonl"))?;
    let mut load = Vec::new();
    for k in 0..4 {
        load.push(tokio::spawn(load::writer(
            k,
            world.pg_url.clone(),
            rng.fork(),
            shared.clone(),
            writes.clone(),
            40,
        )));
    }
    let mut readers = Vec::new();
    for r in &world.replicas {
        readers.push(tokio::spawn(load::api_reader(
            format!("api-{}", r.name),
            r.port,
            rng.fork(),
            shared.clone(),
            reads.clone(),
            60,
        )));
    }
    readers.push(tokio::spawn(load::redis_reader(
        "redis".into(),
        world.redis_client()?,
        rng.fork(),
        shared.clone(),
        reads.clone(),
        80,
    )));

    let until = Instant::now() + Duration::from_secs_f64(args.minutes * 60.0);
    let faults = faults::run(&mut world, &mut rng, &shared, &writes, until).await?;

    // Stop the writers, make sure every process runs, let it settle.
    let stop_writes_ms = shared.now_ms();
    shared.go.store(false, Ordering::SeqCst);
    for task in load.into_iter().chain(readers) {
        let _ = task.await;
    }
    for r in &mut world.replicas {
        if !r.running() {
            r.restart()?;
        }
    }
    world.wait_ready(Duration::from_secs(120)).await?;
    writes.flush();
    reads.flush();

    let mut verdict = checker::Verdict::default();
    checker::converge(
        &world.pg_url,
        &world.redis_nodes(),
        Duration::from_secs(120),
        &mut verdict,
    )
    .await?;
    let windows: Vec<(u64, u64)> = match world.redis {
        Redis::Cluster(_) => faults
            .iter()
            .filter(|f| f.kind.contains("cluster-primary"))
            .map(|f| (f.at_ms, f.healed_ms + f.converged_ms.unwrap_or(60_000)))
            .collect(),
        Redis::Single { .. } => Vec::new(),
    };
    checker::histories(&dir, &windows, &mut verdict)?;
    // A reader that checked nothing would let a violation through unseen.
    let mut names: Vec<String> = world
        .replicas
        .iter()
        .map(|r| format!("api-{}", r.name))
        .collect();
    names.push("redis".into());
    for name in names {
        if verdict.reads.get(&name).copied().unwrap_or(0) == 0 {
            verdict.violations.push(format!(
                "reader {name} checked nothing (the harness failed)"
            ));
        }
    }
    for f in faults.iter().filter(|f| f.converged_ms.is_none()) {
        verdict.violations.push(format!(
            "after {} at {} ms, a change did not reach Redis within 60 s",
            f.kind, f.at_ms
        ));
    }
    report(&name, seed, &faults, &verdict, stop_writes_ms, &replay);
    Ok(verdict.violations.is_empty())
}

fn report(
    name: &str,
    seed: u64,
    faults: &[faults::FaultRecord],
    verdict: &checker::Verdict,
    stop_ms: u64,
    replay: &str,
) {
    println!(
        "== soak report: {name}, seed {seed}, load stopped at {} s",
        stop_ms / 1000
    );
    let mut kinds: Vec<&str> = faults.iter().map(|f| f.kind.as_str()).collect();
    kinds.sort_unstable();
    kinds.dedup();
    println!("faults: {}", faults.len());
    for kind in kinds {
        let mut times: Vec<u64> = faults
            .iter()
            .filter(|f| f.kind == kind)
            .filter_map(|f| f.converged_ms)
            .collect();
        times.sort_unstable();
        let count = faults.iter().filter(|f| f.kind == kind).count();
        let median = times.get(times.len() / 2).copied().unwrap_or(0);
        let max = times.last().copied().unwrap_or(0);
        println!("  {kind:<34} {count:>3}  converged after: median {median} ms, max {max} ms");
    }
    print!("{verdict}");
    println!("replay: {replay}");
}
