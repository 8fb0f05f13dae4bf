//! What a view shows (feature `ssr`): the whole table when it is small,
//! one page when it is large, so that no answer, page or live-feed frame
//! grows with the table.
//!
//! - Up to [`FULL_LIMIT`] records on both sides, the dashboard, `/state`
//!   and `/categories` answer exactly as the reference demos do.
//! - Above, the dashboard shows a page of [`PAGE_ROWS`] cached keys from a
//!   `SCAN` cursor (optionally those whose id starts with a search), each
//!   beside the primary's record of the same id; `/state?after=ID` and
//!   `/categories?after=ID` page through the primary's key order instead,
//!   at most [`API_PAGE_ROWS`] records or [`PAGE_BYTES`] a page.
//! - Totals come from counters: Redis's `DBSIZE`, the primary's own count
//!   or estimate.

use std::time::SystemTime;

use prefetch::{CachedEntry, Fields, ID_FIELD, Record, ScanCursor};

use crate::model::{
    CacheEntryDto, CategoriesResponse, DashboardState, PageDto, ReconcileResponse, SourceDto,
    ViewDto, epoch_ms,
};
use crate::serve::ServerContext;

/// Records (on either side) up to which a table is shown whole.
pub const FULL_LIMIT: usize = 1000;
/// Rows a dashboard page shows.
pub const PAGE_ROWS: usize = 50;
/// Records an API page (`?after=`) holds at most.
pub const API_PAGE_ROWS: usize = 1000;
/// Field bytes an API page holds at most, so that an answer stays well
/// under 1 MB whatever the rows hold.
pub const PAGE_BYTES: usize = 256 * 1024;

/// The whole table, when both sides hold at most [`FULL_LIMIT`] records:
/// the primary's records and the cached ids, sorted.
async fn small_table(ctx: &ServerContext) -> prefetch::Result<Option<(Vec<Record>, Vec<String>)>> {
    let table = ctx.primary.id_prefix();
    let (primary, cached) = tokio::join!(
        ctx.primary.records_after(None, FULL_LIMIT + 1),
        ctx.engine
            .cache()
            .scan_ids(ScanCursor::START, &table, FULL_LIMIT + 1),
    );
    let (primary, cached) = (primary?, cached?);
    let mut ids = cached.ids;
    ids.sort_unstable();
    ids.dedup();
    if primary.len() > FULL_LIMIT || ids.len() > FULL_LIMIT || cached.next.is_some() {
        return Ok(None);
    }
    Ok(Some((primary, ids)))
}

/// `GET /categories` (`?after=ID`): see the module docs.
pub async fn categories(
    ctx: &ServerContext,
    after: Option<&str>,
) -> prefetch::Result<CategoriesResponse> {
    if after.is_none()
        && let Some((primary, cache_ids)) = small_table(ctx).await?
    {
        return Ok(CategoriesResponse {
            cache_ids,
            primary_ids: ids_of(&primary),
            next: None,
        });
    }
    let (records, next) = primary_page(ctx, after).await?;
    let primary_ids = ids_of(&records);
    let cached = ctx.engine.cache().cached_of(&primary_ids).await?;
    Ok(CategoriesResponse {
        cache_ids: primary_ids
            .iter()
            .zip(cached)
            .filter(|(_, c)| *c)
            .map(|(id, _)| id.clone())
            .collect(),
        primary_ids,
        next,
    })
}

/// The dashboard's state for `view`; also `/state` and the live feed's
/// snapshot.
pub async fn dashboard_state(
    ctx: &ServerContext,
    view: &ViewDto,
) -> prefetch::Result<DashboardState> {
    let (ctx, table) = &table_view(ctx, view)?;
    let mut state = view_state(ctx, view, table.is_some()).await?;
    if let Some(page) = state.page.as_mut() {
        page.table = table.clone();
    }
    state.table = table.clone();
    Ok(state)
}

/// The context whose primary is the view's table, and that table's name
/// when it is not the first: a cache of several tables shows one at a time.
fn table_view(
    ctx: &ServerContext,
    view: &ViewDto,
) -> prefetch::Result<(ServerContext, Option<String>)> {
    let Some(name) = view.table.as_deref().filter(|t| !t.is_empty()) else {
        return Ok((ctx.clone(), None));
    };
    if ctx.primary.tables().first().map(String::as_str) == Some(name) {
        return Ok((ctx.clone(), None));
    }
    let primary = ctx
        .primary
        .view_of(name)
        .ok_or_else(|| prefetch::Error::InvalidId(format!("no table called '{name}'")))?;
    let ctx = ServerContext {
        primary,
        ..ctx.clone()
    };
    Ok((ctx, Some(name.to_owned())))
}

/// [`dashboard_state`] for `ctx`'s primary; `paged` shows a page even of a
/// small table (another than the first: the live hub follows the rows of
/// such a view one by one).
async fn view_state(
    ctx: &ServerContext,
    view: &ViewDto,
    paged: bool,
) -> prefetch::Result<DashboardState> {
    let cursor = view.cursor.as_deref().filter(|c| !c.is_empty());
    let query = search_of(ctx, view);
    if let Some(after) = view.after.as_deref() {
        let (records, next) = primary_page(ctx, Some(after)).await?;
        let ids = ids_of(&records);
        let cache = ctx.engine.cache().entries_of(&ids).await?;
        let page = page_info(ctx, PageDto::PRIMARY, after, next, "", API_PAGE_ROWS).await?;
        return Ok(state(ctx, records, cache, Some(page)));
    }
    if !paged
        && cursor.is_none()
        && query == ctx.primary.id_prefix()
        && let Some((primary, ids)) = small_table(ctx).await?
    {
        let cache = ctx.engine.cache().entries_of(&ids).await?;
        return Ok(state(ctx, primary, cache, None));
    }
    let from = match cursor {
        Some(c) => c.parse()?,
        None => ScanCursor::START,
    };
    let scanned = ctx.engine.cache().scan_ids(from, &query, PAGE_ROWS).await?;
    let mut ids = Vec::with_capacity(scanned.ids.len() + 1);
    if cursor.is_none() && query != ctx.primary.id_prefix() {
        // A search's first page starts with the id itself, when it is a
        // record on either side (SCAN order would bury it).
        ids.push(query.clone());
    }
    let mut seen = std::collections::HashSet::new();
    ids.extend(scanned.ids);
    ids.retain(|id| seen.insert(id.clone()));
    let (primary, cache) = tokio::join!(
        ctx.primary.records_for(&ids),
        ctx.engine.cache().entries_of(&ids)
    );
    let next = scanned.next.map(|c| c.to_string());
    let start = cursor.unwrap_or_default().to_owned();
    let shown = query
        .strip_prefix(ctx.primary.id_prefix().as_str())
        .unwrap_or(&query);
    let page = page_info(ctx, PageDto::CACHE, &start, next, shown, PAGE_ROWS).await?;
    Ok(state(ctx, primary?, cache?, Some(page)))
}

/// A view's search, as an id prefix: surrounding blanks and the cache's
/// key prefix (someone pasting a whole key) taken off; within the shown
/// table's ids when the cache holds several tables.
fn search_of(ctx: &ServerContext, view: &ViewDto) -> String {
    let query = view.query.as_deref().unwrap_or_default().trim();
    let query = query
        .strip_prefix(ctx.engine.cache().prefix())
        .unwrap_or(query);
    let table = ctx.primary.id_prefix();
    if query.starts_with(&table) {
        query.to_owned()
    } else {
        format!("{table}{query}")
    }
}

/// The primary's records after `after`, at most [`API_PAGE_ROWS`] and
/// [`PAGE_BYTES`], and the id the next page follows (if there is one).
async fn primary_page(
    ctx: &ServerContext,
    after: Option<&str>,
) -> prefetch::Result<(Vec<Record>, Option<String>)> {
    let mut records = ctx.primary.records_after(after, API_PAGE_ROWS + 1).await?;
    let mut bytes = 0;
    let fits = records
        .iter()
        .take_while(|r| {
            bytes += r
                .fields()
                .iter()
                .map(|(k, v)| k.len() + v.len() + 8)
                .sum::<usize>();
            bytes <= PAGE_BYTES
        })
        .count()
        .clamp(1, API_PAGE_ROWS);
    let more = records.len() > fits;
    records.truncate(fits);
    let next = more
        .then(|| records.last().and_then(|r| r.id().map(str::to_owned)))
        .flatten();
    Ok((records, next))
}

async fn page_info(
    ctx: &ServerContext,
    order: &str,
    start: &str,
    next: Option<String>,
    query: &str,
    size: usize,
) -> prefetch::Result<PageDto> {
    let rows = ctx.primary.count().await?;
    Ok(PageDto {
        order: order.to_owned(),
        start: start.to_owned(),
        next,
        query: query.to_owned(),
        size,
        cache_keys: ctx.engine.cache().db_keys().await?,
        primary_rows: rows.rows,
        primary_exact: rows.exact,
        table: None,
    })
}

fn ids_of(records: &[Record]) -> Vec<String> {
    records
        .iter()
        .filter_map(|r| r.id().map(str::to_owned))
        .collect()
}

fn state(
    ctx: &ServerContext,
    primary: Vec<Record>,
    cache: Vec<CachedEntry>,
    page: Option<PageDto>,
) -> DashboardState {
    let now = epoch_ms(SystemTime::now());
    let engine_stats = ctx.engine.stats();
    let source = SourceDto::from(&engine_stats.source);
    let p = &ctx.primary;
    DashboardState {
        primary: primary.into_iter().map(named_fields).collect(),
        source,
        cache: cache
            .into_iter()
            .map(|e| CacheEntryDto::from_entry(e, now))
            .collect(),
        stats: ctx.stats(engine_stats),
        prefix: format!("{}{}", ctx.engine.cache().prefix(), p.id_prefix()),
        ttl_seconds: ctx.engine.cache().ttl_config().as_secs(),
        external: ctx.external,
        server_time_ms: now,
        reconcile: ctx
            .engine
            .last_reconcile()
            .map(|(at, r)| ReconcileResponse::new(&r, at)),
        faults: ctx.faults.is_some(),
        page,
        tables: p.tables(),
        table: None,
        columns: p
            .columns()
            .map(|cols| cols.into_iter().filter(|c| c != ID_FIELD).collect())
            .unwrap_or_default(),
    }
}

/// A primary record's fields as the dashboard keys them: `id` is the
/// record's name (a declared table's key less its prefix), whatever the
/// table's own columns hold.
fn named_fields(record: Record) -> Fields {
    let id = record.id().map(str::to_owned);
    let mut fields = record.into_fields();
    if let Some(id) = id {
        fields.insert(ID_FIELD.to_owned(), id);
    }
    fields
}
