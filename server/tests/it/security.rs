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
