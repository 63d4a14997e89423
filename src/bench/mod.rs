//! `dreamd bench`: measurements of the real daemon, reported as text or JSON.
//!
//! `pacing` runs the whole daemon (pipeline, display, status writer) in this process on the
//! embedded default for a fixed time, with the start gate at 0 and its output in a temporary
//! folder, and reports display interval error, held/skipped frames, time to first frame, GPU-lock
//! figures and resident memory at start and end.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::daemon;
use crate::stats::{round, rss_bytes};

pub mod resolution;
pub mod soak;

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
}

/// Runs the daemon for `options.seconds` on `config` (gate forced to 0, output and logs in a
/// temporary folder that is removed afterwards).
pub async fn pacing(mut config: Config, options: PacingOptions) -> anyhow::Result<PacingReport> {
    let scratch = Scratch::new("bench")?;
    scratch.redirect(&mut config);
    config.display.start_gate_seconds = 0.0;
    // Pacing is measured without HTTP (`bench http` measures with it).
    config.server.enabled = false;
    let target_fps = config.display.target_fps;

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
             RSS                   start {:.1} MB, end {:.1} MB, max {:.1} MB\n",
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
        )
    }
}

/// A temporary folder for one measured run (`dreamd bench pacing`, `dreamd soak`), removed when
/// dropped.
#[derive(Debug)]
pub struct Scratch {
    path: PathBuf,
}

impl Scratch {
    /// Creates `<temp>/dreamd-<kind>-<pid>`.
    pub fn new(kind: &str) -> anyhow::Result<Scratch> {
        let path = std::env::temp_dir().join(format!("dreamd-{kind}-{}", std::process::id()));
        std::fs::create_dir_all(&path)
            .map_err(|e| anyhow::anyhow!("cannot create {kind} folder {}: {e}", path.display()))?;
        Ok(Scratch { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Points `config`'s output and log folders into this folder (`output/`, `logs/`).
    pub fn redirect(&self, config: &mut Config) {
        config.paths.output_dir = self.path.join("output");
        config.paths.log_dir = self.path.join("logs");
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Options of `dreamd bench decode`.
#[derive(Debug, Clone)]
pub struct DecodeOptions {
    pub batch: usize,
    pub latent: crate::latent::LatentShape,
    pub warmup: usize,
    pub runs: usize,
}

/// Results of `dreamd bench decode` and `dreamd bench encode` (for the encoder, `latent` is
/// the input picture's `3xHxW`, `output` the latent's `CxHxW`, and a frame is one picture).
#[derive(Debug, Clone, Serialize)]
pub struct DecodeReport {
    /// `decode` or `encode`.
    pub kind: String,
    pub decoder: String,
    pub device: String,
    /// `generation.precision` of the engine.
    pub precision: String,
    pub batch: usize,
    pub latent: String,
    pub output: String,
    pub runs: usize,
    pub ms_per_batch: f64,
    pub ms_per_frame: f64,
    pub frames_per_s: f64,
    /// Multiply-adds ×2 of the TAESD decoder at this size, per second (0 for other decoders).
    pub gflop_per_s: f64,
    pub threads: usize,
}

/// The benchmark latents: `z[n,c,h,w] = 2·sin(0.7c + 0.3h + 0.11w + 0.37n)` (the golden
/// vectors' formula with a per-frame phase), shared with `tools/ort_taesd.py`.
pub fn bench_latents(
    batch: usize,
    shape: crate::latent::LatentShape,
) -> crate::latent::LatentBatch {
    let mut out = crate::latent::LatentBatch::with_capacity(shape, batch);
    for n in 0..batch {
        let mut data = Vec::with_capacity(shape.len());
        for c in 0..shape.channels {
            for h in 0..shape.height {
                for w in 0..shape.width {
                    let arg = 0.7 * c as f32 + 0.3 * h as f32 + 0.11 * w as f32 + 0.37 * n as f32;
                    data.push(2.0 * arg.sin());
                }
            }
        }
        let latent = crate::latent::Latent::new(shape, data).expect("length matches shape"); // ok: built to size
        out.push(&latent).expect("same shape"); // ok: built to size
    }
    out
}

/// FLOPs of one TAESD decode of a latent `h × w`: 2 × multiply-adds of every convolution.
pub fn taesd_decoder_flops(channels: usize, h: usize, w: usize) -> f64 {
    let conv = |c_in: usize, c_out: usize, pixels: usize| 2.0 * (c_in * c_out * 9 * pixels) as f64;
    let block = |pixels: usize| 3.0 * conv(64, 64, pixels);
    let p0 = h * w;
    let mut flops = conv(channels, 64, p0) + 3.0 * block(p0);
    let mut pixels = p0;
    for stage in 0..3 {
        pixels *= 4;
        flops += conv(64, 64, pixels) + if stage < 2 { 3.0 } else { 1.0 } * block(pixels);
    }
    flops + conv(64, 3, pixels)
}

/// FLOPs of one TAESD encode of a `height × width` picture into `channels` latent channels:
/// 2 × multiply-adds of every convolution.
pub fn taesd_encoder_flops(channels: usize, height: usize, width: usize) -> f64 {
    let conv = |c_in: usize, c_out: usize, pixels: usize| 2.0 * (c_in * c_out * 9 * pixels) as f64;
    let mut pixels = height * width;
    let mut flops = conv(3, 64, pixels) + 3.0 * conv(64, 64, pixels);
    for _ in 0..3 {
        pixels /= 4;
        flops += conv(64, 64, pixels) + 9.0 * conv(64, 64, pixels);
    }
    flops + conv(64, channels, pixels)
}

/// The benchmark pictures: `0.5 + 0.5·sin(0.7c + 0.3h + 0.11w + 0.37n)` per channel, as 8-bit
/// RGB (`tools/ort_taesd.py` feeds the same values unquantised).
pub fn bench_pictures(batch: usize, height: u32, width: u32) -> Vec<image::RgbImage> {
    (0..batch)
        .map(|n| {
            image::RgbImage::from_fn(width, height, |w, h| {
                image::Rgb([0u8, 1, 2].map(|c| {
                    let arg =
                        0.7 * f32::from(c) + 0.3 * h as f32 + 0.11 * w as f32 + 0.37 * n as f32;
                    ((0.5 + 0.5 * arg.sin()) * 255.0).round() as u8
                }))
            })
        })
        .collect()
}

/// Times one batched encode call of `batch` pictures of the engine's output size: `warmup`
/// untimed runs, then the median of `runs`.
pub fn encode(
    engine: &crate::engine::Engine,
    options: &DecodeOptions,
) -> anyhow::Result<DecodeReport> {
    let encoder = engine
        .encoder()
        .ok_or_else(|| anyhow::anyhow!("no encoder weights found for {}", engine.decoder_name()))?;
    let (width, height) = engine.output_size();
    let pictures = bench_pictures(options.batch, height, width);
    let mut times = Vec::with_capacity(options.runs);
    let mut output = String::new();
    for run in 0..options.warmup + options.runs {
        let start = Instant::now();
        let latents = encoder.encode(&pictures)?;
        let elapsed = start.elapsed().as_secs_f64();
        if let Some(first) = latents.first() {
            output = first.shape().to_string();
        }
        if run >= options.warmup {
            times.push(elapsed);
        }
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let flops = taesd_encoder_flops(encoder.latent_channels(), height as usize, width as usize)
        * options.batch as f64;
    Ok(DecodeReport::measured(
        "encode",
        engine,
        options.batch,
        format!("3x{height}x{width}"),
        output,
        options.runs,
        median,
        flops,
    ))
}

/// Times one batched decode call: `warmup` untimed runs, then the median of `runs`.
pub fn decode(
    engine: &crate::engine::Engine,
    options: &DecodeOptions,
) -> anyhow::Result<DecodeReport> {
    let batch = bench_latents(options.batch, options.latent);
    let account = crate::engine::LockAccount::default();
    let mut times = Vec::with_capacity(options.runs);
    let mut output = String::new();
    for run in 0..options.warmup + options.runs {
        let start = Instant::now();
        let out = engine.decode_batch(&batch, &account, Duration::from_secs(3600))?;
        let elapsed = start.elapsed().as_secs_f64();
        if let Some(first) = out.images.first() {
            output = format!("{}x{}", first.width(), first.height());
        }
        if run >= options.warmup {
            times.push(elapsed);
        }
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let s = options.latent;
    let flops = if engine.decoder_name().starts_with("tae") {
        taesd_decoder_flops(s.channels, s.height, s.width) * options.batch as f64
    } else {
        0.0
    };
    Ok(DecodeReport::measured(
        "decode",
        engine,
        options.batch,
        s.to_string(),
        output,
        options.runs,
        median,
        flops,
    ))
}

impl DecodeReport {
    /// The report of `runs` timed calls of `batch` items whose median took `median` seconds and
    /// did `flops` floating-point operations.
    #[allow(clippy::too_many_arguments)]
    fn measured(
        kind: &str,
        engine: &crate::engine::Engine,
        batch: usize,
        input: String,
        output: String,
        runs: usize,
        median: f64,
        flops: f64,
    ) -> DecodeReport {
        DecodeReport {
            kind: kind.to_string(),
            decoder: engine.decoder_name().to_string(),
            device: engine.device().to_string(),
            precision: engine.precision().to_string(),
            batch,
            latent: input,
            output,
            runs,
            ms_per_batch: round(median * 1000.0, 3),
            ms_per_frame: round(median * 1000.0 / batch as f64, 3),
            frames_per_s: round(batch as f64 / median, 3),
            gflop_per_s: round(flops / median / 1e9, 1),
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }

    pub fn to_text(&self) -> String {
        format!(
            "dreamd bench {}: {} ({}) on {}, batch {} of {} -> {}\n\
             median of {} runs: {:.1} ms per batch, {:.2} ms per frame, {:.2} frames/s, {:.1} GFLOP/s ({} threads)\n",
            self.kind,
            self.decoder,
            self.precision,
            self.device,
            self.batch,
            self.latent,
            self.output,
            self.runs,
            self.ms_per_batch,
            self.ms_per_frame,
            self.frames_per_s,
            self.gflop_per_s,
            self.threads
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flop_count_matches_the_published_figure() {
        // models/README: ≈70.6 GFLOP per 512×256 frame (latent 4×32×64), ≈17.6 at 256×128.
        let full = taesd_decoder_flops(4, 32, 64) / 1e9;
        assert!((full - 70.6).abs() < 0.5, "{full}");
        let half = taesd_decoder_flops(4, 16, 32) / 1e9;
        assert!((half - 17.6).abs() < 0.2, "{half}");
    }

    #[test]
    fn encoder_flops_count_every_convolution() {
        // 256×512: 3→64 and three 64→64 at full size, then per stage (÷4 pixels) one stride-2
        // and nine 64→64 convolutions, then 64→4 at 32×64.
        let mac = |ci: f64, co: f64, p: f64| 2.0 * ci * co * 9.0 * p;
        let p = 256.0 * 512.0;
        let mut expected = mac(3.0, 64.0, p) + 3.0 * mac(64.0, 64.0, p);
        for s in 1..=3 {
            expected += 10.0 * mac(64.0, 64.0, p / 4f64.powi(s));
        }
        expected += mac(64.0, 4.0, p / 64.0);
        assert_eq!(taesd_encoder_flops(4, 256, 512), expected);
    }

    #[test]
    fn bench_pictures_follow_the_shared_formula() {
        let p = bench_pictures(2, 3, 4);
        assert_eq!(p[0].get_pixel(0, 0)[0], 128);
        let v = 0.5 + 0.5 * (0.7f32 * 2.0 + 0.3 * 1.0 + 0.11 * 3.0 + 0.37).sin();
        assert_eq!(p[1].get_pixel(3, 1)[2], (v * 255.0).round() as u8);
    }

    #[test]
    fn bench_latents_follow_the_shared_formula() {
        let b = bench_latents(2, crate::latent::LatentShape::new(4, 2, 3));
        assert_eq!(b.item(0)[0], 0.0);
        let expected = 2.0 * (0.7f32 * 1.0 + 0.3 * 1.0 + 0.11 * 2.0 + 0.37).sin();
        assert_eq!(b.item(1)[6 + 3 + 2], expected);
    }
}
