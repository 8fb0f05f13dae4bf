//! The router: the reference API (server functions), the page, the live
//! feed, static files; every request goes through the edge layer.

use app::error::AppError;
use app::{FormError, shell};
use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::handler::HandlerWithoutStateExt;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, get, on};
use http::{StatusCode, Uri, header};
use leptos::prelude::provide_context;
use leptos::server_fn::ServerFn;
use leptos::server_fn::axum::{AxumServerFnBackend, server_fn_paths};
use leptos::server_fn::error::ServerFnUrlError;
use tower_http::services::ServeDir;
use tower_http::trace::TraceLayer;

use super::error::ApiError;
use super::security::{self, BODY_LIMIT};
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
        .route("/events", get(super::sse::events))
        .route("/metrics", get(metrics))
        .route("/tables", get(super::tables::tables))
        .route("/tables/reload", axum::routing::post(super::tables::reload))
        .route(
            "/tables/{name}/resnapshot",
            axum::routing::post(super::tables::resnapshot),
        )
        .merge(api())
        .fallback_service(files)
        // Extractors refuse bodies over the limit too (413, made JSON in
        // `edge`).
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            super::edge::edge,
        ))
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

/// The dashboard: reads the state first, then renders the page with it, so
/// the HTML is complete before any WASM runs and the browser hydrates from
/// the same state (embedded in the page) without a second request.
async fn page(State(state): State<AppState>, req: Request) -> Response {
    if let Some(res) = security::token_login(&state, req.uri().query()) {
        return res;
    }
    let view = super::sse::view_of(req.uri().query());
    let snapshot = match app::page::dashboard_state(&state.ctx, &view).await {
        Ok(snapshot) => Some(snapshot),
        Err(e) if let Some(res) = super::sse::bad_view(&e) => return res,
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

/// `GET /metrics`: the registry as OpenMetrics text.
async fn metrics(State(state): State<AppState>) -> Response {
    let mut body = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut body, &state.metrics) {
        tracing::error!(error = %e, "cannot encode metrics");
        return ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Cannot encode the metrics.",
        )
        .into_response();
    }
    let mut res = body.into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
    );
    res
}

async fn not_found(uri: Uri) -> Response {
    ApiError::new(StatusCode::NOT_FOUND, format!("Not found: {}", uri.path())).into_response()
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
