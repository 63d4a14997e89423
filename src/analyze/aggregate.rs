//! Folding the stream of records into the report's figures, in bounded memory: sketches for
//! distributions, downsampled series for plots, and counters.

use std::collections::BTreeMap;

use super::bottleneck;
use super::dream::DirectionAggregator;
use super::input::InputStats;
use super::model::{self, Report, SeriesPoint};
use super::record::{format_timestamp, KeyframeRecord, Outcome, Record, Timestamp};
use super::sketch::{Series, Sketch};
use crate::config::DEFAULT_TARGET_FPS;

/// dreamd: an acquisition that waited longer than this counts as a contention event (the pair
/// events carry the wait, not the lock's own contended flag).
pub const CONTENTION_WAIT_MS: f64 = 1.0;
/// Buffer samples below this share of the target count as low…
pub const BUFFER_LOW_SHARE: f64 = 0.25;
/// …once the buffer has first reached this share of its target (start-up is not "low").
pub const BUFFER_READY_SHARE: f64 = 0.5;
/// Most distinct keyframe sources or failure stages kept apart; further names count as
/// [`OTHER`], so a hostile log cannot grow the maps without bound.
pub const MAX_NAMES: usize = 32;
/// The bucket for names beyond [`MAX_NAMES`].
pub const OTHER: &str = "other";
/// Error messages are kept to this many characters.
const ERROR_CHARS: usize = 200;
/// Edges (ms) of the lock-wait histogram.
pub const LOCK_WAIT_EDGES_MS: [f64; 9] = [0.0, 0.01, 0.1, 1.0, 10.0, 50.0, 100.0, 500.0, 1000.0];

/// A counter logged as a running total since process start; restarts (the total going down)
/// begin a new run. Deltas between consecutive snapshots of a run give a rate.
#[derive(Debug, Default)]
struct Cumulative {
    finished_runs: u64,
    last: Option<(Timestamp, u64)>,
    delta: u64,
    seconds: f64,
    snapshots: u64,
}

impl Cumulative {
    fn add(&mut self, ts: Timestamp, value: u64) {
        self.snapshots += 1;
        match self.last {
            Some((t, v)) if value >= v && ts >= t => {
                self.delta += value - v;
                self.seconds += ts - t;
            }
            Some((_, v)) => self.finished_runs += v,
            None => {}
        }
        self.last = Some((ts, value));
    }

    fn total(&self) -> Option<u64> {
        self.last.map(|(_, v)| self.finished_runs + v)
    }

    fn rate(&self) -> Option<f64> {
        (self.seconds > 0.0).then(|| self.delta as f64 / self.seconds)
    }
}

/// Cumulative VAE-lock lines of the Python controller, one run at a time.
#[derive(Debug, Default)]
struct LockSnapshots {
    finished_acquisitions: u64,
    finished_wait_ms: f64,
    last: Option<(u64, f64)>,
    max_wait_ms: Option<f64>,
}

impl LockSnapshots {
    fn add(&mut self, acquisitions: u64, avg_wait_ms: f64, max_wait_ms: Option<f64>) {
        if let Some((a, avg)) = self.last {
            if acquisitions < a {
                self.finished_acquisitions += a;
                self.finished_wait_ms += a as f64 * avg;
            }
        }
        self.last = Some((acquisitions, avg_wait_ms));
        if let Some(max) = max_wait_ms {
            self.max_wait_ms = Some(self.max_wait_ms.map_or(max, |m: f64| m.max(max)));
        }
    }

    fn acquisitions(&self) -> u64 {
        self.finished_acquisitions + self.last.map_or(0, |(a, _)| a)
    }

    fn avg_wait_ms(&self) -> Option<f64> {
        let (a, avg) = self.last?;
        let total = self.acquisitions();
        (total > 0).then(|| (self.finished_wait_ms + a as f64 * avg) / total as f64)
    }
}

/// Accumulates records (within an optional time window) into a [`Report`].
#[derive(Debug, Default)]
pub struct Aggregator {
    since: Option<Timestamp>,
    until: Option<Timestamp>,
    first: Option<Timestamp>,
    last: Option<Timestamp>,
    outside_window: u64,

    pairs: u64,
    pair_outcomes: [u64; 3],
    frames: Sketch,
    inbetween_frames: Sketch,
    total_ms: Sketch,
    slerp_ms: Sketch,
    decode_ms: Sketch,
    save_ms: Sketch,
    decode_ms_per_frame: Sketch,
    decode_series: Series,
    total_series: Series,

    lock_acquisitions: u64,
    lock_pairs: u64,
    lock_wait: Sketch,
    lock_hold: Sketch,
    lock_contention: u64,
    legacy_lock: LockSnapshots,
    legacy_contention: Sketch,

    keyframes: BTreeMap<String, (u64, u64, Sketch)>,
    keyframe_ms: Sketch,

    target_fps: Option<f64>,
    fps_hint: Option<f64>,
    displayed: Cumulative,
    last_actual_fps: Option<f64>,
    interval_p50: Option<f64>,
    interval_p99: Option<f64>,
    p50_series: Series,
    p99_series: Series,
    late: u64,
    held: u64,
    skipped: u64,
    late_ms: Sketch,
    late_series: Series,
    state: Option<String>,
    played: bool,
    rebuffering: u64,

    buffer: Sketch,
    buffer_series: Series,
    buffer_target: Option<f64>,
    buffer_ready: bool,
    buffer_after_ready: u64,
    buffer_low: u64,

    failures: BTreeMap<String, u64>,
    last_error: BTreeMap<String, String>,

    direction: DirectionAggregator,
}

/// `name` if the map already has it or has room, else [`OTHER`].
fn bounded_name<V>(map: &BTreeMap<String, V>, name: &str) -> String {
    if map.contains_key(name) || map.len() < MAX_NAMES {
        name.to_string()
    } else {
        OTHER.to_string()
    }
}

fn clip(text: &str) -> String {
    text.chars().take(ERROR_CHARS).collect()
}

impl Aggregator {
    /// An aggregator keeping only records with `since <= t <= until`.
    pub fn new(since: Option<Timestamp>, until: Option<Timestamp>) -> Self {
        Self {
            since,
            until,
            ..Self::default()
        }
    }

    fn failure(&mut self, stage: &str, error: Option<&str>) {
        let stage = bounded_name(&self.failures, stage);
        *self.failures.entry(stage.clone()).or_default() += 1;
        if let Some(error) = error {
            self.last_error.insert(stage, clip(error));
        }
    }

    fn keyframe(&mut self, k: KeyframeRecord) {
        let source = bounded_name(&self.keyframes, &k.source);
        let entry = self.keyframes.entry(source).or_default();
        entry.0 += 1;
        if k.ok {
            if let Some(ms) = k.ms {
                entry.2.add(ms);
                self.keyframe_ms.add(ms);
            }
        } else {
            entry.1 += 1;
            self.failure("keyframe", k.error.as_deref());
        }
    }

    /// Adds one record.
    pub fn add(&mut self, record: Record) {
        let ts = record.timestamp();
        if self.since.is_some_and(|s| ts < s) || self.until.is_some_and(|u| ts > u) {
            self.outside_window += 1;
            return;
        }
        self.first = Some(self.first.map_or(ts, |f| f.min(ts)));
        self.last = Some(self.last.map_or(ts, |l| l.max(ts)));
        match record {
            Record::Pair(p) => {
                self.pairs += 1;
                let slot = match p.outcome {
                    Outcome::Ok => 0,
                    Outcome::Partial => 1,
                    Outcome::Failed => 2,
                };
                self.pair_outcomes[slot] += 1;
                // A pair lost to a failed keyframe is counted by that keyframe's own event.
                let stage = p.stage.as_deref().unwrap_or("save").to_string();
                if p.outcome != Outcome::Ok && stage != "keyframe" {
                    self.failure(&stage, p.error.as_deref());
                }
                if p.outcome == Outcome::Failed {
                    return;
                }
                if let Some(frames) = p.frames {
                    self.frames.add(frames as f64);
                    if p.from != p.to {
                        self.inbetween_frames.add(frames as f64);
                    }
                }
                for (sketch, value) in [
                    (&mut self.total_ms, p.total_ms),
                    (&mut self.slerp_ms, p.slerp_ms),
                    (&mut self.decode_ms, p.decode_ms),
                    (&mut self.save_ms, p.save_ms),
                    (&mut self.decode_ms_per_frame, p.decode_ms_per_frame),
                    (&mut self.lock_wait, p.lock_wait_ms),
                    (&mut self.lock_hold, p.lock_hold_ms),
                ] {
                    if let Some(v) = value {
                        sketch.add(v);
                    }
                }
                if let Some(v) = p.decode_ms {
                    self.decode_series.add(ts, v);
                }
                if let Some(v) = p.total_ms {
                    self.total_series.add(ts, v);
                }
                if let Some(n) = p.lock_acquisitions {
                    self.lock_acquisitions += n;
                    self.lock_pairs += 1;
                }
                if p.lock_wait_ms.is_some_and(|w| w > CONTENTION_WAIT_MS) {
                    self.lock_contention += 1;
                }
            }
            Record::Keyframe(k) => self.keyframe(k),
            Record::DirectedKeyframe(k, direction) => {
                self.direction.keyframe(&k, &direction);
                self.keyframe(k);
            }
            Record::Collapse(c) => self.direction.collapse(&c),
            Record::Cache(c) => self.direction.cache(&c),
            Record::Injection(i) => self.direction.injection(&i),
            Record::Late { late_ms, .. } => {
                self.late += 1;
                self.late_ms.add(late_ms);
                self.late_series.add(ts, late_ms);
            }
            Record::Held { .. } => self.held += 1,
            Record::Skipped { .. } => self.skipped += 1,
            Record::Buffer {
                seconds,
                target_seconds,
                fps_hint,
                ..
            } => {
                self.buffer.add(seconds);
                self.buffer_series.add(ts, seconds);
                if target_seconds.is_some() {
                    self.buffer_target = target_seconds;
                }
                if fps_hint.is_some() {
                    self.fps_hint = fps_hint;
                }
                if let Some(target) = self.buffer_target.filter(|t| *t > 0.0) {
                    if seconds >= BUFFER_READY_SHARE * target {
                        self.buffer_ready = true;
                    }
                    if self.buffer_ready {
                        self.buffer_after_ready += 1;
                        if seconds < BUFFER_LOW_SHARE * target {
                            self.buffer_low += 1;
                        }
                    }
                }
            }
            Record::State { state, .. } => {
                if state == "buffering" && self.played && self.state.as_deref() != Some(&state) {
                    self.rebuffering += 1;
                }
                if matches!(state.as_str(), "playing" | "degraded") {
                    self.played = true;
                }
                if matches!(state.as_str(), "starting" | "stopped") {
                    self.played = false;
                }
                self.state = Some(state);
            }
            Record::DisplayStats(d) => {
                self.displayed.add(ts, d.frames_displayed);
                if d.target_fps.is_some() {
                    self.target_fps = d.target_fps;
                }
                if d.actual_fps.is_some() {
                    self.last_actual_fps = d.actual_fps;
                }
                if let Some(p50) = d.interval_error_p50_ms {
                    self.interval_p50 = Some(p50);
                    self.p50_series.add(ts, p50);
                }
                if let Some(p99) = d.interval_error_p99_ms {
                    self.interval_p99 = Some(p99);
                    self.p99_series.add(ts, p99);
                }
            }
            Record::LockSnapshot {
                acquisitions,
                avg_wait_ms,
                max_wait_ms,
                ..
            } => self.legacy_lock.add(acquisitions, avg_wait_ms, max_wait_ms),
            Record::LockContention { wait_ms, .. } => self.legacy_contention.add(wait_ms),
        }
    }

    fn points(&self, series: &Series) -> Vec<SeriesPoint> {
        series.report_points(self.first.unwrap_or(0.0))
    }

    /// The finished report.
    pub fn finish(self, inputs: Vec<InputStats>) -> Report {
        let mut totals = model::Totals {
            outside_window: self.outside_window,
            ..Default::default()
        };
        for input in &inputs {
            totals.bytes += input.bytes;
            totals.lines += input.lines;
            totals.records += input.records;
            totals.ignored_lines += input.ignored_lines;
            totals.unparseable_lines += input.unparseable_lines;
        }
        let window = model::Window {
            since: self.since.map(format_timestamp),
            until: self.until.map(format_timestamp),
            first: self.first.map(format_timestamp),
            last: self.last.map(format_timestamp),
            span_s: match (self.first, self.last) {
                (Some(f), Some(l)) => l - f,
                _ => 0.0,
            },
        };

        let display = self.display_section();
        let fps = display.target_fps.unwrap_or(DEFAULT_TARGET_FPS);
        let frames_per_pair = self
            .inbetween_frames
            .quantile(0.5)
            .or_else(|| self.frames.quantile(0.5));
        let pairs = model::Pairs {
            count: self.pairs,
            ok: self.pair_outcomes[0],
            partial: self.pair_outcomes[1],
            failed: self.pair_outcomes[2],
            frames: self.frames.dist(),
            total_ms: self.total_ms.dist(),
            slerp_ms: self.slerp_ms.dist(),
            decode_ms: self.decode_ms.dist(),
            save_ms: self.save_ms.dist(),
            decode_ms_per_frame: self.decode_ms_per_frame.dist(),
            budget_ms: frames_per_pair.map(|n| n.round() * 1000.0 / fps),
        };
        let lock = self.lock_section();
        let mut keyframes = model::Keyframes {
            ms: self.keyframe_ms.dist(),
            ..Default::default()
        };
        for (source, (count, failed, sketch)) in &self.keyframes {
            keyframes.count += count;
            keyframes.failed += failed;
            keyframes.by_source.insert(
                source.clone(),
                model::KeyframeSource {
                    count: *count,
                    failed: *failed,
                    ms: sketch.dist(),
                },
            );
        }
        let buffer = model::Buffer {
            seconds: self.buffer.dist(),
            min_s: (self.buffer.count() > 0)
                .then(|| self.buffer.quantile(0.0))
                .flatten(),
            target_seconds: self.buffer_target,
            low_fraction: (self.buffer_after_ready > 0)
                .then(|| self.buffer_low as f64 / self.buffer_after_ready as f64),
        };
        let failures = model::Failures {
            total: self.failures.values().sum(),
            by_stage: self.failures.clone(),
            last_error: self.last_error.clone(),
        };
        let series = model::SeriesSet {
            decode_ms: self.points(&self.decode_series),
            total_ms: self.points(&self.total_series),
            buffer_s: self.points(&self.buffer_series),
            interval_error_p50_ms: self.points(&self.p50_series),
            interval_error_p99_ms: self.points(&self.p99_series),
            late_ms: self.points(&self.late_series),
            lock_wait_ms: model::Histogram {
                edges: LOCK_WAIT_EDGES_MS.to_vec(),
                counts: if self.lock_wait.count() > 0 {
                    self.lock_wait.histogram(&LOCK_WAIT_EDGES_MS)
                } else {
                    self.legacy_contention.histogram(&LOCK_WAIT_EDGES_MS)
                },
            },
        };
        let mut report = Report {
            schema: model::SCHEMA,
            inputs,
            totals,
            window,
            pairs,
            lock,
            keyframes,
            display,
            buffer,
            failures,
            bottlenecks: model::Bottlenecks::default(),
            series,
            direction: self.direction.finish(self.first.unwrap_or(0.0)),
        };
        report.bottlenecks = bottleneck::judge(&report);
        report
    }

    fn lock_section(&self) -> model::Lock {
        let per_pair =
            (self.lock_pairs > 0).then(|| self.lock_acquisitions as f64 / self.lock_pairs as f64);
        if self.lock_wait.count() > 0 {
            let acquisitions = self.lock_acquisitions;
            return model::Lock {
                source: "pairs".to_string(),
                acquisitions,
                acquisitions_per_pair: per_pair,
                wait_ms: self.lock_wait.dist(),
                hold_ms: self.lock_hold.dist(),
                avg_wait_ms: self.lock_wait.mean(),
                max_wait_ms: self.lock_wait.max(),
                contention_events: self.lock_contention,
                contention_fraction: (acquisitions > 0)
                    .then(|| self.lock_contention as f64 / acquisitions as f64),
            };
        }
        let snapshots = self.legacy_lock.last.is_some();
        if !snapshots && self.legacy_contention.count() == 0 {
            return model::Lock {
                source: "none".to_string(),
                acquisitions: self.lock_acquisitions,
                acquisitions_per_pair: per_pair,
                ..Default::default()
            };
        }
        let acquisitions = self.legacy_lock.acquisitions().max(self.lock_acquisitions);
        let contention = self.legacy_contention.count();
        let max_wait = match (self.legacy_lock.max_wait_ms, self.legacy_contention.max()) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        model::Lock {
            source: "vae_lock_lines".to_string(),
            acquisitions,
            acquisitions_per_pair: per_pair,
            wait_ms: Default::default(),
            hold_ms: Default::default(),
            avg_wait_ms: self.legacy_lock.avg_wait_ms(),
            max_wait_ms: max_wait,
            contention_events: contention,
            contention_fraction: (acquisitions > 0)
                .then(|| contention as f64 / acquisitions as f64),
        }
    }

    fn display_section(&self) -> model::Display {
        let (target_fps, target_fps_source) = match (self.target_fps, self.fps_hint) {
            (Some(fps), _) => (Some(fps), "display_stats"),
            (None, Some(fps)) => (Some((fps * 100.0).round() / 100.0), "buffer_events"),
            (None, None) => (None, "assumed"),
        };
        let (actual_fps, actual_fps_source) = match (self.displayed.rate(), self.last_actual_fps) {
            (Some(rate), _) => (Some(rate), "frames_displayed growth between snapshots"),
            (None, Some(fps)) => (Some(fps), "last display_stats actual_fps"),
            (None, None) => (None, "not logged"),
        };
        model::Display {
            target_fps,
            target_fps_source: target_fps_source.to_string(),
            frames_displayed: self.displayed.total(),
            actual_fps,
            actual_fps_source: actual_fps_source.to_string(),
            late: self.late,
            held: self.held,
            skipped: self.skipped,
            late_ms: self.late_ms.dist(),
            interval_error_p50_ms: self.interval_p50,
            interval_error_p99_ms: self.interval_p99,
            rebuffering: self.rebuffering,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyze::record::{DisplayStatsRecord, PairRecord};

    fn pair(ts: f64, wait: f64) -> Record {
        let mut p = PairRecord::new(ts, 1, 2);
        p.frames = Some(5);
        p.total_ms = Some(100.0);
        p.decode_ms = Some(50.0);
        p.lock_wait_ms = Some(wait);
        p.lock_acquisitions = Some(1);
        Record::Pair(p)
    }

    #[test]
    fn window_filters_and_contention_counts() {
        let mut agg = Aggregator::new(Some(10.0), Some(20.0));
        agg.add(pair(5.0, 0.0));
        agg.add(pair(10.0, 0.0));
        agg.add(pair(15.0, 5.0));
        agg.add(pair(25.0, 0.0));
        let report = agg.finish(Vec::new());
        assert_eq!(report.pairs.count, 2);
        assert_eq!(report.totals.outside_window, 2);
        assert_eq!(report.lock.contention_events, 1);
        assert_eq!(report.lock.acquisitions_per_pair, Some(1.0));
        assert_eq!(report.window.span_s, 5.0);
    }

    #[test]
    fn source_names_are_bounded() {
        let mut agg = Aggregator::default();
        for i in 0..100 {
            agg.add(Record::Keyframe(crate::analyze::record::KeyframeRecord {
                ts: i as f64,
                source: format!("source{i}"),
                ms: Some(1.0),
                ok: false,
                error: Some("x".repeat(1000)),
            }));
        }
        let report = agg.finish(Vec::new());
        assert_eq!(report.keyframes.by_source.len(), MAX_NAMES + 1);
        assert_eq!(
            report.keyframes.by_source[OTHER].count,
            100 - MAX_NAMES as u64
        );
        assert_eq!(report.failures.by_stage["keyframe"], 100);
        assert_eq!(report.failures.last_error["keyframe"].len(), 200);
    }

    #[test]
    fn fps_from_cumulative_display_counts_across_a_restart() {
        let mut agg = Aggregator::default();
        let stats = |ts, frames| {
            Record::DisplayStats(DisplayStatsRecord {
                ts,
                target_fps: Some(4.0),
                frames_displayed: frames,
                actual_fps: Some(4.0),
                interval_error_p50_ms: Some(1.0),
                interval_error_p99_ms: Some(3.0),
            })
        };
        agg.add(stats(0.0, 0));
        agg.add(stats(10.0, 40));
        agg.add(stats(20.0, 5)); // restart
        agg.add(stats(30.0, 25));
        let report = agg.finish(Vec::new());
        assert_eq!(report.display.frames_displayed, Some(65));
        assert_eq!(report.display.actual_fps, Some(3.0));
        assert_eq!(report.pairs.budget_ms, None);
    }
}
