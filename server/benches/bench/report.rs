//! The report: rows beside their baselines, as markdown and JSON.

use super::*;

#[derive(Clone, Copy, Debug)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(mut xs: Vec<f64>) -> Self {
        xs.sort_by(f64::total_cmp);
        let n = xs.len().max(1);
        Self {
            median: xs.get(n / 2).copied().unwrap_or(f64::NAN),
            min: xs.first().copied().unwrap_or(f64::NAN),
            max: xs.last().copied().unwrap_or(f64::NAN),
        }
    }

    pub fn show(&self, unit: &str) -> String {
        format!(
            "{} {unit} ({}–{})",
            fmt_num(self.median),
            fmt_num(self.min),
            fmt_num(self.max)
        )
    }
}

pub fn fmt_num(x: f64) -> String {
    if !x.is_finite() {
        "n/a".into()
    } else if x >= 10_000.0 {
        format!("{:.0}", x)
    } else if x >= 100.0 {
        format!("{x:.1}")
    } else if x >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

/// One line of the report.
pub struct Row {
    pub section: &'static str,
    pub metric: String,
    pub ours: String,
    pub baseline: String,
    pub ratio: Option<f64>,
    pub target: String,
    pub met: Option<bool>,
}

#[derive(Default)]
pub struct Report {
    pub rows: Vec<Row>,
    pub json: BTreeMap<String, serde_json::Value>,
}

impl Report {
    #[allow(clippy::too_many_arguments)]
    pub fn row(
        &mut self,
        section: &'static str,
        metric: impl Into<String>,
        ours: impl Into<String>,
        baseline: impl Into<String>,
        ratio: Option<f64>,
        target: impl Into<String>,
        met: Option<bool>,
    ) {
        let row = Row {
            section,
            metric: metric.into(),
            ours: ours.into(),
            baseline: baseline.into(),
            ratio,
            target: target.into(),
            met,
        };
        println!(
            "  {:<10} {:<46} ours {:<28} baseline {:<28} ratio {}",
            row.section,
            row.metric,
            row.ours,
            row.baseline,
            row.ratio
                .map(|r| format!("{r:.2}"))
                .unwrap_or_else(|| "–".into())
        );
        self.rows.push(row);
    }

    pub fn data(&mut self, key: &str, value: serde_json::Value) {
        self.json.insert(key.to_owned(), value);
    }

    pub fn markdown(&self, header: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{header}\n");
        let _ = writeln!(
            out,
            "| section | metric | ours | baseline (same run) | ours / baseline | target | met |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|");
        for r in &self.rows {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} |",
                r.section,
                r.metric,
                r.ours,
                r.baseline,
                r.ratio
                    .map(|x| format!("{x:.2}"))
                    .unwrap_or_else(|| "–".into()),
                r.target,
                match r.met {
                    Some(true) => "yes",
                    Some(false) => "**no**",
                    None => "–",
                }
            );
        }
        out
    }
}
