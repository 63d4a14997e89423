//! `dreamd bench motion`: how the stream moves, measured on the frames the daemon wrote.
//!
//! A viewer judges motion by what changes from frame to frame, so every measure here is taken
//! on the saved pictures (luma, Rec. 601), not on latents: the daemon runs in this process
//! ([`InProcess`]) until it has made the keyframes asked for, then the frames in its
//! `output/frames` are read back and measured:
//!
//! - **step CV inside pairs**: the spread (std/mean) of the RMS change between consecutive
//!   in-betweens of a pair; even motion is near 0;
//! - **seam ratio**: the step into or out of a keyframe over the median in-pair step of that
//!   pair; a keyframe that pops is well above 1;
//! - **keyframe sharpness ratio**: the keyframe's Laplacian variance over its two neighbours';
//! - **direction cosine**: the cosine of consecutive difference vectors, inside pairs and across
//!   keyframes; a path that turns sharply at keyframes has a much lower cosine across them;
//! - **mid-pair contrast ratio**: the spread of luma in the middle of a pair over the mean of
//!   its two keyframes'.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use super::{InProcess, Scratch};
use crate::config::{Config, KeyframeImage};
use crate::stats::round;

/// Options of `dreamd bench motion`.
#[derive(Debug, Clone)]
pub struct MotionOptions {
    /// Keyframe pairs to make and measure (at least 2).
    pub pairs: usize,
    /// Give up waiting for the pairs after this long (then measure what is there).
    pub max_seconds: f64,
}

/// The measures of one run.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MotionMeasures {
    pub pairs_measured: usize,
    pub keyframes_measured: usize,
    /// Median over pairs of the in-pair step CV, and the largest.
    pub step_cv: f64,
    pub step_cv_max: f64,
    /// Median over seams of seam step / median in-pair step, and the largest.
    pub seam_ratio: f64,
    pub seam_ratio_max: f64,
    /// Median over keyframes of its Laplacian variance / its neighbours' mean.
    pub keyframe_sharpness_ratio: f64,
    /// Median cosine of consecutive difference vectors inside pairs …
    pub cosine_inside: f64,
    /// … and across keyframes.
    pub cosine_across: f64,
    /// Median over pairs of mid-pair contrast / the mean of its keyframes'.
    pub midpair_contrast_ratio: f64,
}

/// Results of `dreamd bench motion`: what ran, and its [`MotionMeasures`].
#[derive(Debug, Clone, Serialize)]
pub struct MotionReport {
    pub source: String,
    pub decoder: String,
    pub path: String,
    pub keep_contrast: bool,
    pub keyframe_image: String,
    pub width: u32,
    pub height: u32,
    pub decode_divisor: u32,
    pub frames_per_pair: usize,
    pub dwell_frames: usize,
    pub seconds: f64,
    pub frames: usize,
    #[serde(flatten)]
    pub measures: MotionMeasures,
}

/// Runs the daemon on `config` (start gate 0, no server, a buffer and retention large enough to
/// keep every frame, output and logs in a temporary folder) until it has made keyframes
/// `0..=pairs`, then measures the frames it wrote.
pub async fn run(mut config: Config, options: MotionOptions) -> anyhow::Result<MotionReport> {
    anyhow::ensure!(options.pairs >= 2, "--pairs must be at least 2");
    anyhow::ensure!(
        config.generation.frames_per_pair >= 2,
        "bench motion needs generation.frames_per_pair >= 2 (steps between in-betweens)"
    );
    let scratch = Scratch::new("motion")?;
    scratch.redirect(&mut config);
    config.display.start_gate_seconds = 0.0;
    config.server.enabled = false;
    let layout = Layout::of(&config);
    // Every frame stays on disk, and generation never waits for the display.
    let frames_needed = (options.pairs as u64 + 2) * layout.stride;
    config.output.keep_frames = Some(frames_needed as usize + 64);
    config.buffer.target_seconds = (frames_needed as f64 / config.display.target_fps + 10.0)
        .max(config.buffer.target_seconds)
        .min(3600.0);
    config.validate()?;

    let started = Instant::now();
    let daemon = InProcess::start(config.clone()).await?;
    let telemetry = std::sync::Arc::clone(&daemon.started.telemetry);
    // Keyframe 0 alone is the first "pair", then pairs (0,1) … (P−1,P).
    let wanted = options.pairs as u64 + 1;
    let deadline = started + Duration::from_secs_f64(options.max_seconds);
    while telemetry.pipeline.pairs.load(Ordering::Relaxed) < wanted && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let report = daemon.stop().await?;
    let seconds = started.elapsed().as_secs_f64();

    let frames_dir = config.paths.output_dir.join("frames");
    let frames = tokio::task::spawn_blocking(move || read_frames(&frames_dir))
        .await
        .context("frame reader failed")??;
    let measures = measure(&frames, &layout, options.pairs)?;
    let g = &config.generation;
    Ok(MotionReport {
        source: config.keyframes.source.to_string(),
        decoder: report.decoder.clone(),
        path: format!("{:?}", g.path).to_lowercase(),
        keep_contrast: g.keep_contrast,
        keyframe_image: match g.keyframe_image {
            KeyframeImage::Decoded => "decoded".into(),
            KeyframeImage::Picture => "picture".into(),
        },
        width: g.width,
        height: g.height,
        decode_divisor: g.decode_divisor.unwrap_or(1),
        frames_per_pair: layout.inbetweens,
        dwell_frames: layout.dwell,
        seconds: round(seconds, 1),
        frames: frames.len(),
        measures,
    })
}

/// Where keyframes and in-betweens sit in the sequence.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    /// N in-betweens per pair.
    pub inbetweens: usize,
    /// D dwell frames after each keyframe.
    pub dwell: usize,
    /// S = N + 1 + D.
    pub stride: u64,
}

impl Layout {
    pub fn of(config: &Config) -> Layout {
        let (n, d) = (
            config.generation.frames_per_pair as usize,
            config.generation.keyframe_dwell_frames as usize,
        );
        Layout {
            inbetweens: n,
            dwell: d,
            stride: (n + 1 + d) as u64,
        }
    }
}

/// A frame's luma, row-major, in [0, 1].
#[derive(Debug, Clone)]
pub struct Luma {
    pub width: usize,
    pub height: usize,
    pub values: Vec<f32>,
}

impl Luma {
    /// Rec. 601 luma of an RGB picture.
    pub fn of(image: &image::RgbImage) -> Luma {
        let (w, h) = image.dimensions();
        let values = image
            .pixels()
            .map(|p| {
                let [r, g, b] = p.0.map(f32::from);
                (0.299 * r + 0.587 * g + 0.114 * b) / 255.0
            })
            .collect();
        Luma {
            width: w as usize,
            height: h as usize,
            values,
        }
    }

    /// Spread of the values (population standard deviation): the frame's contrast.
    fn contrast(&self) -> f64 {
        std_dev(self.values.iter().map(|&v| f64::from(v)))
    }

    /// Variance of the 4-neighbour Laplacian over the interior pixels: the frame's sharpness.
    fn sharpness(&self) -> f64 {
        let (w, h) = (self.width, self.height);
        if w < 3 || h < 3 {
            return 0.0;
        }
        let v = |x: usize, y: usize| f64::from(self.values[y * w + x]);
        std_dev((1..h - 1).flat_map(|y| {
            (1..w - 1)
                .map(move |x| v(x - 1, y) + v(x + 1, y) + v(x, y - 1) + v(x, y + 1) - 4.0 * v(x, y))
        }))
        .powi(2)
    }
}

/// The frames in `dir`, by sequence number (file stem), as luma.
pub fn read_frames(dir: &Path) -> anyhow::Result<Vec<(u64, Luma)>> {
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    let mut frames = Vec::new();
    for entry in entries {
        let path = entry
            .with_context(|| format!("cannot read {}", dir.display()))?
            .path();
        let Some(seq) = path
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.parse::<u64>().ok())
        else {
            continue;
        };
        let image = image::open(&path)
            .with_context(|| format!("cannot read frame {}", path.display()))?
            .to_rgb8();
        frames.push((seq, Luma::of(&image)));
    }
    frames.sort_by_key(|(seq, _)| *seq);
    Ok(frames)
}

/// Measures up to `pairs` pairs of `frames` (sorted by sequence number, keyframe 0 first),
/// laid out as `layout` says. Pairs with a missing frame are left out.
pub fn measure(
    frames: &[(u64, Luma)],
    layout: &Layout,
    pairs: usize,
) -> anyhow::Result<MotionMeasures> {
    let base = frames.first().context("the daemon wrote no frames")?.0;
    let by_seq: std::collections::HashMap<u64, &Luma> =
        frames.iter().map(|(seq, l)| (*seq, l)).collect();
    let n = layout.inbetweens;
    // Pair k's frames: keyframe k's last (dwell) frame, the N in-betweens, keyframe k+1.
    let pair_frames = |k: u64| -> Option<Vec<&Luma>> {
        let start = base + k * layout.stride + layout.dwell as u64;
        (0..=n as u64 + 1)
            .map(|i| {
                let seq = if i == n as u64 + 1 {
                    base + (k + 1) * layout.stride
                } else {
                    start + i
                };
                by_seq.get(&seq).copied()
            })
            .collect()
    };

    let (mut cvs, mut seams, mut inside, mut contrast) = (vec![], vec![], vec![], vec![]);
    // Per measured pair: its frames' steps (difference vectors).
    let mut measured: Vec<Option<Vec<Vec<f32>>>> = Vec::new();
    for k in 0..pairs as u64 {
        let Some(f) = pair_frames(k) else {
            measured.push(None);
            continue;
        };
        let steps: Vec<Vec<f32>> = f.windows(2).map(|w| difference(w[1], w[0])).collect();
        let sizes: Vec<f64> = steps.iter().map(|d| rms(d)).collect();
        // Steps strictly between in-betweens: 1 ..= N−1.
        let interior = &sizes[1..n];
        let mean = interior.iter().sum::<f64>() / interior.len() as f64;
        cvs.push(ratio(std_dev(interior.iter().copied()), mean));
        let typical = median(interior.to_vec());
        seams.push(ratio(sizes[0], typical));
        seams.push(ratio(sizes[n], typical));
        // Pivots at the in-betweens 1 ..= N.
        for w in steps.windows(2) {
            inside.push(cosine(&w[0], &w[1]));
        }
        // The middle in-between (t = ½ for odd N; the two around it for even N).
        let middle: Vec<f64> = if n % 2 == 1 {
            vec![f[n.div_ceil(2)].contrast()]
        } else {
            vec![f[n / 2].contrast(), f[n / 2 + 1].contrast()]
        };
        let mid = middle.iter().sum::<f64>() / middle.len() as f64;
        contrast.push(ratio(mid, 0.5 * (f[0].contrast() + f[n + 1].contrast())));
        measured.push(Some(steps));
    }
    anyhow::ensure!(
        !cvs.is_empty(),
        "no complete pair among {} frames (first {base})",
        frames.len()
    );

    let (mut across, mut sharpness) = (vec![], vec![]);
    for k in 1..pairs as u64 {
        let (Some(Some(before)), Some(Some(after))) =
            (measured.get(k as usize - 1), measured.get(k as usize))
        else {
            continue;
        };
        across.push(cosine(&before[n], &after[0]));
        let (Some(into), Some(out)) = (pair_frames(k - 1), pair_frames(k)) else {
            continue;
        };
        let keyframe = by_seq[&(base + k * layout.stride)];
        let neighbours = 0.5 * (into[n].sharpness() + out[1].sharpness());
        sharpness.push(ratio(keyframe.sharpness(), neighbours));
    }
    let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    Ok(MotionMeasures {
        pairs_measured: cvs.len(),
        keyframes_measured: across.len(),
        step_cv: round(median(cvs.clone()), 3),
        step_cv_max: round(max(&cvs), 3),
        seam_ratio: round(median(seams.clone()), 3),
        seam_ratio_max: round(max(&seams), 3),
        keyframe_sharpness_ratio: round(median(sharpness), 3),
        cosine_inside: round(median(inside), 3),
        cosine_across: round(median(across), 3),
        midpair_contrast_ratio: round(median(contrast), 3),
    })
}

fn difference(a: &Luma, b: &Luma) -> Vec<f32> {
    a.values.iter().zip(&b.values).map(|(x, y)| x - y).collect()
}

/// Root mean square of `d`: the size of one step.
fn rms(d: &[f32]) -> f64 {
    (d.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>() / d.len().max(1) as f64).sqrt()
}

/// `a·b / (|a| |b|)`, 0 when either is zero.
fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x), f64::from(y));
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    ratio(ab, (aa * bb).sqrt())
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

fn std_dev(values: impl Iterator<Item = f64> + Clone) -> f64 {
    let (count, sum) = values
        .clone()
        .fold((0usize, 0.0), |(n, s), v| (n + 1, s + v));
    if count == 0 {
        return 0.0;
    }
    let mean = sum / count as f64;
    (values.map(|v| (v - mean).powi(2)).sum::<f64>() / count as f64).sqrt()
}

/// The median (the mean of the middle two for an even count); 0 for none.
fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        0.5 * (values[mid - 1] + values[mid])
    }
}

impl MotionReport {
    /// Human-readable summary, each measure beside its target.
    pub fn to_text(&self) -> String {
        let m = &self.measures;
        format!(
            "dreamd bench motion: {} pairs ({} in-betweens, {} dwell), path {}, contrast {}, keyframes {}\n\
             source {}, decoder {}, {}x{} decoded at 1/{}, {} frames in {:.1} s\n\
             step CV inside pairs      {:.3} median, {:.3} max   (target <= 0.15)\n\
             seam ratio                {:.2} median, {:.2} max   (target <= 1.5)\n\
             keyframe sharpness ratio  {:.2} median             (target within 1.3x)\n\
             direction cosine          {:.2} inside pairs, {:.2} across keyframes ({} keyframes; target within 0.2)\n\
             mid-pair contrast ratio   {:.3} median            (target >= 0.95)\n",
            m.pairs_measured,
            self.frames_per_pair,
            self.dwell_frames,
            self.path,
            if self.keep_contrast { "kept" } else { "blended" },
            self.keyframe_image,
            self.source,
            self.decoder,
            self.width,
            self.height,
            self.decode_divisor,
            self.frames,
            self.seconds,
            m.step_cv,
            m.step_cv_max,
            m.seam_ratio,
            m.seam_ratio_max,
            m.keyframe_sharpness_ratio,
            m.cosine_inside,
            m.cosine_across,
            m.keyframes_measured,
            m.midpair_contrast_ratio,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame of a horizontal ramp of slope `slope` plus `offset`, with a checkerboard of
    /// amplitude `detail`.
    fn frame(offset: f32, slope: f32, detail: f32) -> Luma {
        let (width, height) = (16, 8);
        let values = (0..height)
            .flat_map(|y| {
                (0..width).map(move |x| {
                    let checker = if (x + y) % 2 == 0 { detail } else { -detail };
                    offset + slope * x as f32 + checker
                })
            })
            .collect();
        Luma {
            width,
            height,
            values,
        }
    }

    #[test]
    fn an_even_straight_stream_measures_as_smooth() {
        // Brightness rising by the same step every frame: even steps, one direction throughout.
        let layout = Layout {
            inbetweens: 4,
            dwell: 0,
            stride: 5,
        };
        let frames: Vec<(u64, Luma)> = (0..=15)
            .map(|i| (100 + i, frame(0.01 * i as f32, 0.02, 0.1)))
            .collect();
        let m = measure(&frames, &layout, 3).unwrap();
        assert_eq!((m.pairs_measured, m.keyframes_measured), (3, 2));
        assert!(m.step_cv < 1e-3, "{m:?}");
        assert!((m.seam_ratio - 1.0).abs() < 1e-3, "{m:?}");
        assert!((m.cosine_inside - 1.0).abs() < 1e-6 && (m.cosine_across - 1.0).abs() < 1e-6);
        assert!((m.keyframe_sharpness_ratio - 1.0).abs() < 1e-3, "{m:?}");
        assert!((m.midpair_contrast_ratio - 1.0).abs() < 1e-3, "{m:?}");
    }

    #[test]
    fn a_popping_keyframe_shows_in_seams_and_sharpness() {
        // Keyframes carry four times the detail of the in-betweens.
        let layout = Layout {
            inbetweens: 4,
            dwell: 1,
            stride: 6,
        };
        let frames: Vec<(u64, Luma)> = (0..=18u64)
            .map(|i| {
                let keyframe = i % 6 <= 1;
                let detail = if keyframe { 0.2 } else { 0.05 };
                (i, frame(0.01 * i as f32, 0.02, detail))
            })
            .collect();
        let m = measure(&frames, &layout, 3).unwrap();
        assert!(m.seam_ratio > 5.0, "{m:?}");
        assert!(m.keyframe_sharpness_ratio > 10.0, "{m:?}");
        assert!(m.cosine_across < -0.5, "{m:?}");
    }

    #[test]
    fn no_complete_pair_is_an_error() {
        let layout = Layout {
            inbetweens: 4,
            dwell: 0,
            stride: 5,
        };
        let frames = vec![(0, frame(0.0, 0.0, 0.0))];
        assert!(measure(&frames, &layout, 2).is_err());
    }
}
