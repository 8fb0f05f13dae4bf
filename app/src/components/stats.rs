use leptos::prelude::*;

use leptos::server_fn::ServerFn;

use super::{FormPost, on_submit, report};
use crate::api::ResetStats;
use crate::live::LiveState;
use crate::model::fixed;

/// The counters, live, with a reset.
#[component]
pub fn StatsPanel(state: LiveState) -> impl IntoView {
    let reset = FormPost::<ResetStats>::new();
    report(reset, |_| "Counters reset.".to_owned());
    // One reactive boundary for the whole list keeps the WASM small.
    let rows = move || {
        state.stats.with(|s| {
            stat_rows(s)
                .into_iter()
                .map(|(key, label, value)| view! { <dt>{label}</dt><dd data-stat=key>{value}</dd> })
                .collect_view()
        })
    };
    // With several tables, each one's reads and changes.
    let tables = move || {
        state.stats.with(|s| {
            (!s.tables.is_empty()).then(|| {
                let rows = s
                    .tables
                    .iter()
                    .map(|t| {
                        view! {
                            <tr data-table=t.name.clone()>
                                <th scope="row">{t.name.clone()}</th>
                                <td>{t.hits}</td><td>{t.misses}</td><td>{t.applied}</td>
                            </tr>
                        }
                    })
                    .collect_view();
                view! {
                    <table id="table-stats" class="table-stats">
                        <thead><tr><th>"Table"</th><th>"Hits"</th><th>"Misses"</th><th>"Applied"</th></tr></thead>
                        <tbody>{rows}</tbody>
                    </table>
                }
            })
        })
    };
    view! {
        <section class="panel" id="stats-panel">
            <h2>"Cache stats"</h2>
            <dl id="stats">{rows}</dl>
            {tables}
            <form action=ResetStats::url() method="post" on:submit=on_submit(reset)>
                <button type="submit" class="secondary" id="reset-button">"Reset counters"</button>
            </form>
        </section>
    }
}

/// Every counter the panel shows: its key (for tests and styles), label
/// and value.
fn stat_rows(s: &crate::model::StatsDto) -> Vec<(&'static str, &'static str, String)> {
    let mut rows = Vec::from(cache_rows(s));
    rows.splice(7..7, consistency_rows(s));
    rows
}

/// The reads', the worker's and the resources' counters.
fn cache_rows(s: &crate::model::StatsDto) -> [(&'static str, &'static str, String); 17] {
    [
        ("hits", "Hits", s.hits.to_string()),
        ("misses", "Misses", s.misses.to_string()),
        (
            "hit_rate_pct",
            "Hit rate",
            format!("{}%", fixed(s.hit_rate_pct, 1)),
        ),
        ("prefetched", "Prefetched", s.prefetched.to_string()),
        (
            "sync_events_applied",
            "Sync events applied",
            s.sync_events_applied.to_string(),
        ),
        (
            "sync_lag_ms_avg",
            "Sync lag avg",
            format!("{} ms", fixed(s.sync_lag_ms_avg, 2)),
        ),
        (
            "sync_lag_ms_p50",
            "Lag p50 / p99",
            format!(
                "{} / {} ms",
                fixed(s.sync_lag_ms_p50, 2),
                fixed(s.sync_lag_ms_p99, 2)
            ),
        ),
        ("sync_backlog", "Backlog", s.sync_backlog.to_string()),
        (
            "sync_events_stale",
            "Refused as stale",
            s.sync_events_stale.to_string(),
        ),
        ("reprefetches", "Re-prefetches", s.reprefetches.to_string()),
        ("self_heals", "Self-heals", s.self_heals.to_string()),
        (
            "memory",
            "Redis memory used / budget",
            if s.memory_budget_bytes == 0 {
                format!(
                    "{} MB / no limit",
                    fixed(s.memory_used_bytes as f64 / 1e6, 1)
                )
            } else {
                format!(
                    "{} / {} MB",
                    fixed(s.memory_used_bytes as f64 / 1e6, 1),
                    fixed(s.memory_budget_bytes as f64 / 1e6, 1)
                )
            },
        ),
        (
            "sync_oom_retries",
            "OOM retries",
            s.sync_oom_retries.to_string(),
        ),
        (
            "primary_reads_total",
            "Primary reads",
            s.primary_reads_total.to_string(),
        ),
        (
            "primary_read_latency_ms",
            "Primary read latency",
            format!("{} ms", s.primary_read_latency_ms),
        ),
        ("ttl_renewal", "TTL renewal", s.ttl_renewal.clone()),
        ("refills", "Refills", s.refills.to_string()),
    ]
}

/// How consistent the cache is: changes visible within 10 ms / 100 ms /
/// 1 s, stale reads, misses by why, keys restored.
fn consistency_rows(s: &crate::model::StatsDto) -> [(&'static str, &'static str, String); 4] {
    [
        (
            "visible_within",
            "Visible in 10 ms / 100 ms / 1 s",
            format!(
                "{} / {} / {} %",
                share(s.visible_10ms_pct),
                share(s.visible_100ms_pct),
                share(s.visible_1s_pct)
            ),
        ),
        (
            "stale_read_pct",
            "Stale reads",
            format!("{}% ({})", fixed(s.stale_read_pct, 2), s.stale_reads),
        ),
        (
            "misses_by_kind",
            "Misses deleted / absent / lost",
            format!(
                "{} / {} / {}",
                s.misses_deleted, s.misses_absent, s.misses_lost
            ),
        ),
        (
            "lost_restored",
            "Lost keys restored",
            s.lost_restored.to_string(),
        ),
    ]
}

/// A share in percent, short enough for a narrow card: `100` when whole,
/// else one decimal (`99.5`).
fn share(pct: f64) -> String {
    if pct >= 99.95 {
        "100".to_owned()
    } else {
        fixed(pct, 1)
    }
}
