//! `dreamd soak`: a bounded long run of the real daemon on a simulated clock.
//!
//! The whole daemon (pipeline, display, status writer, HTTP server on a free loopback port) runs
//! in this process on the preview decoder at [`WIDTH`]×[`HEIGHT`], with its output and logs in a
//! temporary folder and its display paced `speed` times faster than `display.target_fps`. The
//! simulated clock is the display: simulated time = frames displayed ÷ `display.target_fps`, so
//! `--hours 24` at 4 fps is 345 600 frames, which pass in minutes. The logs roll by size
//! (`dreamd.jsonl` at [`JSONL_MAX_MB`] MiB, [`JSONL_KEEP`] kept) and the frames folder keeps
//! [`KEEP_FRAMES`] files (unless the config sets `output.keep_frames`).
//!
//! Only frame production and display are accelerated. Everything timed by the wall clock runs at
//! its normal pace: the `status.json` cadence (1 s), the `degraded` window, stage timeouts, the
//! `buffer` log event every 5 s and the daily `dreamd.<date>.log`.
//!
//! The display rate is set on the running daemon's live settings after the config has been
//! validated at the simulated rate, so the soak may pace faster than `display.target_fps`'s
//! public limit of 120 while the validation users see stays unchanged.
//!
//! While it runs the soak polls the display phase every [`POLL`] and takes a [`Sample`] every
//! `sample_every` (1 s): resident memory, files in `output/frames`, bytes in `logs/`, display
//! counters and `status.json`'s state. [`judge`] turns the samples into [`Check`]s; the command
//! exits non-zero naming every check that failed.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::Scratch;
use crate::config::{Config, DecoderChoice, FaultsConfig};
use crate::daemon;
use crate::stats::{round, rss_bytes, DisplayPhase, Telemetry};

/// Width of the soak's frames: small, so generation is cheap.
pub const WIDTH: u32 = 128;
/// Height of the soak's frames.
pub const HEIGHT: u32 = 64;
/// Frames kept in `output/frames` unless the config sets `output.keep_frames`.
pub const KEEP_FRAMES: usize = 300;
/// `logging.jsonl_max_mb` during a soak: small, so rotation happens.
pub const JSONL_MAX_MB: usize = 1;
/// `logging.jsonl_keep` during a soak.
pub const JSONL_KEEP: usize = 2;
/// Wall-clock seconds of frames the buffer aims to hold at the soak's display rate.
pub const BUFFER_SECONDS: f64 = 2.0;
/// Wall-clock seconds of frames the start gate waits for.
pub const GATE_SECONDS: f64 = 1.0;
/// Default `--speed`: a display at 800 fps for the default 4 fps, which shows 24 simulated
/// hours in about 8 minutes on a 2-core VM (the display falls somewhat short of 800 there).
pub const DEFAULT_SPEED: f64 = 200.0;
/// Fastest display the soak accepts (an interval of 1 ms).
pub const MAX_DISPLAY_FPS: f64 = 1000.0;
/// Default limit on resident-memory growth from the warm sample to the end.
pub const RSS_GROWTH_LIMIT: f64 = 0.05;
/// Share of the run (in frames) after which the warm memory sample is taken.
pub const WARMUP_FRACTION: f64 = 0.10;
/// `status.json`'s buffer percentage at which the buffer counts as filled: the warm memory
/// sample also waits for it, since the buffered frames are most of a soak's memory.
pub const BUFFER_FILLED_PERCENT: f64 = 90.0;
/// The console and `dreamd.<date>.log` filter: warnings, without the structured events (those
/// all go to `dreamd.jsonl`, which is what rotates).
const LOG_LEVEL: &str = "warn,dreamd::event=off";
/// Bytes a rotated `dreamd.jsonl` file may pass its limit by: the writes that crossed it.
const JSONL_SLACK: u64 = 256 * 1024;
/// Bytes the daily human log may reach during a soak (it rolls by the wall clock, which the soak
/// does not accelerate, so it must stay small on its own).
const HUMAN_LOG_BUDGET: u64 = 4 * MIB;
/// How often the display phase is polled (for re-buffering and the end of the run).
pub const POLL: Duration = Duration::from_millis(50);
const MIB: u64 = 1024 * 1024;

/// How fast the display runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rate {
    /// Simulated seconds per wall-clock second.
    Speed(f64),
    /// Frames displayed per wall-clock second.
    Fps(f64),
}

/// Options of `dreamd soak`.
#[derive(Debug, Clone)]
pub struct SoakOptions {
    /// Simulated hours to run.
    pub hours: f64,
    pub rate: Rate,
    /// Wall-clock time between samples.
    pub sample_every: Duration,
    /// Largest allowed memory growth (0.05 = 5 %).
    pub rss_growth: f64,
}

/// What the verdicts are measured against.
#[derive(Debug, Clone, Serialize)]
pub struct Limits {
    /// Frames to display (the simulated hours).
    pub frames_target: u64,
    /// Frames displayed before the warm memory sample.
    pub warmup_frames: u64,
    /// Largest allowed resident-memory growth, warm sample to end (0.05 = 5 %).
    pub rss_growth: f64,
    /// `output.keep_frames`.
    pub keep_frames: usize,
    /// Files `output/frames` may hold: retention plus frames being saved (two pairs) and their
    /// temporary files.
    pub frame_files: usize,
    /// `(jsonl_keep + 1) × jsonl_max_mb` MiB, plus the overshoot of each file's last write.
    pub jsonl_bytes: u64,
    /// `dreamd.jsonl` and its `jsonl_keep` rotated siblings.
    pub jsonl_files: usize,
    /// Bytes the daily human log may reach.
    pub human_log_bytes: u64,
}

/// A soak ready to run: the daemon's config (output and logs in `scratch`) and the limits.
#[derive(Debug)]
pub struct Plan {
    /// The config the daemon runs on, display rate already raised (not re-validated).
    pub config: Config,
    /// The temporary folder, removed when the plan is dropped.
    pub scratch: Scratch,
    /// `display.target_fps` of the config: the rate being simulated.
    pub simulated_fps: f64,
    /// The wall-clock display rate.
    pub display_fps: f64,
    pub hours: f64,
    pub sample_every: Duration,
    pub limits: Limits,
}

/// Builds the soak's config from `config`: preview decoder at 128×64, small retention and logs
/// that rotate, faults off, server on a free loopback port, output and logs in a temporary
/// folder. Validates it at the simulated rate, then raises the display rate.
pub fn plan(mut config: Config, options: &SoakOptions) -> anyhow::Result<Plan> {
    anyhow::ensure!(
        options.hours.is_finite() && options.hours > 0.0,
        "--hours must be a positive number (got {})",
        options.hours
    );
    let simulated_fps = config.display.target_fps;
    let display_fps = match options.rate {
        Rate::Speed(speed) => simulated_fps * speed,
        Rate::Fps(fps) => fps,
    };
    anyhow::ensure!(
        display_fps.is_finite() && display_fps > 0.0 && display_fps <= MAX_DISPLAY_FPS,
        "the soak's display rate must be > 0 and <= {MAX_DISPLAY_FPS} fps (got {display_fps}: \
         --speed × display.target_fps, or --fps)"
    );
    anyhow::ensure!(
        options.rss_growth.is_finite() && options.rss_growth > 0.0,
        "the memory growth limit must be positive (got {} %)",
        options.rss_growth * 100.0
    );
    anyhow::ensure!(
        !options.sample_every.is_zero(),
        "the sample interval must be positive"
    );

    let scratch = Scratch::new("soak")?;
    scratch.redirect(&mut config);
    let g = &mut config.generation;
    g.decoder = DecoderChoice::Preview;
    g.width = WIDTH;
    g.height = HEIGHT;
    g.decode_divisor = None;
    g.device = "cpu".to_string();
    // Buffer and gate in wall-clock seconds at the soak's rate, expressed at the simulated one.
    let speed = display_fps / simulated_fps;
    config.buffer.target_seconds = BUFFER_SECONDS * speed;
    config.display.start_gate_seconds = GATE_SECONDS * speed;
    let keep_frames = *config.output.keep_frames.get_or_insert(KEEP_FRAMES);
    config.logging.level = LOG_LEVEL.to_string();
    config.logging.jsonl_max_mb = JSONL_MAX_MB;
    config.logging.jsonl_keep = JSONL_KEEP;
    config.faults = FaultsConfig::default();
    config.server.enabled = true;
    config.server.bind = "127.0.0.1:0".to_string();
    config
        .validate()
        .context("the soak's config (at the simulated rate)")?;
    // From here on the config is only handed to the daemon, which does not re-validate: the
    // soak-only path past the public 120 fps limit.
    config.buffer.target_seconds = BUFFER_SECONDS;
    config.display.start_gate_seconds = GATE_SECONDS;
    config.display.target_fps = display_fps;

    let frames_target = (options.hours * 3600.0 * simulated_fps).ceil() as u64;
    let frames_per_pair = config.generation.frames_per_pair as usize;
    let jsonl_files = JSONL_KEEP + 1;
    let limits = Limits {
        frames_target,
        warmup_frames: (frames_target as f64 * WARMUP_FRACTION).ceil() as u64,
        rss_growth: options.rss_growth,
        keep_frames,
        frame_files: keep_frames + 2 * (frames_per_pair + 1) + 4,
        jsonl_bytes: jsonl_files as u64 * (JSONL_MAX_MB as u64 * MIB + JSONL_SLACK),
        jsonl_files,
        human_log_bytes: HUMAN_LOG_BUDGET,
    };
    Ok(Plan {
        config,
        scratch,
        simulated_fps,
        display_fps,
        hours: options.hours,
        sample_every: options.sample_every,
        limits,
    })
}

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
    /// Times the display went from playing back to buffering so far (polled every [`POLL`]).
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

/// Results of `dreamd soak`.
#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    /// Every check passed.
    pub passed: bool,
    /// Names of the checks that failed.
    pub failed: Vec<&'static str>,
    pub checks: Vec<Check>,
    pub simulated_hours: f64,
    pub simulated_fps: f64,
    pub display_fps: f64,
    /// Simulated seconds per wall-clock second, as run.
    pub speed: f64,
    pub decoder: String,
    pub size: String,
    pub frames_target: u64,
    pub frames_displayed: u64,
    pub pairs: u64,
    pub wall_s: f64,
    /// Median RSS over a tenth of the run from the warm sample (see [`rss_figures`]).
    pub rss_warm_mb: f64,
    pub rss_warm_at_simulated_h: f64,
    /// Median RSS over the last tenth of the run.
    pub rss_end_mb: f64,
    pub rss_max_mb: f64,
    pub rss_growth_pct: f64,
    pub frame_files_max: usize,
    pub keep_frames: usize,
    pub logs_bytes_max: u64,
    pub jsonl_bytes_max: u64,
    pub jsonl_files_max: usize,
    pub human_log_bytes_end: u64,
    pub late: u64,
    pub held: u64,
    pub skipped: u64,
    pub interval_error_p99_ms: f64,
    pub rebuffers: u64,
    pub samples: usize,
    /// `/proc/loadavg`'s 1, 5 and 15 minute figures at the start and at the end.
    pub load_average_start: String,
    pub load_average_end: String,
    /// CPU model and core count.
    pub machine: String,
    pub limits: Limits,
    /// Up to 25 samples spread evenly over the run (the last included).
    pub timeline: Vec<Sample>,
}

/// Runs `plan` until its frames have been displayed, `interrupt` is cancelled (SIGINT), the
/// daemon stops on its own, or the wall clock passes three times the expected time plus a
/// minute; then stops the daemon and judges the samples.
pub async fn run(plan: &Plan, interrupt: CancellationToken) -> anyhow::Result<SoakReport> {
    let load_average_start = load_average();
    let shutdown = CancellationToken::new();
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let mut daemon = tokio::spawn(daemon::run_observed(
        plan.config.clone(),
        None,
        shutdown.clone(),
        None,
        Some(started_tx),
    ));
    let telemetry = match started_rx.await {
        Ok(started) => started.telemetry,
        Err(_) => {
            return Err(match daemon.await {
                Ok(Err(e)) => e.context("the daemon did not start"),
                Ok(Ok(_)) => anyhow::anyhow!("the daemon stopped before it started"),
                Err(e) => anyhow::anyhow!("the daemon task failed: {e}"),
            })
        }
    };
    let limits = &plan.limits;
    let expected = Duration::from_secs_f64(limits.frames_target as f64 / plan.display_fps);
    let give_up = expected * 3 + Duration::from_secs(60);
    let probe = Probe {
        telemetry: Arc::clone(&telemetry),
        frames_dir: plan.config.paths.output_dir.join("frames"),
        status: plan.config.paths.output_dir.join("status.json"),
        logs: plan.config.paths.log_dir.clone(),
        simulated_fps: plan.simulated_fps,
    };

    let mut samples = Vec::new();
    let mut rebuffers = 0;
    let mut last_phase = DisplayPhase::Starting;
    let mut poll = tokio::time::interval(POLL);
    let mut next_sample = Instant::now();
    let mut daemon_result = None;
    loop {
        tokio::select! {
            _ = interrupt.cancelled() => break,
            result = &mut daemon => {
                daemon_result = Some(result);
                break;
            }
            _ = poll.tick() => {}
        }
        let phase = telemetry.display.phase();
        if last_phase == DisplayPhase::Playing && phase == DisplayPhase::Buffering {
            rebuffers += 1;
        }
        last_phase = phase;
        let done =
            telemetry.display.frames_displayed.load(Ordering::Relaxed) >= limits.frames_target;
        if done || Instant::now() >= next_sample {
            samples.push(probe.sample(rebuffers)?);
            next_sample += plan.sample_every;
        }
        if done || telemetry.started.elapsed() > give_up {
            break;
        }
    }
    if samples.is_empty() {
        samples.push(probe.sample(rebuffers)?);
    }
    shutdown.cancel();
    let run = match daemon_result {
        Some(result) => result,
        None => daemon.await,
    };
    let run = run
        .map_err(|e| anyhow::anyhow!("the daemon task failed: {e}"))?
        .context("the daemon failed")?;

    let checks = judge(&samples, limits);
    let t = &run.telemetry;
    let last = samples.last().cloned().unwrap_or_default();
    let rss = rss_figures(&samples, limits);
    let mb = |b: u64| round(b as f64 / MIB as f64, 1);
    let wall_s = last.wall_s;
    Ok(SoakReport {
        passed: checks.iter().all(|c| c.passed),
        failed: checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| c.name)
            .collect(),
        checks,
        simulated_hours: round(last.simulated_h, 3),
        simulated_fps: plan.simulated_fps,
        display_fps: plan.display_fps,
        speed: if wall_s > 0.0 {
            round(last.simulated_h * 3600.0 / wall_s, 1)
        } else {
            0.0
        },
        decoder: run.decoder.clone(),
        size: format!(
            "{}x{}",
            plan.config.generation.width, plan.config.generation.height
        ),
        frames_target: limits.frames_target,
        frames_displayed: last.frames_displayed,
        pairs: t.pipeline.pairs.load(Ordering::Relaxed),
        wall_s: round(wall_s, 1),
        rss_warm_mb: mb(rss.map_or(0, |r| r.warm_bytes)),
        rss_warm_at_simulated_h: round(rss.map_or(0.0, |r| r.warm_at_h), 2),
        rss_end_mb: mb(rss.map_or(0, |r| r.end_bytes)),
        rss_max_mb: mb(samples.iter().map(|s| s.rss_bytes).max().unwrap_or(0)),
        rss_growth_pct: rss
            .filter(|r| r.warm_bytes > 0)
            .map_or(0.0, |r| round(r.growth() * 100.0, 2)),
        frame_files_max: samples.iter().map(|s| s.frame_files).max().unwrap_or(0),
        keep_frames: limits.keep_frames,
        logs_bytes_max: samples.iter().map(Sample::log_bytes).max().unwrap_or(0),
        jsonl_bytes_max: samples.iter().map(|s| s.jsonl_bytes).max().unwrap_or(0),
        jsonl_files_max: samples.iter().map(|s| s.jsonl_files).max().unwrap_or(0),
        human_log_bytes_end: last.human_log_bytes,
        late: last.late,
        held: last.held,
        skipped: last.skipped,
        interval_error_p99_ms: last.p99_ms,
        rebuffers: last.rebuffers,
        samples: samples.len(),
        load_average_start,
        load_average_end: load_average(),
        machine: machine(),
        limits: limits.clone(),
        timeline: spread(&samples, 25),
    })
}

/// What a sample looks at.
struct Probe {
    telemetry: Arc<Telemetry>,
    frames_dir: PathBuf,
    status: PathBuf,
    logs: PathBuf,
    simulated_fps: f64,
}

impl Probe {
    fn sample(&self, rebuffers: u64) -> anyhow::Result<Sample> {
        let t = &self.telemetry;
        let d = &t.display;
        let frames_displayed = d.frames_displayed.load(Ordering::Relaxed);
        let frames = list(&self.frames_dir)?;
        let logs = list(&self.logs)?;
        let is_jsonl = |name: &str| name.starts_with("dreamd.jsonl");
        let jsonl: Vec<&(String, u64)> = logs.iter().filter(|(n, _)| is_jsonl(n)).collect();
        let status = std::fs::read_to_string(&self.status)
            .ok()
            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
            .unwrap_or_default();
        let state = status["state"].as_str().unwrap_or("unreadable").to_string();
        Ok(Sample {
            wall_s: round(t.started.elapsed().as_secs_f64(), 2),
            frames_displayed,
            simulated_h: frames_displayed as f64 / self.simulated_fps / 3600.0,
            rss_bytes: rss_bytes().unwrap_or(0),
            frame_files: frames.len(),
            jsonl_bytes: jsonl.iter().map(|(_, b)| b).sum(),
            jsonl_files: jsonl.len(),
            human_log_bytes: logs
                .iter()
                .filter(|(n, _)| !is_jsonl(n))
                .map(|(_, b)| b)
                .sum(),
            held: d.held.load(Ordering::Relaxed),
            skipped: d.skipped.load(Ordering::Relaxed),
            late: d.late.load(Ordering::Relaxed),
            p99_ms: round(
                d.timing().interval_error.quantile(0.99).as_secs_f64() * 1000.0,
                3,
            ),
            failures: t.pipeline.total_failures(),
            state,
            buffer_percentage: status["buffer"]["percentage"].as_f64().unwrap_or(0.0),
            rebuffers,
        })
    }
}

/// Names and sizes of the files in `dir` (one that vanishes while listed is left out; a
/// missing folder is empty).
fn list(dir: &Path) -> anyhow::Result<Vec<(String, u64)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot list {}", dir.display())),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        match entry.metadata() {
            Ok(meta) if meta.is_file() => {
                files.push((entry.file_name().to_string_lossy().into_owned(), meta.len()))
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).with_context(|| format!("cannot read {}", entry.path().display()))
            }
        }
    }
    Ok(files)
}

/// At most `n` of `samples`, evenly spread, the first and the last included.
fn spread(samples: &[Sample], n: usize) -> Vec<Sample> {
    if samples.len() <= n || n < 2 {
        return samples.to_vec();
    }
    let last = samples.len() - 1;
    (0..n)
        .map(|i| samples[i * last / (n - 1)].clone())
        .collect()
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".to_string());
    format!("{cores} cores, {model}")
}

impl SoakReport {
    /// Human-readable summary: the run, the figures, one line per check, the verdict.
    pub fn to_text(&self) -> String {
        let mut out = format!(
            "dreamd soak: {:.2} simulated hours ({} of {} frames at {} fps) in {:.0} s wall at {} fps (x{:.0}), decoder {} {}\n\
             RSS            warm {:.1} MB (at {:.2} h), end {:.1} MB ({:+.2} %), max {:.1} MB\n\
             frame files    at most {} (keep_frames {})\n\
             logs           at most {:.2} MiB; dreamd.jsonl* at most {:.2} MiB in {} files; human log {:.1} KiB\n\
             display        late {} held {} skipped {}, interval error p99 {:.3} ms, {} re-buffers\n\
             load average   {} at start, {} at end ({})\n",
            self.simulated_hours,
            self.frames_displayed,
            self.frames_target,
            self.simulated_fps,
            self.wall_s,
            self.display_fps,
            self.speed,
            self.decoder,
            self.size,
            self.rss_warm_mb,
            self.rss_warm_at_simulated_h,
            self.rss_end_mb,
            self.rss_growth_pct,
            self.rss_max_mb,
            self.frame_files_max,
            self.keep_frames,
            self.logs_bytes_max as f64 / MIB as f64,
            self.jsonl_bytes_max as f64 / MIB as f64,
            self.jsonl_files_max,
            self.human_log_bytes_end as f64 / 1024.0,
            self.late,
            self.held,
            self.skipped,
            self.interval_error_p99_ms,
            self.rebuffers,
            self.load_average_start,
            self.load_average_end,
            self.machine,
        );
        for check in &self.checks {
            out.push_str(&format!(
                "{} {:13} {}\n",
                if check.passed { "ok  " } else { "FAIL" },
                check.name,
                check.detail
            ));
        }
        out.push_str(&if self.passed {
            "verdict: pass\n".to_string()
        } else {
            format!("verdict: FAIL ({})\n", self.failed.join(", "))
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            frames_target: 1000,
            warmup_frames: 100,
            rss_growth: 0.05,
            keep_frames: 300,
            frame_files: 326,
            jsonl_bytes: 3 * MIB,
            jsonl_files: 3,
            human_log_bytes: HUMAN_LOG_BUDGET,
        }
    }

    /// A healthy run: 11 samples, 100 frames apart, flat memory, files and logs in bounds.
    fn healthy() -> Vec<Sample> {
        (0..=10u64)
            .map(|i| Sample {
                wall_s: i as f64,
                frames_displayed: i * 100,
                simulated_h: i as f64 * 100.0 / 4.0 / 3600.0,
                rss_bytes: 40 * MIB + i * 1000,
                frame_files: 300,
                jsonl_bytes: MIB + i * 1000,
                jsonl_files: 2,
                human_log_bytes: 10_000,
                state: if i == 0 { "buffering" } else { "playing" }.to_string(),
                buffer_percentage: if i == 0 { 20.0 } else { 100.0 },
                ..Sample::default()
            })
            .collect()
    }

    fn failed(samples: &[Sample]) -> Vec<&'static str> {
        judge(samples, &limits())
            .into_iter()
            .filter(|c| !c.passed)
            .map(|c| c.name)
            .collect()
    }

    #[test]
    fn a_healthy_run_passes_every_check() {
        let checks = judge(&healthy(), &limits());
        assert_eq!(checks.len(), 7);
        assert!(checks.iter().all(|c| c.passed), "{checks:#?}");
    }

    #[test]
    fn memory_growth_past_the_limit_fails_and_is_measured_from_the_warm_sample() {
        let mut samples = healthy();
        // Start-up growth before the warm sample (100 frames) does not count …
        samples[0].rss_bytes = 10 * MIB;
        assert!(failed(&samples).is_empty());
        // … growth after it does (the end figure is the median of the last tenth: samples 9-10).
        samples[9].rss_bytes = samples[1].rss_bytes * 106 / 100;
        samples[10].rss_bytes = samples[1].rss_bytes * 106 / 100;
        assert_eq!(failed(&samples), ["rss_growth"]);
        let detail = &judge(&samples, &limits())[1].detail;
        assert!(detail.contains("+6.00 %"), "{detail}");
    }

    #[test]
    fn the_warm_sample_waits_for_the_filled_buffer() {
        let mut samples = healthy();
        for s in &mut samples[..4] {
            s.buffer_percentage = 50.0;
            s.rss_bytes = 20 * MIB;
        }
        // Frames 100-300 were displayed while the buffer (and memory) still grew.
        assert_eq!(warm(&samples, &limits()), Some(&samples[4]));
        assert!(failed(&samples).is_empty(), "{:?}", failed(&samples));
        // A buffer that never fills: the first sample past the warm-up frames.
        for s in &mut samples {
            s.buffer_percentage = 10.0;
        }
        assert_eq!(warm(&samples, &limits()), Some(&samples[1]));
        assert_eq!(failed(&samples), ["rss_growth"]);
    }

    #[test]
    fn a_stall_a_rebuffer_and_too_many_files_are_each_named() {
        let mut samples = healthy();
        samples[5].frames_displayed = samples[4].frames_displayed;
        samples[7].frame_files = 400;
        samples[10].rebuffers = 1;
        assert_eq!(
            failed(&samples),
            ["frame_files", "no_stall", "no_buffering"]
        );
        let mut samples = healthy();
        samples[3].state = "buffering".to_string();
        assert_eq!(failed(&samples), ["no_buffering"]);
    }

    #[test]
    fn unbounded_logs_an_unfinished_run_and_failures_fail() {
        let mut samples = healthy();
        samples[6].jsonl_bytes = 5 * MIB;
        assert_eq!(failed(&samples), ["logs_bounded"]);
        let mut samples = healthy();
        samples[6].jsonl_files = 4;
        samples[10].failures = 2;
        assert_eq!(failed(&samples), ["no_failures", "logs_bounded"]);
        let mut samples = healthy();
        samples.truncate(8);
        assert_eq!(failed(&samples), ["completed"]);
        assert_eq!(failed(&[]), ["completed"]);
    }

    #[test]
    fn no_frame_at_all_is_a_stall_and_no_warm_sample_fails_memory() {
        let samples: Vec<Sample> = healthy()
            .into_iter()
            .map(|s| Sample {
                frames_displayed: 0,
                ..s
            })
            .collect();
        let names = failed(&samples);
        assert!(
            names.contains(&"no_stall") && names.contains(&"rss_growth"),
            "{names:?}"
        );
    }

    #[test]
    fn the_plan_keeps_public_validation_and_raises_the_rate_afterwards() {
        let options = SoakOptions {
            hours: 24.0,
            rate: Rate::Speed(100.0),
            sample_every: Duration::from_secs(1),
            rss_growth: RSS_GROWTH_LIMIT,
        };
        let plan = plan(Config::default(), &options).unwrap();
        assert_eq!(plan.display_fps, 400.0);
        assert_eq!(plan.config.display.target_fps, 400.0);
        assert!(
            plan.config.validate().is_err(),
            "400 fps is past the public limit"
        );
        assert_eq!(plan.limits.frames_target, 24 * 3600 * 4);
        assert_eq!(plan.limits.warmup_frames, 34_560);
        assert_eq!(plan.limits.jsonl_files, JSONL_KEEP + 1);
        assert_eq!(plan.config.buffer_frames(), 800);
        assert!(plan.scratch.path().is_dir());
        let too_fast = SoakOptions {
            rate: Rate::Fps(5000.0),
            ..options
        };
        assert!(plan_err(&too_fast).contains("<= 1000 fps"));
    }

    fn plan_err(options: &SoakOptions) -> String {
        plan(Config::default(), options).unwrap_err().to_string()
    }

    #[test]
    fn spread_keeps_the_ends() {
        let samples = healthy();
        let picked = spread(&samples, 3);
        assert_eq!(picked.len(), 3);
        assert_eq!(picked[0], samples[0]);
        assert_eq!(picked[1], samples[5]);
        assert_eq!(picked[2], samples[10]);
    }
}
