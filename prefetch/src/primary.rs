//! [`MockPrimary`]: the embedded stand-in for the source of truth.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::events::{Event, EventBus};
use crate::model::{Change, ChangeKind, ID_FIELD, Record, validate_field, validate_id};

/// Default simulated read latency of the primary.
pub const DEFAULT_READ_LATENCY: Duration = Duration::from_millis(80);

/// The primary's change stream: the sync worker's input. Unbounded, so a
/// mutation never waits for the worker (for instance while it is paused).
#[derive(Debug)]
pub struct ChangeFeed {
    pub(crate) rx: mpsc::UnboundedReceiver<Change>,
}

impl ChangeFeed {
    /// Events emitted but not yet taken by the consumer.
    pub fn len(&self) -> usize {
        self.rx.len()
    }

    /// True when no event is waiting.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    /// Waits for the next event (`None` once the primary is gone and the feed
    /// is drained). For consumers other than [`SyncWorker`](crate::SyncWorker).
    pub async fn recv(&mut self) -> Option<Change> {
        self.rx.recv().await
    }
}

/// The mock source of truth: an in-memory table of records with a simulated
/// read latency, which emits a [`Change`] for every mutation.
///
/// Reads through [`list_records`](Self::list_records) and
/// [`read`](Self::read) sleep for the configured latency and are counted, so a
/// test can prove the cache's read path never comes here.
/// [`list_ids`](Self::list_ids) and [`inspect`](Self::inspect) are free: they
/// stand for the dashboard's view of the database, not for application reads.
///
/// Every mutation emits its change event while still holding the table lock,
/// so event order is mutation order, and sequence numbers are gap-free.
#[derive(Clone, Debug)]
pub struct MockPrimary {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    read_latency: Duration,
    reads: AtomicU64,
    events: EventBus,
    table: Mutex<Table>,
}

#[derive(Debug)]
struct Table {
    records: BTreeMap<String, Record>,
    seq: u64,
    feed: mpsc::UnboundedSender<Change>,
}

impl Table {
    fn emit(&mut self, id: String, kind: ChangeKind, events: &EventBus) -> Change {
        self.seq += 1;
        let change = Change::new(self.seq, id, kind);
        // A closed feed means the consumer has stopped; the mutation still
        // stands in the primary, which is what a real database would do.
        let _ = self.feed.send(change.clone());
        events.publish(|| Event::Primary(change.clone()));
        change
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

impl MockPrimary {
    /// A primary holding the seed categories, and its change feed.
    pub fn new(read_latency: Duration, events: EventBus) -> (Self, ChangeFeed) {
        Self::with_records(seed_records(), read_latency, events)
    }

    /// A primary holding `records` (those without an id are ignored), and its
    /// change feed.
    pub fn with_records(
        records: impl IntoIterator<Item = Record>,
        read_latency: Duration,
        events: EventBus,
    ) -> (Self, ChangeFeed) {
        let (tx, rx) = mpsc::unbounded_channel();
        let records = records
            .into_iter()
            .filter_map(|r| Some((r.id()?.to_owned(), r)))
            .collect();
        let primary = Self {
            inner: Arc::new(Inner {
                read_latency,
                reads: AtomicU64::new(0),
                events,
                table: Mutex::new(Table {
                    records,
                    seq: 0,
                    feed: tx,
                }),
            }),
        };
        (primary, ChangeFeed { rx })
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

    /// Every record, in id order: one counted primary read.
    pub async fn list_records(&self) -> Vec<Record> {
        self.round_trip(|t| t.records.values().cloned().collect())
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

    /// Every record, in id order, plus the sequence number of the last change
    /// they include. Free: the demo's view of the database, not an
    /// application read.
    pub fn inspect(&self) -> (Vec<Record>, u64) {
        let table = self.table();
        (table.records.values().cloned().collect(), table.seq)
    }

    /// Sets one field of an existing record and emits an upsert with the
    /// record's new state.
    pub fn update_field(&self, id: &str, field: &str, value: &str) -> Result<Change> {
        let id = validate_id(id)?;
        validate_field(field, value)?;
        let mut table = self.table();
        let record = table
            .records
            .get_mut(id)
            .ok_or_else(|| Error::NotFound(id.to_owned()))?;
        record.set(field.to_owned(), value.to_owned());
        let fields = record.fields().clone();
        Ok(table.emit(
            id.to_owned(),
            ChangeKind::Upsert(fields),
            &self.inner.events,
        ))
    }

    /// Inserts a new record and emits an upsert. The record's `id` field is
    /// validated (and trimmed); every other field is checked like an update.
    pub fn add(&self, record: Record) -> Result<Change> {
        let raw_id = record.get(ID_FIELD).unwrap_or_default();
        let id = validate_id(raw_id)?.to_owned();
        let mut fields = record.into_fields();
        for (field, value) in fields.iter().filter(|(f, _)| f.as_str() != ID_FIELD) {
            validate_field(field, value)?;
        }
        fields.insert(ID_FIELD.to_owned(), id.clone());
        let mut table = self.table();
        if table.records.contains_key(&id) {
            return Err(Error::AlreadyExists(id));
        }
        table
            .records
            .insert(id.clone(), Record::new(fields.clone()));
        Ok(table.emit(id, ChangeKind::Upsert(fields), &self.inner.events))
    }

    /// Removes a record and emits a delete.
    pub fn delete(&self, id: &str) -> Result<Change> {
        let id = validate_id(id)?;
        let mut table = self.table();
        if table.records.remove(id).is_none() {
            return Err(Error::NotFound(id.to_owned()));
        }
        Ok(table.emit(id.to_owned(), ChangeKind::Delete, &self.inner.events))
    }

    /// Emits a change event without touching the table, as a faulty change
    /// feed might (for example an upsert with no fields). For fault drills.
    pub fn emit_raw(&self, id: &str, kind: ChangeKind) -> Change {
        self.table().emit(id.to_owned(), kind, &self.inner.events)
    }

    /// Sequence number of the last change emitted (0 before any).
    pub fn last_seq(&self) -> u64 {
        self.table().seq
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
