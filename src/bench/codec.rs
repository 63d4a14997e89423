//! `dreamd bench decode|encode`: one batched decoder or encoder call timed (warm-up runs, then
//! the median), on inputs from shared formulas that `tools/ort_taesd.py` reproduces, with the
//! TAESD networks' FLOP counts for a GFLOP/s figure.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::engine::{Engine, LockAccount};
use crate::latent::{Latent, LatentBatch, LatentShape};
use crate::stats::round;

/// Options of `dreamd bench decode`.
#[derive(Debug, Clone)]
pub struct DecodeOptions {
    pub batch: usize,
    pub latent: LatentShape,
    pub warmup: usize,
    pub runs: usize,
}

impl DecodeOptions {
    /// `batch` items of `latent`, two warm-up runs, then `runs` timed ones.
    pub fn new(batch: usize, latent: LatentShape, runs: usize) -> Self {
        DecodeOptions {
            batch,
            latent,
            warmup: 2,
            runs,
        }
    }
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
    /// The wgpu adapter (name, backend, type, driver) when the device is wgpu.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adapter: Option<crate::engine::wgpu::AdapterSummary>,
}

/// The benchmark latents: `z[n,c,h,w] = 2·sin(0.7c + 0.3h + 0.11w + 0.37n)` (the golden
/// vectors' formula with a per-frame phase), shared with `tools/ort_taesd.py`.
pub fn bench_latents(batch: usize, shape: LatentShape) -> LatentBatch {
    let mut out = LatentBatch::with_capacity(shape, batch);
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
        let latent = Latent::new(shape, data).expect("length matches shape"); // ok: built to size
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
pub fn encode(engine: &Engine, options: &DecodeOptions) -> anyhow::Result<DecodeReport> {
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
pub fn decode(engine: &Engine, options: &DecodeOptions) -> anyhow::Result<DecodeReport> {
    let batch = bench_latents(options.batch, options.latent);
    let account = LockAccount::default();
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
        engine: &Engine,
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
            // On wgpu, `fast` stores activations as f16 where the adapter can (f32 arithmetic).
            precision: match (engine.device(), engine.adapter()) {
                (crate::engine::Device::Wgpu, Some(adapter)) => format!(
                    "{}: {} storage",
                    engine.precision(),
                    if adapter.f16 && engine.precision() != crate::config::Precision::Exact {
                        "f16"
                    } else {
                        "f32"
                    }
                ),
                // On the CPU, `fast` and `bf16` run dreamd's own kernels: name their level.
                (crate::engine::Device::Cpu, _) => {
                    match crate::engine::taesd::cpu::winograd_products(engine.precision()) {
                        Some(products) => {
                            format!("{}: {} kernels", engine.precision(), products.level())
                        }
                        None => engine.precision().to_string(),
                    }
                }
                _ => engine.precision().to_string(),
            },
            batch,
            latent: input,
            output,
            runs,
            ms_per_batch: round(median * 1000.0, 3),
            ms_per_frame: round(median * 1000.0 / batch as f64, 3),
            frames_per_s: round(batch as f64 / median, 3),
            gflop_per_s: round(flops / median / 1e9, 1),
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            adapter: engine.adapter().cloned(),
        }
    }

    pub fn to_text(&self) -> String {
        let adapter = match &self.adapter {
            Some(a) => format!(
                "adapter: {} (backend {}, type {}{})\n",
                a.name,
                a.backend,
                a.device_type,
                if a.is_software() {
                    ": software, figures are for correctness only"
                } else {
                    ""
                }
            ),
            None => String::new(),
        };
        let text = format!(
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
        );
        text + &adapter
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
        let b = bench_latents(2, LatentShape::new(4, 2, 3));
        assert_eq!(b.item(0)[0], 0.0);
        let expected = 2.0 * (0.7f32 * 1.0 + 0.3 * 1.0 + 0.11 * 2.0 + 0.37).sin();
        assert_eq!(b.item(1)[6 + 3 + 2], expected);
    }
}
