use leptos::prelude::*;

use super::report;
use crate::api::ResetStats;
use crate::live::LiveState;

/// The counters, live, with a reset.
#[component]
pub fn StatsPanel(state: LiveState) -> impl IntoView {
    let reset = ServerAction::<ResetStats>::new();
    report(reset, |_| "Counters reset.".to_owned());
    let s = state.stats;
    let row = move |key: &'static str, label: &'static str, value: Signal<String>| {
        view! { <dt>{label}</dt><dd data-stat=key>{move || value.get()}</dd> }
    };
    let text = |f: fn(&crate::model::StatsDto) -> String| Signal::derive(move || s.with(f));
    view! {
        <section class="panel" id="stats-panel">
            <h2>"Cache stats"</h2>
            <dl id="stats">
                {row("hits", "Hits", text(|s| s.hits.to_string()))}
                {row("misses", "Misses", text(|s| s.misses.to_string()))}
                {row("hit_rate_pct", "Hit rate", text(|s| format!("{}%", s.hit_rate_pct)))}
                {row("prefetched", "Prefetched", text(|s| s.prefetched.to_string()))}
                {row("sync_events_applied", "Sync events applied", text(|s| s.sync_events_applied.to_string()))}
                {row("sync_lag_ms_avg", "Sync lag avg", text(|s| format!("{:.2} ms", s.sync_lag_ms_avg)))}
                {row("sync_lag_ms_p50", "Lag p50 / p99", text(|s| format!("{:.2} / {:.2} ms", s.sync_lag_ms_p50, s.sync_lag_ms_p99)))}
                {row("sync_backlog", "Backlog", text(|s| s.sync_backlog.to_string()))}
                {row("primary_reads_total", "Primary reads", text(|s| s.primary_reads_total.to_string()))}
                {row("primary_read_latency_ms", "Primary read latency", text(|s| format!("{} ms", s.primary_read_latency_ms)))}
            </dl>
            <ActionForm action=reset>
                <button type="submit" class="secondary" id="reset-button">"Reset counters"</button>
            </ActionForm>
        </section>
    }
}
