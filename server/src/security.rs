//! Exposure controls: the admin token, strict request bodies, and the
//! security headers every response carries.

use std::collections::HashSet;
use std::sync::OnceLock;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};

use crate::routes::json_error;
use crate::state::AppState;

/// Cookie that carries the admin token for the browser UI.
pub const ADMIN_COOKIE: &str = "prefetch_admin";

/// The POST endpoints: every server function that changes something. Taken
/// from the server-function registry, so a new one cannot be forgotten.
fn mutating_paths() -> &'static HashSet<&'static str> {
    static PATHS: OnceLock<HashSet<&'static str>> = OnceLock::new();
    PATHS.get_or_init(|| {
        leptos::server_fn::axum::server_fn_paths()
            .filter(|(_, method)| method == Method::POST)
            .map(|(path, _)| path)
            .collect()
    })
}

/// Equal in time independent of where the inputs differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token a request presents: `Authorization: Bearer …` or the cookie.
fn presented_token(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    bearer.or_else(|| {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|c| c.trim().strip_prefix(ADMIN_COOKIE)?.strip_prefix('='))
    })
}

/// Whether `headers` carry the admin token (always true when none is set).
pub fn authorized(state: &AppState, headers: &HeaderMap) -> bool {
    match &state.admin_token {
        None => true,
        Some(token) => presented_token(headers)
            .is_some_and(|given| same_secret(given.as_bytes(), token.as_bytes())),
    }
}

/// True when every key and value of a query string or form body decodes
/// to UTF-8. The decoder downstream would otherwise replace bad bytes with
/// U+FFFD and act on an id or value the client never sent.
fn decodes_cleanly(raw: &[u8]) -> bool {
    raw.split(|&b| b == b'&').all(|pair| {
        let pair: Vec<u8> = pair
            .iter()
            .map(|&b| if b == b'+' { b' ' } else { b })
            .collect();
        percent_encoding::percent_decode(&pair)
            .decode_utf8()
            .is_ok()
    })
}

fn malformed() -> Response {
    json_error(
        StatusCode::BAD_REQUEST,
        "Malformed request: percent-encoding that does not decode to UTF-8.",
    )
}

/// Guards the API. Queries and form bodies must decode to UTF-8 (400). On
/// the POST endpoints a body must be a form (415 otherwise), and when an
/// admin token is set the request must present it (401 otherwise).
pub async fn guard_api(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if req
        .uri()
        .query()
        .is_some_and(|q| !decodes_cleanly(q.as_bytes()))
    {
        return malformed();
    }
    if req.method() == Method::POST && mutating_paths().contains(req.uri().path()) {
        let ctype = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/x-www-form-urlencoded");
        if !ctype
            .to_ascii_lowercase()
            .starts_with("application/x-www-form-urlencoded")
        {
            return json_error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Send the body as application/x-www-form-urlencoded.",
            );
        }
        if !authorized(&state, req.headers()) {
            let mut res = json_error(
                StatusCode::UNAUTHORIZED,
                "This server requires its admin token: send `Authorization: Bearer <token>`, or open the page once as /?token=<token>.",
            );
            res.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return res;
        }
        // Bodies are small (the limit layer ran first): check the encoding.
        let (parts, body) = req.into_parts();
        let bytes = match axum::body::to_bytes(body, crate::routes::BODY_LIMIT).await {
            Ok(bytes) => bytes,
            Err(_) => {
                return json_error(StatusCode::PAYLOAD_TOO_LARGE, "Request body too large.");
            }
        };
        if !decodes_cleanly(&bytes) {
            return malformed();
        }
        return next
            .run(Request::from_parts(parts, axum::body::Body::from(bytes)))
            .await;
    }
    next.run(req).await
}

/// Headers on every response. The page adds its own Content-Security-Policy
/// (it needs the per-render script nonce); see `app::content_security_policy`.
pub async fn headers(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    for (name, value) in [
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        // Same-origin keeps the Referer that no-JS form posts redirect back to.
        (header::REFERRER_POLICY, "same-origin"),
        (
            http::HeaderName::from_static("cross-origin-opener-policy"),
            "same-origin",
        ),
        (
            http::HeaderName::from_static("cross-origin-resource-policy"),
            "same-origin",
        ),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    res
}

/// `/?token=…`: when it is the admin token, store it in an HttpOnly,
/// SameSite=Strict cookie and send the browser back to a clean URL.
pub fn token_login(state: &AppState, query: Option<&str>) -> Option<Response> {
    let expected = state.admin_token.as_deref()?;
    let given = query?.split('&').find_map(|kv| kv.strip_prefix("token="))?;
    let given = percent_decode(given);
    if !same_secret(given.as_bytes(), expected.as_bytes()) {
        return Some(json_error(StatusCode::UNAUTHORIZED, "Wrong admin token."));
    }
    let cookie = format!("{ADMIN_COOKIE}={expected}; Path=/; HttpOnly; SameSite=Strict");
    let mut res = (StatusCode::SEE_OTHER, [(header::LOCATION, "/")]).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        res.headers_mut().insert(header::SET_COOKIE, v);
    }
    Some(res)
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("t={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_percent_encoding_that_decodes_to_utf8_passes() {
        assert!(decodes_cleanly(b"id=caf%C3%A9&name=a+b"));
        assert!(
            decodes_cleanly(b"id=%ZZ"),
            "not an escape at all: kept literally"
        );
        assert!(!decodes_cleanly(b"id=%FF"));
        assert!(!decodes_cleanly(b"name=ok&id=%C3"));
    }

    #[test]
    fn secrets_compare_by_content_and_length() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
    }

    #[test]
    fn the_token_comes_from_the_bearer_header_or_the_cookie() {
        let mut h = HeaderMap::new();
        assert_eq!(presented_token(&h), None);
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; prefetch_admin=xyz; b=2"),
        );
        assert_eq!(presented_token(&h), Some("xyz"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer tok"),
        );
        assert_eq!(presented_token(&h), Some("tok"));
    }
}
