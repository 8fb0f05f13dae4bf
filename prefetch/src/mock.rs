//! [`MockPrimary`]: the embedded stand-in for the source of truth (feature
//! `mock`, on by default): a [`Source`] for the engine and a [`Primary`]
//! for the demo.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::FutureExt;

use crate::error::{Error, Result};
use crate::events::EventBus;
use crate::feed::{ChangeFeed, ChangeSender, channel};
use crate::model::{
    Change, ChangeKind, ID_FIELD, Record, Transaction, Version, validate_field, validate_id,
};
use crate::primary::Primary;
use crate::source::{BoxFuture, Source, SourceSnapshot, SourceStatus};

/// Default simulated read latency of the primary.
pub const DEFAULT_READ_LATENCY: Duration = Duration::from_millis(80);

/// One write inside a [`MockPrimary::transaction`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mutation {
    /// Insert or replace the record (by its id).
    Put(Record),
    /// Remove the record with this id (if present).
    Delete(String),
}

/// The mock source of truth: an in-memory table of records with a simulated
/// read latency, which commits a [`Transaction`] for every mutation.
///
/// Snapshots (and [`read`](Self::read)) sleep for the configured latency and
/// are counted, so a test can prove the cache's read path never comes here.
/// [`list_ids`](Self::list_ids) and [`inspect`](Self::inspect) are free:
/// they stand for the dashboard's view of the database, not for application
/// reads.
///
/// Every mutation sends its transaction while still holding the table lock,
/// so commit order is mutation order and positions have no gaps. A
/// transaction's position is its sequence number; snapshots carry the
/// sequence number of the last transaction they include.
#[derive(Clone, Debug)]
pub struct MockPrimary {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    id: String,
    read_latency: Duration,
    reads: AtomicU64,
    feed: ChangeFeed,
    table: Mutex<Table>,
}

#[derive(Debug)]
struct Table {
    records: BTreeMap<String, Record>,
    seq: u64,
    sender: ChangeSender,
}

impl Table {
    /// Commits one transaction of `changes` (given without versions).
    fn commit(&mut self, kinds: Vec<(String, ChangeKind)>) -> Vec<Change> {
        self.seq += 1;
        let seq = self.seq;
        let changes: Vec<Change> = kinds
            .into_iter()
            .enumerate()
            .map(|(ord, (id, kind))| Change {
                id,
                kind,
                version: Version::new(seq, u32::try_from(ord).unwrap_or(u32::MAX)),
            })
            .collect();
        let position = changes.last().map_or(Version::new(seq, 0), |c| c.version);
        self.sender
            .send(Transaction::new(position, changes.clone()));
        changes
    }
}

/// The five seed categories of the reference demos, in order.
pub fn seed_records() -> Vec<Record> {
    let cat = |id: &str, name: &str, order: &str, featured: bool, parent: &str| -> Record {
        [
            ("id", id),
            ("name", name),
            ("display_order", order),
            ("featured", if featured { "true" } else { "false" }),
            ("parent_id", parent),
        ]
        .into_iter()
        .collect()
    };
    vec![
        cat("cat-001", "Beverages", "1", true, ""),
        cat("cat-002", "Bakery", "2", true, ""),
        cat("cat-003", "Pantry Staples", "3", false, ""),
        cat("cat-004", "Frozen", "4", false, ""),
        cat("cat-005", "Specialty Cheeses", "5", false, "cat-002"),
    ]
}

fn instance_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or_default();
    format!(
        "mock:{}:{started}:{}",
        std::process::id(),
        NEXT.fetch_add(1, Relaxed)
    )
}

impl MockPrimary {
    /// A primary holding the seed categories, publishing to `events`.
    pub fn new(read_latency: Duration, events: EventBus) -> Self {
        Self::with_records(seed_records(), read_latency, events)
    }

    /// A primary holding `records` (those without an id are ignored).
    pub fn with_records(
        records: impl IntoIterator<Item = Record>,
        read_latency: Duration,
        events: EventBus,
    ) -> Self {
        let (sender, feed) = channel(events);
        let records = records
            .into_iter()
            .filter_map(|r| Some((r.id()?.to_owned(), r)))
            .collect();
        Self {
            inner: Arc::new(Inner {
                id: instance_id(),
                read_latency,
                reads: AtomicU64::new(0),
                feed,
                table: Mutex::new(Table {
                    records,
                    seq: 0,
                    sender,
                }),
            }),
        }
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        // The lock is never held across a panic-prone call, but recover the
        // data anyway rather than propagate a poison.
        self.inner.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One counted read, timed like a round trip to a real database: the
    /// request travels for half the latency, the database takes its snapshot,
    /// the reply travels for the other half. A change made while the reply
    /// travels is not in it, as with a real database.
    async fn round_trip<T>(&self, snapshot: impl FnOnce(&Table) -> T) -> T {
        self.inner.reads.fetch_add(1, Relaxed);
        let latency = self.inner.read_latency;
        if !latency.is_zero() {
            tokio::time::sleep(latency / 2).await;
        }
        let value = snapshot(&self.table());
        if !latency.is_zero() {
            tokio::time::sleep(latency - latency / 2).await;
        }
        value
    }

    /// Every record, in id order, and the position they reflect: one
    /// counted primary read.
    pub async fn list_records(&self) -> (Vec<Record>, Version) {
        self.round_trip(|t| {
            (
                t.records.values().cloned().collect(),
                Version::new(t.seq, u32::MAX),
            )
        })
        .await
    }

    /// One record: one counted primary read.
    pub async fn read(&self, id: &str) -> Option<Record> {
        self.round_trip(|t| t.records.get(id).cloned()).await
    }

    /// Every id, sorted. Free (not a counted read).
    pub fn list_ids(&self) -> Vec<String> {
        self.table().records.keys().cloned().collect()
    }

    /// Every record, in id order, plus the position they reflect. Free: the
    /// demo's view of the database, not an application read.
    pub fn inspect(&self) -> (Vec<Record>, Version) {
        let table = self.table();
        (
            table.records.values().cloned().collect(),
            Version::new(table.seq, u32::MAX),
        )
    }

    /// Sets one field of an existing record and commits an upsert with the
    /// record's new state.
    pub fn update_field(&self, id: &str, field: &str, value: &str) -> Result<Change> {
        let id = validate_id(id)?;
        validate_field(field, value)?;
        let mut table = self.table();
        let record = table
            .records
            .get_mut(id)
            .ok_or_else(|| Error::NotFound(id.to_owned()))?;
        record.set(field, value);
        let fields = Arc::new(record.fields().clone());
        Ok(first(
            table.commit(vec![(id.to_owned(), ChangeKind::Upsert(fields))]),
        ))
    }

    /// Inserts a new record and commits an upsert. The record's `id` field
    /// is validated (and trimmed); every other field is checked like an
    /// update.
    pub fn add(&self, record: Record) -> Result<Change> {
        let (id, record) = checked(record)?;
        let mut table = self.table();
        if table.records.contains_key(&id) {
            return Err(Error::AlreadyExists(id));
        }
        let fields = Arc::new(record.fields().clone());
        table.records.insert(id.clone(), record);
        Ok(first(table.commit(vec![(id, ChangeKind::Upsert(fields))])))
    }

    /// Removes a record and commits a delete.
    pub fn delete(&self, id: &str) -> Result<Change> {
        let id = validate_id(id)?;
        let mut table = self.table();
        if table.records.remove(id).is_none() {
            return Err(Error::NotFound(id.to_owned()));
        }
        Ok(first(
            table.commit(vec![(id.to_owned(), ChangeKind::Delete)]),
        ))
    }

    /// Applies several writes atomically, as one source transaction (one
    /// position, one change per write, in order). Puts replace whole
    /// records; deletes of missing ids are skipped.
    pub fn transaction(&self, mutations: Vec<Mutation>) -> Result<Vec<Change>> {
        let mut checked_muts = Vec::with_capacity(mutations.len());
        for m in mutations {
            checked_muts.push(match m {
                Mutation::Put(record) => Mutation::Put(checked(record)?.1),
                Mutation::Delete(id) => Mutation::Delete(validate_id(&id)?.to_owned()),
            });
        }
        let mut table = self.table();
        let mut kinds = Vec::with_capacity(checked_muts.len());
        for m in checked_muts {
            match m {
                Mutation::Put(record) => {
                    let id = record.id().unwrap_or_default().to_owned();
                    kinds.push((
                        id.clone(),
                        ChangeKind::Upsert(Arc::new(record.fields().clone())),
                    ));
                    table.records.insert(id, record);
                }
                Mutation::Delete(id) => {
                    if table.records.remove(&id).is_some() {
                        kinds.push((id, ChangeKind::Delete));
                    }
                }
            }
        }
        if kinds.is_empty() {
            return Ok(Vec::new());
        }
        Ok(table.commit(kinds))
    }

    /// Commits a change without touching the table, as a faulty change feed
    /// might (for example an upsert with no fields). For fault drills.
    pub fn emit_raw(&self, id: &str, kind: ChangeKind) -> Change {
        first(self.table().commit(vec![(id.to_owned(), kind)]))
    }

    /// Position of the last transaction committed (`None` before any).
    pub fn head(&self) -> Option<Version> {
        self.inner.feed.head()
    }

    /// Counted reads since the last reset.
    pub fn reads(&self) -> u64 {
        self.inner.reads.load(Relaxed)
    }

    /// Zeroes the read counter.
    pub fn reset_reads(&self) {
        self.inner.reads.store(0, Relaxed);
    }

    /// The simulated read latency.
    pub fn read_latency(&self) -> Duration {
        self.inner.read_latency
    }
}

/// A record to add: a valid (trimmed) id and valid fields.
fn checked(record: Record) -> Result<(String, Record)> {
    let raw_id = record.get(ID_FIELD).unwrap_or_default();
    let id = validate_id(raw_id)?.to_owned();
    let mut fields = record.into_fields();
    for (field, value) in fields.iter().filter(|(f, _)| f.as_str() != ID_FIELD) {
        validate_field(field, value)?;
    }
    fields.insert(ID_FIELD.to_owned(), id.clone());
    Ok((id, Record::new(fields)))
}

fn first(changes: Vec<Change>) -> Change {
    // `commit` always returns one change per kind given, and callers give one.
    changes
        .into_iter()
        .next()
        .unwrap_or_else(|| Change::delete(String::new(), Version::ZERO))
}

impl Source for MockPrimary {
    fn id(&self) -> String {
        self.inner.id.clone()
    }

    fn open(&self, applied: Option<Version>) -> BoxFuture<'_, Result<bool>> {
        let resumed = applied.is_some() && self.inner.feed.rewind(applied);
        async move { Ok(resumed) }.boxed()
    }

    fn snapshot(&self) -> BoxFuture<'_, Result<SourceSnapshot>> {
        async move {
            let (records, version) = self.list_records().await;
            Ok(SourceSnapshot::from_records(version, records))
        }
        .boxed()
    }

    fn pull(&self, max_changes: usize) -> BoxFuture<'_, Result<Vec<Arc<Transaction>>>> {
        async move { Ok(self.inner.feed.pull(max_changes).await) }.boxed()
    }

    fn ack(&self, upto: Version) -> BoxFuture<'_, Result<()>> {
        self.inner.feed.ack(upto);
        async { Ok(()) }.boxed()
    }

    fn position_text(&self, position: Version) -> String {
        position.commit.to_string()
    }

    fn parse_position(&self, text: &str) -> Option<Version> {
        let text = text.trim();
        match text.parse::<u64>() {
            Ok(seq) => Some(Version::new(seq, 0)),
            Err(_) => text.parse().ok(),
        }
    }

    fn pending(&self, id: &str) -> Option<crate::PendingChange> {
        self.inner.feed.pending(id)
    }

    fn fetch<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<crate::source::Fetched>>> {
        async move {
            let fetched = self
                .round_trip(|t| crate::source::Fetched {
                    record: t.records.get(id).cloned(),
                    // Every commit up to `seq` is in the record.
                    wait_for: Version::new(t.seq, 0),
                    version: Version::new(t.seq, u32::MAX),
                })
                .await;
            Ok(Some(fetched))
        }
        .boxed()
    }

    fn status(&self) -> SourceStatus {
        let feed = &self.inner.feed;
        let mut status = SourceStatus::connected("mock", feed.head(), feed.backlog());
        status.details.push((
            "read latency".into(),
            format!("{} ms", self.inner.read_latency.as_millis()),
        ));
        status
    }
}

impl Primary for MockPrimary {
    fn records_after<'a>(
        &'a self,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Record>>> {
        let records: Vec<Record> = {
            let table = self.table();
            let range = match after {
                Some(after) => table.records.range::<str, _>((
                    std::ops::Bound::Excluded(after),
                    std::ops::Bound::Unbounded,
                )),
                None => table.records.range::<str, _>(..),
            };
            range.take(limit).map(|(_, r)| r.clone()).collect()
        };
        async move { Ok(records) }.boxed()
    }

    fn records_for<'a>(&'a self, ids: &'a [String]) -> BoxFuture<'a, Result<Vec<Record>>> {
        let records: Vec<Record> = {
            let table = self.table();
            let mut found: Vec<Record> = ids
                .iter()
                .filter_map(|id| table.records.get(id).cloned())
                .collect();
            found.sort_by(|a, b| a.id().cmp(&b.id()));
            found.dedup_by(|a, b| a.id() == b.id());
            found
        };
        async move { Ok(records) }.boxed()
    }

    fn count(&self) -> BoxFuture<'_, Result<crate::primary::RowCount>> {
        let rows = self.table().records.len() as u64;
        async move { Ok(crate::primary::RowCount { rows, exact: true }) }.boxed()
    }

    fn update_field<'a>(
        &'a self,
        id: &'a str,
        field: &'a str,
        value: &'a str,
    ) -> BoxFuture<'a, Result<Record>> {
        let out = MockPrimary::update_field(self, id, field, value).map(record_of);
        async move { out }.boxed()
    }

    fn add(&self, record: Record) -> BoxFuture<'_, Result<Record>> {
        let out = MockPrimary::add(self, record).map(record_of);
        async move { out }.boxed()
    }

    fn delete<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<String>> {
        let out = MockPrimary::delete(self, id).map(|c| c.id);
        async move { out }.boxed()
    }

    fn commit_position(&self) -> BoxFuture<'_, Result<Option<Version>>> {
        // Positions are commit order: the head is this commit or a later one.
        let head = self.inner.feed.head();
        async move { Ok(head) }.boxed()
    }

    fn reads(&self) -> u64 {
        MockPrimary::reads(self)
    }

    fn reset_reads(&self) {
        MockPrimary::reset_reads(self);
    }

    fn read_latency(&self) -> Duration {
        MockPrimary::read_latency(self)
    }
}

fn record_of(change: Change) -> Record {
    match change.kind {
        ChangeKind::Upsert(fields) => Record::new(Arc::unwrap_or_clone(fields)),
        ChangeKind::Delete | ChangeKind::Truncate => Record::default(),
    }
}
