use leptos::prelude::*;

use leptos::server_fn::ServerFn;

use super::{FormPost, id_options, on_submit, report};
use crate::api::{
    AddCategory, ClearCache, DeleteCategory, InvalidateCategory, Reprefetch, UpdateField,
};
use crate::live::LiveState;
use crate::model::{UPDATABLE_FIELDS, fixed};

/// Change one field in the primary; the sync worker rewrites the hash.
#[component]
pub fn UpdatePanel(state: LiveState) -> impl IntoView {
    let update = FormPost::<UpdateField>::new();
    report(update, |r| {
        format!(
            "Primary updated: {}.{} = \"{}\". The sync worker applies it to Redis.",
            r.id, r.field, r.value
        )
    });
    let ids = move || {
        state
            .primary
            .with(|p| p.keys().cloned().collect::<Vec<_>>())
    };
    view! {
        <section class="panel" id="update-panel">
            <h2>"Update a field"</h2>
            <p class="muted">"Writes the primary; the change event reaches Redis within milliseconds."</p>
            <form action=UpdateField::url() method="post" on:submit=on_submit(update)>
                <label for="update-id">"Category"</label>
                <select id="update-id" name="id">{id_options(ids)}</select>
                <label for="update-field">"Field"</label>
                <select id="update-field" name="field">
                    {UPDATABLE_FIELDS.iter().map(|f| view! { <option value=*f>{*f}</option> }).collect_view()}
                </select>
                <label for="update-value">"New value"</label>
                <input id="update-value" name="value" placeholder="new value"/>
                <button type="submit" disabled=move || update.pending().get()>"Apply update"</button>
            </form>
        </section>
    }
}

/// Insert a category into the primary.
#[component]
pub fn AddPanel() -> impl IntoView {
    let add = FormPost::<AddCategory>::new();
    report(add, |r| {
        format!("Added {} to the primary; the sync worker caches it.", r.id)
    });
    view! {
        <section class="panel" id="add-panel">
            <h2>"Add a category"</h2>
            <p class="muted">"Inserts travel the same sync path as updates."</p>
            <form action=AddCategory::url() method="post" on:submit=on_submit(add)>
                <div class="row">
                    <div>
                        <label for="add-id">"ID"</label>
                        <input id="add-id" name="id" value="cat-006"/>
                    </div>
                    <div>
                        <label for="add-name">"Name"</label>
                        <input id="add-name" name="name" value="Seasonal"/>
                    </div>
                </div>
                <div class="row">
                    <div>
                        <label for="add-display-order">"Display order"</label>
                        <input id="add-display-order" name="display_order" value="6" inputmode="numeric"/>
                    </div>
                    <div>
                        <label for="add-featured">"Featured"</label>
                        <select id="add-featured" name="featured">
                            <option value="false">"false"</option>
                            <option value="true">"true"</option>
                        </select>
                    </div>
                </div>
                <label for="add-parent">"Parent id"</label>
                <input id="add-parent" name="parent_id" placeholder="(top level)"/>
                <button type="submit" disabled=move || add.pending().get()>"Add to primary"</button>
            </form>
        </section>
    }
}

/// Remove a category from the primary.
#[component]
pub fn DeletePanel(state: LiveState) -> impl IntoView {
    let delete = FormPost::<DeleteCategory>::new();
    report(delete, |r| {
        format!(
            "Deleted {} from the primary; the sync worker removes its key.",
            r.id
        )
    });
    let ids = move || {
        state
            .primary
            .with(|p| p.keys().cloned().collect::<Vec<_>>())
    };
    view! {
        <section class="panel" id="delete-panel">
            <h2>"Delete a category"</h2>
            <p class="muted">"The delete event removes the cache key."</p>
            <form action=DeleteCategory::url() method="post" on:submit=on_submit(delete)>
                <label for="delete-id">"Category"</label>
                <select id="delete-id" name="id">{id_options(ids)}</select>
                <button type="submit" class="danger" disabled=move || delete.pending().get()>
                    "Delete from primary"
                </button>
            </form>
        </section>
    }
}

/// Simulate sync failures and recover: invalidate one, clear all, re-prefetch.
#[component]
pub fn BreakPanel(state: LiveState) -> impl IntoView {
    let invalidate = FormPost::<InvalidateCategory>::new();
    let clear = FormPost::<ClearCache>::new();
    let reprefetch = FormPost::<Reprefetch>::new();
    report(invalidate, |r| {
        if r.deleted {
            format!("Cache entry for {} deleted; reads of it now miss.", r.id)
        } else {
            format!("No cache entry for {} to delete.", r.id)
        }
    });
    report(clear, |r| {
        format!(
            "Cleared {} cache entries. Reads miss until you re-prefetch.",
            r.deleted
        )
    });
    report(reprefetch, |r| {
        format!(
            "Re-prefetched {} records in {} ms (one primary read, no pause); {} stale keys swept.",
            r.loaded,
            fixed(r.elapsed_ms, 1),
            r.swept
        )
    });
    let cached = move || state.cache.with(|c| c.keys().cloned().collect::<Vec<_>>());
    let busy = move || clear.pending().get() || reprefetch.pending().get();
    view! {
        <section class="panel" id="break-panel">
            <h2>"Break the cache"</h2>
            <p class="muted">"Simulate a broken sync pipeline, then recover from the primary: re-prefetch writes through the version guard while the worker keeps running, so no read misses meanwhile."</p>
            <div id="invalidate-form">
                <form action=InvalidateCategory::url() method="post" on:submit=on_submit(invalidate)>
                    <label for="invalidate-id">"Cached key"</label>
                    <select id="invalidate-id" name="id">{id_options(cached)}</select>
                    <button type="submit" class="secondary" disabled=move || invalidate.pending().get()>
                        "Invalidate one"
                    </button>
                </form>
            </div>
            <div class="row buttons">
                <div id="clear-form">
                    <form action=ClearCache::url() method="post" on:submit=on_submit(clear)>
                        <button type="submit" class="danger" disabled=busy>"Clear all"</button>
                    </form>
                </div>
                <div id="reprefetch-form">
                    <form action=Reprefetch::url() method="post" on:submit=on_submit(reprefetch)>
                        <button type="submit" disabled=busy>"Re-prefetch from primary"</button>
                    </form>
                </div>
            </div>
        </section>
    }
}
