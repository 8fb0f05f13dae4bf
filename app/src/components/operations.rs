use leptos::either::Either;
use leptos::prelude::*;
use leptos::server_fn::ServerFn;

use super::{FormPost, on_submit, report};
use crate::api::{InjectFault, Reconcile, ReplayDeadLetters, WorkerControl};
use crate::live::{CHART_POINTS, LiveState};
use crate::model::fixed;

/// The last reconciliation, live, with one-click checks and repairs.
#[component]
pub fn DriftPanel(state: LiveState) -> impl IntoView {
    let check = FormPost::<Reconcile>::new();
    report(check, |r| {
        let drift = r.totals.drift();
        if r.repaired > 0 {
            format!("Repaired {} keys ({drift} had drifted).", r.repaired)
        } else if drift == 0 {
            format!("No drift: {} records match the primary.", r.checked)
        } else {
            format!("{drift} keys drifted from the primary; repair fixes them.")
        }
    });
    let kinds = move || {
        state.reconcile.with(|r| {
            let Some(r) = r else {
                return Either::Left(view! { <p class="muted">"Not reconciled yet."</p> });
            };
            let t = &r.totals;
            let rows = [
                ("missing", "missing", &r.missing, t.missing),
                ("orphaned", "orphaned", &r.orphaned, t.orphaned),
                ("stale", "stale (an event was lost)", &r.stale, t.stale),
                ("changed_outside", "changed outside", &r.changed_outside, t.changed_outside),
                ("in_flight", "in flight", &r.in_flight, t.in_flight),
            ]
            .into_iter()
            .map(|(key, label, ids, total)| {
                let shown: Vec<String> = ids.iter().take(8).cloned().collect();
                let more = total.saturating_sub(shown.len());
                view! {
                    <dt>{label}</dt>
                    <dd data-drift=key data-count=total>
                        {total}
                        {(!shown.is_empty()).then(|| format!(": {}", shown.join(", ")))}
                        {(more > 0).then(|| format!(" and {more} more"))}
                    </dd>
                }
            })
            .collect_view();
            Either::Right(view! {
                <p class="muted" id="drift-summary">
                    {r.checked} " checked in " {fixed(r.elapsed_ms, 1)} " ms; " {r.repaired} " repaired"
                </p>
                <dl id="drift">{rows}</dl>
            })
        })
    };
    view! {
        <section class="panel" id="drift-panel">
            <h2>"Drift"</h2>
            <p class="muted">"Reconciliation reads a fresh snapshot of the primary and compares every key; repairs go through the version guard."</p>
            {kinds}
            <div class="row buttons">
                <form action=Reconcile::url() method="post" on:submit=on_submit(check)>
                    <button type="submit" class="secondary" id="reconcile-button" disabled=move || check.pending().get()>"Reconcile"</button>
                </form>
                <form action=Reconcile::url() method="post" on:submit=on_submit(check)>
                    <input type="hidden" name="repair" value="true"/>
                    <button type="submit" id="repair-button" disabled=move || check.pending().get()>"Repair"</button>
                </form>
            </div>
        </section>
    }
}

/// The change feed's dead letters (replicas of a pipeline): how many, the
/// last reason (both in the source details), and a replay.
#[component]
pub fn DeadLetterPanel(state: LiveState) -> impl IntoView {
    let replay = FormPost::<ReplayDeadLetters>::new();
    report(replay, |r| match r.replayed {
        0 => "No dead letters to replay.".to_owned(),
        1 => "Replayed 1 dead letter into the feed.".to_owned(),
        n => format!("Replayed {n} dead letters into the feed."),
    });
    let detail = move |name: &'static str| {
        move || {
            state.source.with(|s| {
                s.details
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
            })
        }
    };
    let count = detail("dead letters");
    let last = detail("last dead letter");
    view! {
        <section class="panel" id="dead-letter-panel">
            <h2>"Dead letters"</h2>
            <p class="muted">"Feed entries that could not be applied (undecodable, or delivered too often) wait here with their reason. A replay puts them back; each applies only where it is newer."</p>
            <p id="dead-letter-count">
                {move || match count() {
                    Some(n) => format!("{n} in the feed's dead-letter stream."),
                    None => "No change feed: start replicas with --pipeline.".to_owned(),
                }}
            </p>
            {move || last().map(|l| view! { <p class="muted" id="dead-letter-last">"Last: " {l}</p> })}
            <form action=ReplayDeadLetters::url() method="post" on:submit=on_submit(replay)>
                <button type="submit" class="secondary" id="replay-button" disabled=move || replay.pending().get() || count().is_none()>"Replay"</button>
            </form>
        </section>
    }
}

/// Faults on purpose: what the version guard and reconciliation do with them.
#[component]
pub fn FaultPanel(state: LiveState) -> impl IntoView {
    let fault = FormPost::<InjectFault>::new();
    let worker = FormPost::<WorkerControl>::new();
    report(fault, |r| {
        format!(
            "Fault queued: {}. The next changes show what it does.",
            r.kind
        )
    });
    report(worker, |r| format!("Sync worker {}.", r.worker.as_str()));
    let button = move |kind: &'static str,
                       count: &'static str,
                       ms: &'static str,
                       label: &'static str| {
        view! {
            <form action=InjectFault::url() method="post" on:submit=on_submit(fault)>
                <input type="hidden" name="kind" value=kind/>
                <input type="hidden" name="count" value=count/>
                <input type="hidden" name="ms" value=ms/>
                <button type="submit" class="secondary" data-fault=kind disabled=move || !state.faults.get()>{label}</button>
            </form>
        }
    };
    let control = move |action: &'static str, label: &'static str| {
        view! {
            <form action=WorkerControl::url() method="post" on:submit=on_submit(worker)>
                <input type="hidden" name="action" value=action/>
                <button type="submit" class="secondary" data-worker=action>{label}</button>
            </form>
        }
    };
    view! {
        <section class="panel" id="fault-panel">
            <h2>"Break the pipeline"</h2>
            <p class="muted">"Drop, duplicate, reorder or delay the next changes, or cut the worker off Redis. Duplicates and reorders change nothing: the version guard refuses them."</p>
            <div class="row buttons">
                {button("drop", "1", "1000", "Drop next")}
                {button("duplicate", "1", "1000", "Duplicate next")}
                {button("reorder", "2", "1000", "Reorder next 2")}
                {button("delay", "1", "2000", "Delay next 2 s")}
                {button("outage", "1", "3000", "Cut Redis 3 s")}
            </div>
            <div class="row buttons">
                {control("pause", "Stop worker")}
                {control("resume", "Start worker")}
            </div>
        </section>
    }
}

/// Sync lag, throughput and read latency over the last minute, drawn from
/// the live feed as inline SVG.
#[component]
pub fn ChartPanel(state: LiveState) -> impl IntoView {
    const W: f64 = 300.0;
    const H: f64 = 70.0;
    let line = move |values: &[f64], top: f64| -> String {
        let step = W / (CHART_POINTS.saturating_sub(1)).max(1) as f64;
        let offset = (CHART_POINTS - values.len()) as f64 * step;
        let mut out = String::new();
        for (i, v) in values.iter().enumerate() {
            let x = offset + i as f64 * step;
            let y = H - (v / top).min(1.0) * H;
            out.push_str(&fixed(x, 1));
            out.push(',');
            out.push_str(&fixed(y, 1));
            out.push(' ');
        }
        out
    };
    let lag = move || {
        state.samples.with(|s| {
            let p50: Vec<f64> = s.iter().map(|p| p.lag_p50).collect();
            let p99: Vec<f64> = s.iter().map(|p| p.lag_p99).collect();
            let read: Vec<f64> = s.iter().map(|p| p.read_p99).collect();
            let top = p99.iter().chain(&read).fold(1.0f64, |a, b| a.max(*b));
            (line(&p50, top), line(&p99, top), line(&read, top), top)
        })
    };
    let rate = move || {
        state.samples.with(|s| {
            let v: Vec<f64> = s.iter().map(|p| p.applied_per_s).collect();
            let top = v.iter().fold(1.0f64, |a, b| a.max(*b));
            (line(&v, top), top, v.last().copied().unwrap_or(0.0))
        })
    };
    view! {
        <section class="panel wide" id="chart-panel">
            <h2>"Last minute"</h2>
            <div class="charts">
                <figure>
                    <svg id="lag-chart" viewBox="0 0 300 70" preserveAspectRatio="none" role="img" aria-label="sync lag and read latency">
                        <polyline class="p99" points=move || lag().1/>
                        <polyline class="p50" points=move || lag().0/>
                        <polyline class="read" points=move || lag().2/>
                    </svg>
                    <figcaption>
                        "sync lag p50 / " <span class="p99">"p99"</span> " and " <span class="read">"read p99"</span>
                        " (ms, top " {move || fixed(lag().3, 2)} ")"
                    </figcaption>
                </figure>
                <figure>
                    <svg id="rate-chart" viewBox="0 0 300 70" preserveAspectRatio="none" role="img" aria-label="changes applied per second">
                        <polyline class="rate" points=move || rate().0/>
                    </svg>
                    <figcaption>
                        "changes applied per second (now " <span id="rate-now">{move || fixed(rate().2, 0)}</span>
                        ", top " {move || fixed(rate().1, 0)} ")"
                    </figcaption>
                </figure>
            </div>
        </section>
    }
}
