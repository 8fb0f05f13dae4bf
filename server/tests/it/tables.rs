//! The server with a tables file (`--config`): the shipped example on a
//! real PostgreSQL, read through the reference API; a file the database
//! cannot serve refused at start with its line.

use std::time::{Duration, Instant};

use app::model::{LiveEvent, WriteOrigin};
use prefetch::testing::TestRedis;
use serde_json::Value;

use crate::common::{TestServer, is_cache, postgres_client, postgres_database};

const WAIT: Duration = Duration::from_secs(10);

fn example(file: &str) -> String {
    format!("{}/../examples/shop/{file}", env!("CARGO_MANIFEST_DIR"))
}

/// Reads `id` until `done` says yes (at most 10 s).
async fn read_until(srv: &TestServer, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = srv.get(&format!("/read?id={id}")).await;
        assert_eq!(status, 200, "{body}");
        if done(&body) || Instant::now() > deadline {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_shipped_example_is_served_under_its_template_without_what_it_leaves_out() {
    let url = postgres_database("shop").await;
    let schema = example("schema.sql");
    let sql = postgres_client(&url).await;
    sql.batch_execute(&std::fs::read_to_string(&schema).unwrap())
        .await
        .unwrap();
    let tables = example("tables.toml");
    let srv = TestServer::start_on(
        TestRedis::start(),
        &["--primary", &url, "--config", &tables],
    )
    .await;
    let mut redis = srv.redis.conn().await;
    let title: Option<String> = redis::cmd("HGET")
        .arg("product:SKU-00001")
        .arg("title")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(title.as_deref(), Some("Product 1"), "keyed by the template");

    // Three tables in one key space: ids are whole keys.
    let (_, read) = srv.get("/read?id=product:SKU-00001").await;
    assert_eq!(read["hit"], true, "{read}");
    let record = read["record"].as_object().unwrap();
    assert_eq!(record["title"], "Product 1");
    assert_eq!(record["tags"], "{odd}");
    assert!(
        !record.contains_key("cost") && !record.contains_key("name"),
        "{read}"
    );
    let (_, inactive) = srv.get("/read?id=product:SKU-00010").await;
    assert_eq!(inactive["hit"], false, "filtered out: {inactive}");
    let (_, customer) = srv.get("/read?id=customer:7").await;
    assert_eq!(
        customer["record"]["email"], "customer7@example.com",
        "{customer}"
    );
    assert!(
        customer["record"].get("password_hash").is_none(),
        "{customer}"
    );
    let (_, line) = srv.get("/read?id=line:12:3").await;
    assert_eq!(line["record"]["quantity"], "4", "{line}");

    // The dashboard's view: the table's own fields, every row in sync.
    let mut feed = srv.events().await;
    let Some(LiveEvent::Snapshot(state)) = feed.next(WAIT).await else {
        panic!("first event must be a snapshot");
    };
    assert_eq!(state.columns, ["sku", "title", "price", "active", "tags"]);
    let named: Vec<&str> = state
        .primary
        .iter()
        .filter_map(|f| f.get("id").map(String::as_str))
        .collect();
    assert_eq!(named.len(), 900, "every active product, named by its key");
    assert!(named.contains(&"product:SKU-00001") && !named.contains(&"product:SKU-00010"));
    assert!(
        state.cache.iter().all(|e| e.id.starts_with("product:")),
        "the dashboard shows the first table only"
    );

    // psql moves a row out of the filter and another into it.
    sql.batch_execute(
        "UPDATE products SET active = false WHERE sku = 'SKU-00001';
         BEGIN;
         UPDATE products SET active = true, name = 'Back' WHERE sku = 'SKU-00010';
         UPDATE customers SET email = 'new@example.com' WHERE id = 7;
         COMMIT;",
    )
    .await
    .unwrap();
    let gone = read_until(&srv, "product:SKU-00001", |b| b["hit"] == false).await;
    assert_eq!(gone["hit"], false, "{gone}");
    let back = read_until(&srv, "product:SKU-00010", |b| b["hit"] == true).await;
    assert_eq!(back["record"]["title"], "Back", "{back}");
    let (_, customer) = srv.get("/read?id=customer:7").await;
    assert_eq!(customer["record"]["email"], "new@example.com", "{customer}");
    // On the live feed in commit order.
    feed.expect(WAIT, "the row filtered out, live", |e| {
        is_cache(e, "product:SKU-00001", WriteOrigin::Sync, false)
    })
    .await;
    feed.expect(WAIT, "the row filtered in, live", |e| {
        is_cache(e, "product:SKU-00010", WriteOrigin::Sync, true)
    })
    .await;

    // The table is edited in PostgreSQL, not through the demo's API.
    let (status, body) = srv
        .post("/update", "id=product:SKU-00002&field=title&value=x")
        .await;
    assert!((400..500).contains(&status), "{status} {body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("PostgreSQL"),
        "{body}"
    );
    srv.stop().await;
}

#[tokio::test]
async fn a_tables_file_the_database_cannot_serve_stops_the_start_with_its_line() {
    let url = postgres_database("shop_bad").await;
    let sql = postgres_client(&url).await;
    sql.batch_execute(&std::fs::read_to_string(example("schema.sql")).unwrap())
        .await
        .unwrap();
    let dir = std::env::temp_dir().join(format!("prefetch-tables-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.toml");
    std::fs::write(
        &file,
        "# a comment\n[[table]]\ntable = \"products\"\nkey = \"product:{sku}\"\nfilter = \"price > 'x'\"\n",
    )
    .unwrap();
    let path = file.to_string_lossy().into_owned();
    let redis = TestRedis::start();
    let config = <server::Config as clap::Parser>::try_parse_from([
        "server",
        "--redis-url",
        redis.url.as_str(),
        "--primary",
        &url,
        "--config",
        &path,
    ])
    .unwrap();
    let err = match server::start(config, None).await {
        Ok(_) => panic!("a filter PostgreSQL rejects must stop the start"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains(&format!("{path}:2: ")), "{err}");
    assert!(err.contains("invalid input syntax"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
