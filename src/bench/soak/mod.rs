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

use super::{InProcess, Scratch};
use crate::config::{Config, DecoderChoice, FaultsConfig};
use crate::stats::{round, rss_bytes, DisplayPhase, Telemetry};

mod judge;
mod report;
#[cfg(test)]
mod tests;

pub use judge::{judge, rss_figures, warm, Check, RssFigures, Sample};
pub use report::SoakReport;

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
pub(crate) const HUMAN_LOG_BUDGET: u64 = 4 * MIB;
/// How often the display phase is polled (for re-buffering and the end of the run).
pub const POLL: Duration = Duration::from_millis(50);
pub(crate) const MIB: u64 = 1024 * 1024;

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

/// Runs `plan` until its frames have been displayed, `interrupt` is cancelled (SIGINT), the
/// daemon stops on its own, or the wall clock passes three times the expected time plus a
/// minute; then stops the daemon and judges the samples.
pub async fn run(plan: &Plan, interrupt: CancellationToken) -> anyhow::Result<SoakReport> {
    let load_average_start = report::load_average();
    let mut daemon = InProcess::start(plan.config.clone()).await?;
    let telemetry = Arc::clone(&daemon.started.telemetry);
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
    loop {
        tokio::select! {
            _ = interrupt.cancelled() => break,
            _ = daemon.ended() => break,
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
    let run = daemon.stop().await?;
    Ok(SoakReport::new(plan, &run, &samples, load_average_start))
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
