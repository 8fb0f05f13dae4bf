//! Around every request, in one layer: `HEAD` as `GET`, the API guard,
//! every error answer made JSON, the security headers.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{Method, StatusCode, header};

use super::error::ApiError;
use super::position;
use super::security::{self, BODY_LIMIT};
use crate::state::AppState;

/// Around every request, in one layer (each layer costs an allocation and
/// a boxed future per request):
/// - `HEAD` answers like `GET` on every path, without a body: the request
///   is served as a `GET`, and hyper, which saw the `HEAD`, sends no body;
/// - read-your-writes: a request with `Prefetch-Min-Position` waits for
///   it, and every answer says the applied position ([`position`]);
/// - the API guard ([`security::guard_api`]);
/// - every error answer made JSON ([`json_errors`]);
/// - the security headers every response carries.
pub async fn edge(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    if req.method() == Method::HEAD {
        *req.method_mut() = Method::GET;
    }
    let fenced = match position::fence(&req) {
        Ok(Some(fence)) => position::wait(&state, fence).await,
        Ok(None) => Ok(()),
        Err(refused) => Err(Box::new(refused.into_response())),
    };
    let mut res = match fenced {
        Ok(()) => json_errors(security::guard_api(&state, req, next).await),
        Err(refused) => *refused,
    };
    position::stamp(&state, res.headers_mut());
    security::set_headers(res.headers_mut());
    res
}

/// Every error answer is JSON: framework-made errors (405 from a route with
/// the wrong method, 413 from the body limit, axum's 422/415 rejections) come
/// with an empty or plain-text body, which is replaced here. JSON errors from
/// server functions and HTML pages pass through untouched; a failed form
/// post's redirect back to the page stays a redirect.
fn json_errors(mut res: Response) -> Response {
    let status = res.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return res;
    }
    if status == StatusCode::PAYLOAD_TOO_LARGE || status == StatusCode::REQUEST_TIMEOUT {
        // The rest of the body is never read, so the connection cannot
        // carry another request: say so, or a client may reuse it.
        res.headers_mut()
            .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
    }
    if res.headers().contains_key(header::LOCATION) {
        // A form posted without JavaScript that failed: the server function
        // redirects it back to the page with the error in the URL, but the
        // error status it set would stop the browser from following.
        *res.status_mut() = StatusCode::SEE_OTHER;
        return res;
    }
    let content_type = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if content_type.starts_with("application/json")
        || content_type.starts_with("text/html")
        || content_type.starts_with("text/event-stream")
    {
        return res;
    }
    let error = match status {
        StatusCode::METHOD_NOT_ALLOWED => ApiError::new(status, "Method not allowed."),
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::too_large(BODY_LIMIT),
        StatusCode::UNPROCESSABLE_ENTITY | StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            ApiError::bad_request("Malformed request.")
        }
        other => ApiError::new(other, other.canonical_reason().unwrap_or("Request failed.")),
    };
    let mut out = error.into_response();
    for name in [header::ALLOW, header::CONNECTION] {
        if let Some(value) = res.headers().get(&name) {
            out.headers_mut().insert(name, value.clone());
        }
    }
    out
}
