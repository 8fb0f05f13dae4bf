//! Exposure: admin token, loopback default, strict bodies, security headers
//! and the page's Content-Security-Policy.

use crate::common::{TestServer, json_of};
use prefetch::testing::TestRedis;

const TOKEN: &str = "s3cret-token-for-tests";

async fn post(
    srv: &TestServer,
    path: &str,
    body: &str,
    auth: Option<(&str, &str)>,
) -> (u16, serde_json::Value, reqwest::header::HeaderMap) {
    let mut req = reqwest::Client::new()
        .post(srv.url(path))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.to_owned());
    if let Some((name, value)) = auth {
        req = req.header(name, value);
    }
    let res = req.send().await.unwrap();
    let headers = res.headers().clone();
    let (status, body) = json_of(res).await;
    (status, body, headers)
}

#[tokio::test]
async fn with_a_token_set_every_mutation_needs_it_and_reads_stay_open() {
    let srv = TestServer::start_on(TestRedis::start(), &["--admin-token", TOKEN]).await;
    let bearer = format!("Bearer {TOKEN}");
    let cookie = format!("prefetch_admin={TOKEN}");
    for (path, body) in [
        ("/update", "id=cat-001&field=name&value=x"),
        ("/add", "id=cat-009&name=x"),
        ("/delete", "id=cat-005"),
        ("/invalidate", "id=cat-001"),
        ("/clear", ""),
        ("/reprefetch", ""),
        ("/reset", ""),
    ] {
        let (status, json, headers) = post(&srv, path, body, None).await;
        assert_eq!(status, 401, "{path} without a token: {json}");
        assert!(json["error"].as_str().unwrap().contains("admin token"));
        assert_eq!(headers["www-authenticate"], "Bearer");
        let (status, _, _) = post(&srv, path, body, Some(("authorization", "Bearer wrong"))).await;
        assert_eq!(status, 401, "{path} with a wrong token");
        let (status, _, _) = post(&srv, path, body, Some(("authorization", &bearer))).await;
        assert_eq!(status, 200, "{path} with the bearer token");
    }
    // The server's own admin routes are held to the same token; the mock
    // holds one table and cannot snapshot it alone (409, said why).
    let resnapshot = "/tables/categories/resnapshot";
    let (status, _, _) = post(&srv, resnapshot, "", None).await;
    assert_eq!(status, 401, "{resnapshot} without a token");
    let (status, json, _) = post(&srv, resnapshot, "", Some(("authorization", &bearer))).await;
    assert_eq!(status, 409, "{json}");
    assert!(
        json["error"].as_str().unwrap().contains("re-prefetch"),
        "{json}"
    );
    let (status, _, _) = post(
        &srv,
        "/update",
        "id=cat-002&field=name&value=c",
        Some(("cookie", &cookie)),
    )
    .await;
    assert_eq!(status, 200, "the dashboard's cookie works too");
    for path in ["/read?id=cat-001", "/categories", "/stats", "/state"] {
        let (status, _) = srv.get(path).await;
        assert_eq!(status, 200, "{path} is a read");
    }
}

#[tokio::test]
async fn without_a_token_nothing_is_locked_on_loopback() {
    let srv = TestServer::start().await;
    let (status, _, _) = post(&srv, "/reset", "", None).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn opening_the_page_with_the_token_sets_a_strict_cookie() {
    let srv = TestServer::start_on(TestRedis::start(), &["--admin-token", TOKEN]).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let res = http
        .get(srv.url(&format!("/?token={TOKEN}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 303);
    assert_eq!(res.headers()["location"], "/");
    let cookie = res.headers()["set-cookie"].to_str().unwrap();
    assert!(cookie.starts_with(&format!("prefetch_admin={TOKEN};")));
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let res = http.get(srv.url("/?token=nope")).send().await.unwrap();
    let (status, body) = json_of(res).await;
    assert_eq!(status, 401, "{body}");
}

#[test]
fn a_public_address_without_a_token_refuses_to_start() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_server"))
        .args(["--host", "0.0.0.0", "--port", "0", "--redis-port", "1"])
        .env_remove("PREFETCH_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--admin-token"), "{stderr}");
    assert!(
        stderr.contains("docs/troubleshooting.md#flags-that-do-not-go-together"),
        "{stderr}"
    );
}

#[tokio::test]
async fn bodies_must_be_forms() {
    let srv = TestServer::start().await;
    for ctype in [
        "application/json",
        "text/plain",
        "multipart/form-data; boundary=x",
    ] {
        let res = reqwest::Client::new()
            .post(srv.url("/update"))
            .header("content-type", ctype)
            .body("id=cat-001&field=name&value=x")
            .send()
            .await
            .unwrap();
        let (status, body) = json_of(res).await;
        assert_eq!(status, 415, "{ctype}: {body}");
    }
}

#[tokio::test]
async fn the_page_carries_a_nonce_csp_and_every_response_security_headers() {
    let srv = TestServer::start().await;
    let res = reqwest::get(srv.url("/")).await.unwrap();
    let csp = res.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    let html = res.text().await.unwrap();
    let nonce = csp
        .split("'nonce-")
        .nth(1)
        .and_then(|s| s.split('\'').next())
        .expect("a nonce in the CSP");
    assert!(nonce.len() >= 16);
    assert!(
        html.contains(&format!("nonce=\"{nonce}\"")),
        "the hydration script carries the nonce"
    );
    for directive in [
        "default-src 'self'",
        "'wasm-unsafe-eval'",
        "object-src 'none'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{directive} in {csp}");
    }
    assert!(!csp.contains("'unsafe-inline'") && !csp.contains("'unsafe-eval'"));
    let second = reqwest::get(srv.url("/")).await.unwrap();
    let other = second.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_ne!(csp, other, "a fresh nonce per page");

    for path in ["/", "/read?id=cat-001", "/nope", "/favicon.svg"] {
        let res = reqwest::get(srv.url(path)).await.unwrap();
        let h = res.headers();
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(h["x-frame-options"], "DENY", "{path}");
        assert_eq!(h["referrer-policy"], "same-origin", "{path}");
    }
}

/// Slow clients (`--client-timeout-secs`): the raw connection of a test.
async fn raw(srv: &TestServer) -> tokio::net::TcpStream {
    let addr = srv.base.trim_start_matches("http://").to_owned();
    tokio::net::TcpStream::connect(addr).await.unwrap()
}

/// Reads until the server closes the connection (or 10 s pass): what it
/// sent, and how long after the call the close came.
async fn until_closed(tcp: &mut tokio::net::TcpStream) -> (String, std::time::Duration) {
    use tokio::io::AsyncReadExt;
    let started = std::time::Instant::now();
    let mut got = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tcp.read_to_end(&mut got),
    )
    .await
    .expect("the server closes the connection")
    .unwrap();
    (
        String::from_utf8_lossy(&got).to_ascii_lowercase(),
        started.elapsed(),
    )
}

#[tokio::test]
async fn a_request_head_or_an_idle_connection_past_the_client_timeout_is_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let srv = TestServer::start_on(TestRedis::start(), &["--client-timeout-secs", "1"]).await;

    // Half a request head, then nothing.
    let mut slow = raw(&srv).await;
    slow.write_all(b"GET /stats HTTP/1.1\r\nHost: t\r\n")
        .await
        .unwrap();
    let (sent, after) = until_closed(&mut slow).await;
    assert!(
        sent.is_empty(),
        "nothing is answered to half a head: {sent}"
    );
    assert!(
        after >= std::time::Duration::from_millis(900) && after < std::time::Duration::from_secs(5),
        "closed after {after:?}, not about 1 s"
    );

    // A whole request is answered, and the connection stays open for the
    // next one within the timeout...
    let mut idle = raw(&srv).await;
    for _ in 0..2 {
        idle.write_all(b"GET /stats HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let n = idle.read(&mut buf).await.unwrap();
        let answer = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
        assert!(answer.starts_with("http/1.1 200"), "{answer}");
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    // ...but not idle past it.
    let (sent, after) = until_closed(&mut idle).await;
    assert!(sent.is_empty(), "{sent}");
    assert!(
        after < std::time::Duration::from_secs(5),
        "closed after {after:?}"
    );
}

#[tokio::test]
async fn a_body_slower_than_the_client_timeout_gets_408_and_changes_nothing() {
    use tokio::io::AsyncWriteExt;
    let srv = TestServer::start_on(TestRedis::start(), &["--client-timeout-secs", "1"]).await;
    let body = "id=cat-001&field=name&value=Slow";
    let mut tcp = raw(&srv).await;
    let head = format!(
        "POST /update HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    // All but the last byte.
    tcp.write_all(&body.as_bytes()[..body.len() - 1])
        .await
        .unwrap();
    let (answer, after) = until_closed(&mut tcp).await;
    assert!(answer.starts_with("http/1.1 408"), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    assert!(answer.contains("not received within 1 s"), "{answer}");
    assert!(after >= std::time::Duration::from_millis(900), "{after:?}");
    let (_, read) = srv.get("/read?id=cat-001").await;
    assert_eq!(read["record"]["name"], "Beverages");
}

#[tokio::test]
async fn the_live_feed_outlives_the_client_timeout() {
    use app::model::LiveEvent;
    let srv = TestServer::start_on(TestRedis::start(), &["--client-timeout-secs", "1"]).await;
    let mut feed = srv.events().await;
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let (status, _) = srv
        .post("/update", "id=cat-002&field=name&value=Still%20here")
        .await;
    assert_eq!(status, 200);
    feed.expect(
        std::time::Duration::from_secs(5),
        "primary upsert after 2.5 s on the stream",
        |e| matches!(e, LiveEvent::Primary { id, .. } if id == "cat-002"),
    )
    .await;
}
