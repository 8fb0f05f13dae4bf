//! The dashboard's forms, posted by the page itself.
//!
//! Every form targets a server function's endpoint (`S::url()`), the same
//! one the reference API serves, so the page and any API client run the
//! same code on the server. In the browser the page sends the form's own
//! fields as they are (`application/x-www-form-urlencoded`, or a query for
//! `GET` forms) and decodes the JSON reply into `S::Output`, or the
//! `{"error": …}` body into [`AppError`]. This is what `ServerAction` does,
//! minus its typed argument round trip (form → `S` → query string), which
//! cost about 4 KB of WASM per server function. Without WASM the browser
//! submits the form natively and the server redirects back.

use std::marker::PhantomData;

use leptos::prelude::*;
use leptos::server_fn::ServerFn;

use crate::error::AppError;

/// A form that posts to the server function `S`: whether a post is under
/// way, and the last outcome.
pub struct FormPost<S: ServerFn> {
    pending: RwSignal<bool>,
    value: RwSignal<Option<Result<S::Output, AppError>>>,
    _fn: PhantomData<fn() -> S>,
}

impl<S: ServerFn> Clone for FormPost<S> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<S: ServerFn> Copy for FormPost<S> {}

impl<S> FormPost<S>
where
    S: ServerFn + 'static,
    S::Output: Send + Sync + 'static,
{
    pub fn new() -> Self {
        Self {
            pending: RwSignal::new(false),
            value: RwSignal::new(None),
            _fn: PhantomData,
        }
    }

    /// True while a post is awaiting its reply.
    pub fn pending(self) -> ReadSignal<bool> {
        self.pending.read_only()
    }

    /// The last reply: `None` before the first.
    pub fn value(self) -> ReadSignal<Option<Result<S::Output, AppError>>> {
        self.value.read_only()
    }

    /// The submit handler of a form whose `action` is `S::url()`.
    pub fn on_submit(self) -> impl Fn(leptos::ev::SubmitEvent) + 'static
    where
        S::Output: serde::de::DeserializeOwned,
    {
        move |ev: leptos::ev::SubmitEvent| {
            ev.prevent_default();
            #[cfg(feature = "hydrate")]
            {
                use wasm_bindgen::JsCast;
                let Some(form) = ev
                    .target()
                    .and_then(|t| t.dyn_into::<web_sys::HtmlFormElement>().ok())
                else {
                    return;
                };
                self.pending.set(true);
                leptos::task::spawn_local(async move {
                    let reply = browser::submit(S::url(), &form)
                        .await
                        .and_then(|(ok, body)| {
                            if ok {
                                serde_json::from_slice::<S::Output>(&body)
                                    .map_err(|e| AppError::new(format!("Unreadable reply: {e}")))
                            } else {
                                Err(browser::error_of(&body))
                            }
                        });
                    self.value.set(Some(reply));
                    self.pending.set(false);
                });
            }
        }
    }
}

impl<S> Default for FormPost<S>
where
    S: ServerFn + 'static,
    S::Output: Send + Sync + 'static,
{
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(feature = "hydrate")]
mod browser {
    use wasm_bindgen::{JsCast, JsValue};
    use wasm_bindgen_futures::JsFuture;
    use web_sys::{FormData, HtmlFormElement, RequestInit, Response, UrlSearchParams};

    use crate::error::AppError;

    fn failed(e: JsValue) -> AppError {
        let m = e
            .dyn_ref::<js_sys::Error>()
            .map(|e| String::from(e.message()))
            .unwrap_or_else(|| "the request failed".to_owned());
        AppError::new(format!("Server unreachable: {m}"))
    }

    /// Sends `form`'s fields to `url` (as a query for a `GET` form):
    /// whether the status was 2xx, and the body.
    pub async fn submit(url: &str, form: &HtmlFormElement) -> Result<(bool, Vec<u8>), AppError> {
        let data = FormData::new_with_form(form).map_err(failed)?;
        let params = UrlSearchParams::new_with_str_sequence_sequence(&data).map_err(failed)?;
        let init = RequestInit::new();
        let headers = web_sys::Headers::new().map_err(failed)?;
        headers.set("Accept", "application/json").map_err(failed)?;
        init.set_headers(&headers);
        let target = if form.method().eq_ignore_ascii_case("get") {
            init.set_method("GET");
            format!("{url}?{}", String::from(params.to_string()))
        } else {
            init.set_method("POST");
            init.set_body(&params);
            url.to_owned()
        };
        let window = web_sys::window().ok_or_else(|| AppError::new("No window."))?;
        let reply = JsFuture::from(window.fetch_with_str_and_init(&target, &init))
            .await
            .map_err(failed)?;
        let reply: Response = reply.dyn_into().map_err(failed)?;
        let body = JsFuture::from(reply.array_buffer().map_err(failed)?)
            .await
            .map_err(failed)?;
        Ok((reply.ok(), js_sys::Uint8Array::new(&body).to_vec()))
    }

    /// The `{"error": …}` body of a refusal, or a generic message.
    pub fn error_of(body: &[u8]) -> AppError {
        serde_json::from_slice(body)
            .unwrap_or_else(|_| AppError::new(String::from_utf8_lossy(body).into_owned()))
    }
}
