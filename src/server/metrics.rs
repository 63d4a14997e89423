//! `/metrics`: the Prometheus text exposition format (version 0.0.4), written by hand.
//!
//! Every figure already lives in [`Telemetry`], the GPU lock and the buffer, so the handler
//! only formats a snapshot; a metrics library would add a second copy of each figure (or a
//! custom collector doing exactly this). The output is checked by a real Prometheus parser in
//! the tests (`tests/http.rs`).
//!
//! [`Telemetry`]: crate::stats::Telemetry

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};

use super::App;
use crate::stats::{BucketHistogram, Histogram, Stage};
use crate::status::{self, DaemonState, Lifecycle};

/// Content type of the text format.
pub const CONTENT_TYPE_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Upper bounds (seconds) of the display interval-error histogram; multiples of 50 µs, so they
/// are exact on the display's fine histogram.
const INTERVAL_ERROR_BOUNDS: [f64; 10] = [
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.02, 0.05, 0.075, 0.1,
];

const STATES: [DaemonState; 7] = [
    DaemonState::Starting,
    DaemonState::Buffering,
    DaemonState::Playing,
    DaemonState::Paused,
    DaemonState::Degraded,
    DaemonState::Stopping,
    DaemonState::Stopped,
];

/// The metrics page.
pub async fn metrics(State(app): State<App>) -> Response {
    ([(CONTENT_TYPE, CONTENT_TYPE_TEXT)], render(&app)).into_response()
}

/// Everything, as exposition text.
pub fn render(app: &App) -> String {
    let shared = &app.shared;
    let t = &shared.telemetry;
    let engine = &shared.engine;
    let mut out = Exposition::default();

    out.family(
        "dreamd_build_info",
        "gauge",
        "Build and run information; always 1.",
    );
    out.sample(
        "dreamd_build_info",
        &[
            ("version", env!("CARGO_PKG_VERSION")),
            ("decoder", engine.decoder_name()),
            ("device", &engine.device().to_string()),
            ("source", &shared.source_name),
        ],
        1.0,
    );
    out.family(
        "dreamd_uptime_seconds",
        "gauge",
        "Seconds since the daemon started.",
    );
    out.sample(
        "dreamd_uptime_seconds",
        &[],
        t.started.elapsed().as_secs_f64(),
    );
    let state = status::state(shared, Lifecycle::Running);
    out.family(
        "dreamd_state",
        "gauge",
        "1 for the daemon's current state, 0 for the others.",
    );
    for s in STATES {
        let name = serde_json::to_value(s)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        out.sample(
            "dreamd_state",
            &[("state", &name)],
            f64::from(u8::from(s == state)),
        );
    }

    // Display.
    let display = &t.display;
    out.family(
        "dreamd_display_target_fps",
        "gauge",
        "Frames per second the display aims for.",
    );
    out.sample(
        "dreamd_display_target_fps",
        &[],
        shared.live.get().target_fps,
    );
    out.family(
        "dreamd_display_fps",
        "gauge",
        "Frames per second achieved (recent average).",
    );
    out.sample("dreamd_display_fps", &[], display.actual_fps());
    out.family("dreamd_display_frames_total", "counter", "Frames shown.");
    out.sample(
        "dreamd_display_frames_total",
        &[],
        count(&display.frames_displayed),
    );
    out.family(
        "dreamd_display_ticks_total",
        "counter",
        "Display ticks that were late (> 2 ms), held a frame not ready, or skipped a frame.",
    );
    for (kind, value) in [
        ("late", &display.late),
        ("held", &display.held),
        ("skipped", &display.skipped),
    ] {
        out.sample(
            "dreamd_display_ticks_total",
            &[("kind", kind)],
            count(value),
        );
    }
    if let Some(seq) = display.current_sequence() {
        out.family(
            "dreamd_display_sequence",
            "gauge",
            "Sequence number on screen.",
        );
        out.sample("dreamd_display_sequence", &[], seq as f64);
    }
    out.fine_histogram(
        "dreamd_display_interval_error_seconds",
        "|shown interval - target interval| between back-to-back frames.",
        &display.timing().interval_error,
        &INTERVAL_ERROR_BOUNDS,
    );

    // Buffer.
    let counts = shared.buffer.counts();
    out.family(
        "dreamd_buffer_seconds",
        "gauge",
        "Seconds of ready frames ahead of the display.",
    );
    out.sample(
        "dreamd_buffer_seconds",
        &[],
        counts.ready as f64 / shared.live.get().target_fps,
    );
    out.family(
        "dreamd_buffer_target_seconds",
        "gauge",
        "Seconds the buffer aims to hold.",
    );
    out.sample(
        "dreamd_buffer_target_seconds",
        &[],
        shared.live.get().target_seconds,
    );
    out.family(
        "dreamd_buffer_frames",
        "gauge",
        "Frames in the buffer by state.",
    );
    out.sample(
        "dreamd_buffer_frames",
        &[("state", "ready")],
        counts.ready as f64,
    );
    out.sample(
        "dreamd_buffer_frames",
        &[("state", "registered")],
        counts.registered as f64,
    );

    // GPU lock.
    let lock = engine.lock().stats();
    let histograms = engine.lock().histograms();
    out.family(
        "dreamd_gpu_lock_acquisitions_total",
        "counter",
        "GPU-lock acquisitions.",
    );
    out.sample(
        "dreamd_gpu_lock_acquisitions_total",
        &[],
        lock.acquisitions as f64,
    );
    out.family(
        "dreamd_gpu_lock_contention_total",
        "counter",
        "GPU-lock acquisitions that found the lock taken (or gave up).",
    );
    out.sample(
        "dreamd_gpu_lock_contention_total",
        &[],
        lock.contention_events as f64,
    );
    out.bucket_histogram(
        "dreamd_gpu_lock_wait_seconds",
        "Time spent waiting for the GPU lock.",
        &histograms.wait,
    );
    out.bucket_histogram(
        "dreamd_gpu_lock_hold_seconds",
        "Time the GPU lock was held.",
        &histograms.hold,
    );

    // Generation.
    let pipeline = &t.pipeline;
    let averages = pipeline.averages();
    if let Some(ms) = averages.decode_ms_per_frame.get() {
        out.family(
            "dreamd_decode_seconds_per_frame",
            "gauge",
            "Decode time per frame (moving average over recent pairs).",
        );
        out.sample("dreamd_decode_seconds_per_frame", &[], ms / 1000.0);
    }
    if let Some(ms) = averages.keyframe_ms.get() {
        out.family(
            "dreamd_keyframe_seconds",
            "gauge",
            "Time to make a keyframe, by source (moving average).",
        );
        out.sample(
            "dreamd_keyframe_seconds",
            &[("source", &shared.source_name)],
            ms / 1000.0,
        );
    }
    out.family(
        "dreamd_frames_generated_total",
        "counter",
        "Frames generated, by kind.",
    );
    out.sample(
        "dreamd_frames_generated_total",
        &[("kind", "keyframe")],
        count(&pipeline.keyframes),
    );
    out.sample(
        "dreamd_frames_generated_total",
        &[("kind", "inbetween")],
        count(&pipeline.interpolated_frames),
    );
    out.family(
        "dreamd_pairs_total",
        "counter",
        "Keyframe pairs interpolated.",
    );
    out.sample("dreamd_pairs_total", &[], count(&pipeline.pairs));
    out.family(
        "dreamd_failures_total",
        "counter",
        "Failures, by pipeline stage.",
    );
    for stage in Stage::ALL {
        out.sample(
            "dreamd_failures_total",
            &[("stage", stage.as_str())],
            pipeline.failures(stage) as f64,
        );
    }
    out.family(
        "dreamd_status_write_failures_total",
        "counter",
        "Writes of status.json that failed.",
    );
    out.sample(
        "dreamd_status_write_failures_total",
        &[],
        app.shared
            .telemetry
            .status_write_failures
            .load(Ordering::Relaxed) as f64,
    );

    render_dream(&mut out, shared);

    // HTTP.
    let sse_clients = app.max_sse_clients - app.sse_slots.available_permits();
    out.family(
        "dreamd_http_sse_clients",
        "gauge",
        "Live-event clients connected.",
    );
    out.sample("dreamd_http_sse_clients", &[], sse_clients as f64);
    out.family(
        "dreamd_http_sse_rejected_total",
        "counter",
        "Live-event clients turned away (server.max_sse_clients reached).",
    );
    out.sample(
        "dreamd_http_sse_rejected_total",
        &[],
        app.sse_rejected.load(Ordering::Relaxed) as f64,
    );
    out.family(
        "dreamd_http_connections_refused_total",
        "counter",
        "Connections closed at once because the connection cap was reached.",
    );
    out.sample(
        "dreamd_http_connections_refused_total",
        &[],
        app.connections_refused.load(Ordering::Relaxed) as f64,
    );
    out.family(
        "dreamd_http_connections_timed_out_total",
        "counter",
        "Connections closed for idling past server.idle_timeout_seconds.",
    );
    out.sample(
        "dreamd_http_connections_timed_out_total",
        &[],
        app.connections_timed_out.load(Ordering::Relaxed) as f64,
    );
    out.text
}

/// The dream: ComfyUI keyframes by outcome and their latency, the theme, collapse, the cache
/// and injections.
fn render_dream(out: &mut Exposition, shared: &crate::daemon::Shared) {
    let comfyui = shared.comfyui.lock().snapshot();
    out.family(
        "dreamd_comfyui_up",
        "gauge",
        "1 while the ComfyUI server answers (connected or generating), 0 while unreachable; absent when the source is not comfyui.",
    );
    if comfyui.status != crate::comfyui::ComfyUiStatus::Disabled {
        let up = comfyui.status != crate::comfyui::ComfyUiStatus::Unreachable;
        out.sample("dreamd_comfyui_up", &[], f64::from(u8::from(up)));
        out.family(
            "dreamd_comfyui_keyframes_total",
            "counter",
            "Keyframes of the comfyui source, by outcome (ok, failed, fallback).",
        );
        let c = comfyui.counters;
        for (outcome, n) in [("ok", c.ok), ("failed", c.failed), ("fallback", c.fallback)] {
            out.sample(
                "dreamd_comfyui_keyframes_total",
                &[("outcome", outcome)],
                n as f64,
            );
        }
        out.family(
            "dreamd_comfyui_latency_seconds_sum",
            "counter",
            "Total ComfyUI time of successful keyframes (divide by the ok count for the mean).",
        );
        out.sample(
            "dreamd_comfyui_latency_seconds_sum",
            &[],
            c.latency_ms_sum as f64 / 1000.0,
        );
        out.family(
            "dreamd_comfyui_outages_total",
            "counter",
            "Times the ComfyUI server became unreachable.",
        );
        out.sample("dreamd_comfyui_outages_total", &[], c.outages as f64);
    }
    let d = shared
        .director
        .snapshot_showing(shared.telemetry.display.current_keyframe());
    out.family(
        "dreamd_theme_info",
        "gauge",
        "The theme of the keyframe on screen (sources with prompts); always 1.",
    );
    if let Some(theme) = &d.theme {
        out.sample("dreamd_theme_info", &[("theme", theme)], 1.0);
    }
    out.family(
        "dreamd_collapse_state",
        "gauge",
        "The collapse detector's verdict: 1 for the current state.",
    );
    for state in ["ok", "converging", "collapsed"] {
        let on = d.collapse.state.as_str() == state;
        out.sample(
            "dreamd_collapse_state",
            &[("state", state)],
            f64::from(u8::from(on)),
        );
    }
    for (name, help, value) in [
        (
            "dreamd_collapse_color_delta",
            "Colour similarity delta, recent minus early (0 until enough history).",
            d.collapse.color_delta.unwrap_or(0.0),
        ),
        (
            "dreamd_collapse_structure_delta",
            "Structure similarity delta, recent minus early (0 until enough history).",
            d.collapse.structure_delta.unwrap_or(0.0),
        ),
    ] {
        out.family(name, "gauge", help);
        out.sample(name, &[], f64::from(value));
    }
    out.family(
        "dreamd_cache_frames",
        "gauge",
        "Frames in the diverse-frame cache.",
    );
    out.sample("dreamd_cache_frames", &[], d.cache_size as f64);
    out.family(
        "dreamd_cache_offers_total",
        "counter",
        "Keyframes offered to the cache, by result (accepted, redundant).",
    );
    out.sample(
        "dreamd_cache_offers_total",
        &[("result", "accepted")],
        d.cache.accepted as f64,
    );
    out.sample(
        "dreamd_cache_offers_total",
        &[("result", "redundant")],
        d.cache.offered.saturating_sub(d.cache.accepted) as f64,
    );
    out.family(
        "dreamd_injections_total",
        "counter",
        "Keyframes made by injection, by kind (cache, seed).",
    );
    out.sample(
        "dreamd_injections_total",
        &[("kind", "cache")],
        d.cache_injections as f64,
    );
    out.sample(
        "dreamd_injections_total",
        &[("kind", "seed")],
        d.seed_injections as f64,
    );
}

fn count(value: &std::sync::atomic::AtomicU64) -> f64 {
    value.load(Ordering::Relaxed) as f64
}

/// A text-format writer.
#[derive(Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (key, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{key}=\"{}\"", escape_label(value));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {}", number(value));
    }

    fn histogram(&mut self, name: &str, help: &str, buckets: &[(f64, u64)], sum: f64, count: u64) {
        self.family(name, "histogram", help);
        let bucket = format!("{name}_bucket");
        for &(bound, n) in buckets {
            self.sample(&bucket, &[("le", &number(bound))], n as f64);
        }
        self.sample(&bucket, &[("le", "+Inf")], count as f64);
        self.sample(&format!("{name}_sum"), &[], sum);
        self.sample(&format!("{name}_count"), &[], count as f64);
    }

    /// A histogram from the display's fine (50 µs) histogram at `bounds`.
    fn fine_histogram(&mut self, name: &str, help: &str, h: &Histogram, bounds: &[f64]) {
        let buckets: Vec<(f64, u64)> = bounds
            .iter()
            .map(|&b| (b, h.count_below(Duration::from_secs_f64(b))))
            .collect();
        self.histogram(name, help, &buckets, h.sum().as_secs_f64(), h.count());
    }

    fn bucket_histogram(&mut self, name: &str, help: &str, h: &BucketHistogram) {
        let buckets: Vec<(f64, u64)> = h
            .cumulative()
            .into_iter()
            .filter(|(bound, _)| bound.is_finite())
            .collect();
        self.histogram(name, help, &buckets, h.sum_seconds(), h.count());
    }
}

/// A sample value as Prometheus writes it.
fn number(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_string()
    } else if value == f64::INFINITY {
        "+Inf".to_string()
    } else if value == f64::NEG_INFINITY {
        "-Inf".to_string()
    } else {
        value.to_string()
    }
}

fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn escape_help(value: &str) -> String {
    value.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_escape_labels_and_format_numbers() {
        let mut out = Exposition::default();
        out.family("x_total", "counter", "An x.\nSecond line.");
        out.sample("x_total", &[("a", "q\"b\\c\nd"), ("z", "1")], 3.0);
        out.sample("x_total", &[], f64::INFINITY);
        assert_eq!(
            out.text,
            "# HELP x_total An x.\\nSecond line.\n# TYPE x_total counter\n\
             x_total{a=\"q\\\"b\\\\c\\nd\",z=\"1\"} 3\nx_total +Inf\n"
        );
    }

    #[test]
    fn histograms_are_cumulative_and_end_with_inf() {
        let mut h = Histogram::default();
        for us in [200, 700, 1500, 30_000] {
            h.record(Duration::from_micros(us));
        }
        let mut out = Exposition::default();
        out.fine_histogram("e_seconds", "E.", &h, &[0.0005, 0.001, 0.002]);
        let lines: Vec<&str> = out.text.lines().skip(2).collect();
        assert_eq!(
            lines,
            [
                "e_seconds_bucket{le=\"0.0005\"} 1",
                "e_seconds_bucket{le=\"0.001\"} 2",
                "e_seconds_bucket{le=\"0.002\"} 3",
                "e_seconds_bucket{le=\"+Inf\"} 4",
                "e_seconds_sum 0.0324",
                "e_seconds_count 4",
            ]
        );
    }
}
