//! Least privilege: the server runs as a Redis user holding only the rule
//! `--print-redis-acl` prints for its flags, and as a PostgreSQL role with
//! `REPLICATION` and `SELECT` on a publication an administrator created;
//! its passwords never show in its logs, its answers or its errors.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use prefetch::testing::TestRedis;
use redis::Value;
use serde_json::Value as Json;

use crate::common::{free_port, postgres_client, postgres_database};

const REDIS_PASSWORD: &str = "Redis-S3cret-7f3a91";
const PG_PASSWORD: &str = "Pg-S3cret-c04e22";

/// The rule the server's own code computes for `flags`.
fn rule_for(flags: &[&str]) -> Vec<String> {
    let mut args = vec!["server"];
    args.extend_from_slice(flags);
    let settings = server::Config::try_parse_from(args)
        .expect("valid flags")
        .resolve()
        .expect("settings");
    server::acl::redis_rule(&settings).args()
}

/// `ACL SETUSER pf on >password <rule>` on `redis`.
async fn add_user(redis: &TestRedis, rule: &[String]) -> String {
    let mut admin = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut cmd = redis::cmd("ACL");
    cmd.arg("SETUSER")
        .arg("pf")
        .arg("on")
        .arg(format!(">{REDIS_PASSWORD}"));
    for part in rule {
        cmd.arg(part);
    }
    let _: () = cmd.query_async(&mut admin).await.unwrap();
    let _: () = redis::cmd("ACL")
        .arg("LOG")
        .arg("RESET")
        .query_async(&mut admin)
        .await
        .unwrap();
    format!("redis://pf:{REDIS_PASSWORD}@127.0.0.1:{}/", redis.port)
}

/// What Redis refused the user, as `command (reason)`, leaving out the
/// `CONFIG` the rule withholds on purpose (the live feed then polls).
async fn refusals(redis: &TestRedis) -> Vec<String> {
    let mut admin = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let log: Vec<Value> = redis::cmd("ACL")
        .arg("LOG")
        .query_async(&mut admin)
        .await
        .unwrap();
    log.iter()
        .map(|entry| {
            let fields: std::collections::HashMap<String, String> = match entry {
                Value::Map(pairs) => pairs
                    .iter()
                    .filter_map(|(k, v)| Some((text(k)?, text(v)?)))
                    .collect(),
                Value::Array(items) => items
                    .chunks(2)
                    .filter_map(|kv| Some((text(&kv[0])?, text(kv.get(1)?)?)))
                    .collect(),
                _ => Default::default(),
            };
            format!(
                "{} ({} {})",
                fields.get("object").cloned().unwrap_or_default(),
                fields.get("reason").cloned().unwrap_or_default(),
                fields.get("context").cloned().unwrap_or_default()
            )
        })
        .filter(|r| !r.starts_with("config"))
        .collect()
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

/// The server binary with every line it writes kept (both streams, at
/// `debug` for the server's own crates).
pub struct Logged {
    child: Child,
    port: u16,
    log: std::path::PathBuf,
}

impl Logged {
    pub fn spawn(flags: &[&str]) -> Self {
        Self::spawn_env(flags, &[])
    }

    /// [`spawn`](Self::spawn) with extra environment variables.
    pub fn spawn_env(flags: &[&str], env: &[(&str, &str)]) -> Self {
        let port = free_port();
        let log = std::env::temp_dir().join(format!("pf-privilege-{port}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_server"))
            .args(["--port", &port.to_string(), "--primary-latency-ms", "0"])
            .args(flags)
            .env("RUST_LOG", "info,server=debug,prefetch=debug,prefetch_pg=debug,prefetch_pipeline=debug,app=debug")
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file))
            .envs(env.iter().copied())
            .spawn()
            .unwrap();
        Self { child, port, log }
    }

    pub fn output(&self) -> String {
        let mut text = String::new();
        std::fs::File::open(&self.log)
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        text
    }

    pub async fn wait_running(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.output().contains("sync worker running") {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the server exited ({status}):\n{}", self.output());
            }
            assert!(Instant::now() < deadline, "not running:\n{}", self.output());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits for the server to exit by itself (a refused start).
    pub fn exit_output(mut self) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "still running:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        self.output()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub async fn text(&self, path: &str) -> String {
        reqwest::get(self.url(path))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn post(&self, path: &str, body: &str) -> (u16, Json) {
        let res = reqwest::Client::new()
            .post(self.url(path))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        let body = res.text().await.unwrap();
        (status, serde_json::from_str(&body).unwrap_or(Json::Null))
    }

    /// Polls `GET /read?id=` until `check` holds.
    pub async fn read_until(&self, id: &str, what: &str, check: impl Fn(&Json) -> bool) -> Json {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let body = self.text(&format!("/read?id={id}")).await;
            let body: Json = serde_json::from_str(&body).unwrap_or(Json::Null);
            if check(&body) {
                return body;
            }
            assert!(Instant::now() < deadline, "{id}: {what}; last {body}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Everything the server says about itself, for a secret to hide in.
    async fn everything_said(&self) -> String {
        let mut said = self.output();
        for path in [
            "/stats",
            "/state",
            "/metrics",
            "/tables",
            "/read?id=nope",
            "/nope",
        ] {
            said.push_str(&self.text(path).await);
        }
        said.push_str(
            &self
                .post("/update", "id=cat-001&field=__v&value=x")
                .await
                .1
                .to_string(),
        );
        said
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Reads, edits through the API, re-prefetch, reconciliation, a key
/// deleted behind the server's back and restored, and the live feed.
/// With `edits`, through the demo's API too (a primary the server may
/// write to); a replica of a pipeline restores a lost key at its next
/// re-prefetch (its feed cannot read single rows), the others at once.
async fn exercise(srv: &Logged, redis: &TestRedis, prefix: &str, edits: bool, pipeline: bool) {
    let hit = srv
        .read_until("cat-001", "a hit", |b| b["record"]["id"] == "cat-001")
        .await;
    assert_eq!(hit["record"]["id"], "cat-001", "{hit}");
    let mut feed = reqwest::get(srv.url("/events")).await.unwrap();
    let edited = [
        ("/update", "id=cat-001&field=name&value=Renamed"),
        ("/add", "id=cat-009&name=Added"),
        ("/delete", "id=cat-002"),
    ];
    let admin_calls = [
        ("/invalidate", "id=cat-003"),
        ("/reprefetch", ""),
        ("/reconcile", ""),
    ];
    let calls = if edits { &edited[..] } else { &[] };
    for (path, body) in calls.iter().chain(&admin_calls) {
        let (status, json) = srv.post(path, body).await;
        assert_eq!(status, 200, "{path}: {json}");
    }
    if edits {
        srv.read_until("cat-001", "the update", |b| {
            b["record"]["name"] == "Renamed"
        })
        .await;
        srv.read_until("cat-009", "the insert", |b| b["record"]["name"] == "Added")
            .await;
        srv.read_until("cat-002", "the delete", |b| b["record"].is_null())
            .await;
    }
    // Deleted behind the server's back: restored from the primary.
    let mut admin = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("DEL")
        .arg(format!("{prefix}cat-004"))
        .query_async(&mut admin)
        .await
        .unwrap();
    if pipeline {
        let (status, json) = srv.post("/reprefetch", "").await;
        assert_eq!(status, 200, "{json}");
    }
    srv.read_until("cat-004", "the restored key", |b| {
        b["record"]["id"] == "cat-004"
    })
    .await;
    // The live feed said something.
    let chunk = tokio::time::timeout(Duration::from_secs(5), feed.chunk())
        .await
        .expect("a live event")
        .unwrap()
        .unwrap();
    assert!(
        chunk.starts_with(b"data:") || chunk.starts_with(b"event:"),
        "{chunk:?}"
    );
}

#[test]
fn print_redis_acl_names_what_the_flags_use_and_nothing_more() {
    let run = |flags: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_server"))
            .arg("--print-redis-acl")
            .args(flags)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let rule = String::from_utf8(out.stdout).unwrap();
        assert_eq!(rule.lines().count(), 1, "one line: {rule}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("ACL SETUSER"));
        rule
    };
    let plain = run(&["--cache-prefix", "shop:cat:"]);
    assert!(
        plain.starts_with("resetkeys resetchannels -@all "),
        "{plain}"
    );
    for part in [
        " +fcall ",
        " +hgetall ",
        " +function|load ",
        " ~shop:cat:* ",
        " ~__pf:m:shop:cat: ",
    ] {
        assert!(plain.contains(part), "{part} in {plain}");
    }
    for absent in [
        "+@",
        "+config",
        "+flushall",
        "+keys ",
        "+wait",
        "+cluster",
        "+xreadgroup",
        "&",
        "~*",
    ] {
        assert!(!plain.contains(absent), "{absent} in {plain}");
    }
    let cluster = run(&[
        "--redis-cluster",
        "redis://127.0.0.1:1",
        "--redis-wait-replicas",
        "1",
    ]);
    assert!(
        cluster.contains(" +cluster|slots ") && cluster.contains(" +wait "),
        "{cluster}"
    );
    let piped = run(&[
        "--primary",
        "postgres://u@127.0.0.1/db",
        "--pipeline",
        "shop",
    ]);
    assert!(
        piped.contains(" +xreadgroup ") && piped.contains(" ~prefetch:{shop}:*"),
        "{piped}"
    );
    let streamed = run(&["--primary", "stream:data:shop.public.categories"]);
    assert!(
        streamed.contains(" %R~data:shop.public.categories"),
        "{streamed}"
    );
}

#[tokio::test]
async fn the_server_runs_as_a_redis_user_with_only_the_printed_rule() {
    let redis = TestRedis::spawn_own(false);
    let prefix = "acl:cat:";
    let rule = rule_for(&["--cache-prefix", prefix]);
    let url = add_user(&redis, &rule).await;
    // The URL, with its password, comes from a file (a mounted secret).
    let secret = std::env::temp_dir().join(format!("pf-redis-url-{}", redis.port));
    std::fs::write(&secret, format!("{url}\n")).unwrap();
    let mut srv = Logged::spawn_env(
        &["--cache-prefix", prefix],
        &[("REDIS_URL_FILE", secret.to_str().unwrap())],
    );
    srv.wait_running().await;
    exercise(&srv, &redis, prefix, true, false).await;
    assert_eq!(refusals(&redis).await, Vec::<String>::new(), "refused");
    let said = srv.everything_said().await;
    assert!(
        !said.contains(REDIS_PASSWORD),
        "the password shows:\n{said}"
    );
    drop(srv);
    let _ = std::fs::remove_file(&secret);

    // A wrong password: refused at start, without the password in the error.
    let wrong = format!(
        "redis://pf:Wrong-{REDIS_PASSWORD}@127.0.0.1:{}/",
        redis.port
    );
    let out = Logged::spawn(&["--redis-url", &wrong, "--cache-prefix", prefix]).exit_output();
    assert!(out.contains("error"), "{out}");
    assert!(!out.contains(REDIS_PASSWORD), "the password shows:\n{out}");
}

/// Lets `role` in with its password (SCRAM) on the test's PostgreSQL, for
/// SQL and replication.
async fn require_password(admin: &tokio_postgres::Client, role: &str) {
    let hba: String = admin.query_one("SHOW hba_file", &[]).await.unwrap().get(0);
    let old = std::fs::read_to_string(&hba).unwrap();
    if !old.contains(role) {
        let lines = format!(
            "host all {role} 127.0.0.1/32 scram-sha-256\nhost replication {role} 127.0.0.1/32 scram-sha-256\n"
        );
        std::fs::write(&hba, format!("{lines}{old}")).unwrap();
        admin.execute("SELECT pg_reload_conf()", &[]).await.unwrap();
    }
}

#[tokio::test]
async fn a_pipeline_replica_runs_as_a_replication_role_and_a_redis_user() {
    let db = postgres_database("privilege").await;
    let admin = postgres_client(&db).await;
    let role = "pf_least";
    admin
        .batch_execute(&format!(
            "CREATE TABLE categories (id text PRIMARY KEY, name text NOT NULL,
                display_order integer NOT NULL DEFAULT 99, featured boolean NOT NULL DEFAULT false,
                parent_id text NOT NULL DEFAULT '');
             INSERT INTO categories (id, name) VALUES ('cat-001','Beverages'),('cat-002','Bakery'),
                ('cat-003','Pantry'),('cat-004','Frozen'),('cat-005','Cheeses');
             CREATE PUBLICATION pf_pub FOR TABLE categories;
             DO $$ BEGIN CREATE ROLE {role} LOGIN REPLICATION PASSWORD '{PG_PASSWORD}';
                EXCEPTION WHEN duplicate_object THEN NULL; END $$;
             GRANT SELECT ON categories TO {role};"
        ))
        .await
        .unwrap();
    require_password(&admin, role).await;
    let pg = db.replacen(
        "postgres://postgres@",
        &format!("postgres://{role}:{PG_PASSWORD}@"),
        1,
    );
    assert!(pg.contains(PG_PASSWORD), "{db}");
    let redis = TestRedis::spawn_own(false);
    let prefix = "least:cat:";
    let slot = "pf_least_slot";
    let flags = |redis_url: &str| -> Vec<String> {
        [
            "--redis-url",
            redis_url,
            "--cache-prefix",
            prefix,
            "--primary",
            &pg,
            "--pg-table",
            "categories",
            "--pg-publication",
            "pf_pub",
            "--pg-slot",
            slot,
            "--pipeline",
            "least",
            "--replica",
            "r1",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
    };
    let rule = rule_for(
        &flags(&redis.url)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    let url = add_user(&redis, &rule).await;
    let flags = flags(&url);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut srv = Logged::spawn(&flags);
    srv.wait_running().await;
    // Changes committed on PostgreSQL reach the cache through the feed.
    admin
        .batch_execute(
            "UPDATE categories SET name = 'From SQL' WHERE id = 'cat-005';
             INSERT INTO categories (id, name) VALUES ('cat-010', 'New');",
        )
        .await
        .unwrap();
    srv.read_until("cat-005", "the SQL update", |b| {
        b["record"]["name"] == "From SQL"
    })
    .await;
    srv.read_until("cat-010", "the SQL insert", |b| {
        b["record"]["name"] == "New"
    })
    .await;
    exercise(&srv, &redis, prefix, false, true).await;
    // The demo's edits write with the same role: PostgreSQL's refusal,
    // said as such.
    let (status, json) = srv.post("/update", "id=cat-001&field=name&value=x").await;
    assert_eq!(status, 409, "{json}");
    let why = json["error"].as_str().unwrap();
    assert!(
        why.contains("permission denied for table categories"),
        "{why}"
    );
    eprintln!("{}", srv.output());
    assert_eq!(refusals(&redis).await, Vec::<String>::new(), "refused");
    let said = srv.everything_said().await;
    for secret in [REDIS_PASSWORD, PG_PASSWORD] {
        assert!(!said.contains(secret), "{secret} shows:\n{said}");
    }
    drop(srv);

    // A wrong PostgreSQL password: refused, without it in the error.
    let wrong = pg.replace(PG_PASSWORD, "Wrong-Pg-S3cret-c04e22");
    let mut flags: Vec<&str> = flags.clone();
    let at = flags.iter().position(|f| *f == pg).unwrap();
    flags[at] = &wrong;
    let out = Logged::spawn(&flags).exit_output();
    assert!(out.contains("error"), "{out}");
    assert!(
        !out.contains("Wrong-Pg-S3cret"),
        "the password shows:\n{out}"
    );
}
