//! `dreamd bench resolution`: what each `generation.decode_divisor` costs and how it looks.
//!
//! For every divisor, real pictures are fitted to the output size, encoded at the decode size
//! (1/divisor of the output), decoded and resampled back to the output size exactly as the
//! daemon does; the PSNR against the fitted picture measures the whole round trip. The decode
//! time is the median of several batched calls on those latents (cycled to fill the batch).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use image::RgbImage;
use serde::Serialize;

use crate::config::Config;
use crate::engine::{Engine, LockAccount};
use crate::keyframes::images::{list_images, load_fitted};
use crate::latent::LatentBatch;
use crate::stats::round;

/// Options of `dreamd bench resolution`.
#[derive(Debug, Clone)]
pub struct ResolutionOptions {
    /// Folder of pictures to round-trip.
    pub images: PathBuf,
    pub divisors: Vec<u32>,
    /// Latents per timed decode call.
    pub batch: usize,
    pub runs: usize,
}

/// One divisor's figures.
#[derive(Debug, Clone, Serialize)]
pub struct ResolutionRow {
    pub divisor: u32,
    pub latent: String,
    /// Size the decoder produces before resampling.
    pub decode_size: String,
    pub ms_per_frame: f64,
    pub frames_per_s: f64,
    /// frames/s divided by the display's target fps.
    pub headroom: f64,
    pub psnr_mean_db: f64,
    pub psnr_min_db: f64,
}

/// Results of `dreamd bench resolution`.
#[derive(Debug, Clone, Serialize)]
pub struct ResolutionReport {
    pub decoder: String,
    pub device: String,
    pub output: String,
    pub target_fps: f64,
    pub images: usize,
    pub batch: usize,
    pub rows: Vec<ResolutionRow>,
}

/// Peak signal-to-noise ratio of `b` against `a` in dB (8-bit pictures of the same size).
pub fn psnr(a: &RgbImage, b: &RgbImage) -> f64 {
    let mse = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2))
        .sum::<f64>()
        / a.as_raw().len().max(1) as f64;
    10.0 * (255.0f64.powi(2) / mse.max(1e-12)).log10()
}

/// Runs the comparison with `config`'s decoder, device and output size.
pub fn resolution(
    config: &Config,
    options: &ResolutionOptions,
) -> anyhow::Result<ResolutionReport> {
    anyhow::ensure!(
        options.batch > 0 && options.runs > 0,
        "--batch and --runs must be at least 1"
    );
    let (width, height) = (config.generation.width, config.generation.height);
    let mut pictures = Vec::new();
    for path in list_images(&options.images)? {
        pictures.push(load_fitted(&path, width, height, config.keyframes.fit)?);
    }
    let account = LockAccount::default();
    let timeout = Duration::from_secs(3600);
    let mut rows = Vec::new();
    let mut engine_name = (String::new(), String::new());
    for &divisor in &options.divisors {
        let mut config = config.clone();
        config.generation.decode_divisor = Some(divisor);
        config.validate()?;
        let engine = Engine::from_config(&config)?;
        engine_name = (
            engine.decoder_name().to_string(),
            engine.device().to_string(),
        );
        let latents = engine.encode_batch(&pictures, &account, timeout)?;
        let shape = engine.latent_shape();

        let mut own = LatentBatch::with_capacity(shape, latents.len());
        for latent in &latents {
            own.push(latent)?;
        }
        let decoded = engine.decode_batch(&own, &account, timeout)?.images;
        let figures: Vec<f64> = pictures
            .iter()
            .zip(&decoded)
            .map(|(a, b)| psnr(a, b))
            .collect();

        let mut timed = LatentBatch::with_capacity(shape, options.batch);
        for latent in latents.iter().cycle().take(options.batch) {
            timed.push(latent)?;
        }
        engine.decode_batch(&timed, &account, timeout)?; // warm-up
        let mut times: Vec<f64> = (0..options.runs)
            .map(|_| {
                let start = Instant::now();
                engine
                    .decode_batch(&timed, &account, timeout)
                    .map(|_| start.elapsed().as_secs_f64())
            })
            .collect::<Result<_, _>>()?;
        times.sort_by(f64::total_cmp);
        let per_frame = times[times.len() / 2] / options.batch as f64;
        rows.push(ResolutionRow {
            divisor,
            latent: shape.to_string(),
            decode_size: format!("{}x{}", shape.width * 8, shape.height * 8),
            ms_per_frame: round(per_frame * 1000.0, 1),
            frames_per_s: round(1.0 / per_frame, 2),
            headroom: round(1.0 / per_frame / config.display.target_fps, 2),
            psnr_mean_db: round(figures.iter().sum::<f64>() / figures.len() as f64, 2),
            psnr_min_db: round(figures.iter().copied().fold(f64::MAX, f64::min), 2),
        });
    }
    Ok(ResolutionReport {
        decoder: engine_name.0,
        device: engine_name.1,
        output: format!("{width}x{height}"),
        target_fps: config.display.target_fps,
        images: pictures.len(),
        batch: options.batch,
        rows,
    })
}

impl ResolutionReport {
    /// A Markdown table, as pasted into BENCHMARKS.md.
    pub fn to_text(&self) -> String {
        let mut out = format!(
            "dreamd bench resolution: {} on {}, output {}, {} pictures, batch {}\n\n\
             | decode_divisor | latent | decoded at | ms/frame | frames/s | × {} fps | PSNR mean | PSNR min |\n\
             | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: |\n",
            self.decoder, self.device, self.output, self.images, self.batch, self.target_fps
        );
        for r in &self.rows {
            out += &format!(
                "| {} | {} | {} | {:.1} | {:.2} | {:.2} | {:.2} dB | {:.2} dB |\n",
                r.divisor,
                r.latent,
                r.decode_size,
                r.ms_per_frame,
                r.frames_per_s,
                r.headroom,
                r.psnr_mean_db,
                r.psnr_min_db
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::taesd::Family;
    use crate::test_weights::{models_dir, shared_file};

    #[test]
    fn psnr_of_known_errors() {
        let a = RgbImage::from_pixel(4, 4, image::Rgb([100, 100, 100]));
        let mut b = a.clone();
        assert!(psnr(&a, &b) > 100.0);
        b.pixels_mut().for_each(|p| p.0 = [110, 110, 110]);
        // MSE 100 → 10·log10(65025/100) = 28.13 dB.
        assert!((psnr(&a, &b) - 28.13).abs() < 0.01, "{}", psnr(&a, &b));
    }

    #[test]
    fn smaller_decodes_cost_less_and_lose_detail() {
        let (Some(images), Some(models)) = (shared_file("../images"), models_dir(Family::Taesd))
        else {
            return;
        };
        let mut config = Config::default();
        config.generation.decoder = crate::config::DecoderChoice::Taesd;
        config.generation.models_dir = Some(models);
        config.generation.width = 128;
        config.generation.height = 64;
        let report = resolution(
            &config,
            &ResolutionOptions {
                images,
                divisors: vec![1, 2],
                batch: 2,
                runs: 1,
            },
        )
        .unwrap();
        assert_eq!(report.images, 6);
        let [full, half] = &report.rows[..] else {
            panic!("{:?}", report.rows)
        };
        assert_eq!(
            (full.latent.as_str(), half.latent.as_str()),
            ("4x8x16", "4x4x8")
        );
        assert_eq!(half.decode_size, "64x32");
        assert!(full.psnr_mean_db > half.psnr_mean_db, "{report:?}");
        assert!(half.psnr_min_db > 10.0, "{report:?}");
        assert!(report.to_text().contains("| 2 | 4x4x8 | 64x32 |"));
    }
}
