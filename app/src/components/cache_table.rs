use leptos::prelude::*;

use crate::live::LiveState;
use crate::model::{CATEGORY_FIELDS, Fields};

/// Primary and cache side by side, one row per id, live.
#[component]
pub fn CacheTable(state: LiveState) -> impl IntoView {
    let counts = move || {
        let ids = state.all_ids();
        let mut by_status = [0usize; 4];
        for id in &ids {
            match state.status_of(id) {
                "ok" => by_status[0] += 1,
                "stale" => by_status[1] += 1,
                "missing" => by_status[2] += 1,
                "orphaned" => by_status[3] += 1,
                _ => {}
            }
        }
        by_status
    };
    view! {
        <section class="panel wide" id="state-panel">
            <h2>"Cache vs primary"</h2>
            <p class="summary" id="state-summary">
                <span class="tag ok">{move || counts()[0]} " in sync"</span>
                <span class="tag stale">{move || counts()[1]} " stale"</span>
                <span class="tag missing">{move || counts()[2]} " missing from cache"</span>
                <span class="tag orphaned">{move || counts()[3]} " orphaned in cache"</span>
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
                        <For each=move || state.all_ids() key=|id| id.clone() let:id>
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
    let status = move || key.with_value(|id| state.status_of(id));
    let flashes =
        move || key.with_value(|id| state.changes.with(|c| c.get(id).copied().unwrap_or(0)));
    // One reactive boundary for all the row's cells (rather than one per
    // cell) keeps the WASM small; a rebuild only patches changed text.
    let cells = move || {
        key.with_value(|id| {
            let primary = state.primary.with(|p| p.get(id).cloned());
            let cached = state.cache.with(|c| c.get(id).cloned());
            let ttl = match &cached {
                None => "—".to_owned(),
                Some(e) => match state.ttl_left(e.expires_at_ms) {
                    -1 => "no TTL".to_owned(),
                    s => format!("{s} s"),
                },
            };
            let cached = cached.map(|c| c.fields);
            let value = |fields: &Option<Fields>, field: &str| -> String {
                fields
                    .as_ref()
                    .and_then(|f| f.get(field).cloned())
                    .unwrap_or_else(|| "—".into())
            };
            let primary_cells = CATEGORY_FIELDS[1..]
                .iter()
                .map(|f| view! { <td class="p" data-field=*f>{value(&primary, f)}</td> })
                .collect_view();
            let cache_cells = CATEGORY_FIELDS[1..]
                .iter()
                .map(|f| {
                    let differs = match (&primary, &cached) {
                        (Some(p), Some(c)) => p.get(*f) != c.get(*f),
                        _ => false,
                    };
                    view! { <td class="c" data-field=*f class:diff=differs>{value(&cached, f)}</td> }
                })
                .collect_view();
            view! { {primary_cells} {cache_cells} <td class="ttl">{ttl}</td> }
        })
    };
    view! {
        <tr
            data-id=id.clone()
            data-status=status
            class=("flash-a", move || flashes() % 2 == 1)
            class=("flash-b", move || { let n = flashes(); n > 0 && n % 2 == 0 })
        >
            <td class="id"><code>{key.get_value()}</code></td>
            {cells}
            <td class="status"><span class=move || format!("tag {}", status())>{status}</span></td>
        </tr>
    }
}
