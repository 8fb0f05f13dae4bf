//! Engines over a [`MockPrimary`], and checks that a cache holds exactly
//! what its primary holds.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::prefix;
use crate::{
    CacheConfig, Engine, EngineConfig, EventBus, Faults, FaultyConnection, FaultySource, Fields,
    MockPrimary, PrefetchReport, Primary, Record, Source,
};

/// An engine over a [`MockPrimary`] holding `records` (the seed categories
/// when `None`), with no read latency, on its own prefix.
pub async fn mock_engine<C>(
    conn: C,
    test: &str,
    records: Option<Vec<Record>>,
) -> (Engine<MockPrimary, C>, PrefetchReport)
where
    C: crate::Connection,
{
    mock_engine_with(conn, engine_config(test), records, Duration::ZERO).await
}

/// An engine over a [`MockPrimary`] with the given configuration.
pub async fn mock_engine_with<C>(
    conn: C,
    config: EngineConfig,
    records: Option<Vec<Record>>,
    read_latency: Duration,
) -> (Engine<MockPrimary, C>, PrefetchReport)
where
    C: crate::Connection,
{
    let events = EventBus::default();
    let primary = match records {
        Some(records) => MockPrimary::with_records(records, read_latency, events.clone()),
        None => MockPrimary::new(read_latency, events.clone()),
    };
    Engine::start(conn, Arc::new(primary), events, config)
        .await
        .expect("engine starts")
}

/// An engine over a [`MockPrimary`] behind the fault wrappers (its source a
/// [`FaultySource`], its writer a [`FaultyConnection`]), with the mock and
/// the fault plan.
pub async fn faulty_mock_engine<C>(conn: C, test: &str) -> FaultyEngine<C>
where
    C: crate::Connection,
{
    let events = EventBus::default();
    let primary = Arc::new(MockPrimary::new(Duration::ZERO, events.clone()));
    let faults = Faults::default();
    let source = FaultySource::new(Arc::clone(&primary), faults.clone(), events.clone());
    let reads = FaultyConnection::clean(conn.clone());
    let writes = FaultyConnection::new(conn, faults.clone());
    let (engine, _) = Engine::start_with_writer(reads, writes, source, events, engine_config(test))
        .await
        .expect("engine starts");
    (engine, primary, faults)
}

/// What [`faulty_mock_engine`] returns.
pub type FaultyEngine<C> = (
    Engine<FaultySource<MockPrimary>, FaultyConnection<C>>,
    Arc<MockPrimary>,
    Faults,
);

/// An engine configuration on a fresh prefix for `test`.
pub fn engine_config(test: &str) -> EngineConfig {
    EngineConfig {
        cache: CacheConfig {
            prefix: prefix(test),
            ..CacheConfig::default()
        },
        ..EngineConfig::default()
    }
}

/// Primary and cache contents by id, for an engine whose source is its own
/// primary (the mock).
pub async fn both_sides<S, C>(
    engine: &Engine<S, C>,
) -> (BTreeMap<String, Fields>, BTreeMap<String, Fields>)
where
    S: Source + Primary + ?Sized,
    C: crate::Connection,
{
    both_sides_of(engine, engine.source().as_ref()).await
}

/// Primary and cache contents by id, the primary given beside the engine.
pub async fn both_sides_of<S, C, P>(
    engine: &Engine<S, C>,
    primary: &P,
) -> (BTreeMap<String, Fields>, BTreeMap<String, Fields>)
where
    S: Source + ?Sized,
    C: crate::Connection,
    P: Primary + ?Sized,
{
    let primary = primary
        .records()
        .await
        .expect("primary records")
        .into_iter()
        .map(|r| {
            (
                r.id().expect("primary records have ids").to_owned(),
                r.into_fields(),
            )
        })
        .collect();
    let cache = engine
        .entries()
        .await
        .expect("cache entries")
        .into_iter()
        .map(|e| (e.id, e.fields))
        .collect();
    (primary, cache)
}

/// Waits until the cache holds exactly the source's records, for at most
/// `within` (a refill or another replica's apply runs beside this engine's
/// worker, so its catching up is not enough).
pub async fn converged_within<S, C>(engine: &Engine<S, C>, within: Duration)
where
    S: Source + Primary + ?Sized,
    C: crate::Connection,
{
    converged_within_of(engine, engine.source().as_ref(), within).await;
}

/// [`converged_within`] with the primary given beside the engine.
pub async fn converged_within_of<S, C, P>(engine: &Engine<S, C>, primary: &P, within: Duration)
where
    S: Source + ?Sized,
    C: crate::Connection,
    P: Primary + ?Sized,
{
    let deadline = std::time::Instant::now() + within;
    loop {
        let (primary, cache) = both_sides_of(engine, primary).await;
        if primary == cache {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no convergence within {within:?}: {} in the primary, {} cached",
            primary.len(),
            cache.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Asserts the cache holds exactly the primary's records, once the worker
/// caught up.
pub async fn assert_converged<S, C>(engine: &Engine<S, C>)
where
    S: Source + Primary + ?Sized,
    C: crate::Connection,
{
    assert_converged_of(engine, engine.source().as_ref()).await;
}

/// [`assert_converged`] with the primary given beside the engine.
pub async fn assert_converged_of<S, C, P>(engine: &Engine<S, C>, primary: &P)
where
    S: Source + ?Sized,
    C: crate::Connection,
    P: Primary + ?Sized,
{
    engine
        .settle(Duration::from_secs(10))
        .await
        .expect("sync worker catches up");
    let (primary, cache) = both_sides_of(engine, primary).await;
    if primary != cache {
        let only_primary: Vec<_> = primary.keys().filter(|k| !cache.contains_key(*k)).collect();
        let only_cache: Vec<_> = cache.keys().filter(|k| !primary.contains_key(*k)).collect();
        let differing: Vec<_> = primary
            .iter()
            .filter(|(k, v)| cache.get(*k).is_some_and(|c| c != *v))
            .map(|(k, _)| k)
            .take(5)
            .collect();
        panic!(
            "cache != primary: {} only in primary {:?}, {} only in cache {:?}, differing {:?}",
            only_primary.len(),
            only_primary.iter().take(5).collect::<Vec<_>>(),
            only_cache.len(),
            only_cache.iter().take(5).collect::<Vec<_>>(),
            differing
        );
    }
}
