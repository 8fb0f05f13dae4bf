//! The browser half of the live state (feature `hydrate`): the `/events`
//! connection for the page's own view, and the clock that counts TTLs down.

use std::time::Duration;

use leptos::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen::closure::Closure;
use web_sys::{EventSource, MessageEvent};

use super::{Connection, LiveState};
use crate::model::LiveEvent;

/// Opens `/events`. The handlers live as long as the page (the dashboard
/// is never unmounted), so their closures are leaked on purpose.
pub fn connect(state: LiveState) {
    // The feed follows the rows this page shows.
    let view = state
        .page
        .with_untracked(|p| p.as_ref().map(|p| p.view()))
        .unwrap_or_default();
    let url = format!("/events{}", view.query_string());
    let Ok(source) = EventSource::new(&url) else {
        state.connection.set(Connection::Reconnecting);
        retry(state);
        return;
    };

    let on_open = Closure::<dyn FnMut()>::new(move || {
        state.connection.set(Connection::Live);
    });
    let on_message = Closure::<dyn FnMut(MessageEvent)>::new(move |ev: MessageEvent| {
        let Some(text) = ev.data().as_string() else {
            return;
        };
        // from_slice, like server_fn's JSON codec: one deserializer instantiation
        // per type instead of two.
        match serde_json::from_slice::<LiveEvent>(text.as_bytes()) {
            Ok(event) => state.apply(event),
            Err(e) => leptos::logging::warn!("unreadable live event: {e}"),
        }
    });
    let es = source.clone();
    let on_error = Closure::<dyn FnMut()>::new(move || {
        state.connection.set(Connection::Reconnecting);
        // CLOSED means the browser gave up (e.g. a non-SSE reply):
        // reopen ourselves. Otherwise it is already retrying.
        if es.ready_state() == EventSource::CLOSED {
            retry(state);
        }
    });
    source.set_onopen(Some(on_open.as_ref().unchecked_ref()));
    source.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
    source.set_onerror(Some(on_error.as_ref().unchecked_ref()));
    on_open.forget();
    on_message.forget();
    on_error.forget();
}

fn retry(state: LiveState) {
    set_timeout(move || connect(state), Duration::from_secs(1));
}

/// Advances the estimated server clock so TTLs count down, and takes a
/// chart point every second.
pub fn start_clock(state: LiveState) {
    let ticks = std::cell::Cell::new(0u32);
    let tick = move || {
        let offset = state.clock_offset_ms.get_untracked();
        state.now_ms.set(js_sys::Date::now() as i64 + offset);
        ticks.set(ticks.get().wrapping_add(1));
        if ticks.get().is_multiple_of(2) {
            state.sample();
        }
    };
    tick();
    if let Ok(handle) = set_interval_with_handle(tick, Duration::from_millis(500)) {
        on_cleanup(move || handle.clear());
    }
}
