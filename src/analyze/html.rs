//! `--html FILE`: one self-contained HTML page (inline CSS and SVG, no external assets) with
//! the text report and four plots drawn with plotters' SVG backend: decode ms per pair over
//! time, the lock-wait distribution, buffer seconds over time, and display interval error; and,
//! when the logs hold collapse verdicts other than `ok` or injections, collapse deltas over time
//! with the injections marked.
//! Text in the SVGs is emitted as `<text>` elements, so no fonts are needed to draw them.

use plotters::prelude::*;

use super::compare::Comparison;
use super::dream::Direction;
use super::model::{Report, SeriesPoint};
use super::report::{num, to_text};
use super::AnalyzeError;

const WIDTH: u32 = 960;
const HEIGHT: u32 = 320;

/// Escapes text for HTML.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn plot_error(plot: &'static str) -> impl Fn(String) -> AnalyzeError {
    move |message| AnalyzeError::Plot { plot, message }
}

/// A line plot of one or more series against seconds since the first record.
/// All plots share the x range `0..span_s` (the report's window), so they line up.
fn line_plot(
    plot: &'static str,
    y_desc: &str,
    span_s: f64,
    lines: &[(&str, &[SeriesPoint], RGBColor)],
) -> Result<String, AnalyzeError> {
    let err = plot_error(plot);
    let points = lines.iter().flat_map(|(_, pts, _)| pts.iter());
    let (mut x_max, mut y_max) = (span_s.max(1.0), 0.0f64);
    for p in points {
        x_max = x_max.max(p.t_s);
        y_max = y_max.max(p.mean);
    }
    let y_max = if y_max > 0.0 { y_max * 1.1 } else { 1.0 };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(plot, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(64)
            .build_cartesian_2d(0f64..x_max, 0f64..y_max)
            .map_err(|e| err(e.to_string()))?;
        chart
            .configure_mesh()
            .x_desc("seconds since the first record")
            .y_desc(y_desc)
            .draw()
            .map_err(|e| err(e.to_string()))?;
        for (name, pts, color) in lines {
            let color = *color;
            chart
                .draw_series(LineSeries::new(
                    pts.iter().map(|p| (p.t_s, p.mean)),
                    color.stroke_width(2),
                ))
                .map_err(|e| err(e.to_string()))?
                .label(*name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
            chart
                .draw_series(
                    pts.iter()
                        .map(|p| Circle::new((p.t_s, p.mean), 2, color.filled())),
                )
                .map_err(|e| err(e.to_string()))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(e.to_string()))?;
        root.present().map_err(|e| err(e.to_string()))?;
    }
    Ok(svg)
}

/// A bar chart of the lock-wait histogram.
fn lock_wait_plot(report: &Report) -> Result<String, AnalyzeError> {
    let plot = "GPU lock wait per acquisition";
    let err = plot_error(plot);
    let hist = &report.series.lock_wait_ms;
    let bins = hist.counts.len();
    let labels: Vec<String> = (0..bins)
        .map(|i| match hist.edges.get(i + 1) {
            Some(hi) if i + 1 < bins => format!("<{hi} ms"),
            _ => format!(">={} ms", hist.edges.get(i).copied().unwrap_or(0.0)),
        })
        .collect();
    let y_max = hist.counts.iter().copied().max().unwrap_or(0).max(1) as f64 * 1.15;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(plot, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(64)
            .build_cartesian_2d(0f64..bins.max(1) as f64, 0f64..y_max)
            .map_err(|e| err(e.to_string()))?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(bins.max(1) * 2 + 1)
            .x_label_formatter(&|x| {
                let centre = x - x.floor();
                if (centre - 0.5).abs() < 0.01 {
                    labels.get(*x as usize).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .x_desc(if report.lock.source == "vae_lock_lines" {
                "wait (only waits over 100 ms are logged by the original)"
            } else {
                "wait"
            })
            .y_desc("acquisitions")
            .draw()
            .map_err(|e| err(e.to_string()))?;
        chart
            .draw_series(hist.counts.iter().enumerate().map(|(i, &count)| {
                Rectangle::new(
                    [(i as f64 + 0.1, 0.0), (i as f64 + 0.9, count as f64)],
                    BLUE.mix(0.7).filled(),
                )
            }))
            .map_err(|e| err(e.to_string()))?;
        root.present().map_err(|e| err(e.to_string()))?;
    }
    Ok(svg)
}

/// Collapse colour and structure deltas over time, the detector's converging/collapsed
/// verdicts as marks along the top, and cache and seed injections as vertical lines.
fn direction_plot(d: &Direction, span_s: f64) -> Result<String, AnalyzeError> {
    let plot = "Collapse deltas over time, with injections";
    let err = plot_error(plot);
    let s = &d.series;
    let deltas = s.color_delta.iter().chain(&s.structure_delta);
    let marks = s
        .collapse_state
        .iter()
        .chain(&s.cache_injections)
        .chain(&s.seed_injections);
    let (mut x_max, mut y_lo, mut y_hi) = (span_s.max(1.0), 0.0f64, 0.0f64);
    for p in deltas.clone() {
        y_lo = y_lo.min(p.mean);
        y_hi = y_hi.max(p.mean);
    }
    for p in deltas.chain(marks) {
        x_max = x_max.max(p.t_s);
    }
    if y_hi - y_lo <= 0.0 {
        y_hi = y_lo + 0.1;
    }
    // Headroom above the deltas for the verdict marks.
    let range = y_hi - y_lo;
    let (y_mark, y_top) = (y_hi + range * 0.12, y_hi + range * 0.2);
    let (y_lo, line_top) = (y_lo - range * 0.05, y_hi + range * 0.06);
    let structure_color = RGBColor(0, 140, 70);
    let converging_color = RGBColor(230, 150, 0);
    let cache_color = RGBColor(140, 60, 170);
    let seed_color = RGBColor(200, 90, 40);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(plot, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(64)
            .build_cartesian_2d(0f64..x_max, y_lo..y_top)
            .map_err(|e| err(e.to_string()))?;
        chart
            .configure_mesh()
            .x_desc("seconds since the first record")
            .y_desc("delta (recent - early similarity)")
            .draw()
            .map_err(|e| err(e.to_string()))?;
        for (name, kind, color) in [
            ("cache injection", &s.cache_injections, cache_color),
            ("seed injection", &s.seed_injections, seed_color),
        ] {
            if kind.is_empty() {
                continue;
            }
            chart
                .draw_series(kind.iter().map(|p| {
                    PathElement::new(
                        vec![(p.t_s, y_lo), (p.t_s, line_top)],
                        color.mix(0.7).stroke_width(2),
                    )
                }))
                .map_err(|e| err(e.to_string()))?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x + 9, y - 6), (x + 9, y + 6)], color.stroke_width(2))
                });
        }
        for (name, points, color) in [
            ("colour delta (0-3 scale)", &s.color_delta, BLUE),
            (
                "structure delta (0-1 scale)",
                &s.structure_delta,
                structure_color,
            ),
        ] {
            if points.is_empty() {
                continue;
            }
            chart
                .draw_series(LineSeries::new(
                    points.iter().map(|p| (p.t_s, p.mean)),
                    color.stroke_width(2),
                ))
                .map_err(|e| err(e.to_string()))?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
        }
        for (name, level, color) in [
            ("converging", 1.0, converging_color),
            ("collapsed", 2.0, RED),
        ] {
            let marked: Vec<_> = s.collapse_state.iter().filter(|p| p.max == level).collect();
            if marked.is_empty() {
                continue;
            }
            chart
                .draw_series(
                    marked
                        .iter()
                        .map(|p| TriangleMarker::new((p.t_s, y_mark), 5, color.filled())),
                )
                .map_err(|e| err(e.to_string()))?
                .label(name)
                .legend(move |(x, y)| TriangleMarker::new((x + 9, y), 5, color.filled()));
        }
        chart
            .configure_series_labels()
            // The detector's warm-up leaves the start of the plot empty.
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.7))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(e.to_string()))?;
        root.present().map_err(|e| err(e.to_string()))?;
    }
    Ok(svg)
}

/// The creative-direction plot, or a line saying why there is none.
fn direction_figure(d: &Direction, span_s: f64) -> Result<String, AnalyzeError> {
    if d.eventful() {
        return figure(direction_plot(d, span_s), false, "");
    }
    let why = match &d.collapse {
        Some(c) => format!(
            "the collapse detector stayed ok over {} analyses (max colour delta {}, structure \
             delta {}) and nothing was injected",
            c.analyses,
            num(c.max_color_delta, 3),
            num(c.max_structure_delta, 3)
        ),
        None => "no collapse verdict or injection in these logs".to_string(),
    };
    Ok(format!(
        "<p class=\"empty\">Creative direction: {}; nothing to plot.</p>\n",
        escape(&why)
    ))
}

fn figure(
    svg: Result<String, AnalyzeError>,
    empty: bool,
    what: &str,
) -> Result<String, AnalyzeError> {
    if empty {
        return Ok(format!(
            "<p class=\"empty\">{}: no data in these logs.</p>\n",
            escape(what)
        ));
    }
    Ok(format!("<figure>{}</figure>\n", svg?))
}

/// The plots and verdict of one report, as an HTML fragment.
fn report_body(report: &Report) -> Result<String, AnalyzeError> {
    let s = &report.series;
    let span = report.window.span_s;
    let mut body = String::new();
    body.push_str("<h2>Bottlenecks</h2>\n");
    if report.bottlenecks.healthy {
        body.push_str("<p class=\"healthy\">Healthy: no threshold tripped.</p>\n");
    } else {
        body.push_str("<ol>\n");
        for f in &report.bottlenecks.findings {
            body.push_str(&format!(
                "<li><span class=\"{}\">{}</span> <b>{}</b>: {}<br>&rarr; {}</li>\n",
                f.level,
                f.level,
                f.id,
                escape(&f.message),
                escape(&f.recommendation)
            ));
        }
        body.push_str("</ol>\n");
    }
    body.push_str("<h2>Plots</h2>\n");
    body.push_str(&figure(
        line_plot(
            "Decode ms per pair over time",
            "ms",
            span,
            &[(
                "decode ms per pair (mean per time bucket)",
                &s.decode_ms,
                BLUE,
            )],
        ),
        s.decode_ms.is_empty(),
        "Decode ms per pair",
    )?);
    body.push_str(&figure(
        lock_wait_plot(report),
        s.lock_wait_ms.counts.iter().all(|&c| c == 0),
        "Lock-wait distribution",
    )?);
    body.push_str(&figure(
        line_plot(
            "Buffer seconds over time",
            "seconds buffered",
            span,
            &[("buffer s", &s.buffer_s, RGBColor(0, 140, 70))],
        ),
        s.buffer_s.is_empty(),
        "Buffer seconds over time",
    )?);
    body.push_str(&figure(
        line_plot(
            "Display interval error",
            "ms",
            span,
            &[
                (
                    "interval error p50 (since start)",
                    &s.interval_error_p50_ms,
                    BLUE,
                ),
                (
                    "interval error p99 (since start)",
                    &s.interval_error_p99_ms,
                    RED,
                ),
                ("late tick, ms late", &s.late_ms, RGBColor(200, 120, 0)),
            ],
        ),
        s.interval_error_p50_ms.is_empty() && s.late_ms.is_empty(),
        "Display interval error (needs display_stats or late events)",
    )?);
    if let Some(direction) = &report.direction {
        body.push_str(&direction_figure(direction, span)?);
    }
    body.push_str("<h2>Report</h2>\n<pre>");
    body.push_str(&escape(&to_text(report)));
    body.push_str("</pre>\n");
    Ok(body)
}

fn document(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{}</title>\n<style>\n\
body {{ font-family: sans-serif; margin: 2em auto; max-width: 1000px; color: #222; }}\n\
figure {{ margin: 1em 0; }} pre {{ background: #f5f5f5; padding: 1em; overflow-x: auto; font-size: 13px; }}\n\
.high {{ color: #fff; background: #c0392b; padding: 0 .4em; border-radius: 3px; }}\n\
.medium {{ color: #fff; background: #d68910; padding: 0 .4em; border-radius: 3px; }}\n\
.healthy {{ color: #1e8449; font-weight: bold; }} .empty {{ color: #777; font-style: italic; }}\n\
table {{ border-collapse: collapse; }} td, th {{ padding: .2em .8em; border-bottom: 1px solid #ddd; text-align: right; }}\n\
td:first-child, th:first-child {{ text-align: left; }}\n\
</style>\n</head>\n<body>\n<h1>{}</h1>\n{}</body>\n</html>\n",
        escape(title),
        escape(title),
        body
    )
}

/// The HTML report of one run.
pub fn page(report: &Report) -> Result<String, AnalyzeError> {
    let files: Vec<&str> = report.inputs.iter().map(|i| i.path.as_str()).collect();
    let mut body = format!("<p>Logs: {}</p>\n", escape(&files.join(", ")));
    body.push_str(&report_body(report)?);
    Ok(document("dreamd analyze", &body))
}

/// The HTML report of a comparison: the metric table, then each run's plots.
pub fn comparison_page(comparison: &Comparison) -> Result<String, AnalyzeError> {
    let mut body = String::from(
        "<h2>Comparison</h2>\n<table>\n<tr><th>metric</th><th>A</th><th>B</th><th>B/A</th></tr>\n",
    );
    for m in &comparison.metrics {
        body.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
            escape(m.metric),
            num(m.a, 2),
            num(m.b, 2),
            num(m.ratio, 2)
        ));
    }
    body.push_str("</table>\n");
    for (name, run) in [("A", &comparison.a), ("B", &comparison.b)] {
        body.push_str(&format!("<h1>Run {name}: {}</h1>\n", escape(&run.label)));
        body.push_str(&report_body(&run.report)?);
    }
    Ok(document("dreamd analyze --compare", &body))
}
