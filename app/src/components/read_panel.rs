use leptos::either::Either;
use leptos::prelude::*;

use leptos::server_fn::ServerFn;

use super::{FormPost, id_options, on_submit, report};
use crate::api::ReadCategory;
use crate::live::LiveState;
use crate::model::fixed;

/// Read one category through the cache: `GET /read`, the same call any API
/// client makes. Without WASM the form still works (it shows the JSON).
#[component]
pub fn ReadPanel(state: LiveState) -> impl IntoView {
    let read = FormPost::<ReadCategory>::new();
    report(read, |r| {
        if r.hit {
            format!(
                "Served {} from Redis in {} ms.",
                r.id,
                fixed(r.redis_latency_ms, 3)
            )
        } else {
            format!(
                "Cache miss for {}: no entry in Redis (the primary was not asked).",
                r.id
            )
        }
    });
    let result = move || {
        read.value().get().and_then(Result::ok).map(|r| {
            let badge = if r.hit { "badge hit" } else { "badge miss" };
            let fields = r.record.clone().unwrap_or_default();
            view! {
                <div id="read-result" data-hit=r.hit.to_string()>
                    <p>
                        <span class=badge>{if r.hit { "cache hit" } else { "cache miss" }}</span>
                        " Redis: " <strong id="read-latency">{format!("{} ms", fixed(r.redis_latency_ms, 3))}</strong>
                        " · TTL: " <strong id="read-ttl">{r.ttl_remaining}</strong> " s"
                    </p>
                    {if r.hit {
                        Either::Left(view! {
                            <dl id="read-fields">
                                {std::iter::once("id".to_owned())
                                    .chain(state.columns.get_untracked())
                                    .map(|f| {
                                        let v = if f == "id" {
                                            fields.get(&f).cloned().unwrap_or_else(|| r.id.clone())
                                        } else {
                                            crate::model::field_of(&fields, &f).unwrap_or_default()
                                        };
                                        view! { <dt>{f.clone()}</dt><dd data-field=f>{v}</dd> }
                                    })
                                    .collect_view()}
                            </dl>
                        })
                    } else {
                        Either::Right(view! {
                            <p class="muted">
                                "No entry in Redis for " <code>{r.id.clone()}</code>
                                ". A prefetch cache never falls back to the primary: a miss means the sync pipeline lost an event or the key was invalidated. Re-prefetch to recover."
                            </p>
                        })
                    }}
                </div>
            }
        })
    };
    view! {
        <section class="panel" id="read-panel">
            <h2>"Read a category"</h2>
            <p class="muted">"One HGETALL + TTL round trip to Redis; never the primary."</p>
            <form id="read-form" action=ReadCategory::url() method="get" on:submit=on_submit(read)>
                <label for="read-id">"Category"</label>
                <select id="read-id" name="id">{id_options(move || state.all_ids())}</select>
                <button type="submit" disabled=move || read.pending().get()>"Read from cache"</button>
            </form>
            {result}
        </section>
    }
}
