use leptos::prelude::*;

use crate::live::{LiveState, RowStatus};
use crate::model::{CATEGORY_FIELDS, CacheEntryDto, Fields};

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
            <p class="summary" id="state-summary">
                <span class="tag ok">{move || counts.get()[0]} " in sync"</span>
                <span class="tag stale">{move || counts.get()[1]} " stale"</span>
                <span class="tag missing">{move || counts.get()[2]} " missing from cache"</span>
                <span class="tag orphaned">{move || counts.get()[3]} " orphaned in cache"</span>
                <span class="muted">
                    {move || state.primary.with(|p| p.len())} " in primary · "
                    {move || state.cache.with(|c| c.len())} " in cache (" <code>{move || state.prefix.get()}</code> "*)"
                </span>
            </p>
            <div class="table-scroll">
                <table id="state-table">
                    <thead>
                        <tr>
                            <th rowspan="2">"id"</th>
                            <th colspan="4" class="group">"Primary (source of truth)"</th>
                            <th colspan="4" class="group">"Redis cache"</th>
                            <th rowspan="2">"TTL"</th>
                            <th rowspan="2">"state"</th>
                        </tr>
                        <tr>
                            {CATEGORY_FIELDS[1..].iter().map(|f| view! { <th class="p">{*f}</th> }).collect_view()}
                            {CATEGORY_FIELDS[1..].iter().map(|f| view! { <th class="c">{*f}</th> }).collect_view()}
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
        row.with(|(primary, cached)| {
            let cached = cached.as_ref().map(|c| &c.fields);
            let value = |fields: Option<&Fields>, field: &str| -> String {
                fields
                    .and_then(|f| f.get(field).cloned())
                    .unwrap_or_else(|| "—".into())
            };
            let primary_cells = CATEGORY_FIELDS[1..]
                .iter()
                .map(|f| view! { <td class="p" data-field=*f>{value(primary.as_ref(), f)}</td> })
                .collect_view();
            let cache_cells = CATEGORY_FIELDS[1..]
                .iter()
                .map(|f| {
                    let differs = match (primary, cached) {
                        (Some(p), Some(c)) => p.get(*f) != c.get(*f),
                        _ => false,
                    };
                    view! { <td class="c" data-field=*f class:diff=differs>{value(cached, f)}</td> }
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
