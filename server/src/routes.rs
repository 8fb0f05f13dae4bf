//! The router: the reference API (server functions), the page, the live
//! feed, static files, and the JSON error contract around all of them.

use app::api::dashboard_state;
use app::error::AppError;
use app::{FormError, shell};
use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::handler::HandlerWithoutStateExt;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, get, on};
use http::{Method, StatusCode, Uri, header};
use leptos::prelude::provide_context;
use leptos::server_fn::ServerFn;
use leptos::server_fn::axum::{AxumServerFnBackend, server_fn_paths};
use leptos::server_fn::error::ServerFnUrlError;
use tower_http::services::ServeDir;
use tower_http::trace::TraceLayer;

use crate::error::ApiError;
use crate::security::{self, BODY_LIMIT};
use crate::sse;
use crate::state::AppState;

/// Builds the application router.
pub fn router(state: AppState) -> Router {
    // The page render spawns its async work on Leptos's executor: tokio's.
    // Already set (a second router in one process) is fine.
    let _ = any_spawner::Executor::init_tokio();
    let options = state.leptos_options.clone();
    let files = ServeDir::new(options.site_root.as_ref())
        .call_fallback_on_method_not_allowed(true)
        .not_found_service(not_found.into_service());
    Router::new()
        .route("/", get(page))
        .route("/index.html", get(page))
        .route("/events", get(sse::events))
        .route("/metrics", get(crate::metrics::metrics))
        .merge(api())
        .fallback_service(files)
        // Extractors refuse bodies over the limit too (413, made JSON in
        // `edge`).
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn_with_state(state.clone(), edge))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            let path = req
                .extensions()
                .get::<MatchedPath>()
                .map_or(req.uri().path(), MatchedPath::as_str);
            tracing::debug_span!("request", method = %req.method(), path)
        }))
        .with_state(state)
}

/// The reference API: every server function at its fixed path and method,
/// each run by [`app::serve::dispatch`] (no reactive owner per call).
fn api() -> Router<AppState> {
    ENDPOINTS
        .iter()
        .fold(Router::new(), |router, (_, register)| register(router))
}

/// Adds one endpoint's route.
type Register = fn(Router<AppState>) -> Router<AppState>;

/// One entry per server function, by path (a test checks none is missing).
const ENDPOINTS: [(&str, Register); 16] = {
    use app::api::*;
    [
        (Categories::PATH, endpoint::<Categories>),
        (ReadCategory::PATH, endpoint::<ReadCategory>),
        (GetStats::PATH, endpoint::<GetStats>),
        (UpdateField::PATH, endpoint::<UpdateField>),
        (AddCategory::PATH, endpoint::<AddCategory>),
        (DeleteCategory::PATH, endpoint::<DeleteCategory>),
        (InvalidateCategory::PATH, endpoint::<InvalidateCategory>),
        (ClearCache::PATH, endpoint::<ClearCache>),
        (Reprefetch::PATH, endpoint::<Reprefetch>),
        (ResetStats::PATH, endpoint::<ResetStats>),
        (GetDashboard::PATH, endpoint::<GetDashboard>),
        (Reconcile::PATH, endpoint::<Reconcile>),
        (InjectFault::PATH, endpoint::<InjectFault>),
        (WorkerControl::PATH, endpoint::<WorkerControl>),
        (GetDeadLetters::PATH, endpoint::<GetDeadLetters>),
        (ReplayDeadLetters::PATH, endpoint::<ReplayDeadLetters>),
    ]
};

/// Routes server function `S` at its path, for the method its codec uses
/// (as the server-function registry records it).
fn endpoint<S>(router: Router<AppState>) -> Router<AppState>
where
    S: ServerFn<Server = AxumServerFnBackend> + 'static,
{
    let method = server_fn_paths()
        .find(|(path, _)| *path == S::PATH)
        .and_then(|(_, method)| MethodFilter::try_from(method).ok());
    let Some(method) = method else {
        tracing::error!(path = S::PATH, "server function missing from the registry");
        return router;
    };
    router.route(
        S::PATH,
        on(method, |State(state): State<AppState>, req: Request| {
            app::serve::dispatch::<S>(state.ctx.clone(), req)
        }),
    )
}

/// Around every request, in one layer (each layer costs an allocation and
/// a boxed future per request):
/// - `HEAD` answers like `GET` on every path, without a body: the request
///   is served as a `GET`, and hyper, which saw the `HEAD`, sends no body;
/// - the API guard ([`security::guard_api`]);
/// - every error answer made JSON ([`json_errors`]);
/// - the security headers every response carries.
async fn edge(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    if req.method() == Method::HEAD {
        *req.method_mut() = Method::GET;
    }
    let mut res = json_errors(security::guard_api(&state, req, next).await);
    security::set_headers(res.headers_mut());
    res
}

/// The dashboard: reads the state first, then renders the page with it, so
/// the HTML is complete before any WASM runs and the browser hydrates from
/// the same state (embedded in the page) without a second request.
async fn page(State(state): State<AppState>, req: Request) -> Response {
    if let Some(res) = security::token_login(&state, req.uri().query()) {
        return res;
    }
    let snapshot = match dashboard_state(&state.ctx).await {
        Ok(snapshot) => Some(snapshot),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the state for the page");
            None
        }
    };
    let unavailable = snapshot.is_none();
    let form_error = form_error(req.uri().query());
    let ctx = state.ctx.clone();
    let options = state.leptos_options.clone();
    let render = leptos_axum::render_app_to_stream_with_context(
        move || {
            provide_context(ctx.clone());
            if let Some(snapshot) = snapshot.clone() {
                provide_context(snapshot);
            }
            if let Some(error) = form_error.clone() {
                provide_context(error);
            }
        },
        move || shell(options.clone()),
    );
    let mut res = render(req).await.into_response();
    if unavailable {
        *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    }
    res
}

/// Longest form error shown; the message comes from the URL, so a crafted
/// link could put any text there (escaped, never markup).
const FORM_ERROR_MAX_CHARS: usize = 300;

/// The error a server function put into the URL when it redirected a form
/// posted without JavaScript back to the page (`?__path=…&__err=…`).
fn form_error(query: Option<&str>) -> Option<FormError> {
    let encoded = security::query_values(query, "__err").next()?;
    let message = ServerFnUrlError::<AppError>::decode_err(&encoded).error;
    Some(FormError(
        message.chars().take(FORM_ERROR_MAX_CHARS).collect(),
    ))
}

async fn not_found(uri: Uri) -> Response {
    ApiError::new(StatusCode::NOT_FOUND, format!("Not found: {}", uri.path())).into_response()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_server_function_has_a_route() {
        let routed: std::collections::BTreeSet<&str> = ENDPOINTS.iter().map(|(p, _)| *p).collect();
        let registered: std::collections::BTreeSet<&str> =
            server_fn_paths().map(|(p, _)| p).collect();
        assert_eq!(routed, registered);
        assert_eq!(routed.len(), ENDPOINTS.len(), "an endpoint is listed twice");
    }
}
