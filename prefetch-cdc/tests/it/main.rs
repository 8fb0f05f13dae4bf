//! The stream source against a real redis-server: entries written exactly as
//! Debezium Server's Redis sink and RDI's collector write them, read by an
//! engine into the cache.

// Test code: a failed unwrap is a failed test, with its place.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use prefetch::testing::{TestRedis, assert_converged, engine_config};
use prefetch::{Engine, EngineConfig, Error, EventBus, Primary, Source, Version};
use prefetch_cdc::{StreamConfig, StreamSource};
use redis::aio::MultiplexedConnection;

type CdcEngine = Engine<StreamSource, MultiplexedConnection>;

/// One entry in RDI's format: `extended`, JSON without schemas.
fn rdi(key: &str, value: &str) -> Vec<(String, String)> {
    vec![("key".into(), key.into()), ("value".into(), value.into())]
}

/// One entry in Debezium Server's default format: `compact`.
fn compact(key: &str, value: &str) -> Vec<(String, String)> {
    vec![(key.into(), value.into())]
}

fn envelope(op: &str, before: &str, after: &str, lsn: u64) -> String {
    format!(
        r#"{{"before":{before},"after":{after},"source":{{"version":"2.5.0.Final","connector":"postgresql","name":"shop","ts_ms":1732700000000,"snapshot":"{snap}","db":"shop","sequence":"[null,\"{lsn}\"]","schema":"public","table":"categories","txId":771,"lsn":{lsn},"xmin":null}},"op":"{op}","ts_ms":1732700000100,"transaction":null}}"#,
        snap = if op == "r" { "true" } else { "false" }
    )
}

fn category(id: &str, name: &str, rank: u32) -> String {
    format!(r#"{{"id":"{id}","name":"{name}","rank":{rank},"active":true,"note":null}}"#)
}

async fn xadd(
    conn: &mut MultiplexedConnection,
    stream: &str,
    fields: &[(String, String)],
) -> Version {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(stream).arg("*");
    for (k, v) in fields {
        cmd.arg(k).arg(v);
    }
    let id: String = cmd.query_async(conn).await.unwrap();
    let (ms, seq) = id.split_once('-').unwrap();
    Version::new(ms.parse().unwrap(), seq.parse().unwrap())
}

/// One RDI entry: `op` (c, u or r) of the category `id`.
async fn upsert(
    conn: &mut MultiplexedConnection,
    stream: &str,
    op: &str,
    id: &str,
    name: &str,
    rank: u32,
    lsn: u64,
) -> Version {
    let key = format!(r#"{{"id":"{id}"}}"#);
    xadd(
        conn,
        stream,
        &rdi(&key, &envelope(op, "null", &category(id, name, rank), lsn)),
    )
    .await
}

async fn start(redis: &TestRedis, config: StreamConfig, test: &str) -> prefetch::Result<CdcEngine> {
    start_with(redis, config, engine_config(test)).await
}

async fn start_with(
    redis: &TestRedis,
    config: StreamConfig,
    engine: EngineConfig,
) -> prefetch::Result<CdcEngine> {
    let events = EventBus::default();
    let source = StreamSource::connect(redis.client(), config, events.clone()).await?;
    Engine::start(redis.conn().await, source, events, engine)
        .await
        .map(|(engine, _)| engine)
}

async fn caught_up(engine: &CdcEngine, upto: Version) {
    engine
        .sync()
        .wait_applied(upto, Duration::from_secs(10))
        .await
        .unwrap();
    assert_converged(engine).await;
}

async fn field(engine: &CdcEngine, id: &str, name: &str) -> Option<String> {
    let read = engine.read(id).await.unwrap();
    read.lookup
        .record
        .and_then(|r| r.get(name).map(str::to_owned))
}

#[tokio::test]
async fn an_rdi_stream_is_folded_into_the_cache_then_followed() {
    let redis = TestRedis::start();
    let mut conn = redis.conn().await;
    let stream = "data:shop.public.categories";
    // The collector's initial snapshot…
    for (id, name, rank) in [
        ("cat-001", "Beverages", 1),
        ("cat-002", "Bakery", 2),
        ("cat-003", "Dairy", 3),
    ] {
        xadd(
            &mut conn,
            stream,
            &rdi(
                &format!(r#"{{"id":"{id}"}}"#),
                &envelope("r", "null", &category(id, name, rank), 100),
            ),
        )
        .await;
    }
    // …and changes made before the cache started.
    xadd(
        &mut conn,
        stream,
        &rdi(
            r#"{"id":"cat-003"}"#,
            &envelope("d", &category("cat-003", "Dairy", 3), "null", 120),
        ),
    )
    .await;
    let engine = start(
        &redis,
        StreamConfig::rdi("shop", "public", "categories"),
        "rdi_fold",
    )
    .await
    .unwrap();
    assert_eq!(
        field(&engine, "cat-001", "name").await.as_deref(),
        Some("Beverages")
    );
    assert_eq!(
        field(&engine, "cat-001", "active").await.as_deref(),
        Some("true")
    );
    assert_eq!(
        field(&engine, "cat-001", "note").await,
        None,
        "NULL is an absent field"
    );
    assert!(
        !engine.read("cat-003").await.unwrap().lookup.hit(),
        "deleted before the start"
    );
    assert_eq!(engine.source().reads(), 1, "one snapshot");

    // Live changes: update, insert, delete.
    upsert(&mut conn, stream, "u", "cat-001", "Drinks", 1, 130).await;
    upsert(&mut conn, stream, "c", "cat-009", "Frozen", 9, 140).await;
    let last = xadd(
        &mut conn,
        stream,
        &rdi(
            r#"{"id":"cat-002"}"#,
            &envelope("d", &category("cat-002", "Bakery", 2), "null", 150),
        ),
    )
    .await;
    caught_up(&engine, last).await;
    assert_eq!(
        field(&engine, "cat-001", "name").await.as_deref(),
        Some("Drinks")
    );
    assert_eq!(
        field(&engine, "cat-009", "rank").await.as_deref(),
        Some("9")
    );
    assert!(!engine.read("cat-002").await.unwrap().lookup.hit());
    assert_eq!(engine.source().reads(), 1, "live changes need no snapshot");

    // The demo's mutations cannot edit a stream.
    let e = engine
        .source()
        .update_field("cat-001", "name", "x")
        .await
        .unwrap_err();
    assert!(matches!(e, Error::ReadOnly(_)), "{e}");
    engine.shutdown(Duration::from_secs(2)).await.unwrap();
}

#[tokio::test]
async fn debezium_compact_entries_with_schemas_tombstones_and_truncate() {
    let redis = TestRedis::start();
    let mut conn = redis.conn().await;
    let stream = "shop.public.prices";
    let key = |id: u32| {
        format!(
            r#"{{"schema":{{"type":"struct","fields":[{{"type":"int32","optional":false,"field":"id"}}],"optional":false,"name":"shop.public.prices.Key"}},"payload":{{"id":{id}}}}}"#
        )
    };
    let row_schema = |field: &str| {
        format!(
            r#"{{"type":"struct","fields":[{{"type":"int32","optional":false,"field":"id"}},{{"type":"bytes","optional":true,"name":"org.apache.kafka.connect.data.Decimal","version":1,"parameters":{{"scale":"2","connect.decimal.precision":"10"}},"field":"price"}}],"optional":true,"name":"shop.public.prices.Value","field":"{field}"}}"#
        )
    };
    let value = |op: &str, before: &str, after: &str| {
        format!(
            r#"{{"schema":{{"type":"struct","fields":[{},{},{{"type":"string","optional":false,"field":"op"}}],"optional":false,"name":"shop.public.prices.Envelope"}},"payload":{{"before":{before},"after":{after},"op":"{op}","ts_ms":1}}}}"#,
            row_schema("before"),
            row_schema("after"),
        )
    };
    // 12.34 and 0.05 as Kafka Connect decimals (base64 of the unscaled value).
    xadd(
        &mut conn,
        stream,
        &compact(&key(1), &value("r", "null", r#"{"id":1,"price":"BNI="}"#)),
    )
    .await;
    xadd(
        &mut conn,
        stream,
        &compact(&key(2), &value("r", "null", r#"{"id":2,"price":"BQ=="}"#)),
    )
    .await;
    let engine = start(
        &redis,
        StreamConfig::debezium("shop", "public", "prices"),
        "dbz_compact",
    )
    .await
    .unwrap();
    assert_eq!(field(&engine, "1", "price").await.as_deref(), Some("12.34"));
    assert_eq!(field(&engine, "2", "price").await.as_deref(), Some("0.05"));
    assert_eq!(field(&engine, "2", "id").await.as_deref(), Some("2"));

    // A delete, then the tombstone Debezium sends after it (value `default`).
    xadd(
        &mut conn,
        stream,
        &compact(&key(1), &value("d", r#"{"id":1,"price":"BNI="}"#, "null")),
    )
    .await;
    let last = xadd(&mut conn, stream, &compact(&key(1), "default")).await;
    caught_up(&engine, last).await;
    assert!(!engine.read("1").await.unwrap().lookup.hit());

    // TRUNCATE: Debezium sends it with a null key.
    xadd(
        &mut conn,
        stream,
        &compact("default", r#"{"before":null,"after":null,"op":"t"}"#),
    )
    .await;
    let last = xadd(
        &mut conn,
        stream,
        &compact(&key(3), &value("c", "null", r#"{"id":3,"price":"BQ=="}"#)),
    )
    .await;
    caught_up(&engine, last).await;
    assert!(!engine.read("2").await.unwrap().lookup.hit(), "truncated");
    assert_eq!(field(&engine, "3", "price").await.as_deref(), Some("0.05"));
    engine.shutdown(Duration::from_secs(2)).await.unwrap();
}

#[tokio::test]
async fn a_restarted_engine_resumes_after_its_position_without_a_snapshot() {
    let redis = TestRedis::start();
    let mut conn = redis.conn().await;
    let stream = "data:shop.public.resume";
    let config = || StreamConfig::new(stream);
    let engine_config = engine_config("resume");
    upsert(&mut conn, stream, "r", "a", "A", 1, 1).await;
    let engine = start_with(&redis, config(), engine_config.clone())
        .await
        .unwrap();
    let last = upsert(&mut conn, stream, "u", "a", "A2", 1, 2).await;
    caught_up(&engine, last).await;
    engine.shutdown(Duration::from_secs(2)).await.unwrap();
    drop(engine);

    // Written while no cache ran.
    upsert(&mut conn, stream, "c", "b", "B", 2, 3).await;
    let last = upsert(&mut conn, stream, "u", "a", "A3", 1, 4).await;
    let engine = start_with(&redis, config(), engine_config.clone())
        .await
        .unwrap();
    caught_up(&engine, last).await;
    assert_eq!(field(&engine, "a", "name").await.as_deref(), Some("A3"));
    assert_eq!(field(&engine, "b", "name").await.as_deref(), Some("B"));
    assert_eq!(
        engine.source().reads(),
        0,
        "resumed from the stored position, no snapshot"
    );
    engine.shutdown(Duration::from_secs(2)).await.unwrap();
}

#[tokio::test]
async fn a_stream_that_lost_entries_is_refused_for_a_snapshot_unless_allowed() {
    let redis = TestRedis::start();
    let mut conn = redis.conn().await;
    let stream = "data:shop.public.trimmed";
    for id in ["a", "b", "c"] {
        xadd(
            &mut conn,
            stream,
            &rdi(
                &format!(r#"{{"id":"{id}"}}"#),
                &envelope("r", "null", &category(id, id, 1), 1),
            ),
        )
        .await;
    }
    let _: i64 = redis::cmd("XTRIM")
        .arg(stream)
        .arg("MAXLEN")
        .arg(1)
        .query_async(&mut conn)
        .await
        .unwrap();
    let Err(e) = start(&redis, StreamConfig::new(stream), "trimmed").await else {
        panic!("a snapshot of a trimmed stream must be refused");
    };
    assert!(
        e.to_string().contains("entries (trimmed or deleted)"),
        "{e}"
    );

    let mut allowed = StreamConfig::new(stream);
    allowed.allow_incomplete_history = true;
    let engine = start(&redis, allowed, "trimmed").await.unwrap();
    assert!(engine.read("c").await.unwrap().lookup.hit());
    assert!(
        !engine.read("a").await.unwrap().lookup.hit(),
        "its only entry was trimmed"
    );
    engine.shutdown(Duration::from_secs(2)).await.unwrap();
}

#[tokio::test]
async fn an_undecodable_entry_is_counted_and_passed_over() {
    let redis = TestRedis::start();
    let mut conn = redis.conn().await;
    let stream = "data:shop.public.poison";
    upsert(&mut conn, stream, "r", "a", "A", 1, 1).await;
    let engine = start(&redis, StreamConfig::new(stream), "poison")
        .await
        .unwrap();
    let poison = xadd(&mut conn, stream, &rdi(r#"{"id":"a"}"#, "{not json")).await;
    let last = upsert(&mut conn, stream, "u", "a", "A2", 1, 2).await;
    caught_up(&engine, last).await;
    assert_eq!(field(&engine, "a", "name").await.as_deref(), Some("A2"));
    let status = engine.source().status();
    let detail = |name: &str| {
        status
            .details
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(detail("undecodable").as_deref(), Some("1"));
    let last_bad = detail("last undecodable").unwrap();
    assert!(
        last_bad.starts_with(&format!("{}-{}", poison.commit, poison.ord)),
        "{last_bad}"
    );
    assert!(last_bad.contains("not JSON"), "{last_bad}");
    engine.shutdown(Duration::from_secs(2)).await.unwrap();
}

#[tokio::test]
async fn a_reprefetch_while_the_stream_moves_loses_nothing_and_resurrects_nothing() {
    let redis = TestRedis::start();
    let mut conn = redis.conn().await;
    let stream = "data:shop.public.busy";
    for i in 0..50 {
        let id = format!("k{i:03}");
        xadd(
            &mut conn,
            stream,
            &rdi(
                &format!(r#"{{"id":"{id}"}}"#),
                &envelope("r", "null", &category(&id, "v0", i), 1),
            ),
        )
        .await;
    }
    let engine = Arc::new(
        start(&redis, StreamConfig::new(stream), "busy")
            .await
            .unwrap(),
    );
    let writer = {
        let mut conn = redis.conn().await;
        tokio::spawn(async move {
            let mut last = Version::ZERO;
            for round in 1..=20u32 {
                for i in (0..50).step_by(7) {
                    let id = format!("k{i:03}");
                    let entry = if (round + i) % 5 == 0 {
                        rdi(
                            &format!(r#"{{"id":"{id}"}}"#),
                            &envelope("d", "null", "null", 2),
                        )
                    } else {
                        rdi(
                            &format!(r#"{{"id":"{id}"}}"#),
                            &envelope("u", "null", &category(&id, &format!("v{round}"), i), 2),
                        )
                    };
                    last = xadd(&mut conn, stream, &entry).await;
                }
            }
            last
        })
    };
    for _ in 0..5 {
        engine.reprefetch().await.unwrap();
    }
    let last = writer.await.unwrap();
    caught_up(&engine, last).await;
    engine.shutdown(Duration::from_secs(2)).await.unwrap();
}
