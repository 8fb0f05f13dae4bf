//! The reference-compatible HTTP API, written once as server functions.
//!
//! Each function is served at the same path as in the published demos
//! (`prefix = ""` + `endpoint` gives exactly `/read`, `/update`, …): GET
//! arguments come from the query string, POST arguments from an
//! `application/x-www-form-urlencoded` body, replies are JSON. The UI calls
//! these very functions, so every behaviour has one implementation. Each body
//! only validates input, calls the [`prefetch::Engine`] and maps errors.
//!
//! Arguments are `Option`s on purpose: a missing field must be a clear 400
//! with a message, not a decoding failure.

use leptos::prelude::*;
use leptos::server_fn::codec::GetUrl;

use crate::error::AppError;
use crate::model::*;

/// The POST endpoints that take no input: any body sent to them is ignored
/// (the server drops it before the function decodes anything).
pub const NO_INPUT_ENDPOINTS: [&str; 4] =
    ["/clear", "/reprefetch", "/reset", "/dead-letters/replay"];

/// `GET /categories` (`?after=ID`): cached ids and primary ids, both
/// sorted; above 1,000 records, a page (see [`crate::page`]) whose `next`
/// names where the next page starts, also as a `Link` header.
#[server(prefix = "", endpoint = "categories", input = GetUrl, name = Categories)]
pub async fn categories(after: Option<String>) -> Result<CategoriesResponse, AppError> {
    let ctx = ssr::ctx()?;
    let after = ssr::present(after);
    let answer = crate::page::categories(&ctx, after.as_deref())
        .await
        .map_err(ssr::engine_error)?;
    if let Some(next) = &answer.next {
        ssr::link_next(
            "/categories",
            &ViewDto {
                after: Some(next.clone()),
                ..ViewDto::default()
            },
        );
    }
    Ok(answer)
}

/// `GET /read?id=`: one `HGETALL`+`TTL` round trip, never the primary. A miss
/// is a 200 with `hit: false` and `ttl_remaining: -2`, and says why in the
/// `Prefetch-Miss` header (`deleted`, `absent`, `lost`, `unknown`).
#[server(prefix = "", endpoint = "read", input = GetUrl, name = ReadCategory)]
pub async fn read_category(id: Option<String>) -> Result<ReadResponse, AppError> {
    let ctx = ssr::ctx()?;
    let id = ssr::required(id, "Missing 'id'.")?;
    let read = ctx.engine.read(&id).await.map_err(ssr::engine_error)?;
    if let Some(kind) = read.miss {
        crate::serve::add_header(
            http::HeaderName::from_static("prefetch-miss"),
            http::HeaderValue::from_static(kind.as_str()),
        );
    }
    Ok(ReadResponse {
        id: read.id,
        hit: read.lookup.hit(),
        record: read.lookup.record.map(|r| shown_fields(r.into_fields())),
        redis_latency_ms: millis(read.lookup.redis_latency),
        ttl_remaining: read.ttl.as_redis(),
        stats: ssr::stats(&ctx),
    })
}

/// `GET /stats`.
#[server(prefix = "", endpoint = "stats", input = GetUrl, name = GetStats)]
pub async fn get_stats() -> Result<StatsDto, AppError> {
    Ok(ssr::stats(&ssr::ctx()?))
}

/// `POST /update` (`id`, `field`, `value`): changes the primary; the sync
/// worker carries the change into Redis.
#[server(prefix = "", endpoint = "update", name = UpdateField)]
pub async fn update_field(
    id: Option<String>,
    field: Option<String>,
    value: Option<String>,
) -> Result<UpdateResponse, AppError> {
    let ctx = ssr::ctx()?;
    let (Some(id), Some(field)) = (ssr::present(id), ssr::present(field)) else {
        return ssr::fail(ssr::BAD_REQUEST, "Missing 'id' or 'field'.");
    };
    let value = value.unwrap_or_default();
    if let Err(message) = validate_category_field(&field, &value) {
        return ssr::fail(ssr::BAD_REQUEST, message);
    }
    let record = ctx
        .primary
        .update_field(&id, &field, &value)
        .await
        .map_err(ssr::engine_error)?;
    ssr::own_position(&ctx).await;
    Ok(UpdateResponse {
        id: record.id().unwrap_or(id.trim()).to_owned(),
        field,
        value,
        stats: ssr::stats(&ctx),
    })
}

/// `POST /add` (`id`, `name`, `display_order`=99, `featured`=false,
/// `parent_id`=""): inserts into the primary.
#[server(prefix = "", endpoint = "add", name = AddCategory)]
pub async fn add_category(
    id: Option<String>,
    name: Option<String>,
    display_order: Option<String>,
    featured: Option<String>,
    parent_id: Option<String>,
) -> Result<AddResponse, AppError> {
    let ctx = ssr::ctx()?;
    let (Some(id), Some(name)) = (ssr::present(id), ssr::present(name)) else {
        return ssr::fail(ssr::BAD_REQUEST, "Missing 'id' or 'name'.");
    };
    let record: Fields = [
        ("id", id),
        ("name", name.trim().to_owned()),
        (
            "display_order",
            display_order.unwrap_or_else(|| "99".into()),
        ),
        ("featured", featured.unwrap_or_else(|| "false".into())),
        ("parent_id", parent_id.unwrap_or_default()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    for (field, value) in record.iter().filter(|(f, _)| f.as_str() != "id") {
        if let Err(message) = validate_category_field(field, value) {
            return ssr::fail(ssr::BAD_REQUEST, message);
        }
    }
    if let Some(parent) = record.get("parent_id").filter(|p| !p.is_empty()) {
        prefetch::validate_id(parent).map_err(ssr::engine_error)?;
    }
    let record = ctx
        .primary
        .add(prefetch::Record::new(record))
        .await
        .map_err(ssr::engine_error)?;
    ssr::own_position(&ctx).await;
    Ok(AddResponse {
        id: record.id().unwrap_or_default().to_owned(),
        record: record.into_fields(),
        stats: ssr::stats(&ctx),
    })
}

/// `POST /delete` (`id`): removes from the primary; the worker removes the key.
#[server(prefix = "", endpoint = "delete", name = DeleteCategory)]
pub async fn delete_category(id: Option<String>) -> Result<DeleteResponse, AppError> {
    let ctx = ssr::ctx()?;
    let id = ssr::required(id, "Missing 'id'.")?;
    let id = ctx.primary.delete(&id).await.map_err(ssr::engine_error)?;
    ssr::own_position(&ctx).await;
    Ok(DeleteResponse {
        id,
        stats: ssr::stats(&ctx),
    })
}

/// `POST /invalidate` (`id`): deletes one cache key (simulates a lost event).
#[server(prefix = "", endpoint = "invalidate", name = InvalidateCategory)]
pub async fn invalidate_category(id: Option<String>) -> Result<InvalidateResponse, AppError> {
    let ctx = ssr::ctx()?;
    let id = ssr::required(id, "Missing 'id'.")?;
    let (id, deleted) = ctx
        .engine
        .invalidate(&id)
        .await
        .map_err(ssr::engine_error)?;
    Ok(InvalidateResponse {
        id,
        deleted,
        stats: ssr::stats(&ctx),
    })
}

/// `POST /clear`: deletes every cache key, with the sync worker paused.
#[server(prefix = "", endpoint = "clear", name = ClearCache)]
pub async fn clear_cache() -> Result<ClearResponse, AppError> {
    let ctx = ssr::ctx()?;
    let deleted = ctx.engine.clear().await.map_err(ssr::engine_error)?;
    Ok(ClearResponse {
        deleted,
        stats: ssr::stats(&ctx),
    })
}

/// `POST /reprefetch`: one snapshot of the primary written through the
/// version guard while the sync worker keeps running, then a sweep of keys
/// the snapshot no longer has. No pause, no miss.
#[server(prefix = "", endpoint = "reprefetch", name = Reprefetch)]
pub async fn reprefetch() -> Result<ReprefetchResponse, AppError> {
    let ctx = ssr::ctx()?;
    let report = ctx.engine.reprefetch().await.map_err(ssr::engine_error)?;
    Ok(ReprefetchResponse {
        loaded: report.loaded,
        swept: report.swept,
        elapsed_ms: millis(report.elapsed),
        stats: ssr::stats(&ctx),
    })
}

/// `POST /reset`: zeroes the cache counters and the primary read count.
#[server(prefix = "", endpoint = "reset", name = ResetStats)]
pub async fn reset_stats() -> Result<StatsDto, AppError> {
    let ctx = ssr::ctx()?;
    ctx.engine.reset_stats();
    ctx.primary.reset_reads();
    Ok(ssr::stats(&ctx))
}

/// `GET /state` (`?cursor=&q=` or `?after=ID`): primary and cache side by
/// side with TTLs and stats, for the whole table when it is small and one
/// page when it is large (see [`crate::page`]); what the page renders on
/// the server and what the live feed sends on connect.
#[server(prefix = "", endpoint = "state", input = GetUrl, name = GetDashboard)]
pub async fn dashboard(
    cursor: Option<String>,
    q: Option<String>,
    after: Option<String>,
    table: Option<String>,
) -> Result<DashboardState, AppError> {
    let ctx = ssr::ctx()?;
    let view = ViewDto {
        cursor: ssr::present(cursor),
        query: ssr::present(q),
        after: ssr::present(after),
        table: ssr::present(table),
    };
    let state = crate::page::dashboard_state(&ctx, &view)
        .await
        .map_err(ssr::engine_error)?;
    if let Some(next) = state.page.as_ref().and_then(PageDto::next_view) {
        ssr::link_next("/state", &next);
    }
    Ok(state)
}

/// `POST /reconcile` (`repair`=`true` to fix): a fresh snapshot of the
/// primary against Redis, every difference classified; repairs go through
/// the version guard, so they are safe while the worker runs.
#[server(prefix = "", endpoint = "reconcile", name = Reconcile)]
pub async fn reconcile(repair: Option<String>) -> Result<ReconcileResponse, AppError> {
    let ctx = ssr::ctx()?;
    let repair = match repair.as_deref().map(str::trim) {
        None | Some("") | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return ssr::fail(
                ssr::BAD_REQUEST,
                format!("'repair' must be 'true' or 'false', got '{other}'."),
            );
        }
    };
    let report = ctx
        .engine
        .reconcile(repair)
        .await
        .map_err(ssr::engine_error)?;
    Ok(ReconcileResponse::new(
        &report,
        std::time::SystemTime::now(),
    ))
}

/// `GET /dead-letters`: the change feed's dead letters (a replica of a
/// pipeline only; otherwise `enabled` is false).
#[server(prefix = "", endpoint = "dead-letters", input = GetUrl, name = GetDeadLetters)]
pub async fn dead_letters() -> Result<DeadLettersResponse, AppError> {
    let ctx = ssr::ctx()?;
    let Some(dlq) = &ctx.dead_letters else {
        return Ok(DeadLettersResponse::default());
    };
    let count = dlq.count().await.map_err(ssr::engine_error)?;
    let letters = dlq
        .list(100)
        .await
        .map_err(ssr::engine_error)?
        .into_iter()
        .map(|(id, reason)| DeadLetterDto { id, reason })
        .collect();
    Ok(DeadLettersResponse {
        enabled: true,
        count,
        letters,
    })
}

/// `POST /dead-letters/replay`: puts up to 1,000 dead letters back into the
/// change feed with their original versions, so each applies only where it
/// is newer (within the tombstone TTL of a delete; see docs/design.md).
#[server(prefix = "", endpoint = "dead-letters/replay", name = ReplayDeadLetters)]
pub async fn replay_dead_letters() -> Result<ReplayResponse, AppError> {
    let ctx = ssr::ctx()?;
    let Some(dlq) = &ctx.dead_letters else {
        return ssr::fail(
            http::StatusCode::CONFLICT,
            "This server has no change feed (start replicas with --pipeline NAME).",
        );
    };
    let replayed = dlq.replay(1_000).await.map_err(ssr::engine_error)?;
    Ok(ReplayResponse { replayed })
}

/// `POST /fault` (`kind` = drop | duplicate | reorder | delay | outage,
/// `count` = 1, `ms` = 1000): breaks the pipeline on purpose, for drills.
/// Enabled on loopback, or with `--faults` elsewhere.
#[server(prefix = "", endpoint = "fault", name = InjectFault)]
pub async fn inject_fault(
    kind: Option<String>,
    count: Option<String>,
    ms: Option<String>,
) -> Result<FaultResponse, AppError> {
    let ctx = ssr::ctx()?;
    let Some(faults) = &ctx.faults else {
        return ssr::fail(
            http::StatusCode::FORBIDDEN,
            "Fault injection is off on this server (start it with --faults).",
        );
    };
    let number = |v: Option<String>, default: u64, name: &str, max: u64| -> Result<u64, AppError> {
        match v.as_deref().map(str::trim) {
            None | Some("") => Ok(default),
            Some(t) => match t.parse::<u64>() {
                Ok(n) if (1..=max).contains(&n) => Ok(n),
                _ => ssr::fail(
                    ssr::BAD_REQUEST,
                    format!("'{name}' must be a whole number from 1 to {max}, got '{t}'."),
                ),
            },
        }
    };
    let count = u32::try_from(number(count, 1, "count", 10_000)?).unwrap_or(1);
    let ms = std::time::Duration::from_millis(number(ms, 1000, "ms", 60_000)?);
    let kind = ssr::required(kind, "Missing 'kind'.")?;
    let fault = match kind.trim() {
        "drop" => prefetch::Fault::Drop(count),
        "duplicate" => prefetch::Fault::Duplicate(count),
        "reorder" => prefetch::Fault::Reorder(count),
        "delay" => prefetch::Fault::Delay(count, ms),
        "outage" => prefetch::Fault::Outage(ms),
        other => {
            return ssr::fail(
                ssr::BAD_REQUEST,
                format!("'kind' must be drop, duplicate, reorder, delay or outage, got '{other}'."),
            );
        }
    };
    faults.inject(fault);
    Ok(FaultResponse {
        kind: kind.trim().to_owned(),
        pending: faults.pending().into(),
    })
}

/// `POST /worker` (`action` = pause | resume): stops and starts the sync
/// worker; changes wait at the source meanwhile.
#[server(prefix = "", endpoint = "worker", name = WorkerControl)]
pub async fn worker_control(action: Option<String>) -> Result<WorkerResponse, AppError> {
    let ctx = ssr::ctx()?;
    let action = ssr::required(action, "Missing 'action'.")?;
    match action.trim() {
        "pause" => {
            let guard = ctx
                .engine
                .sync()
                .pause(std::time::Duration::from_secs(2))
                .await
                .map_err(ssr::engine_error)?;
            // Held until resumed (a second pause replaces the first).
            *ctx.paused.lock().unwrap_or_else(|p| p.into_inner()) = Some(guard);
        }
        "resume" => {
            let held = ctx.paused.lock().unwrap_or_else(|p| p.into_inner()).take();
            drop(held);
            // The answer is the state the worker reached, not the one it
            // was leaving.
            let state = ctx
                .engine
                .sync()
                .settle_resumed(std::time::Duration::from_secs(2))
                .await;
            return Ok(WorkerResponse {
                worker: state.into(),
            });
        }
        other => {
            return ssr::fail(
                ssr::BAD_REQUEST,
                format!("'action' must be pause or resume, got '{other}'."),
            );
        }
    }
    Ok(WorkerResponse {
        worker: ctx.engine.sync().state().into(),
    })
}

#[cfg(feature = "ssr")]
pub use ssr::{ServerContext, now_ms};

#[cfg(feature = "ssr")]
use crate::model::millis;

#[cfg(feature = "ssr")]
mod ssr {
    use std::time::SystemTime;

    use crate::error::AppError;
    use crate::model::{StatsDto, ViewDto, epoch_ms};

    pub use crate::error::ssr::{BAD_REQUEST, engine_error, fail};

    pub use crate::serve::ServerContext;

    pub fn ctx() -> Result<ServerContext, AppError> {
        crate::serve::context().ok_or_else(|| {
            tracing::error!("ServerContext missing: not called through the dispatch or a render");
            crate::serve::set_status(http::StatusCode::INTERNAL_SERVER_ERROR);
            AppError::new("Server misconfigured: no engine.")
        })
    }

    pub fn stats(ctx: &ServerContext) -> StatsDto {
        ctx.stats(ctx.engine.stats())
    }

    /// Puts the write's own commit position on its answer
    /// (`Prefetch-Position`): a read that waits for that position
    /// (`Prefetch-Min-Position`) finds the write in the cache.
    pub async fn own_position(ctx: &ServerContext) {
        match ctx.primary.commit_position().await {
            Ok(Some(at)) => {
                let text = ctx.engine.source().position_text(at);
                if let Ok(value) = http::HeaderValue::from_str(&text) {
                    let name = http::HeaderName::from_static("prefetch-position");
                    crate::serve::add_header(name, value);
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read the write's commit position"),
        }
    }

    /// A present, non-blank argument.
    pub fn present(v: Option<String>) -> Option<String> {
        v.filter(|s| !s.trim().is_empty())
    }

    pub fn required(v: Option<String>, message: &str) -> Result<String, AppError> {
        match present(v) {
            Some(v) => Ok(v),
            None => fail(BAD_REQUEST, message),
        }
    }

    pub fn now_ms() -> i64 {
        epoch_ms(SystemTime::now())
    }

    /// `Link: <path?view>; rel="next"` on the current answer.
    pub fn link_next(path: &str, next: &ViewDto) {
        let link = format!("<{path}{}>; rel=\"next\"", next.query_string());
        if let Ok(value) = http::HeaderValue::from_str(&link) {
            crate::serve::add_header(http::header::LINK, value);
        }
    }
}
