//! Live figures: every stage records here, the status writer and `dreamd bench` read here.
//!
//! Counters are atomics; the few averages and the interval histogram sit behind short
//! parking_lot locks. Nothing here does I/O.

use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicU8, Ordering};
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;

/// A pipeline stage, for failure counts and messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Keyframe,
    Slerp,
    Decode,
    Save,
    Publish,
}

impl Stage {
    pub const ALL: [Stage; 5] = [
        Stage::Keyframe,
        Stage::Slerp,
        Stage::Decode,
        Stage::Save,
        Stage::Publish,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Keyframe => "keyframe",
            Stage::Slerp => "slerp",
            Stage::Decode => "decode",
            Stage::Save => "save",
            Stage::Publish => "publish",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An exponentially weighted moving average; `None` until the first sample.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ewma {
    value: Option<f64>,
}

impl Ewma {
    const WEIGHT: f64 = 0.2;

    pub fn add(&mut self, sample: f64) {
        self.value = Some(match self.value {
            None => sample,
            Some(v) => v + Self::WEIGHT * (sample - v),
        });
    }

    pub fn get(&self) -> Option<f64> {
        self.value
    }
}

/// A fixed-bucket histogram of durations (50 µs buckets up to 100 ms, then one overflow).
#[derive(Debug, Clone)]
pub struct Histogram {
    buckets: Vec<u64>,
    count: u64,
    sum: Duration,
    max: Duration,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: vec![0; Self::BUCKETS + 1],
            count: 0,
            sum: Duration::ZERO,
            max: Duration::ZERO,
        }
    }
}

impl Histogram {
    const BUCKET_US: u64 = 50;
    const BUCKETS: usize = 2000;

    pub fn record(&mut self, value: Duration) {
        let index = ((value.as_micros() as u64) / Self::BUCKET_US).min(Self::BUCKETS as u64);
        self.buckets[index as usize] += 1;
        self.count += 1;
        self.sum += value;
        self.max = self.max.max(value);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// Sum of all samples.
    pub fn sum(&self) -> Duration {
        self.sum
    }

    /// Samples below `bound`, exact when `bound` is a multiple of 50 µs up to 100 ms (samples
    /// on a bucket edge count in the bucket above it); everything from 100 ms on counts as above.
    pub fn count_below(&self, bound: Duration) -> u64 {
        let whole = ((bound.as_micros() as u64) / Self::BUCKET_US).min(Self::BUCKETS as u64);
        self.buckets[..whole as usize].iter().sum()
    }

    /// Adds `other`'s samples to this histogram.
    pub fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.buckets.iter_mut().zip(&other.buckets) {
            *mine += theirs;
        }
        self.count += other.count;
        self.sum += other.sum;
        self.max = self.max.max(other.max);
    }

    /// The samples recorded since `earlier`, a snapshot of this histogram (its maximum is the
    /// overall maximum, an upper bound).
    pub fn since(&self, earlier: &Histogram) -> Histogram {
        Histogram {
            buckets: self
                .buckets
                .iter()
                .zip(&earlier.buckets)
                .map(|(now, then)| now.saturating_sub(*then))
                .collect(),
            count: self.count.saturating_sub(earlier.count),
            sum: self.sum.saturating_sub(earlier.sum),
            max: self.max,
        }
    }

    pub fn max(&self) -> Duration {
        self.max
    }

    /// The smallest bucket bound under which a fraction `q` (0..=1) of samples lie; exact to
    /// 50 µs, and the maximum for samples past the last bucket.
    pub fn quantile(&self, q: f64) -> Duration {
        if self.count == 0 {
            return Duration::ZERO;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                if i == Self::BUCKETS {
                    return self.max;
                }
                return Duration::from_micros((i as u64 + 1) * Self::BUCKET_US).min(self.max);
            }
        }
        self.max
    }
}

/// A histogram with explicit upper bounds in seconds, as Prometheus exposes them: counts per
/// bucket (not cumulative), plus the sum and count of every sample.
#[derive(Debug, Clone)]
pub struct BucketHistogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum_seconds: f64,
    count: u64,
}

impl BucketHistogram {
    /// Bounds for lock waits and holds: 100 µs to 10 s.
    pub const LATENCY_BOUNDS: &'static [f64] = &[
        0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ];

    /// An empty histogram with these ascending upper bounds (seconds).
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum_seconds: 0.0,
            count: 0,
        }
    }

    pub fn record(&mut self, value: Duration) {
        let seconds = value.as_secs_f64();
        let index = self.bounds.partition_point(|&b| b < seconds);
        self.counts[index] += 1;
        self.sum_seconds += seconds;
        self.count += 1;
    }

    /// `(upper bound, cumulative count)` for every bound, then `(+Inf, count)`.
    pub fn cumulative(&self) -> Vec<(f64, u64)> {
        let mut seen = 0;
        self.bounds
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(&self.counts)
            .map(|(bound, n)| {
                seen += n;
                (bound, seen)
            })
            .collect()
    }

    pub fn sum_seconds(&self) -> f64 {
        self.sum_seconds
    }

    pub fn count(&self) -> u64 {
        self.count
    }
}

/// What the display is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum DisplayPhase {
    /// Not started yet.
    Starting = 0,
    /// Waiting for the start gate to fill.
    Buffering = 1,
    /// Showing frames on schedule.
    Playing = 2,
    /// Stopped.
    Stopped = 3,
}

impl DisplayPhase {
    fn from_u8(v: u8) -> DisplayPhase {
        match v {
            1 => DisplayPhase::Buffering,
            2 => DisplayPhase::Playing,
            3 => DisplayPhase::Stopped,
            _ => DisplayPhase::Starting,
        }
    }
}

/// Display figures, written by the display thread.
#[derive(Debug)]
pub struct DisplayStats {
    phase: AtomicU8,
    pub frames_displayed: AtomicU64,
    current_sequence: AtomicI64,
    current_keyframe: AtomicI64,
    pub late: AtomicU64,
    pub held: AtomicU64,
    pub skipped: AtomicU64,
    pub publish_failures: AtomicU64,
    first_frame_at: Mutex<Option<Instant>>,
    timing: Mutex<DisplayTiming>,
}

/// Interval figures measured while playing back to back.
#[derive(Debug, Clone, Default)]
pub struct DisplayTiming {
    /// |actual interval − target interval| between consecutive shown frames.
    pub interval_error: Histogram,
    /// Mean shown interval, for the achieved fps.
    pub interval: Ewma,
}

impl Default for DisplayStats {
    fn default() -> Self {
        Self {
            phase: AtomicU8::new(DisplayPhase::Starting as u8),
            frames_displayed: AtomicU64::new(0),
            current_sequence: AtomicI64::new(-1),
            current_keyframe: AtomicI64::new(-1),
            late: AtomicU64::new(0),
            held: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            publish_failures: AtomicU64::new(0),
            first_frame_at: Mutex::new(None),
            timing: Mutex::new(DisplayTiming::default()),
        }
    }
}

impl DisplayStats {
    pub fn phase(&self) -> DisplayPhase {
        DisplayPhase::from_u8(self.phase.load(Ordering::Relaxed))
    }

    /// Sets the phase; returns whether it changed.
    pub fn set_phase(&self, phase: DisplayPhase) -> bool {
        self.phase.swap(phase as u8, Ordering::Relaxed) != phase as u8
    }

    /// Sequence number on screen, if any.
    pub fn current_sequence(&self) -> Option<u64> {
        u64::try_from(self.current_sequence.load(Ordering::Relaxed)).ok()
    }

    /// The keyframe the frame on screen belongs to ([`crate::frame::FrameKind::keyframe`]).
    pub fn current_keyframe(&self) -> Option<u64> {
        u64::try_from(self.current_keyframe.load(Ordering::Relaxed)).ok()
    }

    /// Records that `seq`, of keyframe `keyframe`, went on screen at `at`.
    pub fn shown(&self, seq: u64, keyframe: u64, at: Instant) {
        self.current_sequence.store(seq as i64, Ordering::Relaxed);
        self.current_keyframe.store(
            i64::try_from(keyframe).unwrap_or(i64::MAX),
            Ordering::Relaxed,
        );
        self.frames_displayed.fetch_add(1, Ordering::Relaxed);
        self.first_frame_at.lock().get_or_insert(at);
    }

    /// Records one back-to-back interval.
    pub fn interval(&self, actual: Duration, target: Duration) {
        let error = actual.abs_diff(target);
        let mut timing = self.timing.lock();
        timing.interval_error.record(error);
        timing.interval.add(actual.as_secs_f64());
    }

    pub fn timing(&self) -> DisplayTiming {
        self.timing.lock().clone()
    }

    /// When the first frame was shown.
    pub fn first_frame_at(&self) -> Option<Instant> {
        *self.first_frame_at.lock()
    }

    /// Frames per second achieved over recent back-to-back intervals.
    pub fn actual_fps(&self) -> f64 {
        match self.timing.lock().interval.get() {
            Some(s) if s > 0.0 => 1.0 / s,
            _ => 0.0,
        }
    }
}

/// The most recent failure.
#[derive(Debug, Clone)]
pub struct LastError {
    pub stage: Stage,
    pub message: String,
    pub at: SystemTime,
    pub instant: Instant,
}

/// Generation figures, written by the pipeline.
#[derive(Debug, Default)]
pub struct PipelineStats {
    pub keyframes: AtomicU64,
    pub interpolated_frames: AtomicU64,
    pub pairs: AtomicU64,
    /// In-betweens of the pair being made now (pair lengthening changes it).
    pub frames_per_pair: AtomicU64,
    failures: [AtomicU64; Stage::ALL.len()],
    averages: Mutex<Averages>,
    last_error: Mutex<Option<LastError>>,
    theme: Mutex<Option<String>>,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Averages {
    pub keyframe_ms: Ewma,
    pub decode_ms_per_frame: Ewma,
    /// Frames per second of generation time (pair wall time, not idle time).
    pub frames_per_s: Ewma,
}

impl PipelineStats {
    pub fn record_failure(&self, stage: Stage, message: impl Into<String>) {
        self.failures[stage as usize].fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock() = Some(LastError {
            stage,
            message: message.into(),
            at: SystemTime::now(),
            instant: Instant::now(),
        });
    }

    pub fn failures(&self, stage: Stage) -> u64 {
        self.failures[stage as usize].load(Ordering::Relaxed)
    }

    pub fn total_failures(&self) -> u64 {
        Stage::ALL.iter().map(|&s| self.failures(s)).sum()
    }

    pub fn last_error(&self) -> Option<LastError> {
        self.last_error.lock().clone()
    }

    pub fn record_keyframe_ms(&self, ms: f64) {
        self.averages.lock().keyframe_ms.add(ms);
    }

    pub fn record_pair(&self, frames: usize, decode_ms: f64, total: Duration) {
        let mut averages = self.averages.lock();
        if frames > 0 {
            averages.decode_ms_per_frame.add(decode_ms / frames as f64);
            if !total.is_zero() {
                averages
                    .frames_per_s
                    .add(frames as f64 / total.as_secs_f64());
            }
        }
    }

    pub fn averages(&self) -> Averages {
        *self.averages.lock()
    }

    /// The keyframe source's current theme or prompt.
    pub fn theme(&self) -> Option<String> {
        self.theme.lock().clone()
    }

    pub fn set_theme(&self, theme: Option<String>) {
        *self.theme.lock() = theme;
    }
}

/// Every live figure of one daemon, shared by its stages.
#[derive(Debug)]
pub struct Telemetry {
    /// When the daemon started.
    pub started: Instant,
    pub started_wall: SystemTime,
    pub display: DisplayStats,
    pub pipeline: PipelineStats,
    /// Writes of status.json that failed.
    pub status_write_failures: std::sync::atomic::AtomicU64,
}

impl Default for Telemetry {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            started_wall: SystemTime::now(),
            display: DisplayStats::default(),
            pipeline: PipelineStats::default(),
            status_write_failures: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

/// `value` rounded to `decimals` decimal places (for reports).
pub fn round(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

/// A duration in milliseconds, to the microsecond (for logs and reports).
pub fn millis(d: Duration) -> f64 {
    round(d.as_secs_f64() * 1000.0, 3)
}

/// Resident set size of this process in bytes (Linux), if it can be read.
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles() {
        let mut h = Histogram::default();
        for us in [100, 200, 300, 400, 10_000] {
            h.record(Duration::from_micros(us));
        }
        assert_eq!(h.count(), 5);
        assert_eq!(h.quantile(0.5), Duration::from_micros(350));
        assert_eq!(h.quantile(1.0), Duration::from_micros(10_000));
        h.record(Duration::from_secs(3));
        assert_eq!(h.quantile(1.0), Duration::from_secs(3));
    }

    #[test]
    fn histogram_counts_below_a_bound_and_differences() {
        let mut h = Histogram::default();
        for us in [100, 999, 1000, 4000, 200_000] {
            h.record(Duration::from_micros(us));
        }
        let snapshot = h.clone();
        assert_eq!(h.count_below(Duration::from_millis(1)), 2);
        assert_eq!(h.count_below(Duration::from_millis(5)), 4);
        assert_eq!(h.count_below(Duration::from_secs(1)), 4);
        assert_eq!(h.sum(), Duration::from_micros(206_099));
        h.record(Duration::from_micros(300));
        let recent = h.since(&snapshot);
        assert_eq!(recent.count(), 1);
        assert_eq!(recent.quantile(1.0), Duration::from_micros(350));
        let mut merged = recent.clone();
        merged.merge(&recent);
        assert_eq!(
            (merged.count(), merged.sum()),
            (2, Duration::from_micros(600))
        );
    }

    #[test]
    fn bucket_histogram_is_cumulative_with_inf() {
        let mut h = BucketHistogram::new(&[0.001, 0.01]);
        for ms in [0.5, 1.0, 5.0, 50.0] {
            h.record(Duration::from_secs_f64(ms / 1000.0));
        }
        assert_eq!(
            h.cumulative(),
            vec![(0.001, 2), (0.01, 3), (f64::INFINITY, 4)]
        );
        assert_eq!(h.count(), 4);
        assert!((h.sum_seconds() - 0.0565).abs() < 1e-9);
    }

    #[test]
    fn empty_histogram_is_zero() {
        assert_eq!(Histogram::default().quantile(0.99), Duration::ZERO);
    }

    #[test]
    fn ewma_starts_at_first_sample() {
        let mut e = Ewma::default();
        assert_eq!(e.get(), None);
        e.add(10.0);
        e.add(20.0);
        assert_eq!(e.get(), Some(12.0));
    }

    #[test]
    fn failures_are_counted_by_stage() {
        let stats = PipelineStats::default();
        stats.record_failure(Stage::Decode, "boom");
        stats.record_failure(Stage::Decode, "boom again");
        assert_eq!(stats.failures(Stage::Decode), 2);
        assert_eq!(stats.total_failures(), 2);
        assert_eq!(stats.last_error().unwrap().message, "boom again");
    }

    #[test]
    fn rss_is_readable_here() {
        assert!(rss_bytes().unwrap_or(1) > 0);
    }
}
