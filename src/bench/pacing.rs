//! `dreamd bench pacing`: the whole daemon (pipeline, display, status writer) in this process on
//! the embedded default for a fixed time, with the start gate at 0 and its output in a
//! [`Scratch`] folder, reporting display interval error, held/skipped frames, time to first
//! frame, GPU-lock figures and resident memory at start and end, and, from outside, when each
//! new `current_frame.*` lands as an inotify watcher sees it ([`super::renames`]).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::renames::{RenameFigures, RenameWatch};
use super::Scratch;
use crate::config::Config;
use crate::daemon;
use crate::stats::{round, rss_bytes};

/// Options of `dreamd bench pacing`.
#[derive(Debug, Clone)]
pub struct PacingOptions {
    pub seconds: f64,
    /// Seconds after start at which the "start" memory figure is taken.
    pub warmup_seconds: f64,
}

/// Results of `dreamd bench pacing`.
#[derive(Debug, Clone, Serialize)]
pub struct PacingReport {
    pub seconds: f64,
    pub target_fps: f64,
    pub decoder: String,
    pub frames_displayed: u64,
    pub intervals_measured: u64,
    pub interval_error_p50_ms: f64,
    pub interval_error_p99_ms: f64,
    pub interval_error_max_ms: f64,
    pub late: u64,
    pub held: u64,
    pub skipped: u64,
    pub first_frame_ms: Option<f64>,
    pub pairs: u64,
    pub lock_acquisitions: u64,
    pub lock_acquisitions_per_pair: f64,
    pub avg_lock_wait_ms: f64,
    pub max_lock_wait_ms: f64,
    pub rss_start_mb: f64,
    pub rss_end_mb: f64,
    pub rss_max_mb: f64,
    /// `current_frame.*` renames as an inotify watcher on the output folder saw them.
    pub watcher: RenameFigures,
}

/// Runs the daemon for `options.seconds` on `config` (gate forced to 0, output and logs in a
/// temporary folder that is removed afterwards).
pub async fn run(mut config: Config, options: PacingOptions) -> anyhow::Result<PacingReport> {
    let scratch = Scratch::new("bench")?;
    scratch.redirect(&mut config);
    config.display.start_gate_seconds = 0.0;
    // Pacing is measured without HTTP (`bench http` measures with it).
    config.server.enabled = false;
    let target_fps = config.display.target_fps;
    let output = config.paths.output_dir.clone();
    std::fs::create_dir_all(&output)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", output.display()))?;
    let watch = RenameWatch::start(&output)?;

    let started = Instant::now();
    let shutdown = CancellationToken::new();
    let sampler = {
        let shutdown = shutdown.clone();
        let warmup = Duration::from_secs_f64(options.warmup_seconds);
        tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tick.tick() => {
                        if started.elapsed() >= warmup {
                            samples.extend(rss_bytes());
                        }
                    }
                }
            }
            samples.extend(rss_bytes());
            samples
        })
    };
    let duration = Duration::from_secs_f64(options.seconds);
    let report = daemon::run(config, None, shutdown.clone(), Some(duration)).await;
    shutdown.cancel();
    let rss = sampler.await.unwrap_or_default();
    let renames = watch.stop();
    drop(scratch);
    let report = report?;

    let t = &report.telemetry;
    let timing = t.display.timing();
    let pairs = t.pipeline.pairs.load(Ordering::Relaxed);
    let mb = |b: u64| round(b as f64 / (1024.0 * 1024.0), 1);
    let to_ms = |d: Duration| round(d.as_secs_f64() * 1000.0, 3);
    Ok(PacingReport {
        seconds: options.seconds,
        target_fps,
        decoder: report.decoder.clone(),
        frames_displayed: t.display.frames_displayed.load(Ordering::Relaxed),
        intervals_measured: timing.interval_error.count(),
        interval_error_p50_ms: to_ms(timing.interval_error.quantile(0.50)),
        interval_error_p99_ms: to_ms(timing.interval_error.quantile(0.99)),
        interval_error_max_ms: to_ms(timing.interval_error.max()),
        late: t.display.late.load(Ordering::Relaxed),
        held: t.display.held.load(Ordering::Relaxed),
        skipped: t.display.skipped.load(Ordering::Relaxed),
        first_frame_ms: t
            .display
            .first_frame_at()
            .map(|at| to_ms(at.saturating_duration_since(t.started))),
        pairs,
        lock_acquisitions: report.lock.acquisitions,
        lock_acquisitions_per_pair: if pairs == 0 {
            0.0
        } else {
            round(report.lock.acquisitions as f64 / pairs as f64, 3)
        },
        avg_lock_wait_ms: round(report.lock.avg_wait_ms(), 4),
        max_lock_wait_ms: to_ms(report.lock.max_wait),
        rss_start_mb: rss.first().copied().map_or(0.0, mb),
        rss_end_mb: rss.last().copied().map_or(0.0, mb),
        rss_max_mb: rss.iter().copied().max().map_or(0.0, mb),
        watcher: renames.figures(Duration::from_secs_f64(1.0 / target_fps)),
    })
}

impl PacingReport {
    /// Human-readable summary.
    pub fn to_text(&self) -> String {
        let first = self
            .first_frame_ms
            .map_or("never".to_string(), |ms| format!("{ms:.0} ms"));
        format!(
            "dreamd bench pacing: {:.0} s at {} fps, decoder {}\n\
             frames displayed      {}\n\
             interval error        p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms ({} intervals)\n\
             late / held / skipped {} / {} / {}\n\
             first frame           {first}\n\
             GPU lock              {} acquisitions for {} pairs ({:.3} per pair), avg wait {:.4} ms, max {:.3} ms\n\
             RSS                   start {:.1} MB, end {:.1} MB, max {:.1} MB\n\
             file watcher          {} renames; interval error p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms; \
             after its tick p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms; {} close-writes after the rename\n",
            self.seconds,
            self.target_fps,
            self.decoder,
            self.frames_displayed,
            self.interval_error_p50_ms,
            self.interval_error_p99_ms,
            self.interval_error_max_ms,
            self.intervals_measured,
            self.late,
            self.held,
            self.skipped,
            self.lock_acquisitions,
            self.pairs,
            self.lock_acquisitions_per_pair,
            self.avg_lock_wait_ms,
            self.max_lock_wait_ms,
            self.rss_start_mb,
            self.rss_end_mb,
            self.rss_max_mb,
            self.watcher.renames,
            self.watcher.interval_error_p50_ms,
            self.watcher.interval_error_p99_ms,
            self.watcher.interval_error_max_ms,
            self.watcher.lateness_p50_ms,
            self.watcher.lateness_p99_ms,
            self.watcher.lateness_max_ms,
            self.watcher.close_writes_on_target,
        )
    }
}
