//! Running as one replica of a pipeline: the publisher's lease and leader
//! task, this replica's member of the consumer group as its engine's
//! source, its turn to load, and the dead letters for the API.

use std::sync::Arc;

use futures::FutureExt;
use prefetch::{EngineConfig, EventBus, Source};
use prefetch_pipeline::{DeadLetters, FeedSource, PipelineConfig, run_leader, wait_for_turn};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::primary::PrimarySetup;
use super::redis::RedisSetup;
use crate::error::Error;

/// This replica, joined.
pub struct Joined {
    /// The engine's source: the group's feed.
    pub source: Arc<dyn Source>,
    /// The feed's dead letters.
    pub dead_letters: Arc<dyn app::serve::DeadLetters>,
    /// The leader task (publishes while it holds the lease).
    pub leader: JoinHandle<()>,
}

/// Joins the pipeline `config` names, and returns once it is this
/// replica's turn to start its engine.
pub async fn join(
    config: &PipelineConfig,
    engine: &EngineConfig,
    redis: &RedisSetup,
    primary: &PrimarySetup,
    events: &EventBus,
    shutdown: &CancellationToken,
) -> Result<Joined, Error> {
    let Some(factory) = primary.factory.clone() else {
        return Err(Error::Config(
            "--pipeline needs a primary every replica can reach: a postgres:// URL or stream:<key>, not one private to this process".into(),
        ));
    };
    let (leading_tx, leading) = watch::channel(false);
    // A connection of its own: lease renewals never wait behind a
    // dashboard's snapshot read.
    let leader = tokio::spawn(
        run_leader(
            redis.connection().await?,
            config.clone(),
            factory,
            leading_tx,
            shutdown.clone(),
        )
        .instrument(tracing::info_span!("pipeline_leader", pipeline = %config.name)),
    );
    let feed = FeedSource::connect(
        redis.client.clone(),
        Arc::clone(&primary.source),
        config.clone(),
        events.clone(),
    )
    .await?;
    tracing::info!(
        pipeline = %config.name,
        replica = %config.consumer,
        partitions = config.partitions,
        "Running as replica {} of pipeline {}",
        config.consumer,
        config.name
    );
    let conn = redis.connection().await?;
    wait_for_turn(&conn, engine.cache.clone(), &feed.id(), config, leading)
        .await
        .map_err(|e| match e {
            prefetch::Error::InvalidConfig(why) => Error::Config(why),
            e => Error::Prefetch(e),
        })?;
    Ok(Joined {
        source: feed,
        dead_letters: Arc::new(FeedDeadLetters(DeadLetters::new(conn, config.clone()))),
        leader,
    })
}

/// The pipeline's dead letters, as the API sees them.
#[derive(Debug)]
struct FeedDeadLetters(DeadLetters);

impl app::serve::DeadLetters for FeedDeadLetters {
    fn list(&self, max: usize) -> prefetch::BoxFuture<'_, prefetch::Result<Vec<(String, String)>>> {
        self.0.list(max).boxed()
    }

    fn count(&self) -> prefetch::BoxFuture<'_, prefetch::Result<u64>> {
        self.0.count().boxed()
    }

    fn replay(&self, max: usize) -> prefetch::BoxFuture<'_, prefetch::Result<usize>> {
        self.0.replay(max).boxed()
    }
}
