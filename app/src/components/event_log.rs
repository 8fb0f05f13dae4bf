use leptos::prelude::*;

use crate::live::LiveState;

/// Everything the live feed reported, newest first.
#[component]
pub fn EventLog(state: LiveState) -> impl IntoView {
    let clock = |ms: i64| {
        let secs = ms.div_euclid(1000);
        format!(
            "{:02}:{:02}:{:02}.{:03}",
            secs / 3600 % 24,
            secs / 60 % 60,
            secs % 60,
            ms.rem_euclid(1000)
        )
    };
    view! {
        <section class="panel wide" id="log-panel">
            <h2>"Live event log"</h2>
            <div class="table-scroll log">
                <table id="event-log">
                    <thead>
                        <tr><th>"time (UTC)"</th><th>"source"</th><th>"op"</th><th>"id"</th><th>"detail"</th></tr>
                    </thead>
                    <tbody>
                        <For each=move || state.log.get() key=|e| e.n let:e>
                            <tr data-source=e.source data-op=e.op data-id=e.id.clone()>
                                <td class="muted">{clock(e.at_ms)}</td>
                                <td><span class=format!("src {}", e.source)>{e.source}</span></td>
                                <td>{e.op}</td>
                                <td><code>{e.id.clone()}</code></td>
                                <td class="muted">{e.detail.clone()}</td>
                            </tr>
                        </For>
                    </tbody>
                </table>
            </div>
        </section>
    }
}
