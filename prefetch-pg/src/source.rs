//! [`PgSource`]: a PostgreSQL table as a [`Source`] (and, for the demo, a
//! [`Primary`]).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::FutureExt;
use pg_walstream::{CancellationToken, Lsn, SharedLsnFeedback};
use prefetch::{
    BoxFuture, ChangeFeed, ChangeSender, EventBus, Record, Result, Source, SourceSnapshot,
    SourceStatus, Transaction, Version, validate_field, validate_id,
};
use tokio::task::JoinHandle;
use tokio_postgres::types::ToSql;
use tracing::Instrument;

use crate::error::PgError;
use crate::snapshot::SlotSnapshot;
use crate::sql::{self, Sql};
use crate::stream::HEARTBEAT_PREFIX;
use crate::table::{TableInfo, ident};

/// How to reach and mirror a table.
#[derive(Clone, Debug)]
pub struct PgConfig {
    /// `postgres://user[:password]@host[:port]/database` (no TLS).
    pub url: String,
    /// `table` (schema `public`) or `schema.table`.
    pub table: String,
    /// Create the table as the demo's categories table, seeded with the
    /// five categories, when it does not exist.
    pub create_demo_table: bool,
    /// The replication slot (default `prefetch_<database>_<table>`).
    pub slot: Option<String>,
    /// The publication (default `prefetch_<table>`).
    pub publication: Option<String>,
    /// How often a heartbeat message goes through the slot.
    pub heartbeat: Duration,
    /// How long creating a slot may wait for transactions already running.
    pub slot_wait: Duration,
}

impl PgConfig {
    /// The defaults for `url` and `table`.
    pub fn new(url: impl Into<String>, table: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            table: table.into(),
            create_demo_table: true,
            slot: None,
            publication: None,
            heartbeat: Duration::from_secs(1),
            slot_wait: Duration::from_secs(10),
        }
    }
}

/// State shared by the source, its reader and its heartbeat.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) url: String,
    pub(crate) sql: Sql,
    pub(crate) slot: String,
    pub(crate) publication: String,
    table: RwLock<Arc<TableInfo>>,
    pub(crate) cancel: CancellationToken,
    pub(crate) connected: AtomicBool,
    /// The newest position acknowledged (an LSN).
    pub(crate) acked: AtomicU64,
    pub(crate) resync: AtomicU64,
    pub(crate) feedback: Mutex<Option<Arc<SharedLsnFeedback>>>,
    details: Mutex<Vec<(String, String)>>,
}

impl Shared {
    pub(crate) fn table(&self) -> Arc<TableInfo> {
        Arc::clone(&self.table.read().unwrap_or_else(|p| p.into_inner()))
    }

    pub(crate) fn set_table(&self, info: TableInfo) {
        *self.table.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(info);
    }
}

/// A PostgreSQL table kept in the cache by logical replication (`pgoutput`).
///
/// The first start creates the replication slot inside a `REPEATABLE READ`
/// transaction and loads the table from that slot's own snapshot; changes
/// then stream from the slot's consistent point, so nothing falls between
/// the two. Each committed transaction reaches the engine whole, versioned
/// by its commit LSN, and is acknowledged to PostgreSQL only once Redis
/// holds it, so after any crash the slot resends from the last position
/// Redis confirmed. Re-prefetches read through a temporary slot of their
/// own, exact at its consistent point. A heartbeat message every second
/// keeps the slot moving and lag measurable while the table is idle.
pub struct PgSource {
    shared: Arc<Shared>,
    id: String,
    feed: ChangeFeed,
    sender: Mutex<Option<ChangeSender>>,
    held: tokio::sync::Mutex<Option<SlotSnapshot>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    config: PgConfig,
    reads: AtomicU64,
    read_latency_us: AtomicU64,
}

impl std::fmt::Debug for PgSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSource")
            .field("id", &self.id)
            .field("slot", &self.shared.slot)
            .finish_non_exhaustive()
    }
}

impl PgSource {
    /// Connects, checks the table (creating and seeding the demo table when
    /// asked and missing), and makes sure the publication covers it. The
    /// slot and the stream come with [`Source::open`].
    pub async fn connect(config: PgConfig, events: EventBus) -> Result<Arc<Self>, PgError> {
        let sql = Sql::new(&config.url);
        let client = sql.client().await?;
        let (schema, name) = sql::split_name(&config.table);
        if !sql::table_exists(&client, &schema, &name).await? {
            if !config.create_demo_table {
                return Err(PgError::Schema(format!(
                    "table {schema}.{name} does not exist"
                )));
            }
            tracing::info!(table = %config.table, "creating the demo table and its five categories");
            sql::create_demo_table(&client, &schema, &name).await?;
        }
        let table = sql::table_info(&client, &schema, &name).await?;
        let db: String = client
            .query_one("SELECT current_database()", &[])
            .await?
            .get(0);
        let system: i64 = client
            .query_one("SELECT system_identifier FROM pg_control_system()", &[])
            .await?
            .get(0);
        let version: String = client.query_one("SHOW server_version", &[]).await?.get(0);
        let slot = config
            .slot
            .clone()
            .unwrap_or_else(|| sql::object_name(&["prefetch", &db, &schema, &name]));
        let publication = config
            .publication
            .clone()
            .unwrap_or_else(|| sql::object_name(&["prefetch", &schema, &name]));
        sql::ensure_publication(&client, &publication, &table).await?;
        let id = format!("postgres:{system}:{db}:{slot}");
        let (sender, feed) = prefetch::feed::channel(events);
        let details = vec![
            ("PostgreSQL".to_owned(), version),
            ("table".to_owned(), table.qualified().replace('"', "")),
            ("slot".to_owned(), slot.clone()),
        ];
        Ok(Arc::new(Self {
            shared: Arc::new(Shared {
                url: config.url.clone(),
                sql,
                slot,
                publication,
                table: RwLock::new(Arc::new(table)),
                cancel: CancellationToken::new(),
                connected: AtomicBool::new(false),
                acked: AtomicU64::new(0),
                resync: AtomicU64::new(0),
                feedback: Mutex::new(None),
                details: Mutex::new(details),
            }),
            id,
            feed,
            sender: Mutex::new(Some(sender)),
            held: tokio::sync::Mutex::new(None),
            tasks: Mutex::new(Vec::new()),
            config,
            reads: AtomicU64::new(0),
            read_latency_us: AtomicU64::new(0),
        }))
    }

    /// The table as last read from the catalog.
    pub fn table(&self) -> Arc<TableInfo> {
        self.shared.table()
    }

    /// The replication slot's name.
    pub fn slot(&self) -> &str {
        &self.shared.slot
    }

    /// The publication's name.
    pub fn publication(&self) -> &str {
        &self.shared.publication
    }

    /// Stops the reader and the heartbeat (the slot stays, so a restart
    /// resumes where this one stopped).
    pub fn close(&self) {
        self.shared.cancel.cancel();
        for task in self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            task.abort();
        }
    }

    fn start_tasks(&self) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        if !tasks.is_empty() {
            return;
        }
        let Some(sender) = self.sender.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        tasks.push(tokio::spawn(
            crate::stream::run(Arc::clone(&self.shared), sender)
                .instrument(tracing::info_span!("pg_reader", slot = %self.shared.slot)),
        ));
        tasks.push(tokio::spawn(
            heartbeat(Arc::clone(&self.shared), self.config.heartbeat)
                .instrument(tracing::info_span!("pg_heartbeat", slot = %self.shared.slot)),
        ));
    }

    async fn open_slot(&self, applied: Option<Version>) -> Result<bool, PgError> {
        let client = self.shared.sql.client().await?;
        let confirmed = sql::slot_confirmed(&client, &self.shared.slot).await?;
        let resumable = match confirmed {
            None => {
                // First start: the slot's own snapshot is the initial load,
                // held open until the engine reads it.
                let snap = SlotSnapshot::begin(
                    &self.shared.url,
                    &client,
                    &self.shared.slot,
                    false,
                    self.table(),
                    self.config.slot_wait,
                )
                .await?;
                tracing::info!(slot = %self.shared.slot, consistent_point = %Lsn(snap.consistent_point), "created the replication slot");
                *self.held.lock().await = Some(snap);
                false
            }
            Some(confirmed) => {
                // PostgreSQL resends everything after its confirmed position;
                // that covers what Redis lacks when Redis holds at least it.
                tracing::info!(slot = %self.shared.slot, confirmed = %Lsn(confirmed), "the replication slot exists");
                applied.is_some_and(|p| confirmed <= p.commit)
            }
        };
        self.start_tasks();
        Ok(resumable)
    }

    async fn take_snapshot(&self) -> Result<SourceSnapshot, PgError> {
        let started = Instant::now();
        self.reads.fetch_add(1, Relaxed);
        let held = self.held.lock().await.take();
        let snap = match held {
            Some(snap) => snap,
            None => match self.temporary_snapshot().await {
                Err(e) if undefined_column(&e) => {
                    self.refresh_table().await?;
                    self.temporary_snapshot().await?
                }
                other => other?,
            },
        };
        self.read_latency_us.store(
            u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            Relaxed,
        );
        let version = Version::new(snap.consistent_point, 0);
        let rows = Some(snap.rows);
        let chunks = futures::stream::try_unfold(snap, |mut snap| async move {
            match snap.next_chunk().await {
                Ok(Some(rows)) => Ok(Some((rows.into_iter().map(Record::new).collect(), snap))),
                Ok(None) => Ok(None),
                Err(e) => Err(prefetch::Error::from(e)),
            }
        });
        Ok(SourceSnapshot {
            version,
            rows,
            chunks: Box::pin(chunks),
        })
    }

    /// Reads the table's columns again (a column was added or dropped).
    async fn refresh_table(&self) -> Result<(), PgError> {
        let table = self.table();
        let client = self.shared.sql.client().await?;
        let info = sql::table_info(&client, &table.schema, &table.name).await?;
        if info != *table {
            self.shared.set_table(info);
        }
        Ok(())
    }

    async fn temporary_snapshot(&self) -> Result<SlotSnapshot, PgError> {
        let client = self.shared.sql.client().await?;
        let temp = sql::object_name(&[
            "prefetch_snap",
            &std::process::id().to_string(),
            &SNAPSHOTS.fetch_add(1, Relaxed).to_string(),
        ]);
        SlotSnapshot::begin(
            &self.shared.url,
            &client,
            &temp,
            true,
            self.table(),
            self.config.slot_wait,
        )
        .await
    }

    async fn select_records(&self) -> Result<Vec<Record>, PgError> {
        match self.try_select_records().await {
            Err(e) if undefined_column(&e) => {
                self.refresh_table().await?;
                self.try_select_records().await
            }
            other => other,
        }
    }

    async fn try_select_records(&self) -> Result<Vec<Record>, PgError> {
        let table = self.table();
        let client = self.shared.sql.client().await?;
        let order: Vec<String> = table.key.iter().map(|k| ident(k)).collect();
        let rows = client
            .query(
                &format!("{} ORDER BY {}", table.select_text(), order.join(", ")),
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                let values = (0..table.columns.len()).map(|i| r.get(i)).collect();
                table.record(values).map(Record::new)
            })
            .collect())
    }

    fn returning(table: &TableInfo) -> String {
        let cols: Vec<String> = table
            .columns
            .iter()
            .map(|c| format!("{}::text", ident(&c.name)))
            .collect();
        cols.join(", ")
    }

    fn row_record(table: &TableInfo, row: &tokio_postgres::Row) -> Option<Record> {
        let values = (0..table.columns.len()).map(|i| row.get(i)).collect();
        table.record(values).map(Record::new)
    }

    async fn update(&self, id: &str, field: &str, value: &str) -> Result<Record> {
        let id = validate_id(id)?;
        validate_field(field, value)?;
        let table = self.table();
        let column = table
            .column(field)
            .ok_or_else(|| prefetch::Error::InvalidField(format!("unknown column '{field}'")))?;
        if table.key.iter().any(|k| k == field) {
            return Err(prefetch::Error::InvalidField(format!(
                "'{field}' is part of the primary key and cannot be changed"
            )));
        }
        let key = table.key_of(id)?;
        let query = format!(
            "UPDATE {} SET {} = CAST($1::text AS {}) WHERE {} RETURNING {}",
            table.qualified(),
            ident(field),
            column.sql_type,
            table.key_predicate(2),
            Self::returning(&table)
        );
        let value = value.to_owned();
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&value];
        params.extend(key.iter().map(|k| k as &(dyn ToSql + Sync)));
        let client = self.shared.sql.client().await?;
        let row = client
            .query_opt(&query, &params)
            .await
            .map_err(PgError::from)?
            .ok_or_else(|| prefetch::Error::NotFound(id.to_owned()))?;
        Self::row_record(&table, &row).ok_or_else(|| prefetch::Error::NotFound(id.to_owned()))
    }

    async fn insert(&self, record: Record) -> Result<Record> {
        let table = self.table();
        let mut fields = record.into_fields();
        if let Some(raw) = fields.get(prefetch::ID_FIELD).cloned() {
            let id = validate_id(&raw)?.to_owned();
            if table.synthetic_id() {
                // The id names the key: its parts fill the key columns.
                let parts = table.key_of(&id).map_err(|_| {
                    prefetch::Error::InvalidId(format!(
                        "'{id}' does not name the {} key columns",
                        table.key.len()
                    ))
                })?;
                fields.remove(prefetch::ID_FIELD);
                for (k, v) in table.key.iter().zip(parts) {
                    fields.entry(k.clone()).or_insert(v);
                }
            } else {
                fields.insert(prefetch::ID_FIELD.to_owned(), id);
            }
        }
        let mut names = Vec::new();
        let mut casts = Vec::new();
        let mut values: Vec<String> = Vec::new();
        for (name, value) in &fields {
            let column = table
                .column(name)
                .ok_or_else(|| prefetch::Error::InvalidField(format!("unknown column '{name}'")))?;
            if name != prefetch::ID_FIELD {
                validate_field(name, value)?;
            }
            names.push(ident(name));
            values.push(value.clone());
            casts.push(format!(
                "CAST(${}::text AS {})",
                values.len(),
                column.sql_type
            ));
        }
        let query = format!(
            "INSERT INTO {} ({}) VALUES ({}) RETURNING {}",
            table.qualified(),
            names.join(", "),
            casts.join(", "),
            Self::returning(&table)
        );
        let params: Vec<&(dyn ToSql + Sync)> =
            values.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
        let client = self.shared.sql.client().await?;
        let row = match client.query_one(&query, &params).await {
            Ok(row) => row,
            Err(e) if e.as_db_error().is_some_and(|d| d.code().code() == "23505") => {
                let id = fields.get(prefetch::ID_FIELD).cloned().unwrap_or_else(|| {
                    let parts: Vec<&str> = table
                        .key
                        .iter()
                        .filter_map(|k| fields.get(k).map(String::as_str))
                        .collect();
                    table.id_of(&parts)
                });
                return Err(prefetch::Error::AlreadyExists(id));
            }
            Err(e) => return Err(PgError::from(e).into()),
        };
        Self::row_record(&table, &row)
            .ok_or_else(|| prefetch::Error::InvalidId("the new row has no key".into()))
    }

    async fn remove(&self, id: &str) -> Result<String> {
        let id = validate_id(id)?;
        let table = self.table();
        let key = table.key_of(id)?;
        let query = format!(
            "DELETE FROM {} WHERE {}",
            table.qualified(),
            table.key_predicate(1)
        );
        let params: Vec<&(dyn ToSql + Sync)> =
            key.iter().map(|k| k as &(dyn ToSql + Sync)).collect();
        let client = self.shared.sql.client().await?;
        let deleted = client
            .execute(&query, &params)
            .await
            .map_err(PgError::from)?;
        if deleted == 0 {
            return Err(prefetch::Error::NotFound(id.to_owned()));
        }
        Ok(id.to_owned())
    }
}

static SNAPSHOTS: AtomicU64 = AtomicU64::new(0);

/// Whether a statement failed because a column it names no longer exists.
fn undefined_column(e: &PgError) -> bool {
    match e {
        PgError::Sql(e) => e.as_db_error().is_some_and(|d| d.code().code() == "42703"),
        PgError::Replication(e) => e.to_string().contains("does not exist"),
        _ => false,
    }
}

impl Drop for PgSource {
    fn drop(&mut self) {
        self.close();
    }
}

/// Every `every`: a transactional heartbeat message through the slot, and
/// the slot's confirmed position and retained WAL for the dashboard.
async fn heartbeat(shared: Arc<Shared>, every: Duration) {
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(50)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shared.cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let client = match shared.sql.client().await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "heartbeat: cannot connect");
                continue;
            }
        };
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis().to_string())
            .unwrap_or_default();
        if let Err(e) = client
            .execute(
                "SELECT pg_logical_emit_message(true, $1, $2)",
                &[&HEARTBEAT_PREFIX, &now_ms],
            )
            .await
        {
            tracing::debug!(error = %e, "heartbeat failed");
            continue;
        }
        let status = client
            .query_opt(
                "SELECT confirmed_flush_lsn::text, (pg_current_wal_lsn() - confirmed_flush_lsn)::int8 \
                 FROM pg_replication_slots WHERE slot_name = $1",
                &[&shared.slot],
            )
            .await;
        if let Ok(Some(row)) = status {
            let confirmed: Option<String> = row.get(0);
            let retained: Option<i64> = row.get(1);
            let mut details = shared.details.lock().unwrap_or_else(|p| p.into_inner());
            details.retain(|(k, _)| k != "confirmed" && k != "retained");
            details.push(("confirmed".into(), confirmed.unwrap_or_default()));
            details.push((
                "retained".into(),
                format!("{} KiB", retained.unwrap_or(0).max(0) / 1024),
            ));
        }
    }
}

impl Source for PgSource {
    fn id(&self) -> String {
        self.id.clone()
    }

    fn open(&self, applied: Option<Version>) -> BoxFuture<'_, Result<bool>> {
        async move { Ok(self.open_slot(applied).await?) }.boxed()
    }

    fn snapshot(&self) -> BoxFuture<'_, Result<SourceSnapshot>> {
        async move { Ok(self.take_snapshot().await?) }.boxed()
    }

    fn pull(&self, max_changes: usize) -> BoxFuture<'_, Result<Vec<Arc<Transaction>>>> {
        async move { Ok(self.feed.pull(max_changes).await) }.boxed()
    }

    fn ack(&self, upto: Version) -> BoxFuture<'_, Result<()>> {
        self.feed.ack(upto);
        self.shared.acked.fetch_max(upto.commit, Relaxed);
        if let Some(feedback) = self
            .shared
            .feedback
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            // Flushed and applied: Redis holds everything up to here.
            feedback.update_applied_lsn(upto.commit);
        }
        async { Ok(()) }.boxed()
    }

    fn status(&self) -> SourceStatus {
        let mut status = SourceStatus::connected("postgres", self.feed.head(), self.feed.backlog());
        status.connected = self.shared.connected.load(Relaxed);
        status.details = self
            .shared
            .details
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        status.resync_requests = self.shared.resync.load(Relaxed);
        status
    }
}

impl prefetch::Primary for PgSource {
    fn records(&self) -> BoxFuture<'_, Result<Vec<Record>>> {
        async move { Ok(self.select_records().await?) }.boxed()
    }

    fn update_field<'a>(
        &'a self,
        id: &'a str,
        field: &'a str,
        value: &'a str,
    ) -> BoxFuture<'a, Result<Record>> {
        self.update(id, field, value).boxed()
    }

    fn add(&self, record: Record) -> BoxFuture<'_, Result<Record>> {
        self.insert(record).boxed()
    }

    fn delete<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<String>> {
        self.remove(id).boxed()
    }

    fn reads(&self) -> u64 {
        self.reads.load(Relaxed)
    }

    fn reset_reads(&self) {
        self.reads.store(0, Relaxed);
    }

    fn read_latency(&self) -> Duration {
        Duration::from_micros(self.read_latency_us.load(Relaxed))
    }
}
