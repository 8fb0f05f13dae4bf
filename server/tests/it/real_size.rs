//! A table of real size: the real server binary on a PostgreSQL table of
//! `PREFETCH_REAL_SIZE_ROWS` rows (default 20,000; the test script sets
//! 1,000,000), generated with `generate_series`. Its peak memory stays under
//! [`RSS_LIMIT`] through the load, re-prefetch, reconciliation and an
//! UPDATE of a fifth of the table in one transaction; no answer, page or
//! live-feed frame reaches 1 MB; paging and search return exactly the rows
//! SQL says they must.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use app::model::LiveEvent;
use prefetch::testing::TestRedis;
use serde_json::Value;

use crate::common::{
    SseClient, free_port, json_of, postgres_client, postgres_database, sigterm, spawn_binary_within,
};

/// The server's peak resident memory, whatever the table holds.
const RSS_LIMIT: u64 = 256 << 20;
/// The most any answer or frame may hold.
const ANSWER_LIMIT: usize = 1 << 20;

fn rows() -> i64 {
    std::env::var("PREFETCH_REAL_SIZE_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

/// The server's peak resident set so far (`VmHWM`), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    kb * 1024
}

/// The server binary, killed if the test fails before it stops it.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Big {
    base: String,
    redis: String,
    http: reqwest::Client,
    pid: u32,
    sql: tokio_postgres::Client,
}

impl Big {
    /// GET `path`: status, raw body and the `Link` header.
    async fn raw(&self, path: &str) -> (u16, String, Option<String>) {
        let res = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("GET");
        let link = res
            .headers()
            .get("link")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let status = res.status().as_u16();
        let body = res.text().await.expect("body");
        assert!(
            body.len() < ANSWER_LIMIT,
            "{path}: {} bytes in one answer",
            body.len()
        );
        (status, body, link)
    }

    async fn json(&self, path: &str) -> (u16, Value, Option<String>) {
        let (status, body, link) = self.raw(path).await;
        let value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}"));
        (status, value, link)
    }

    async fn post(&self, path: &str) -> Value {
        let res = self
            .http
            .post(format!("{}{path}", self.base))
            .timeout(Duration::from_secs(600))
            .send()
            .await
            .expect("POST");
        let (status, body) = json_of(res).await;
        assert_eq!(status, 200, "{path}: {body}");
        body
    }

    fn check_memory(&self, phase: &str) {
        let peak = peak_rss(self.pid);
        eprintln!("real size: peak RSS after {phase}: {} MiB", peak >> 20);
        assert!(
            peak <= RSS_LIMIT,
            "peak RSS {} MiB after {phase}",
            peak >> 20
        );
    }

    /// Ids the SQL `query` returns (a `text` column), in order.
    async fn sql_ids(&self, query: &str) -> Vec<String> {
        self.sql
            .query(query, &[])
            .await
            .expect(query)
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect()
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .expect("an array")
        .iter()
        .map(|s| s.as_str().expect("a string").to_owned())
        .collect()
}

fn ids_of(records: &Value, field: Option<&str>) -> Vec<String> {
    records
        .as_array()
        .expect("records")
        .iter()
        .map(|r| field.map_or(r, |f| &r[f]))
        .map(|r| r["id"].as_str().expect("an id").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_table_of_real_size_keeps_memory_and_answers_bounded_and_pages_exactly() {
    let n = rows();
    let url = postgres_database("real").await;
    let sql = postgres_client(&url).await;
    let started = Instant::now();
    sql.batch_execute(&format!(
        "CREATE TABLE items (id bigint PRIMARY KEY, name text NOT NULL, \
         display_order int NOT NULL DEFAULT 99, featured bool NOT NULL DEFAULT false, \
         parent_id text NOT NULL DEFAULT ''); \
         INSERT INTO items SELECT g, \
         CASE WHEN g BETWEEN 5001 AND 6000 THEN repeat('wide ', 400) ELSE 'Item ' || g END, \
         g % 100, g % 7 = 0, '' FROM generate_series(1, {n}) g; ANALYZE items;"
    ))
    .await
    .expect("generate the table");
    eprintln!("real size: {n} rows generated in {:?}", started.elapsed());

    let redis = TestRedis::start();
    let port = free_port();
    let started = Instant::now();
    let mut child = Running(spawn_binary_within(
        &["--redis-url", &redis.url],
        port,
        &[
            "--primary",
            &url,
            "--pg-table",
            "items",
            "--cache-prefix",
            "big:",
        ],
        Duration::from_secs(600),
    ));
    eprintln!("real size: serving after {:?}", started.elapsed());
    let big = Big {
        base: format!("http://127.0.0.1:{port}"),
        redis: redis.url.clone(),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap(),
        pid: child.0.id(),
        sql,
    };
    big.check_memory("the initial load");

    categories_page_through_the_primary_in_key_order(&big).await;
    state_pages_through_the_cache_without_repeating_a_row(&big).await;
    a_prefix_search_finds_exactly_the_matching_ids(&big).await;
    the_page_and_the_live_snapshot_stay_small(&big).await;
    bad_cursors_get_400(&big).await;
    ids_that_are_no_key_do_not_break_a_page(&big).await;
    wide_rows_make_shorter_pages(&big).await;

    let started = Instant::now();
    let body = big.post("/reprefetch").await;
    eprintln!("real size: re-prefetch {:?}: {body}", started.elapsed());
    big.check_memory("re-prefetch");

    let started = Instant::now();
    let body = big.post("/reconcile").await;
    eprintln!("real size: reconcile {:?}", started.elapsed());
    let totals = body["totals"].as_object().expect("drift totals");
    assert!(totals.values().all(|v| v == 0), "{body}");
    assert_eq!(body["verified"], n, "{body}");
    big.check_memory("reconciliation");

    a_large_update_reaches_the_cache_and_only_a_clients_rows_reach_it(&big, n).await;
    big.check_memory("a large UPDATE");

    sigterm(child.0.id());
    child.0.wait().expect("the server exits");
}

async fn categories_page_through_the_primary_in_key_order(big: &Big) {
    let mut path = "/categories".to_owned();
    for page in 0..3 {
        let (status, body, link) = big.json(&path).await;
        assert_eq!(status, 200, "{path}: {body}");
        let want = big
            .sql_ids(&format!(
                "SELECT id::text FROM items ORDER BY items.id LIMIT 1000 OFFSET {}",
                page * 1000
            ))
            .await;
        let got = strings(&body["primary_ids"]);
        assert_eq!(
            got,
            want,
            "{path}: got {:?}..{:?}, want {:?}..{:?}",
            &got[..3.min(got.len())],
            got.last(),
            &want[..3.min(want.len())],
            want.last()
        );
        assert_eq!(strings(&body["cache_ids"]), want, "{path}: all cached");
        let next = body["next"].as_str().expect("a next page").to_owned();
        assert_eq!(&next, want.last().expect("a full page"), "{path}");
        let link = link.expect("a Link header");
        assert!(
            link.contains(&format!("after={next}>")) && link.contains("rel=\"next\""),
            "{link}"
        );
        path = format!("/categories?after={next}");
    }
}

async fn state_pages_through_the_cache_without_repeating_a_row(big: &Big) {
    let mut seen = BTreeSet::new();
    let mut path = "/state".to_owned();
    for _ in 0..3 {
        let (status, body, _) = big.json(&path).await;
        assert_eq!(status, 200, "{path}: {body}");
        let page = &body["page"];
        assert_eq!(page["order"], "cache", "{page}");
        let cache = ids_of(&body["cache"], Some("fields"));
        eprintln!("real size: {path}: {} rows", cache.len());
        assert!(
            !cache.is_empty() && cache.len() <= 2 * app::page::PAGE_ROWS,
            "{} rows",
            cache.len()
        );
        let primary: std::collections::BTreeMap<String, &Value> = body["primary"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["id"].as_str().unwrap().to_owned(), r))
            .collect();
        assert_eq!(primary.len(), cache.len(), "one primary record per row");
        for c in body["cache"].as_array().unwrap() {
            let id = c["fields"]["id"].as_str().unwrap();
            assert_eq!(
                primary.get(id),
                Some(&&c["fields"]),
                "cache and primary agree"
            );
        }
        for id in cache {
            assert!(seen.insert(id.clone()), "{id} on two pages");
        }
        let next = page["next"].as_str().expect("a next page");
        path = format!("/state?cursor={next}");
    }
}

async fn a_prefix_search_finds_exactly_the_matching_ids(big: &Big) {
    let want: BTreeSet<String> = big
        .sql_ids("SELECT id::text FROM items WHERE id::text LIKE '1234%'")
        .await
        .into_iter()
        .collect();
    let mut found = BTreeSet::new();
    let mut path = "/state?q=1234".to_owned();
    for calls in 0.. {
        assert!(calls < 10_000, "a search that does not end");
        let (status, body, _) = big.json(&path).await;
        assert_eq!(status, 200, "{path}");
        let ids = ids_of(&body["cache"], Some("fields"));
        if calls == 0 {
            assert_eq!(ids.first().map(String::as_str), Some("1234"), "exact first");
        }
        found.extend(ids);
        match body["page"]["next"].as_str() {
            Some(next) => path = format!("/state?q=1234&cursor={next}"),
            None => break,
        }
    }
    assert_eq!(found, want, "the search's pages hold exactly the matches");
}

async fn the_page_and_the_live_snapshot_stay_small(big: &Big) {
    let (status, html, _) = big.raw("/").await;
    assert_eq!(status, 200);
    assert!(html.contains("id=\"pager\""), "the dashboard pages");
    let (status, _, _) = big.raw("/?q=99").await;
    assert_eq!(status, 200);

    let mut res = big
        .http
        .get(format!("{}/events", big.base))
        .send()
        .await
        .expect("GET /events");
    let mut frame = Vec::new();
    while !frame.windows(2).any(|w| w == b"\n\n") {
        let chunk = res.chunk().await.expect("a chunk").expect("more");
        frame.extend_from_slice(&chunk);
        assert!(frame.len() < ANSWER_LIMIT, "first frame over 1 MB");
    }
}

async fn wide_rows_make_shorter_pages(big: &Big) {
    // Rows 5001..6000 hold 2 KB each: 1,000 of them on both sides would
    // pass 1 MB, so the page stops at its byte budget.
    let (status, body, _) = big.json("/state?after=5000").await;
    assert_eq!(status, 200, "{body}");
    let rows = body["primary"].as_array().unwrap().len();
    assert!((1..1000).contains(&rows), "{rows} wide rows on one page");
    let last = body["primary"][rows - 1]["id"].as_str().unwrap();
    assert_eq!(
        body["page"]["next"], last,
        "the next page follows the last row"
    );
}

async fn ids_that_are_no_key_do_not_break_a_page(big: &Big) {
    // A search that is no bigint, and a key written by hand whose id is
    // none: no record, not an error.
    let (status, body, _) = big.json("/state?q=abc").await;
    assert_eq!(status, 200, "{body}");
    let mut redis = redis::Client::open(big.redis.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg("big:zzz")
        .arg("name")
        .arg("by hand")
        .query_async(&mut redis)
        .await
        .unwrap();
    let (status, body, _) = big.json("/state?q=zzz").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["cache"][0]["id"], "zzz", "{body}");
    assert_eq!(body["primary"], serde_json::json!([]), "{body}");
    let _: () = redis::cmd("DEL")
        .arg("big:zzz")
        .query_async(&mut redis)
        .await
        .unwrap();
}

async fn bad_cursors_get_400(big: &Big) {
    for path in [
        "/state?cursor=bogus",
        "/events?cursor=bogus",
        "/?cursor=x:y",
        // Not a value of the key's type (bigint).
        "/categories?after=abc",
        "/state?after=abc",
    ] {
        let (status, body, _) = big.raw(path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains("\"error\""), "{path}: {body}");
    }
}

async fn a_large_update_reaches_the_cache_and_only_a_clients_rows_reach_it(big: &Big, n: i64) {
    let mut client = SseClient::connect(&format!("{}/events", big.base)).await;
    let Some(LiveEvent::Snapshot(snapshot)) = client.next(Duration::from_secs(30)).await else {
        panic!("the feed opens with a snapshot");
    };
    let shown: BTreeSet<String> = snapshot.cache.iter().map(|e| e.id.clone()).collect();
    assert!(
        !shown.is_empty() && shown.len() <= 2 * app::page::PAGE_ROWS,
        "{} rows shown",
        shown.len()
    );

    let last = n / 5;
    let started = Instant::now();
    big.sql
        .batch_execute(&format!(
            "UPDATE items SET name = name || ' v2' WHERE id <= {last}"
        ))
        .await
        .expect("a large UPDATE");
    let committed = Instant::now();
    eprintln!(
        "real size: UPDATE of {last} rows took {:?}",
        started.elapsed()
    );

    let touched: BTreeSet<String> = shown
        .iter()
        .filter(|id| id.parse::<i64>().is_ok_and(|i| i <= last))
        .cloned()
        .collect();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let (_, read, _) = big.json(&format!("/read?id={last}")).await;
        if read["record"]["name"] == format!("Item {last} v2") {
            break;
        }
        assert!(Instant::now() < deadline, "the UPDATE never arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "real size: {last} rows visible {:?} after commit",
        committed.elapsed()
    );
    // A bulk change reaches a client as a fresh snapshot of its page (or
    // as row events), never as rows it does not show.
    let v2 = |id: &str| format!("Item {id} v2");
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut shown = shown.clone();
    while !touched.iter().all(|id| seen.contains(id)) {
        let ev = client.next(Duration::from_secs(30)).await;
        match ev.expect("the page's rows changed") {
            LiveEvent::Snapshot(s) => {
                shown = s.cache.iter().map(|e| e.id.clone()).collect();
                for e in &s.cache {
                    if e.fields.get("name") == Some(&v2(&e.id)) {
                        seen.insert(e.id.clone());
                    }
                }
            }
            LiveEvent::Cache { id, fields, .. } => {
                assert!(shown.contains(&id), "a row event for {id}, not on the page");
                if fields.and_then(|f| f.get("name").cloned()) == Some(v2(&id)) {
                    seen.insert(id);
                }
            }
            LiveEvent::Primary { id, .. } => {
                assert!(shown.contains(&id), "a row event for {id}, not on the page");
            }
            _ => {}
        }
    }

    // A small transaction over rows on and off two clients' pages: row
    // events, each client its own rows only.
    let next = snapshot.page.as_ref().and_then(|p| p.next.clone());
    let next = next.expect("a second page");
    let mut other = SseClient::connect(&format!("{}/events?cursor={next}", big.base)).await;
    let Some(LiveEvent::Snapshot(second)) = other.next(Duration::from_secs(30)).await else {
        panic!("the second page's feed opens with a snapshot");
    };
    let shown_other: BTreeSet<String> = second.cache.iter().map(|e| e.id.clone()).collect();
    assert!(
        shown_other.is_disjoint(&shown),
        "two pages, two sets of rows"
    );
    let list: Vec<&str> = shown
        .iter()
        .chain(&shown_other)
        .map(String::as_str)
        .collect();
    big.sql
        .batch_execute(&format!(
            "UPDATE items SET name = 'v3' WHERE id <= 100 OR id IN ({})",
            list.join(",")
        ))
        .await
        .expect("a small UPDATE");
    hears_its_own_rows_only(&mut client, &shown).await;
    hears_its_own_rows_only(&mut other, &shown_other).await;
    let (_, page, _) = big.json("/state?after=0").await;
    for (p, c) in page["primary"]
        .as_array()
        .unwrap()
        .iter()
        .zip(page["cache"].as_array().unwrap())
    {
        assert_eq!(p, &c["fields"], "after the UPDATE");
    }
}

/// Row events reach `client` for each of its `shown` rows (renamed `v3`),
/// and for no other row.
async fn hears_its_own_rows_only(client: &mut SseClient, shown: &BTreeSet<String>) {
    let mut heard = BTreeSet::new();
    while heard.len() < shown.len() {
        let ev = client.next(Duration::from_secs(30)).await;
        match ev.expect("row events for the page") {
            LiveEvent::Cache { id, fields, .. } => {
                assert!(shown.contains(&id), "a row event for {id}, not on the page");
                if fields.is_some_and(|f| f.get("name").is_some_and(|n| n == "v3")) {
                    heard.insert(id);
                }
            }
            LiveEvent::Primary { id, .. } => {
                assert!(shown.contains(&id), "a row event for {id}, not on the page");
            }
            _ => {}
        }
    }
}
