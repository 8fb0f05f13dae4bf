use leptos::prelude::*;

use crate::live::{LiveState, RowStatus};
use crate::model::{CacheEntryDto, Fields, PageDto};

/// Primary and cache side by side, one row per id, live.
///
/// Derived state is computed once per change: the id list and the status
/// counts are memos, and each row reads its own id through a memo that
/// only notifies when that row changed, so one feed event patches one row
/// instead of re-rendering them all.
#[component]
pub fn CacheTable(state: LiveState) -> impl IntoView {
    let ids = Memo::new(move |_| state.all_ids());
    let counts = Memo::new(move |_| {
        let mut by_status = [0usize; 4];
        state.primary.with(|p| {
            state.cache.with(|c| {
                ids.with(|ids| {
                    for id in ids {
                        let slot = match RowStatus::of(p.get(id), c.get(id).map(|e| &e.fields)) {
                            RowStatus::Ok => 0,
                            RowStatus::Stale => 1,
                            RowStatus::Missing => 2,
                            RowStatus::Orphaned => 3,
                            RowStatus::Gone => continue,
                        };
                        by_status[slot] += 1;
                    }
                })
            })
        });
        by_status
    });
    view! {
        <section class="panel wide" id="state-panel">
            <h2>"Cache vs primary"</h2>
            <TablePicker state=state/>
            <p class="summary" id="state-summary">
                <span class="tag ok">{move || counts.get()[0]} " in sync"</span>
                <span class="tag stale">{move || counts.get()[1]} " stale"</span>
                <span class="tag missing">{move || counts.get()[2]} " missing from cache"</span>
                <span class="tag orphaned">{move || counts.get()[3]} " orphaned in cache"</span>
                <span class="muted" id="totals">{move || totals(state)} {move || pattern(state)}</span>
            </p>
            {move || state.page.get().map(|page| view! { <Pager page=page/> })}
            <div class="table-scroll">
                <table id="state-table">
                    <thead>
                        <tr>
                            <th rowspan="2">"id"</th>
                            <th colspan=move || state.columns.with(Vec::len) class="group">"Primary (source of truth)"</th>
                            <th colspan=move || state.columns.with(Vec::len) class="group">"Redis cache"</th>
                            <th rowspan="2">"TTL"</th>
                            <th rowspan="2">"state"</th>
                        </tr>
                        <tr>
                            {move || state.columns.get().into_iter().map(|f| view! { <th class="p">{f}</th> }).collect_view()}
                            {move || state.columns.get().into_iter().map(|f| view! { <th class="c">{f}</th> }).collect_view()}
                        </tr>
                    </thead>
                    <tbody>
                        <For each=move || ids.get() key=|id| id.clone() let:id>
                            <CacheRow state=state id=id/>
                        </For>
                    </tbody>
                </table>
            </div>
        </section>
    }
}

/// The table's size: counted rows when it is shown whole, else the page's
/// rows and the totals from counters.
fn totals(state: LiveState) -> String {
    let (primary, cache) = (
        state.primary.with(|p| p.len()),
        state.cache.with(|c| c.len()),
    );
    state.page.with(|page| match page {
        None => format!("{primary} in primary · {cache} in cache"),
        Some(p) => format!(
            "{} rows on this page · {}{} rows in primary · {} keys in Redis (whole database)",
            state.all_ids().len(),
            if p.primary_exact { "" } else { "about " },
            thousands(p.primary_rows),
            thousands(p.cache_keys),
        ),
    })
}

/// The keys counted, when the table is shown whole: ` (prefix*)`.
fn pattern(state: LiveState) -> impl IntoView {
    state.page.with(|p| p.is_none()).then(|| {
        view! { " (" <code>{move || state.prefix.get()}</code> "*)" }
    })
}

/// `1234567` as `1,234,567`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Paging and search for a large table: plain links and a `GET` form, so
/// they work before (and without) the page's script.
#[component]
fn Pager(page: PageDto) -> impl IntoView {
    let next = page.next_view().map(|v| format!("/{}", v.query_string()));
    let first = format!(
        "/{}",
        crate::model::ViewDto {
            table: page.table.clone(),
            ..Default::default()
        }
        .query_string()
    );
    let searching = !page.query.is_empty();
    let what = if page.order == PageDto::PRIMARY {
        "In the primary's key order".to_owned()
    } else if searching {
        format!("Cached ids starting with \u{201c}{}\u{201d}", page.query)
    } else {
        "Cached keys, in Redis SCAN order".to_owned()
    };
    view! {
        <nav class="pager" id="pager" aria-label="Pages of the table"
            data-order=page.order.clone() data-start=page.start.clone()>
            <form method="get" action="/" role="search" class="search">
                {page.table.clone().map(|t| view! { <input type="hidden" name="table" value=t/> })}
                <input type="search" name="q" id="search" value=page.query.clone()
                    placeholder="id or key prefix" aria-label="Search by id or key prefix"/>
                <button type="submit">"Search"</button>
            </form>
            <span class="muted where">{what}</span>
            <span class="links">
                {(searching || !page.start.is_empty()).then(|| view! {
                    <a href=first data-page="first">{if searching { "Clear search" } else { "First page" }}</a>
                })}
                {match next {
                    Some(href) => view! { <a href=href rel="next" data-page="next">"Next page \u{2192}"</a> }.into_any(),
                    None => view! { <span class="muted" data-page="end">"Last page"</span> }.into_any(),
                }}
            </span>
        </nav>
    }
}

#[component]
fn CacheRow(state: LiveState, id: String) -> impl IntoView {
    let key = StoredValue::new(id.clone());
    // This row's two sides; notifies only when they change.
    let row = Memo::new(move |_| {
        key.with_value(|id| {
            let primary: Option<Fields> = state.primary.with(|p| p.get(id).cloned());
            let cached: Option<CacheEntryDto> = state.cache.with(|c| c.get(id).cloned());
            (primary, cached)
        })
    });
    let status = Memo::new(move |_| {
        row.with(|(p, c)| RowStatus::of(p.as_ref(), c.as_ref().map(|e| &e.fields)))
    });
    let flashes = Memo::new(move |_| {
        key.with_value(|id| state.changes.with(|c| c.get(id).copied().unwrap_or(0)))
    });
    let expires = Memo::new(move |_| row.with(|(_, c)| c.as_ref().map(|e| e.expires_at_ms)));
    // One reactive boundary for the row's field cells (rather than one per
    // cell) keeps the WASM small; a rebuild only patches changed text.
    let cells = move || {
        let columns = state.columns.get();
        row.with(|(primary, cached)| {
            let cached = cached.as_ref().map(|c| &c.fields);
            let value = |fields: Option<&Fields>, field: &str| -> String {
                fields
                    .and_then(|f| crate::model::field_of(f, field))
                    .unwrap_or_else(|| "—".into())
            };
            let primary_cells = columns
                .iter()
                .map(|f| view! { <td class="p" data-field=f.clone()>{value(primary.as_ref(), f)}</td> })
                .collect_view();
            let cache_cells = columns
                .iter()
                .map(|f| {
                    let differs = match (primary, cached) {
                        (Some(p), Some(c)) => {
                            crate::model::field_of(p, f) != crate::model::field_of(c, f)
                        }
                        _ => false,
                    };
                    view! { <td class="c" data-field=f.clone() class:diff=differs>{value(cached, f)}</td> }
                })
                .collect_view();
            view! { {primary_cells} {cache_cells} }
        })
    };
    // The TTL counts down with the clock: only this cell follows it.
    let ttl = move || match expires.get() {
        None => "—".to_owned(),
        Some(at) => match state.ttl_left(at) {
            -1 => "no TTL".to_owned(),
            s => format!("{s} s"),
        },
    };
    view! {
        <tr
            data-id=id.clone()
            data-status=move || status.get().as_str()
            class=("flash-a", move || flashes.get() % 2 == 1)
            class=("flash-b", move || { let n = flashes.get(); n > 0 && n % 2 == 0 })
        >
            <td class="id"><code>{key.get_value()}</code></td>
            {cells}
            <td class="ttl">{ttl}</td>
            <td class="status"><span class=move || format!("tag {}", status.get().as_str())>{move || status.get().as_str()}</span></td>
        </tr>
    }
}

/// The tables the cache holds, when several: one link each (a plain link,
/// so it works before the WASM), the one shown marked.
#[component]
fn TablePicker(state: LiveState) -> impl IntoView {
    move || {
        let (tables, shown) = state.tables.get();
        let shown = shown.or_else(|| tables.first().cloned());
        (!tables.is_empty()).then(|| {
            let links = tables
                .into_iter()
                .map(|t| {
                    let href = format!(
                        "/{}",
                        crate::model::ViewDto {
                            table: Some(t.clone()),
                            ..Default::default()
                        }
                        .query_string()
                    );
                    let current = shown.as_deref() == Some(t.as_str());
                    let label = t.clone();
                    view! {
                        <a href=href data-table=t class:current=current
                           aria-current=current.then_some("page")>{label}</a>
                    }
                })
                .collect_view();
            view! { <nav id="tables" class="tables" aria-label="tables">{links}</nav> }
        })
    }
}
