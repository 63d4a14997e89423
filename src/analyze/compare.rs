//! `--compare A B`: two runs side by side, with the ratio B / A per metric.

use std::fmt::Write as _;

use serde::Serialize;

use super::model::Report;
use super::report::num;

/// Version tag of the comparison JSON.
pub const COMPARE_SCHEMA: &str = "dreamd-analyze-compare/1";

/// One run of a comparison.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub label: String,
    pub report: Report,
}

/// One compared metric; `ratio` is `b / a`, `None` when either is unknown or `a` is 0.
#[derive(Debug, Clone, Serialize)]
pub struct Metric {
    pub metric: &'static str,
    pub a: Option<f64>,
    pub b: Option<f64>,
    pub ratio: Option<f64>,
}

/// Two reports and their metric table.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub schema: &'static str,
    pub a: Run,
    pub b: Run,
    pub metrics: Vec<Metric>,
}

/// The compared metrics, in table order: name and how to read it from a report.
type Getter = fn(&Report) -> Option<f64>;
const METRICS: &[(&str, Getter)] = &[
    ("pairs", |r| Some(r.pairs.count as f64)),
    ("pair total ms mean", |r| r.pairs.total_ms.mean),
    ("pair total ms p95", |r| r.pairs.total_ms.p95),
    ("slerp ms mean", |r| r.pairs.slerp_ms.mean),
    ("decode ms mean", |r| r.pairs.decode_ms.mean),
    ("decode ms/frame mean", |r| r.pairs.decode_ms_per_frame.mean),
    ("decode ms/frame p95", |r| r.pairs.decode_ms_per_frame.p95),
    ("save ms mean", |r| r.pairs.save_ms.mean),
    ("lock acquisitions/pair", |r| r.lock.acquisitions_per_pair),
    ("lock wait ms avg", |r| r.lock.avg_wait_ms),
    ("lock wait ms p95", |r| r.lock.wait_ms.p95),
    ("lock wait ms max", |r| r.lock.max_wait_ms),
    ("lock contention events", |r| {
        Some(r.lock.contention_events as f64)
    }),
    ("keyframe ms mean", |r| r.keyframes.ms.mean),
    ("keyframe failures", |r| Some(r.keyframes.failed as f64)),
    ("display fps achieved", |r| r.display.actual_fps),
    ("display late", |r| Some(r.display.late as f64)),
    ("display held", |r| Some(r.display.held as f64)),
    ("display skipped", |r| Some(r.display.skipped as f64)),
    ("buffer s mean", |r| r.buffer.seconds.mean),
    ("failures", |r| Some(r.failures.total as f64)),
];

impl Comparison {
    /// Compares run `a` (before) with run `b` (after).
    pub fn new(a_label: &str, a: Report, b_label: &str, b: Report) -> Self {
        let metrics = METRICS
            .iter()
            .map(|(metric, get)| {
                let (va, vb) = (get(&a), get(&b));
                let ratio = match (va, vb) {
                    (Some(x), Some(y)) if x != 0.0 => Some(y / x),
                    _ => None,
                };
                Metric {
                    metric,
                    a: va,
                    b: vb,
                    ratio,
                }
            })
            .collect();
        Self {
            schema: COMPARE_SCHEMA,
            a: Run {
                label: a_label.to_string(),
                report: a,
            },
            b: Run {
                label: b_label.to_string(),
                report: b,
            },
            metrics,
        }
    }

    /// The side-by-side table and both verdicts.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "dreamd analyze --compare");
        let _ = writeln!(out, "  A: {}", self.a.label);
        let _ = writeln!(out, "  B: {}", self.b.label);
        let _ = writeln!(
            out,
            "\n  {:<26}{:>12}{:>12}{:>10}",
            "metric", "A", "B", "B/A"
        );
        for m in &self.metrics {
            let _ = writeln!(
                out,
                "  {:<26}{:>12}{:>12}{:>10}",
                m.metric,
                num(m.a, 2),
                num(m.b, 2),
                num(m.ratio, 2)
            );
        }
        for (name, run) in [("A", &self.a), ("B", &self.b)] {
            let verdict = &run.report.bottlenecks;
            let _ = writeln!(out, "\nBottlenecks {name}:");
            if verdict.healthy {
                let _ = writeln!(out, "  Healthy: no threshold tripped.");
            }
            for f in &verdict.findings {
                let _ = writeln!(out, "  [{}] {}: {}", f.level, f.id, f.message);
            }
        }
        out
    }
}
