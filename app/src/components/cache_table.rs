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
    let primary = move || key.with_value(|id| state.primary.with(|p| p.get(id).cloned()));
    let cached = move || key.with_value(|id| state.cache.with(|c| c.get(id).cloned()));
    let status = move || key.with_value(|id| state.status_of(id));
    let flashes =
        move || key.with_value(|id| state.changes.with(|c| c.get(id).copied().unwrap_or(0)));
    let value = |fields: Option<Fields>, field: &str| -> String {
        fields
            .and_then(|f| f.get(field).cloned())
            .unwrap_or_else(|| "—".into())
    };
    let ttl = move || match cached() {
        None => "—".to_owned(),
        Some(e) => match state.ttl_left(e.expires_at_ms) {
            -1 => "no TTL".to_owned(),
            s => format!("{s} s"),
        },
    };
    view! {
        <tr
            data-id=id.clone()
            data-status=status
            class=("flash-a", move || flashes() % 2 == 1)
            class=("flash-b", move || { let n = flashes(); n > 0 && n % 2 == 0 })
        >
            <td class="id"><code>{id.clone()}</code></td>
            {CATEGORY_FIELDS[1..]
                .iter()
                .map(|f| {
                    let f = *f;
                    view! { <td class="p" data-field=f>{move || value(primary(), f)}</td> }
                })
                .collect_view()}
            {CATEGORY_FIELDS[1..]
                .iter()
                .map(|f| {
                    let f = *f;
                    let differs = move || match (primary(), cached()) {
                        (Some(p), Some(c)) => p.get(f) != c.fields.get(f),
                        _ => false,
                    };
                    view! {
                        <td class="c" data-field=f class:diff=differs>
                            {move || value(cached().map(|c| c.fields), f)}
                        </td>
                    }
                })
                .collect_view()}
            <td class="ttl">{ttl}</td>
            <td class="status"><span class=move || format!("tag {}", status())>{status}</span></td>
        </tr>
    }
}
