//! Test support: the real server, in process, on 127.0.0.1:0 against a real
//! redis-server, with small HTTP and SSE clients.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use app::model::{LiveEvent, WriteOrigin};
use clap::Parser;
use futures::StreamExt;
use prefetch::testing::{TestRedis, prefix};
use serde_json::Value;
use server::{Config, Running};

pub struct TestServer {
    pub base: String,
    pub prefix: String,
    pub redis: TestRedis,
    running: Option<Running>,
    http: reqwest::Client,
}

impl TestServer {
    /// A server over a throw-away redis-server.
    pub async fn start() -> Self {
        Self::start_on(TestRedis::start(), &[]).await
    }

    /// A server over `redis`, with extra CLI flags.
    pub async fn start_on(redis: TestRedis, extra: &[&str]) -> Self {
        let prefix = prefix("srv");
        let mut args = vec![
            "server",
            "--redis-url",
            redis.url.as_str(),
            "--cache-prefix",
            prefix.as_str(),
        ];
        if !extra.contains(&"--primary-latency-ms") {
            args.extend(["--primary-latency-ms", "0"]);
        }
        args.extend_from_slice(extra);
        let config = Config::try_parse_from(args).expect("valid flags");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let running = server::start(config, Some(listener))
            .await
            .expect("server starts");
        Self {
            base: format!("http://{}", running.addr),
            prefix,
            redis,
            running: Some(running),
            http: reqwest::Client::new(),
        }
    }

    pub fn engine(&self) -> &app::serve::DemoEngine {
        &self.running.as_ref().expect("running").engine
    }

    /// The demo's view and editor of the source of truth.
    pub fn primary(&self) -> &std::sync::Arc<dyn prefetch::Primary> {
        &self.running.as_ref().expect("running").primary
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let res = self.http.get(self.url(path)).send().await.expect("GET");
        json_of(res).await
    }

    pub async fn post(&self, path: &str, form: &str) -> (u16, Value) {
        let res = self
            .http
            .post(self.url(path))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form.to_owned())
            .send()
            .await
            .expect("POST");
        json_of(res).await
    }

    pub async fn request(&self, method: &str, path: &str) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let res = self
            .http
            .request(method, self.url(path))
            .send()
            .await
            .expect("request");
        json_of(res).await
    }

    pub async fn events(&self) -> SseClient {
        SseClient::connect(&self.url("/events")).await
    }

    pub async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            // Best effort when a test panicked: stop background tasks.
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(running.shutdown());
            }
        }
    }
}

/// Status and JSON body; panics (failing the test) when the body is not JSON.
pub async fn json_of(res: reqwest::Response) -> (u16, Value) {
    let status = res.status().as_u16();
    let ctype = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = res.text().await.expect("body");
    let value = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("status {status}: body is not JSON ({e}): {ctype} {body:?}"));
    assert!(
        ctype.starts_with("application/json"),
        "content-type {ctype}"
    );
    (status, value)
}

/// An SSE client over reqwest, parsed by `eventsource-stream`: yields the
/// `data:` of each event as a [`LiveEvent`].
pub struct SseClient {
    stream: futures::stream::BoxStream<
        'static,
        Result<eventsource_stream::Event, eventsource_stream::EventStreamError<reqwest::Error>>,
    >,
    pub content_type: String,
}

impl SseClient {
    pub async fn connect(url: &str) -> Self {
        use eventsource_stream::Eventsource;
        let res = reqwest::Client::new()
            .get(url)
            .send()
            .await
            .expect("GET /events");
        assert_eq!(res.status().as_u16(), 200, "events status");
        let content_type = res
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        Self {
            stream: res.bytes_stream().eventsource().boxed(),
            content_type,
        }
    }

    /// The next event, or `None` when the stream ends or `timeout` passes.
    pub async fn next(&mut self, timeout: Duration) -> Option<LiveEvent> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match tokio::time::timeout(left, self.stream.next()).await {
                Ok(Some(Ok(event))) if event.data.is_empty() => continue,
                Ok(Some(Ok(event))) => {
                    return Some(serde_json::from_str(&event.data).expect("LiveEvent JSON"));
                }
                _ => return None,
            }
        }
    }

    /// Skips events until one matches, within `timeout`.
    pub async fn expect(
        &mut self,
        timeout: Duration,
        what: &str,
        mut pred: impl FnMut(&LiveEvent) -> bool,
    ) -> LiveEvent {
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.next(left).await {
                Some(ev) if pred(&ev) => return ev,
                Some(_) => continue,
                None => break,
            }
        }
        panic!("no {what} event within {timeout:?}");
    }
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    prefetch::launcher::free_port().expect("a free loopback port")
}

/// Runs the real server binary against `redis_url` on `port` and returns
/// once it has prefetched (its stdout is drained in the background).
pub fn spawn_binary(redis_url: &str, port: u16) -> Child {
    spawn_binary_with(redis_url, port, &[])
}

/// [`spawn_binary`] with extra flags.
pub fn spawn_binary_with(redis_url: &str, port: u16, extra: &[&str]) -> Child {
    spawn_binary_on(&["--redis-url", redis_url], port, extra)
}

/// The server binary on the Redis `redis` names (`--redis-url URL` or
/// `--redis-cluster URLS`), once it says it is running.
pub fn spawn_binary_on(redis: &[&str], port: u16, extra: &[&str]) -> Child {
    spawn_binary_within(redis, port, extra, Duration::from_secs(20))
}

/// [`spawn_binary_on`], waiting up to `within` for it to say it is running
/// (a large initial load).
pub fn spawn_binary_within(redis: &[&str], port: u16, extra: &[&str], within: Duration) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_server"))
        .args(redis)
        .args(["--port", &port.to_string(), "--primary-latency-ms", "0"])
        .args(extra)
        .env("RUST_LOG", "warn,server=info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the server binary");
    let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    let deadline = Instant::now() + within;
    for line in lines.by_ref() {
        if line.unwrap_or_default().contains("sync worker running") {
            break;
        }
        assert!(Instant::now() < deadline, "server did not start");
    }
    // Warnings and errors go on to the test's output (shown when it fails).
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if line.contains("WARN") || line.contains("ERROR") {
                eprintln!("server: {line}");
            }
        }
    });
    child
}

/// The primary records and the cached fields of a `/state` reply, in id
/// order, for comparing every record of both sides.
pub fn sides(state: &Value) -> (Vec<&Value>, Vec<&Value>) {
    let primary = state["primary"]
        .as_array()
        .expect("primary")
        .iter()
        .collect();
    let cache = state["cache"]
        .as_array()
        .expect("cache")
        .iter()
        .map(|e| &e["fields"])
        .collect();
    (primary, cache)
}

/// Sends SIGTERM to a child process of this test.
pub fn sigterm(pid: u32) {
    signal(pid, libc::SIGTERM);
}

/// Sends `sig` to our child `pid`.
pub fn signal(pid: u32, sig: i32) {
    let pid = i32::try_from(pid).expect("a pid fits an i32");
    // SAFETY: kill(2) with a valid signal number; the pid is our own child.
    let sent = unsafe { libc::kill(pid, sig) };
    assert_eq!(sent, 0, "signal {sig} to {pid}");
}

static POSTGRES: std::sync::OnceLock<std::sync::Mutex<prefetch_pg::launcher::PostgresServer>> =
    std::sync::OnceLock::new();
static DATABASES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A fresh database on this test binary's PostgreSQL (started on first
/// use); its URL.
pub async fn postgres_database(test: &str) -> String {
    let server = POSTGRES.get_or_init(|| {
        std::sync::Mutex::new(
            prefetch_pg::launcher::PostgresServer::start().expect("a private PostgreSQL"),
        )
    });
    let url = |db: &str| server.lock().unwrap_or_else(|p| p.into_inner()).url(db);
    let name = format!(
        "s_{test}_{}",
        DATABASES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let admin = postgres_client(&url("postgres")).await;
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create database");
    url(&name)
}

/// A plain SQL client.
pub async fn postgres_client(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to PostgreSQL");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// A cache event for `want_id` from `want_source`, with fields (`present`)
/// or without (deleted, missing).
pub fn is_cache(ev: &LiveEvent, want_id: &str, want_source: WriteOrigin, present: bool) -> bool {
    matches!(ev, LiveEvent::Cache { id, source, fields, .. }
        if id == want_id && *source == want_source && fields.is_some() == present)
}

/// Writes `cat-002` named "Elsewhere" at `version` through the cache core
/// directly, as another applier would: no event of this server's engine.
pub async fn upsert_elsewhere(srv: &TestServer, version: prefetch::Version) {
    let fields: prefetch::Fields = [("id", "cat-002"), ("name", "Elsewhere")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    srv.engine()
        .cache()
        .apply_batch(
            &[prefetch::Change::upsert("cat-002", fields, version)],
            None,
        )
        .await
        .unwrap();
}
