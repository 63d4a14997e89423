//! The soak's verdicts: the [`Sample`]s taken while it ran, judged against its [`Limits`] into
//! named [`Check`]s.

use serde::Serialize;

use super::{Limits, BUFFER_FILLED_PERCENT, MIB};

/// One look at the running daemon.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Sample {
    /// Wall-clock seconds since the daemon started.
    pub wall_s: f64,
    pub frames_displayed: u64,
    /// `frames_displayed ÷ display.target_fps`, in hours.
    pub simulated_h: f64,
    pub rss_bytes: u64,
    /// Entries in `output/frames` (frames and temporary files).
    pub frame_files: usize,
    /// `dreamd.jsonl` and its rotated siblings.
    pub jsonl_bytes: u64,
    pub jsonl_files: usize,
    /// Everything else in `logs/` (`dreamd.<date>.log`).
    pub human_log_bytes: u64,
    pub held: u64,
    pub skipped: u64,
    pub late: u64,
    /// Display interval error p99 so far, ms.
    pub p99_ms: f64,
    /// Pipeline stage failures so far.
    pub failures: u64,
    /// `status.json`'s `state` (`unreadable` when it could not be read).
    pub state: String,
    /// `status.json`'s `buffer.percentage` (0 when it could not be read).
    pub buffer_percentage: f64,
    /// Times the display went from playing back to buffering so far (polled every [`super::POLL`]).
    pub rebuffers: u64,
}

impl Sample {
    /// All of `logs/`.
    pub fn log_bytes(&self) -> u64 {
        self.jsonl_bytes + self.human_log_bytes
    }
}

/// One verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub passed: bool,
    pub detail: String,
}

/// Judges a run's samples (in order, the last taken when the run ended) against `limits`.
///
/// * `completed`: the last sample reached the frame target.
/// * `rss_growth`: resident memory grew less than `rss_growth` from the warm figure to the end
///   figure ([`rss_figures`]: medians over a tenth of the run after warm-up, and over the last
///   tenth).
/// * `frame_files`: no sample saw more files in `output/frames` than allowed.
/// * `no_stall`: from the first frame on, frames displayed rose in every sample window.
/// * `no_buffering`: the display never went back to buffering after it started, and no sample
///   after the first frame read state `buffering` from `status.json`.
/// * `no_failures`: no pipeline stage failed.
/// * `logs_bounded`: `dreamd.jsonl` and its rotations stayed within their bytes and count, and
///   the human log within its budget, in every sample.
pub fn judge(samples: &[Sample], limits: &Limits) -> Vec<Check> {
    let check = |name, passed, detail: String| Check {
        name,
        passed,
        detail,
    };
    let Some(last) = samples.last() else {
        return vec![check(
            "completed",
            false,
            "no samples were taken".to_string(),
        )];
    };
    let mb = |b: u64| b as f64 / MIB as f64;
    let mut checks = Vec::new();
    checks.push(check(
        "completed",
        last.frames_displayed >= limits.frames_target,
        format!(
            "{} of {} frames displayed ({:.2} simulated h)",
            last.frames_displayed, limits.frames_target, last.simulated_h
        ),
    ));

    checks.push(match rss_figures(samples, limits) {
        Some(rss) if rss.warm_bytes > 0 => {
            let growth = rss.growth();
            check(
                "rss_growth",
                growth < limits.rss_growth,
                format!(
                    "warm {:.1} MiB (median of {} samples from {:.2} simulated h) -> end {:.1} MiB (median of the last {}): {:+.2} % (limit {:.0} %)",
                    mb(rss.warm_bytes),
                    rss.warm_samples,
                    rss.warm_at_h,
                    mb(rss.end_bytes),
                    rss.end_samples,
                    growth * 100.0,
                    limits.rss_growth * 100.0
                ),
            )
        }
        _ => check(
            "rss_growth",
            false,
            format!(
                "no memory sample after warm-up ({} frames)",
                limits.warmup_frames
            ),
        ),
    });

    let files = samples.iter().map(|s| s.frame_files).max().unwrap_or(0);
    checks.push(check(
        "frame_files",
        files <= limits.frame_files,
        format!(
            "at most {files} files in output/frames (retention {}, limit {} with frames in flight)",
            limits.keep_frames, limits.frame_files
        ),
    ));

    let playing: Vec<&Sample> = samples
        .iter()
        .skip_while(|s| s.frames_displayed == 0)
        .collect();
    let windows = playing.len().saturating_sub(1);
    let stalled: Vec<&[&Sample]> = playing
        .windows(2)
        .filter(|w| w[1].frames_displayed <= w[0].frames_displayed)
        .collect();
    checks.push(check(
        "no_stall",
        !playing.is_empty() && stalled.is_empty(),
        match (playing.is_empty(), stalled.first()) {
            (true, _) => "no frame was ever displayed".to_string(),
            (false, None) => format!("frames displayed rose in all {windows} sample windows"),
            (false, Some(w)) => format!(
                "frames displayed did not rise in {} of {windows} sample windows, first at {:.1}-{:.1} s (stuck at {})",
                stalled.len(),
                w[0].wall_s,
                w[1].wall_s,
                w[1].frames_displayed
            ),
        },
    ));

    let buffering = playing.iter().filter(|s| s.state == "buffering").count();
    checks.push(check(
        "no_buffering",
        last.rebuffers == 0 && buffering == 0,
        format!(
            "display went back to buffering {} times; {buffering} samples read state buffering after the first frame",
            last.rebuffers
        ),
    ));

    checks.push(check(
        "no_failures",
        last.failures == 0,
        format!("{} pipeline stage failures", last.failures),
    ));

    let jsonl = samples.iter().map(|s| s.jsonl_bytes).max().unwrap_or(0);
    let jsonl_files = samples.iter().map(|s| s.jsonl_files).max().unwrap_or(0);
    let human = samples.iter().map(|s| s.human_log_bytes).max().unwrap_or(0);
    let total = samples.iter().map(Sample::log_bytes).max().unwrap_or(0);
    checks.push(check(
        "logs_bounded",
        jsonl <= limits.jsonl_bytes
            && jsonl_files <= limits.jsonl_files
            && human <= limits.human_log_bytes,
        format!(
            "logs/ at most {:.2} MiB: dreamd.jsonl* {:.2} MiB in {jsonl_files} files (limit {:.2} MiB in {}), human log {:.3} MiB (limit {:.0} MiB)",
            mb(total),
            mb(jsonl),
            mb(limits.jsonl_bytes),
            limits.jsonl_files,
            mb(human),
            mb(limits.human_log_bytes)
        ),
    ));
    checks
}

/// The warm memory sample: the first with at least `warmup_frames` displayed, taken at or after
/// the first sample that saw the buffer filled (any sample past `warmup_frames` when none did).
pub fn warm<'a>(samples: &'a [Sample], limits: &Limits) -> Option<&'a Sample> {
    let filled = samples
        .iter()
        .position(|s| s.buffer_percentage >= BUFFER_FILLED_PERCENT)
        .unwrap_or(0);
    samples[filled..]
        .iter()
        .find(|s| s.frames_displayed >= limits.warmup_frames)
}

/// The memory figures [`judge`] compares.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RssFigures {
    /// Median RSS of the samples from the [`warm`] sample until `warmup_frames` more frames.
    pub warm_bytes: u64,
    pub warm_samples: usize,
    /// Simulated hours of the warm sample.
    pub warm_at_h: f64,
    /// Median RSS of the samples in the last `warmup_frames` frames.
    pub end_bytes: u64,
    pub end_samples: usize,
}

impl RssFigures {
    /// Growth from warm to end (0.05 = 5 %).
    pub fn growth(&self) -> f64 {
        self.end_bytes as f64 / self.warm_bytes as f64 - 1.0
    }
}

/// Medians rather than single samples: RSS follows the buffer's fill (the frames it holds are
/// most of a soak's memory), which a single sample catches at any level.
pub fn rss_figures(samples: &[Sample], limits: &Limits) -> Option<RssFigures> {
    let warm = warm(samples, limits)?;
    let last = samples.last()?;
    let window = limits.warmup_frames.max(1);
    let median = |mut values: Vec<u64>| {
        values.sort_unstable();
        values.get(values.len() / 2).copied().unwrap_or(0)
    };
    let warm_window: Vec<u64> = samples
        .iter()
        .filter(|s| {
            s.frames_displayed >= warm.frames_displayed
                && s.frames_displayed < warm.frames_displayed + window
        })
        .map(|s| s.rss_bytes)
        .collect();
    let end_from = last
        .frames_displayed
        .saturating_sub(window)
        .max(warm.frames_displayed);
    let end_window: Vec<u64> = samples
        .iter()
        .filter(|s| s.frames_displayed >= end_from)
        .map(|s| s.rss_bytes)
        .collect();
    Some(RssFigures {
        warm_samples: warm_window.len(),
        warm_bytes: median(warm_window),
        warm_at_h: warm.simulated_h,
        end_samples: end_window.len(),
        end_bytes: median(end_window),
    })
}
