//! The load: writers committing inserts, updates, deletes and multi-row
//! transactions on PostgreSQL (some rolled back on purpose), each logged
//! with its outcome; readers reading through the servers' API and straight
//! from Redis, each read logged.
//!
//! Every write gives its row a value `n` from one sequence, taken while
//! the row is locked, so a row's `n` grows in commit order; every write's
//! `v` is a token no other write uses, so a read names the write it saw.
//! A writer owns its rows (`w<k>-<i>`), and an id is never used again
//! after its delete.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio_postgres::{Client, NoTls};

use crate::Error;
use crate::rng::Rng;
use crate::world::{PREFIX, TABLE};

/// One write of a transaction.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Op {
    /// The row.
    pub id: String,
    /// `i`nsert, `u`pdate or `d`elete.
    pub kind: char,
    /// The row's `n` after the write (none for a delete).
    pub n: Option<i64>,
    /// The row's `v` after the write (none for a delete).
    pub v: Option<String>,
}

/// One transaction as its writer saw it end.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TxLog {
    /// The writer.
    pub writer: String,
    /// `committed`, `rolled_back` (on purpose, or failed before `COMMIT`),
    /// or `uncertain` (the connection broke during `COMMIT`).
    pub status: String,
    /// Its writes.
    pub ops: Vec<Op>,
    /// `pg_current_wal_lsn()` read right after the commit (at or past its
    /// commit record), when it could be read.
    pub lsn_after: Option<String>,
    /// Milliseconds since the run started, when it ended.
    pub at_ms: u64,
}

/// One read.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReadLog {
    /// The reader.
    pub reader: String,
    /// Milliseconds since the run started, when the read began.
    pub at_ms: u64,
    /// The row.
    pub id: String,
    /// `present`, `deleted` (a tombstone, or the API's `Prefetch-Miss:
    /// deleted`) or `missing`.
    pub seen: String,
    /// What was read, when present.
    pub n: Option<i64>,
    /// What was read, when present.
    pub v: Option<String>,
}

/// A JSON-lines log shared by tasks.
#[derive(Clone)]
pub struct Log(Arc<Mutex<std::io::BufWriter<std::fs::File>>>);

impl Log {
    /// Creates the file.
    pub fn create(path: &std::path::Path) -> Result<Self, Error> {
        Ok(Self(Arc::new(Mutex::new(std::io::BufWriter::new(
            std::fs::File::create(path)?,
        )))))
    }

    /// Appends `entry` as one line.
    pub fn write<T: Serialize>(&self, entry: &T) {
        let mut w = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Ok(line) = serde_json::to_string(entry) {
            let _ = writeln!(w, "{line}");
        }
    }

    /// Flushes the file.
    pub fn flush(&self) {
        let _ = self.0.lock().unwrap_or_else(|p| p.into_inner()).flush();
    }
}

/// Connects (a plain SQL client).
pub async fn connect(url: &str) -> Result<Client, Error> {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// The mirrored table, its sequence and the probe row.
pub async fn create_table(url: &str) -> Result<(), Error> {
    connect(url)
        .await?
        .batch_execute(&format!(
            "CREATE SEQUENCE {TABLE}_n;
             CREATE TABLE {TABLE} (id text PRIMARY KEY, n bigint NOT NULL, v text NOT NULL);
             INSERT INTO {TABLE} VALUES ('probe', nextval('{TABLE}_n'), 'probe-0');"
        ))
        .await?;
    Ok(())
}

/// What the load shares: the ids ever inserted (for readers to pick),
/// the start of the run, and whether to go on.
#[derive(Clone)]
pub struct Shared {
    /// Ids inserted so far (deleted ones stay: reading them is the point).
    pub ids: Arc<Mutex<Vec<String>>>,
    /// When the run started.
    pub start: Instant,
    /// Cleared to stop.
    pub go: Arc<std::sync::atomic::AtomicBool>,
}

impl Shared {
    /// Milliseconds since the start.
    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn going(&self) -> bool {
        self.go.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn pick(&self, rng: &mut Rng) -> Option<String> {
        let ids = self.ids.lock().unwrap_or_else(|p| p.into_inner());
        let n = u64::try_from(ids.len()).unwrap_or(0);
        (n > 0).then(|| ids[usize::try_from(rng.below(n)).unwrap_or(0)].clone())
    }
}

/// Writer `k`: transactions of 1 to 4 writes on its own rows, about
/// `per_sec` a second, until told to stop; every outcome logged.
pub async fn writer(k: usize, url: String, mut rng: Rng, shared: Shared, log: Log, per_sec: u64) {
    let name = format!("w{k}");
    let mut live: Vec<String> = Vec::new();
    let mut next_id = 0u64;
    let mut client: Option<Client> = None;
    let mut tx_no = 0u64;
    let pause = Duration::from_micros(1_000_000 / per_sec.max(1));
    while shared.going() {
        tokio::time::sleep(pause).await;
        let c = match &client {
            Some(c) if !c.is_closed() => c,
            _ => {
                client = connect(&url).await.ok();
                if let Some(c) = &client {
                    live = own_rows(c, &name).await.unwrap_or(live);
                }
                continue;
            }
        };
        tx_no += 1;
        let mut plan = Vec::new();
        for o in 0..rng.between(1, 4) {
            let v = format!("{name}-t{tx_no}-o{o}");
            let choice = rng.below(10);
            if live.is_empty() || (choice < 4 && live.len() < 200) {
                next_id += 1;
                plan.push(('i', format!("{name}-{next_id}"), v));
            } else {
                let at = usize::try_from(rng.below(live.len() as u64)).unwrap_or(0);
                let id = live[at].clone();
                if plan.iter().any(|(_, p, _)| *p == id) {
                    continue;
                }
                plan.push((if choice < 8 { 'u' } else { 'd' }, id, v));
            }
        }
        let rollback = rng.percent(10);
        let entry = run_tx(c, &name, &plan, rollback, &shared).await;
        if entry.status != "rolled_back" {
            for op in &entry.ops {
                match op.kind {
                    'i' => {
                        live.push(op.id.clone());
                        shared
                            .ids
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(op.id.clone());
                    }
                    'd' => live.retain(|x| *x != op.id),
                    _ => {}
                }
            }
        }
        if entry.status == "uncertain" {
            client = None;
        }
        log.write(&entry);
    }
}

/// The rows writer `name` owns now.
async fn own_rows(c: &Client, name: &str) -> Result<Vec<String>, Error> {
    Ok(c.query(
        &format!("SELECT id FROM {TABLE} WHERE id LIKE $1"),
        &[&format!("{name}-%")],
    )
    .await?
    .iter()
    .map(|r| r.get(0))
    .collect())
}

async fn run_tx(
    c: &Client,
    name: &str,
    plan: &[(char, String, String)],
    rollback: bool,
    shared: &Shared,
) -> TxLog {
    let mut entry = TxLog {
        writer: name.to_owned(),
        status: "rolled_back".into(),
        ops: Vec::new(),
        lsn_after: None,
        at_ms: 0,
    };
    let body = async {
        c.batch_execute("BEGIN").await?;
        for (kind, id, v) in plan {
            let n: Option<i64> = match kind {
                'i' => Some(
                    c.query_one(
                        &format!("INSERT INTO {TABLE} VALUES ($1, nextval('{TABLE}_n'), $2) RETURNING n"),
                        &[id, v],
                    )
                    .await?
                    .get(0),
                ),
                'u' => c
                    .query_opt(
                        &format!("UPDATE {TABLE} SET n = nextval('{TABLE}_n'), v = $2 WHERE id = $1 RETURNING n"),
                        &[id, v],
                    )
                    .await?
                    .map(|r| r.get(0)),
                _ => {
                    c.execute(&format!("DELETE FROM {TABLE} WHERE id = $1"), &[id])
                        .await?;
                    None
                }
            };
            let kept = *kind == 'd' || n.is_some();
            if kept {
                entry.ops.push(Op {
                    id: id.clone(),
                    kind: *kind,
                    n,
                    v: (*kind != 'd').then(|| v.clone()),
                });
            }
        }
        Ok::<(), tokio_postgres::Error>(())
    };
    if body.await.is_err() || rollback {
        let _ = c.batch_execute("ROLLBACK").await;
        entry.at_ms = shared.now_ms();
        return entry;
    }
    entry.status = match c.batch_execute("COMMIT").await {
        Ok(()) => "committed".into(),
        Err(_) => "uncertain".into(),
    };
    entry.at_ms = shared.now_ms();
    if entry.status == "committed"
        && let Ok(row) = c.query_one("SELECT pg_current_wal_lsn()::text", &[]).await
    {
        entry.lsn_after = Some(row.get(0));
    }
    entry
}

/// A reader through a server's API (`GET /read`), about `per_sec` reads
/// a second.
pub async fn api_reader(
    name: String,
    port: u16,
    mut rng: Rng,
    shared: Shared,
    log: Log,
    per_sec: u64,
) {
    let http = reqwest::Client::new();
    let pause = Duration::from_micros(1_000_000 / per_sec.max(1));
    while shared.going() {
        tokio::time::sleep(pause).await;
        let Some(id) = shared.pick(&mut rng) else {
            continue;
        };
        let at_ms = shared.now_ms();
        let url = format!("http://127.0.0.1:{port}/read?id={id}");
        let Ok(res) = http.get(&url).timeout(Duration::from_secs(2)).send().await else {
            continue;
        };
        if !res.status().is_success() {
            continue;
        }
        let miss = res
            .headers()
            .get("prefetch-miss")
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned);
        let Ok(text) = res.text().await else {
            continue;
        };
        let Ok(body) = serde_json::from_str::<serde_json::Value>(&text) else {
            continue;
        };
        let record = &body["record"];
        let entry = if record.is_object() {
            ReadLog {
                reader: name.clone(),
                at_ms,
                id,
                seen: "present".into(),
                n: record["n"].as_str().and_then(|n| n.parse().ok()),
                v: record["v"].as_str().map(str::to_owned),
            }
        } else {
            ReadLog {
                reader: name.clone(),
                at_ms,
                id,
                seen: if miss.as_deref() == Some("deleted") {
                    "deleted"
                } else {
                    "missing"
                }
                .into(),
                n: None,
                v: None,
            }
        };
        log.write(&entry);
    }
}

/// A reader straight from Redis: the record's hash, or its tombstone.
pub async fn redis_reader(
    name: String,
    client: prefetch::RedisClient,
    mut rng: Rng,
    shared: Shared,
    log: Log,
    per_sec: u64,
) {
    let pause = Duration::from_micros(1_000_000 / per_sec.max(1));
    let mut conn = None;
    while shared.going() {
        tokio::time::sleep(pause).await;
        // (Re)connect until it works: Redis may be down or paused.
        let Some(conn) = (match &mut conn {
            Some(c) => Some(c),
            None => {
                conn = client.connect(Duration::from_secs(2)).await.ok();
                conn.as_mut()
            }
        }) else {
            continue;
        };
        let Some(id) = shared.pick(&mut rng) else {
            continue;
        };
        let at_ms = shared.now_ms();
        let key = format!("{PREFIX}{id}");
        let Ok(fields) = redis::cmd("HGETALL")
            .arg(&key)
            .query_async::<std::collections::HashMap<String, String>>(conn)
            .await
        else {
            continue;
        };
        let seen = if !fields.is_empty() {
            "present"
        } else {
            match redis::cmd("EXISTS")
                .arg(tombstone(&key))
                .query_async::<i64>(conn)
                .await
            {
                Ok(1) => "deleted",
                Ok(_) => "missing",
                Err(_) => continue,
            }
        };
        log.write(&ReadLog {
            reader: name.clone(),
            at_ms,
            id,
            seen: seen.into(),
            n: fields.get("n").and_then(|n| n.parse().ok()),
            v: fields.get("v").cloned(),
        });
    }
}

/// Where the cache keeps the tombstone of a deleted record whose key has
/// no hash tag (as docs/design.md describes it): `__pf:u:{<key>}`.
pub fn tombstone(key: &str) -> String {
    format!("__pf:u:{{{key}}}")
}
