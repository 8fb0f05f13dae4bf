//! Page weight and the UI latency from the browser run.

use super::*;

pub fn gzip_len(path: &Path) -> Option<u64> {
    let out = Command::new("gzip")
        .args(["-9", "-c"])
        .arg(path)
        .output()
        .ok()?;
    Some(out.stdout.len() as u64)
}

pub fn page_weight(report: &mut Report) -> Result<()> {
    println!("\n== page weight");
    let pkg = super::common::site_root().join("pkg");
    let mut total_raw = 0;
    let mut total_gz = 0;
    for ext in ["wasm", "js", "css"] {
        let path = pkg.join(format!("{}.{ext}", app::OUTPUT_NAME));
        let raw = std::fs::metadata(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .len();
        let gz = gzip_len(&path).unwrap_or(0);
        total_raw += raw;
        total_gz += gz;
        report.row(
            "page",
            format!("{}.{ext}", app::OUTPUT_NAME),
            format!(
                "{:.1} KB raw, {:.1} KB gzip",
                raw as f64 / 1000.0,
                gz as f64 / 1000.0
            ),
            "–",
            None,
            "–",
            None,
        );
    }
    report.row(
        "page",
        "total loaded by the page (wasm + js + css)",
        format!(
            "{:.1} KB raw, {:.1} KB gzip",
            total_raw as f64 / 1000.0,
            total_gz as f64 / 1000.0
        ),
        "–",
        None,
        "≤ 250 KB gzip",
        Some(total_gz <= 250_000),
    );
    report.data(
        "page_weight",
        serde_json::json!({"raw": total_raw, "gzip": total_gz}),
    );
    Ok(())
}

/// A JSON file the Playwright run left in end2end/test-results.
fn browser_result(name: &str) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(PathBuf::from("end2end/test-results").join(name)).ok()?;
    serde_json::from_str(&text).ok()
}

pub fn ui_latency(report: &mut Report) {
    let Some(v) = browser_result("ui-latency.json") else {
        return;
    };
    let ms = |side: &str, q: &str| v[side][q].as_f64().unwrap_or(f64::NAN);
    let ratio = ms("cache_column_ms", "p50") / ms("fetch_round_trip_ms", "p50");
    report.row(
        "ui",
        "mutation request → DOM, cache column (Playwright in Chromium, release build, 50 updates)",
        format!(
            "p50 {} ms, p95 {} ms (primary column p50 {} ms)",
            fmt_num(ms("cache_column_ms", "p50")),
            fmt_num(ms("cache_column_ms", "p95")),
            fmt_num(ms("primary_column_ms", "p50"))
        ),
        format!(
            "bare fetch round trip in the same page: p50 {} ms, p95 {} ms",
            fmt_num(ms("fetch_round_trip_ms", "p50")),
            fmt_num(ms("fetch_round_trip_ms", "p95"))
        ),
        Some(ratio),
        "–",
        None,
    );
    report.data("ui_latency", v);
}

/// The main-thread time to apply one feed event with 1,000 rows in the
/// table (end2end/tests/apply-cost.spec.ts, run by scripts/bench.sh).
pub fn apply_cost(report: &mut Report) {
    let Some(v) = browser_result("apply-cost.json") else {
        return;
    };
    let ms = |kind: &str, q: &str| v[kind][q].as_f64().unwrap_or(f64::NAN);
    report.row(
        "ui",
        format!(
            "main-thread time to apply one feed event, {} rows in the table (release build, {} updates)",
            v["rows"], v["updates"]
        ),
        format!(
            "cache event p50 {} ms, p95 {} ms; primary event p50 {} ms",
            fmt_num(ms("cache_event_ms", "p50")),
            fmt_num(ms("cache_event_ms", "p95")),
            fmt_num(ms("primary_event_ms", "p50"))
        ),
        format!(
            "a stats event (no row changes) p50 {} ms",
            fmt_num(ms("stats_event_ms", "p50"))
        ),
        None,
        "–",
        None,
    );
    report.data("ui_apply_cost", v);
}
