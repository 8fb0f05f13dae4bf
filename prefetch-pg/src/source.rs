//! [`PgSource`]: a PostgreSQL table as a [`Source`]; its demo view and
//! editor is [`PgEditor`](crate::PgEditor).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::FutureExt;
use pg_walstream::CancellationToken;
use prefetch::{
    BoxFuture, ChangeFeed, ChangeSender, EventBus, Result, Source, SourceSnapshot, SourceStatus,
    Transaction, Version,
};
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::editor::PgEditor;
use crate::error::PgError;
use crate::shared::{Shared, undefined_column};
use crate::snapshot::SlotSnapshot;
use crate::sql::{self, Sql};
use crate::table::TableInfo;
use crate::tables::TableSpec;

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
    /// The tables declared in a tables file (key template, columns,
    /// names, filter), all in one slot and one publication; `table` is then
    /// the first's name. Empty: `table` the demo's way, every column named
    /// by the primary key.
    pub tables: Vec<TableSpec>,
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
            tables: Vec::new(),
        }
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
    pub(crate) shared: Arc<Shared>,
    id: String,
    feed: ChangeFeed,
    sender: Mutex<Option<ChangeSender>>,
    held: tokio::sync::Mutex<Option<SlotSnapshot>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    config: PgConfig,
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
    /// The tables a snapshot reads: every one, or the one labelled `only`.
    fn snapshot_tables(&self, only: Option<&str>) -> Result<Vec<Arc<TableInfo>>, PgError> {
        let tables = self.shared.tables();
        match only {
            None => Ok(tables.to_vec()),
            Some(name) => tables
                .iter()
                .find(|t| t.label() == name)
                .map(|t| vec![Arc::clone(t)])
                .ok_or_else(|| PgError::Schema(format!("no table '{name}' is kept"))),
        }
    }

    /// Connects, checks the table (creating and seeding the demo table when
    /// asked and missing), and makes sure the publication covers it. The
    /// slot and the stream come with [`Source::open`].
    pub async fn connect(config: PgConfig, events: EventBus) -> Result<Arc<Self>, PgError> {
        let sql = Sql::new(&config.url);
        let client = sql.client().await?;
        let (schema, name) = sql::split_name(&config.table);
        if config.tables.is_empty() && !sql::table_exists(&client, &schema, &name).await? {
            if !config.create_demo_table {
                return Err(PgError::Schema(format!(
                    "table {schema}.{name} does not exist"
                )));
            }
            tracing::info!(table = %config.table, "creating the demo table and its five categories");
            sql::create_demo_table(&client, &schema, &name).await?;
        }
        let tables = if config.tables.is_empty() {
            vec![Arc::new(
                sql::table_info(&client, &schema, &name, None).await?,
            )]
        } else {
            let prefix = crate::tables::cache_prefix(&config.tables);
            declared(&client, &config.tables, &prefix).await?
        };
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
        sql::ensure_publication(&client, &publication, &tables).await?;
        let id = format!("postgres:{system}:{db}:{slot}");
        let (sender, feed) = prefetch::feed::channel(events);
        let details = vec![
            ("PostgreSQL".to_owned(), version),
            (
                if tables.len() > 1 { "tables" } else { "table" }.to_owned(),
                tables
                    .iter()
                    .map(|t| t.label())
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            ("slot".to_owned(), slot.clone()),
        ];
        Ok(Arc::new(Self {
            shared: Arc::new(Shared {
                url: config.url.clone(),
                sql,
                slot,
                publication,
                tables: RwLock::new(Arc::new(tables)),
                cancel: CancellationToken::new(),
                connected: AtomicBool::new(false),
                acked: AtomicU64::new(0),
                resync: AtomicU64::new(0),
                feedback: Mutex::new(None),
                details: Mutex::new(details),
                reads: AtomicU64::new(0),
                read_latency_us: AtomicU64::new(0),
            }),
            id,
            feed,
            sender: Mutex::new(Some(sender)),
            held: tokio::sync::Mutex::new(None),
            tasks: Mutex::new(Vec::new()),
            config,
        }))
    }

    /// The (first) table as last read from the catalog.
    pub fn table(&self) -> Arc<TableInfo> {
        self.shared.table()
    }

    /// The cache prefix the declared tables' ids are relative to (`None`:
    /// started without a tables file).
    pub(crate) fn declared_prefix(&self) -> Option<String> {
        (!self.config.tables.is_empty()).then(|| crate::tables::cache_prefix(&self.config.tables))
    }

    /// Every table kept, as last read from the catalog.
    pub fn tables(&self) -> Vec<Arc<TableInfo>> {
        self.shared.tables().to_vec()
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

    /// The demo's view and editor of the table (SQL through a connection
    /// of its own), sharing this source's counters.
    pub fn editor(&self) -> PgEditor {
        PgEditor {
            shared: Arc::clone(&self.shared),
            label: None,
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
            crate::wal_reader::run(Arc::clone(&self.shared), sender)
                .instrument(tracing::info_span!("pg_reader", slot = %self.shared.slot)),
        ));
        tasks.push(tokio::spawn(
            crate::heartbeat::heartbeat(Arc::clone(&self.shared), self.config.heartbeat)
                .instrument(tracing::info_span!("pg_heartbeat", slot = %self.shared.slot)),
        ));
    }

    async fn open_slot(&self, applied: Option<Version>) -> Result<bool, PgError> {
        let (resumable, snapshot) =
            crate::slot::open(&self.shared, applied, self.config.slot_wait).await?;
        if let Some(snapshot) = snapshot {
            // The first start's slot snapshot is the initial load, held
            // open until the engine reads it.
            *self.held.lock().await = Some(snapshot);
        }
        self.start_tasks();
        Ok(resumable)
    }

    /// A snapshot of every table (`None`), or of the one called `only`.
    async fn take_snapshot(&self, only: Option<&str>) -> Result<SourceSnapshot, PgError> {
        let started = Instant::now();
        self.shared.reads.fetch_add(1, Relaxed);
        let held = match only {
            None => self.held.lock().await.take(),
            Some(_) => None,
        };
        let snap = match held {
            Some(snap) => snap,
            None => {
                let wait = self.config.slot_wait;
                match crate::slot::temporary_snapshot(
                    &self.shared,
                    self.snapshot_tables(only)?,
                    wait,
                )
                .await
                {
                    Err(e) if undefined_column(&e) => {
                        self.shared.refresh_table().await?;
                        let tables = self.snapshot_tables(only)?;
                        crate::slot::temporary_snapshot(&self.shared, tables, wait).await?
                    }
                    other => other?,
                }
            }
        };
        self.shared.read_latency_us.store(
            u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            Relaxed,
        );
        let version = Version::new(snap.consistent_point, 0);
        let rows = Some(snap.rows);
        let chunks = futures::stream::try_unfold(snap, |mut snap| async move {
            match snap.next_chunk().await {
                Ok(Some(rows)) => Ok(Some((rows, snap))),
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
}

/// The declared tables as the catalog describes them, each mapped and
/// checked (errors name the file and line of the table).
pub(crate) async fn declared(
    client: &tokio_postgres::Client,
    specs: &[TableSpec],
    prefix: &str,
) -> Result<Vec<Arc<TableInfo>>, PgError> {
    let mut tables = Vec::with_capacity(specs.len());
    for spec in specs {
        let (schema, name) = sql::split_name(&spec.table);
        if !sql::table_exists(client, &schema, &name).await? {
            return Err(spec.error(format!("table {schema}.{name} does not exist")));
        }
        let mut table = sql::catalog(client, &schema, &name).await?;
        table.mapping = Some(Arc::new(spec.mapping(&table, prefix)?));
        table.validate().map_err(|e| spec.error(e))?;
        tables.push(Arc::new(table));
    }
    Ok(tables)
}

impl Drop for PgSource {
    fn drop(&mut self) {
        self.close();
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
        async move { Ok(self.take_snapshot(None).await?) }.boxed()
    }

    fn snapshot_of(&self, table: &str) -> BoxFuture<'_, Result<SourceSnapshot>> {
        let table = table.to_owned();
        async move { Ok(self.take_snapshot(Some(&table)).await?) }.boxed()
    }

    fn pull(&self, max_changes: usize) -> BoxFuture<'_, Result<Vec<Arc<Transaction>>>> {
        async move { Ok(self.feed.pull(max_changes).await) }.boxed()
    }

    fn ack(&self, upto: Version) -> BoxFuture<'_, Result<()>> {
        self.feed.ack(upto);
        if upto.ord != 0 {
            // A part of a large transaction: the slot moves once all of it
            // is in Redis (PostgreSQL resends a transaction whole).
            return async { Ok(()) }.boxed();
        }
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

    /// An LSN as PostgreSQL writes it (`0/16B3748`).
    fn position_text(&self, position: Version) -> String {
        pg_walstream::Lsn(position.commit).to_string()
    }

    /// An LSN as PostgreSQL writes it (what `pg_current_wal_lsn()` gives
    /// after a commit), or `hi:lo:ord`.
    fn parse_position(&self, text: &str) -> Option<Version> {
        let text = text.trim();
        match text.parse::<pg_walstream::Lsn>() {
            Ok(lsn) => Some(Version::new(lsn.value(), 0)),
            Err(_) => text.parse().ok(),
        }
    }

    fn pending(&self, id: &str) -> Option<prefetch::PendingChange> {
        self.feed.pending(id)
    }

    fn fetch<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<prefetch::Fetched>>> {
        async move { self.editor().fetch_one(id).await.map(Some) }.boxed()
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
