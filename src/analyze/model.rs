//! The report: what `dreamd analyze` found, serialised as-is by `--json` (schema
//! [`SCHEMA`], documented in the README's "dreamd analyze" section).

use std::collections::BTreeMap;

use serde::Serialize;

use super::input::InputStats;
use super::sketch::Dist;

/// Version tag of the JSON report; bumped on any incompatible change.
pub const SCHEMA: &str = "dreamd-analyze/1";

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub schema: &'static str,
    pub inputs: Vec<InputStats>,
    pub totals: Totals,
    pub window: Window,
    pub pairs: Pairs,
    pub lock: Lock,
    pub keyframes: Keyframes,
    pub display: Display,
    pub buffer: Buffer,
    pub failures: Failures,
    pub bottlenecks: Bottlenecks,
    pub series: SeriesSet,
    /// Themes, collapse, injections and cache ([`super::dream`]); absent (not `null`) when
    /// the logs hold no such events, so older reports stay as they were.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direction: Option<super::dream::Direction>,
}

/// Line counts over all inputs.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Totals {
    pub bytes: u64,
    pub lines: u64,
    pub records: u64,
    pub ignored_lines: u64,
    pub unparseable_lines: u64,
    /// Records dropped by `--since`/`--until`.
    pub outside_window: u64,
}

/// The time covered.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Window {
    pub since: Option<String>,
    pub until: Option<String>,
    pub first: Option<String>,
    pub last: Option<String>,
    pub span_s: f64,
}

/// Per-pair timings (ms).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Pairs {
    pub count: u64,
    pub ok: u64,
    pub partial: u64,
    pub failed: u64,
    /// Frames decoded per pair (in-betweens plus the pair's end keyframe).
    pub frames: Dist,
    pub total_ms: Dist,
    pub slerp_ms: Dist,
    pub decode_ms: Dist,
    pub save_ms: Dist,
    pub decode_ms_per_frame: Dist,
    /// Time a pair's frames play for, `frames / target_fps`: the pair time budget.
    pub budget_ms: Option<f64>,
}

/// The GPU (VAE) lock.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Lock {
    /// `pairs` (dreamd: per-pair wait and hold), `vae_lock_lines` (Python: cumulative status
    /// lines and per-acquisition contention lines) or `none`.
    pub source: String,
    pub acquisitions: u64,
    /// Mean lock acquisitions per pair (dreamd: always 1).
    pub acquisitions_per_pair: Option<f64>,
    /// Wait per acquisition; from per-pair events only.
    pub wait_ms: Dist,
    pub hold_ms: Dist,
    pub avg_wait_ms: Option<f64>,
    pub max_wait_ms: Option<f64>,
    /// dreamd: acquisitions that waited more than the contention threshold; Python: `VAE lock
    /// contention: waited` lines (waits over 100 ms).
    pub contention_events: u64,
    pub contention_fraction: Option<f64>,
}

/// Keyframes by source.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Keyframes {
    pub count: u64,
    pub failed: u64,
    pub ms: Dist,
    pub by_source: BTreeMap<String, KeyframeSource>,
}

/// Keyframes of one source.
#[derive(Debug, Clone, Default, Serialize)]
pub struct KeyframeSource {
    pub count: u64,
    pub failed: u64,
    pub ms: Dist,
}

/// Display pacing. Fields say where each figure comes from, since some are estimates.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Display {
    pub target_fps: Option<f64>,
    /// `display_stats`, `buffer_events` (frames ready / seconds buffered) or `assumed`.
    pub target_fps_source: String,
    pub frames_displayed: Option<u64>,
    pub actual_fps: Option<f64>,
    /// How `actual_fps` was obtained.
    pub actual_fps_source: String,
    pub late: u64,
    pub held: u64,
    pub skipped: u64,
    pub late_ms: Dist,
    /// Latest interval-error quantiles (since the daemon started), from `display_stats`.
    pub interval_error_p50_ms: Option<f64>,
    pub interval_error_p99_ms: Option<f64>,
    /// Times playback fell back to buffering after it had started.
    pub rebuffering: u64,
}

/// Buffered seconds over time.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Buffer {
    pub seconds: Dist,
    pub min_s: Option<f64>,
    pub target_seconds: Option<f64>,
    /// Share of samples (after the buffer first reached half its target) below the low mark.
    pub low_fraction: Option<f64>,
}

/// Failures by stage.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Failures {
    pub total: u64,
    pub by_stage: BTreeMap<String, u64>,
    /// The latest error message per stage (first 200 characters).
    pub last_error: BTreeMap<String, String>,
}

/// The bottleneck verdict.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Bottlenecks {
    pub healthy: bool,
    /// Ranked, worst first.
    pub findings: Vec<Finding>,
    /// What could not be judged for lack of data.
    pub notes: Vec<String>,
}

/// One tripped threshold.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// Stable identifier: `generation_behind`, `decode_bound`, `keyframe_bound`, `save_bound`,
    /// `lock_contention`, `lock_not_batched`, `display_starved`, `display_holes`, `late_ticks`,
    /// `buffer_low`, `failures`.
    pub id: &'static str,
    /// `high` when the value is at least twice its threshold, else `medium`.
    pub level: &'static str,
    /// value / threshold; findings are sorted by it.
    pub severity: f64,
    pub value: f64,
    pub threshold: f64,
    pub message: String,
    pub recommendation: String,
}

/// A series point: seconds since the report's first record, mean and max of its bucket.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SeriesPoint {
    pub t_s: f64,
    pub mean: f64,
    pub max: f64,
    pub count: u64,
}

/// A histogram: `counts[i]` samples in `[edges[i], edges[i+1])`; the last bin is open-ended.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Histogram {
    pub edges: Vec<f64>,
    pub counts: Vec<u64>,
}

/// Downsampled series for plots (at most 256 points each).
#[derive(Debug, Clone, Default, Serialize)]
pub struct SeriesSet {
    pub decode_ms: Vec<SeriesPoint>,
    pub total_ms: Vec<SeriesPoint>,
    pub buffer_s: Vec<SeriesPoint>,
    pub interval_error_p50_ms: Vec<SeriesPoint>,
    pub interval_error_p99_ms: Vec<SeriesPoint>,
    pub late_ms: Vec<SeriesPoint>,
    pub lock_wait_ms: Histogram,
}
