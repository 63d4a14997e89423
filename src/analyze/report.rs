//! The text report (default output) and the JSON one (`--json`).

use std::fmt::Write as _;

use super::model::Report;
use super::sketch::Dist;
use crate::config::DEFAULT_TARGET_FPS;

/// `value` with `decimals`, or `-` when unknown.
pub fn num(value: Option<f64>, decimals: usize) -> String {
    match value {
        Some(v) if v.is_finite() => format!("{v:.decimals$}"),
        _ => "-".to_string(),
    }
}

fn dist_row(out: &mut String, label: &str, d: &Dist, decimals: usize) {
    let _ = writeln!(
        out,
        "  {label:<26}{:>10}{:>10}{:>10}{:>10}{:>8}",
        num(d.mean, decimals),
        num(d.p50, decimals),
        num(d.p95, decimals),
        num(d.max, decimals),
        d.count
    );
}

fn dist_header(out: &mut String) {
    let _ = writeln!(
        out,
        "  {:<26}{:>10}{:>10}{:>10}{:>10}{:>8}",
        "", "mean", "p50", "p95", "max", "n"
    );
}

/// The report as text, sections in a fixed order.
pub fn to_text(report: &Report) -> String {
    let mut out = String::new();
    let t = &report.totals;
    let _ = writeln!(
        out,
        "dreamd analyze: {} file(s), {} lines, {} records, {} unparseable lines skipped, {} other lines",
        report.inputs.len(),
        t.lines,
        t.records,
        t.unparseable_lines,
        t.ignored_lines
    );
    for input in &report.inputs {
        let mut extra = Vec::new();
        if input.gzip {
            extra.push("gzip".to_string());
        }
        if input.unparseable_lines > 0 {
            extra.push(format!("{} unparseable", input.unparseable_lines));
        }
        if input.truncated_last_line {
            extra.push("truncated last line".to_string());
        }
        if input.incomplete_timing_blocks > 0 {
            extra.push(format!(
                "{} incomplete [TIMING] blocks",
                input.incomplete_timing_blocks
            ));
        }
        if input.foreign_lines_in_blocks > 0 {
            extra.push(format!(
                "{} foreign lines inside [TIMING] blocks skipped",
                input.foreign_lines_in_blocks
            ));
        }
        let extra = if extra.is_empty() {
            String::new()
        } else {
            format!(" ({})", extra.join(", "))
        };
        let _ = writeln!(
            out,
            "  {} [{}] {} lines{extra}",
            input.path,
            input.format.as_str(),
            input.lines
        );
    }
    let w = &report.window;
    let _ = writeln!(
        out,
        "window: {} .. {} ({:.1} s){}{}",
        w.first.as_deref().unwrap_or("-"),
        w.last.as_deref().unwrap_or("-"),
        w.span_s,
        w.since
            .as_deref()
            .map(|s| format!(", since {s}"))
            .unwrap_or_default(),
        w.until
            .as_deref()
            .map(|s| format!(", until {s}"))
            .unwrap_or_default(),
    );
    if t.outside_window > 0 {
        let _ = writeln!(out, "  {} records outside the window", t.outside_window);
    }

    let p = &report.pairs;
    let d = &report.display;
    let _ = writeln!(
        out,
        "\nPairs: {} (ok {}, partial {}, failed {}); {} frames per pair (p50); budget {} ms per pair at {} fps",
        p.count,
        p.ok,
        p.partial,
        p.failed,
        num(p.frames.p50, 0),
        num(p.budget_ms, 0),
        num(Some(d.target_fps.unwrap_or(DEFAULT_TARGET_FPS)), 2),
    );
    dist_header(&mut out);
    dist_row(&mut out, "total ms", &p.total_ms, 1);
    dist_row(&mut out, "slerp ms", &p.slerp_ms, 1);
    dist_row(&mut out, "decode ms", &p.decode_ms, 1);
    dist_row(&mut out, "save ms", &p.save_ms, 1);
    dist_row(&mut out, "decode ms/frame", &p.decode_ms_per_frame, 2);

    let l = &report.lock;
    let _ = writeln!(
        out,
        "\nGPU lock (source: {}): {} acquisitions, {} per pair",
        l.source,
        l.acquisitions,
        num(l.acquisitions_per_pair, 2)
    );
    if l.wait_ms.count > 0 {
        dist_header(&mut out);
        dist_row(&mut out, "wait ms", &l.wait_ms, 3);
        dist_row(&mut out, "hold ms", &l.hold_ms, 3);
    }
    let _ = writeln!(
        out,
        "  wait avg {} ms, max {} ms; contention events {} ({} % of acquisitions){}",
        num(l.avg_wait_ms, 3),
        num(l.max_wait_ms, 3),
        l.contention_events,
        num(l.contention_fraction.map(|f| f * 100.0), 1),
        match l.source.as_str() {
            "pairs" => format!(
                "; an event = a wait over {} ms",
                super::aggregate::CONTENTION_WAIT_MS
            ),
            "vae_lock_lines" => "; an event = a logged wait over 100 ms".to_string(),
            _ => String::new(),
        }
    );

    let k = &report.keyframes;
    let _ = writeln!(out, "\nKeyframes: {} ({} failed)", k.count, k.failed);
    if !k.by_source.is_empty() {
        dist_header(&mut out);
        for (source, s) in &k.by_source {
            let label = format!("{source} ms ({} failed)", s.failed);
            dist_row(&mut out, &label, &s.ms, 1);
        }
    }

    let _ = writeln!(
        out,
        "\nDisplay: target {} fps ({}); achieved {} fps ({}); {} frames shown",
        num(Some(d.target_fps.unwrap_or(DEFAULT_TARGET_FPS)), 2),
        d.target_fps_source,
        num(d.actual_fps, 2),
        d.actual_fps_source,
        d.frames_displayed
            .map_or("-".to_string(), |n| n.to_string()),
    );
    let _ = writeln!(
        out,
        "  late {} (mean {} ms, max {} ms), held {}, skipped {}, re-buffered {} times",
        d.late,
        num(d.late_ms.mean, 1),
        num(d.late_ms.max, 1),
        d.held,
        d.skipped,
        d.rebuffering
    );
    let _ = writeln!(
        out,
        "  interval error since start: p50 {} ms, p99 {} ms",
        num(d.interval_error_p50_ms, 3),
        num(d.interval_error_p99_ms, 3)
    );

    let b = &report.buffer;
    let _ = writeln!(
        out,
        "\nBuffer: {} samples, mean {} s, min {} s, max {} s, target {} s, low {} % of samples",
        b.seconds.count,
        num(b.seconds.mean, 2),
        num(b.min_s, 2),
        num(b.seconds.max, 2),
        num(b.target_seconds, 1),
        num(b.low_fraction.map(|f| f * 100.0), 1)
    );

    let f = &report.failures;
    if f.total == 0 {
        let _ = writeln!(out, "\nFailures: none");
    } else {
        let stages: Vec<String> = f.by_stage.iter().map(|(s, n)| format!("{s} {n}")).collect();
        let _ = writeln!(out, "\nFailures: {} ({})", f.total, stages.join(", "));
        for (stage, error) in &f.last_error {
            let _ = writeln!(out, "  last {stage} error: {error}");
        }
    }

    if let Some(direction) = &report.direction {
        super::dream::to_text(&mut out, direction);
    }

    let verdict = &report.bottlenecks;
    let _ = writeln!(out, "\nBottlenecks:");
    if verdict.healthy && report.pairs.count == 0 {
        let _ = writeln!(
            out,
            "  No threshold tripped, but these logs hold no pair timings to judge."
        );
    } else if verdict.healthy {
        let _ = writeln!(out, "  Healthy: no threshold tripped.");
    }
    for (i, finding) in verdict.findings.iter().enumerate() {
        let _ = writeln!(
            out,
            "  {}. [{}] {}: {}\n     -> {}",
            i + 1,
            finding.level,
            finding.id,
            finding.message,
            finding.recommendation
        );
    }
    for note in &verdict.notes {
        let _ = writeln!(out, "  note: {note}");
    }
    out
}

/// The report as pretty JSON.
pub fn to_json(report: &Report) -> Result<String, serde_json::Error> {
    serde_json::to_string_pretty(report)
}
