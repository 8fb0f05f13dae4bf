//! The WASM entry point: hydrates the server-rendered page. Everything else
//! lives in `app`.
#![cfg(target_arch = "wasm32")]

use wasm_bindgen::prelude::wasm_bindgen;

/// Called by the hydration script once the module has loaded.
#[wasm_bindgen]
pub fn hydrate() {
    // Readable panics in development; release builds abort without the
    // formatting machinery this would pull in.
    #[cfg(debug_assertions)]
    console_error_panic_hook::set_once();
    leptos::mount::hydrate_body(app::App);
}
