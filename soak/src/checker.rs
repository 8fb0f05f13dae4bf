//! The independent checker. It trusts nothing the server says: it reads
//! the writers' log, the readers' histories, PostgreSQL and Redis, and
//! asserts that
//!
//! - Redis ends equal to the table within a bounded time (every committed
//!   change reached it, no deleted row is left, nothing else is there);
//! - every value a reader saw was written by a committed transaction (or
//!   one whose `COMMIT` broke off, which may have committed), never by one
//!   rolled back;
//! - no reader saw a row move to an older value, nor a row it saw deleted
//!   come back (ids are never used again after a delete).
//!
//! On a Redis Cluster a primary's last writes may not have reached its
//! replica when it fails over (Redis replicates asynchronously; the cache
//! holds a change durable only once a replica has it, so what is lost
//! comes back): reads inside such a window that went back are counted
//! apart, not as violations.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::time::{Duration, Instant};

use crate::Error;
use crate::load::{ReadLog, TxLog, connect};
use crate::world::{PREFIX, TABLE};

/// What the checker found.
#[derive(Debug, Default)]
pub struct Verdict {
    /// Transactions committed, rolled back, uncertain.
    pub committed: usize,
    /// Rolled back (on purpose or failed before `COMMIT`).
    pub rolled_back: usize,
    /// `COMMIT` broke off.
    pub uncertain: usize,
    /// Writes in committed transactions.
    pub writes: usize,
    /// Reads checked, by reader.
    pub reads: HashMap<String, usize>,
    /// Reads that went back inside a failover window (not violations).
    pub failover_regressions: usize,
    /// How long Redis took to equal the table after the load stopped.
    pub converged_ms: Option<u64>,
    /// Rows in the table at the end.
    pub rows: usize,
    /// Every violation, said in full.
    pub violations: Vec<String>,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "writes: {} transactions committed ({} writes), {} rolled back, {} uncertain",
            self.committed, self.writes, self.rolled_back, self.uncertain
        )?;
        let mut readers: Vec<_> = self.reads.iter().collect();
        readers.sort();
        let total: usize = self.reads.values().sum();
        let each: Vec<String> = readers.iter().map(|(r, n)| format!("{r} {n}")).collect();
        writeln!(f, "reads checked: {total} ({})", each.join(", "))?;
        if self.failover_regressions > 0 {
            writeln!(
                f,
                "reads that went back during a cluster failover (asynchronous replication, not counted): {}",
                self.failover_regressions
            )?;
        }
        match self.converged_ms {
            Some(ms) => writeln!(
                f,
                "final: Redis equals the table ({} rows) {ms} ms after the load stopped",
                self.rows
            )?,
            None => writeln!(
                f,
                "final: Redis did NOT equal the table ({} rows)",
                self.rows
            )?,
        }
        writeln!(f, "violations: {}", self.violations.len())?;
        for v in self.violations.iter().take(20) {
            writeln!(f, "  - {v}")?;
        }
        Ok(())
    }
}

/// Reads a JSON-lines file.
fn lines<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> Result<Vec<T>, Error> {
    let text = std::fs::read_to_string(path)?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).map_err(|e| format!("{}: {e}: {l}", path.display()).into())
        })
        .collect()
}

/// The table, as PostgreSQL has it: id → (n, v).
async fn table(pg_url: &str) -> Result<HashMap<String, (i64, String)>, Error> {
    let c = connect(pg_url).await?;
    Ok(c.query(&format!("SELECT id, n, v FROM {TABLE}"), &[])
        .await?
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect())
}

/// Every record under the prefix, read from each primary: id → (n, v).
async fn cache(nodes: &[String]) -> Result<HashMap<String, (i64, String)>, Error> {
    let mut out = HashMap::new();
    for url in nodes {
        let client = redis::Client::open(url.as_str())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let role: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut conn)
            .await?;
        if !role.contains("role:master") {
            continue;
        }
        let mut cursor = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{PREFIX}*"))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await?;
            for key in keys {
                let (n, v): (Option<String>, Option<String>) = redis::cmd("HMGET")
                    .arg(&key)
                    .arg("n")
                    .arg("v")
                    .query_async(&mut conn)
                    .await?;
                let id = key[PREFIX.len()..].to_owned();
                let n = n.and_then(|n| n.parse().ok()).unwrap_or(-1);
                out.insert(id, (n, v.unwrap_or_default()));
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
    }
    Ok(out)
}

/// Waits up to `bound` for Redis to equal the table; the differences left
/// when it does not.
pub async fn converge(
    pg_url: &str,
    nodes: &[String],
    bound: Duration,
    verdict: &mut Verdict,
) -> Result<(), Error> {
    let started = Instant::now();
    loop {
        let want = table(pg_url).await?;
        let have = cache(nodes).await;
        verdict.rows = want.len();
        let diff = match have {
            Ok(have) => differences(&want, &have),
            Err(e) => vec![format!("Redis could not be read: {e}")],
        };
        if diff.is_empty() {
            verdict.converged_ms =
                Some(u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX));
            return Ok(());
        }
        if started.elapsed() > bound {
            // One violation per row that differs.
            verdict.violations.extend(
                diff.into_iter()
                    .map(|d| format!("{bound:?} after the load stopped: {d}")),
            );
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn differences(
    want: &HashMap<String, (i64, String)>,
    have: &HashMap<String, (i64, String)>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (id, row) in want {
        match have.get(id) {
            None => out.push(format!("{id}: in the table ({row:?}), not in Redis")),
            Some(seen) if seen != row => out.push(format!("{id}: table {row:?}, Redis {seen:?}")),
            Some(_) => {}
        }
    }
    for (id, seen) in have {
        if !want.contains_key(id) {
            out.push(format!("{id}: in Redis ({seen:?}), not in the table"));
        }
    }
    out.sort();
    out
}

/// Checks every read against the writes.
pub fn histories(
    dir: &std::path::Path,
    failovers: &[(u64, u64)],
    verdict: &mut Verdict,
) -> Result<(), Error> {
    let txs: Vec<TxLog> = lines(&dir.join("writes.jsonl"))?;
    let reads: Vec<ReadLog> = lines(&dir.join("reads.jsonl"))?;
    // What each token was, and which rows were deleted.
    let mut written: HashMap<&str, (&str, i64, bool)> = HashMap::new();
    let mut deleted: HashSet<&str> = HashSet::new();
    for tx in &txs {
        match tx.status.as_str() {
            "committed" => {
                verdict.committed += 1;
                verdict.writes += tx.ops.len();
            }
            "uncertain" => verdict.uncertain += 1,
            _ => verdict.rolled_back += 1,
        }
        let counts = tx.status == "committed" || tx.status == "uncertain";
        for op in &tx.ops {
            match (&op.v, op.n) {
                (Some(v), Some(n)) => {
                    written.insert(v.as_str(), (op.id.as_str(), n, counts));
                }
                _ if counts => {
                    deleted.insert(op.id.as_str());
                }
                _ => {}
            }
        }
    }
    let in_failover = |at: u64| failovers.iter().any(|(from, to)| at >= *from && at <= *to);
    // Per reader and row: the last value seen, and whether it was seen deleted.
    let mut last: HashMap<(&str, &str), (i64, bool)> = HashMap::new();
    for r in &reads {
        *verdict.reads.entry(r.reader.clone()).or_default() += 1;
        let at = (r.reader.as_str(), r.id.as_str());
        let state = last.entry(at).or_insert((i64::MIN, false));
        match r.seen.as_str() {
            "present" => {
                let (n, v) = (r.n.unwrap_or(-1), r.v.as_deref().unwrap_or(""));
                match written.get(v) {
                    Some((id, wn, true)) if *id == r.id && *wn == n => {}
                    Some((_, _, false)) => verdict.violations.push(format!(
                        "{} at {} ms read {} = {v} (n {n}), written by a transaction that rolled back",
                        r.reader, r.at_ms, r.id
                    )),
                    _ => verdict.violations.push(format!(
                        "{} at {} ms read {} = {v} (n {n}), which no transaction wrote",
                        r.reader, r.at_ms, r.id
                    )),
                }
                let back = n < state.0;
                let revived = state.1;
                if (back || revived) && in_failover(r.at_ms) {
                    verdict.failover_regressions += 1;
                } else if back {
                    verdict.violations.push(format!(
                        "{} at {} ms read {} at n {n} after n {}: it went back in time",
                        r.reader, r.at_ms, r.id, state.0
                    ));
                } else if revived {
                    verdict.violations.push(format!(
                        "{} at {} ms read {} = {v} after seeing it deleted: a deleted row came back",
                        r.reader, r.at_ms, r.id
                    ));
                }
                *state = (n.max(state.0), false);
            }
            "deleted" => {
                if !deleted.contains(r.id.as_str()) {
                    verdict.violations.push(format!(
                        "{} at {} ms saw {} deleted, which no transaction deleted",
                        r.reader, r.at_ms, r.id
                    ));
                }
                state.1 = true;
            }
            _ => {}
        }
    }
    Ok(())
}
