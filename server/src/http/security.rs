//! Exposure controls: the admin token, strict request bodies and queries,
//! and the security headers every response carries.

use std::collections::HashSet;
use std::sync::OnceLock;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};

use super::error::ApiError;
use crate::state::AppState;

/// Largest request body accepted; larger ones get 413.
pub const BODY_LIMIT: usize = 128 * 1024;

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

/// 401: the admin token is missing or wrong.
pub fn unauthorized() -> Response {
    let mut res = ApiError::new(
        StatusCode::UNAUTHORIZED,
        "This server requires its admin token: send `Authorization: Bearer <token>`, or open the page once as /?token=<token>.",
    )
    .into_response();
    res.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    res
}

/// True when a query string or form body is well-formed: every `%` starts
/// a two-hex-digit escape, and every key and value decodes to UTF-8. The
/// decoder downstream would otherwise keep a stray `%` literally or replace
/// bad bytes with U+FFFD, and act on an id or value the client never sent.
/// Queries and bodies are held to the same rule.
fn decodes_cleanly(raw: &[u8]) -> bool {
    let escapes_ok = raw.iter().enumerate().all(|(i, &b)| {
        b != b'%'
            || (raw.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && raw.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
    });
    escapes_ok && strictly_utf8(raw)
}

/// Whether every percent-decoded key and value is valid UTF-8.
fn strictly_utf8(raw: &[u8]) -> bool {
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
    ApiError::bad_request("Malformed request: percent-encoding must be %XX and decode to UTF-8.")
        .into_response()
}

/// The values of `key` in a query string, decoded.
pub fn query_values<'q>(query: Option<&'q str>, key: &'q str) -> impl Iterator<Item = String> + 'q {
    url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .filter(move |(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

/// Guards the API.
///
/// Queries and form bodies must be well-formed percent-encoding of UTF-8
/// (400). On the POST endpoints that change something, the admin token
/// must be presented when one is set (401); endpoints that take no input
/// ignore their body; the others take only a form (415).
pub async fn guard_api(state: &AppState, req: Request, next: Next) -> Response {
    if req
        .uri()
        .query()
        .is_some_and(|q| !decodes_cleanly(q.as_bytes()))
    {
        return malformed();
    }
    if req.method() == Method::POST && mutating_paths().contains(req.uri().path()) {
        if !authorized(state, req.headers()) {
            return unauthorized();
        }
        if app::api::NO_INPUT_ENDPOINTS.contains(&req.uri().path()) {
            // Takes nothing: whatever was sent is not looked at.
            let (mut parts, _) = req.into_parts();
            parts.headers.remove(header::CONTENT_TYPE);
            parts.headers.remove(header::CONTENT_LENGTH);
            return next
                .run(Request::from_parts(parts, axum::body::Body::empty()))
                .await;
        }
        let ctype = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/x-www-form-urlencoded");
        if !ctype
            .to_ascii_lowercase()
            .starts_with("application/x-www-form-urlencoded")
        {
            return ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Send the body as application/x-www-form-urlencoded.",
            )
            .into_response();
        }
        let (parts, bytes) = match read_form_body(state, req).await {
            Ok(read) => read,
            Err(refused) => return *refused,
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

/// Reads a form body for the guard to check its encoding: this read is
/// where the size limit is enforced (the one place that answers 413), and a
/// body trickled in slower than the client timeout gets 408. A body
/// announced over the limit is refused before any of it is read: a client
/// that announces 2 MB and sends nothing gets its answer now instead of
/// holding the connection.
async fn read_form_body(
    state: &AppState,
    req: Request,
) -> Result<(http::request::Parts, axum::body::Bytes), Box<Response>> {
    let refuse = |e: ApiError| Err(Box::new(e.into_response()));
    let announced = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if announced.is_some_and(|n| n > BODY_LIMIT as u64) {
        return refuse(ApiError::too_large(BODY_LIMIT));
    }
    let (parts, body) = req.into_parts();
    let read = axum::body::to_bytes(body, BODY_LIMIT);
    match tokio::time::timeout(state.client_timeout, read).await {
        Ok(Ok(bytes)) => Ok((parts, bytes)),
        Ok(Err(e)) if over_limit(&e) => refuse(ApiError::too_large(BODY_LIMIT)),
        // The connection broke or the framing was wrong mid-body.
        Ok(Err(_)) => refuse(ApiError::new(
            StatusCode::BAD_REQUEST,
            "The request body ended before its announced length.",
        )),
        Err(_) => refuse(ApiError::body_timeout(state.client_timeout)),
    }
}

/// Whether a failed body read failed because the body is over the limit.
fn over_limit(e: &axum::Error) -> bool {
    std::error::Error::source(e).is_some_and(|inner| inner.is::<http_body_util::LengthLimitError>())
}

/// Sets the headers every response carries. The page adds its own
/// Content-Security-Policy (it needs the per-render script nonce); see
/// `app::shell`.
pub fn set_headers(headers: &mut HeaderMap) {
    let set = [
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        // Same-origin keeps the Referer that no-JS form posts redirect back to.
        (header::REFERRER_POLICY, "same-origin"),
        (
            HeaderName::from_static("cross-origin-opener-policy"),
            "same-origin",
        ),
        (
            HeaderName::from_static("cross-origin-resource-policy"),
            "same-origin",
        ),
    ];
    for (name, value) in set {
        headers.insert(name, HeaderValue::from_static(value));
    }
}

/// `/?token=…`: when it is the admin token, store it in an HttpOnly,
/// SameSite=Strict cookie and send the browser back to a clean URL.
pub fn token_login(state: &AppState, query: Option<&str>) -> Option<Response> {
    let expected = state.admin_token.as_deref()?;
    let given = query_values(query, "token").next()?;
    if !same_secret(given.as_bytes(), expected.as_bytes()) {
        return Some(ApiError::new(StatusCode::UNAUTHORIZED, "Wrong admin token.").into_response());
    }
    let cookie = format!("{ADMIN_COOKIE}={expected}; Path=/; HttpOnly; SameSite=Strict");
    let mut res = (StatusCode::SEE_OTHER, [(header::LOCATION, "/")]).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        res.headers_mut().insert(header::SET_COOKIE, v);
    }
    Some(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_percent_encoding_that_decodes_to_utf8_passes() {
        assert!(decodes_cleanly(b"id=caf%C3%A9&name=a+b"));
        assert!(decodes_cleanly(b"id=100%25"));
        for bad in [
            &b"id=%ZZ"[..],
            b"id=%",
            b"id=%4",
            b"id=%FF",
            b"name=ok&id=%C3",
        ] {
            assert!(!decodes_cleanly(bad), "{}", String::from_utf8_lossy(bad));
        }
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
