//! The source of truth: the mock, a private or given PostgreSQL, or a
//! Debezium/RDI change stream.
//!
//! It becomes the engine's [`Source`] and, beside it, the demo's
//! [`Primary`] (its view of the records and their editor).

use std::sync::Arc;

use futures::FutureExt;
use prefetch::{EventBus, MockPrimary, Primary, RedisClient, Source};
use prefetch_cdc::{StreamConfig, StreamSource};
use prefetch_pg::launcher::PostgresServer;
use prefetch_pg::{PgConfig, PgSource};
use prefetch_pipeline::SourceFactory;

use crate::error::Error;
use crate::redacted;
use crate::settings::{PrimaryKind, Settings};

/// The source of truth, opened.
pub struct PrimarySetup {
    /// What the engine reads (or, in a pipeline, what its publisher reads).
    pub source: Arc<dyn Source>,
    /// The demo's view and editor of it.
    pub primary: Arc<dyn Primary>,
    /// Opens the same source of truth again, for a pipeline's publisher
    /// (`None`: private to this process).
    pub factory: Option<SourceFactory>,
    /// A PostgreSQL source, closed at shutdown.
    pub pg: Option<Arc<PgSource>>,
    /// The private PostgreSQL, when one was started.
    pub embedded_pg: Option<PostgresServer>,
}

impl std::fmt::Debug for PrimarySetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrimarySetup")
            .field("source", &self.source.id())
            .finish_non_exhaustive()
    }
}

impl PrimarySetup {
    /// Opens the primary `settings` names; `redis` is the cache's Redis (a
    /// stream lives there unless `--stream-redis-url` says otherwise).
    pub async fn open(
        settings: &Settings,
        redis: &RedisClient,
        events: &EventBus,
    ) -> Result<Self, Error> {
        match &settings.primary {
            PrimaryKind::Mock => {
                let mock = Arc::new(MockPrimary::new(settings.mock_latency, events.clone()));
                Ok(Self {
                    source: mock.clone(),
                    primary: mock,
                    factory: None,
                    pg: None,
                    embedded_pg: None,
                })
            }
            PrimaryKind::Stream(stream) => open_stream(settings, stream, redis, events).await,
            PrimaryKind::Postgres(url) => open_postgres(settings, url.clone(), None, events).await,
            PrimaryKind::EmbeddedPostgres => {
                let pg = tokio::task::spawn_blocking(PostgresServer::start)
                    .await
                    .map_err(|e| Error::EmbeddedPostgres(std::io::Error::other(e)))?
                    .map_err(Error::EmbeddedPostgres)?;
                let url = pg.url("postgres");
                tracing::info!(
                    url = %url,
                    "started a private PostgreSQL at {url} (temporary data directory, wal_level=logical; stopped on exit)"
                );
                if let Some(path) = &settings.pg.init {
                    run_init(&url, path).await?;
                }
                open_postgres(settings, url, Some(pg), events).await
            }
        }
    }
}

async fn open_stream(
    settings: &Settings,
    stream: &str,
    redis: &RedisClient,
    events: &EventBus,
) -> Result<PrimarySetup, Error> {
    let failed = |source| Error::Stream {
        stream: stream.to_owned(),
        source,
    };
    let client = match (&settings.stream.redis_url, redis) {
        (Some(url), _) => crate::settings::RedisTls::client(settings.redis_tls.as_ref(), url)
            .map_err(|e| failed(prefetch::Error::Redis(e)))?,
        (None, RedisClient::Single(client)) => client.clone(),
        (None, RedisClient::Cluster(_)) => {
            return Err(Error::Config(
                "--primary stream:<key> with --redis-cluster needs --stream-redis-url (the Redis node the CDC tool writes to)".into(),
            ));
        }
    };
    let mut config = StreamConfig::new(stream);
    if !settings.stream.id_columns.is_empty() {
        config.decode.id_columns = Some(settings.stream.id_columns.clone());
    }
    config.decode.tables = settings
        .pg
        .specs
        .iter()
        .map(|spec| {
            let (schema, name) = spec.schema_and_name();
            prefetch_cdc::StreamTable {
                schema,
                name,
                template: spec.key.clone(),
                prefix: spec.key_prefix(),
                columns: spec.columns.clone(),
                rename: spec.rename.clone(),
                cache_prefix: settings.engine.cache.prefix.clone(),
                json: spec.value == prefetch_pg::tables::ValueKind::Json,
            }
        })
        .collect();
    config.allow_incomplete_history = settings.stream.allow_trimmed;
    let source = StreamSource::connect(client.clone(), config.clone(), events.clone())
        .await
        .map_err(failed)?;
    tracing::info!(
        %stream,
        "Following the change stream {stream} (Debezium Server / RDI format) as the primary; it is read-only here"
    );
    let factory: SourceFactory = Arc::new(move || {
        let (client, config) = (client.clone(), config.clone());
        async move {
            // A bus nobody reads: every replica announces what the feed
            // carries.
            let s: Arc<dyn Source> =
                StreamSource::connect(client, config, EventBus::default()).await?;
            Ok(s)
        }
        .boxed()
    });
    Ok(PrimarySetup {
        source: source.clone(),
        primary: source,
        factory: Some(factory),
        pg: None,
        embedded_pg: None,
    })
}

/// `--pg-init`: the schema file, run on the private PostgreSQL.
async fn run_init(url: &str, path: &str) -> Result<(), Error> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::PgInit {
        path: path.to_owned(),
        why: e.to_string(),
    })?;
    prefetch_pg::run_script(url, &text)
        .await
        .map_err(|e| Error::PgInit {
            path: path.to_owned(),
            why: e.to_string(),
        })?;
    tracing::info!(file = %path, "ran {path} on the private PostgreSQL");
    Ok(())
}

async fn open_postgres(
    settings: &Settings,
    url: String,
    embedded_pg: Option<PostgresServer>,
    events: &EventBus,
) -> Result<PrimarySetup, Error> {
    let mut config = PgConfig::new(&url, &settings.pg.table);
    config.create_demo_table = settings.pg.specs.is_empty();
    config.tables = settings.pg.specs.clone();
    config.slot = settings.pg.slot.clone();
    config.publication = settings.pg.publication.clone();
    let source = PgSource::connect(config.clone(), events.clone())
        .await
        .map_err(|source| Error::Postgres {
            url: redacted(&url),
            source,
        })?;
    let tables: Vec<String> = source.tables().iter().map(|t| t.label()).collect();
    let tables = tables.join(", ");
    tracing::info!(
        primary = %redacted(&url),
        tables = %tables,
        slot = %source.slot(),
        "Using PostgreSQL at {} as the primary: {} {}, replication slot {}",
        redacted(&url),
        if source.tables().len() > 1 { "tables" } else { "table" },
        tables,
        source.slot()
    );
    let factory: SourceFactory = Arc::new(move || {
        let config = config.clone();
        async move {
            let s: Arc<dyn Source> = PgSource::connect(config, EventBus::default())
                .await
                .map_err(prefetch::Error::source_failed)?;
            Ok(s)
        }
        .boxed()
    });
    // The private PostgreSQL belongs to this process: no pipeline.
    let factory = embedded_pg.is_none().then_some(factory);
    Ok(PrimarySetup {
        primary: Arc::new(source.editor()),
        source: source.clone(),
        factory,
        pg: Some(source),
        embedded_pg,
    })
}
