//! The two picture similarity metrics the creative direction runs on, reproduced exactly from
//! the system dreamd replaces (its thresholds were tuned on these numbers, so they must carry
//! over):
//!
//! - **colour**: an HSV histogram (Pillow's RGB→HSV, 32 bins per channel, each channel
//!   normalised to sum 1, 96 values) compared by histogram intersection, range `[0, 3]`
//!   (3 = identical);
//! - **structure**: the 64-bit perceptual hash of `imagehash.phash(hash_size=8)` (Pillow's
//!   luma, a Lanczos resize to 32×32 as Pillow does it in fixed point, a 2-D unnormalised
//!   DCT-II, the top-left 8×8 coefficients against their median) compared as
//!   `1 − hamming/64`, range `[0, 1]`.
//!
//! `tools/similarity_ref.py` computes both with Pillow, numpy and imagehash; the unit tests hold
//! its figures for the shared pictures.

use image::RgbImage;
use serde::{Deserialize, Serialize};

/// Bins per HSV channel.
pub const BINS_PER_CHANNEL: usize = 32;
/// Length of a colour histogram (H, S and V concatenated).
pub const HISTOGRAM_LEN: usize = 3 * BINS_PER_CHANNEL;
/// Largest colour similarity (identical histograms).
pub const MAX_COLOR_SIMILARITY: f32 = 3.0;

/// Both metrics of one picture.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Embedding {
    /// The HSV histogram, 96 values, each channel summing to 1.
    pub color: Vec<f32>,
    /// The pHash as imagehash prints it: 16 hex digits, first coefficient most significant.
    #[serde(with = "hex_u64")]
    pub phash: u64,
}

impl Embedding {
    /// Computes both metrics of `image`.
    pub fn of(image: &RgbImage) -> Self {
        Self {
            color: color_histogram(image).to_vec(),
            phash: phash(image),
        }
    }

    /// Whether the histogram has the right length and finite values (a check on loaded data).
    pub fn is_well_formed(&self) -> bool {
        self.color.len() == HISTOGRAM_LEN && self.color.iter().all(|v| v.is_finite())
    }

    /// Colour similarity to `other`, in `[0, 3]`.
    pub fn color_similarity(&self, other: &Embedding) -> f32 {
        self.color
            .iter()
            .zip(&other.color)
            .map(|(a, b)| a.min(*b))
            .sum()
    }

    /// Structure similarity to `other`, in `[0, 1]`.
    pub fn structure_similarity(&self, other: &Embedding) -> f32 {
        1.0 - (self.phash ^ other.phash).count_ones() as f32 / 64.0
    }

    /// Both similarities at once.
    pub fn similarity(&self, other: &Embedding) -> Similarity {
        Similarity {
            color: self.color_similarity(other),
            structure: self.structure_similarity(other),
        }
    }
}

/// How alike two pictures are, by colour (`[0, 3]`) and by structure (`[0, 1]`).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Similarity {
    pub color: f32,
    pub structure: f32,
}

impl Similarity {
    /// One figure on a common `[0, 1]` scale: the larger of colour/3 and structure. (The original
    /// took the larger of the raw values, mixing a 0–3 scale with a 0–1 one.)
    pub fn combined(&self) -> f32 {
        (self.color / MAX_COLOR_SIMILARITY).max(self.structure)
    }
}

/// Pillow's `convert("HSV")` of one RGB pixel (`Convert.c`, `rgb2hsv_row`).
pub fn pillow_hsv([r, g, b]: [u8; 3]) -> [u8; 3] {
    let maxc = r.max(g).max(b);
    let minc = r.min(g).min(b);
    if maxc == minc {
        return [0, 0, maxc];
    }
    let cr = f32::from(maxc - minc);
    let s = cr / f32::from(maxc);
    let rc = f32::from(maxc - r) / cr;
    let gc = f32::from(maxc - g) / cr;
    let bc = f32::from(maxc - b) / cr;
    let h = if r == maxc {
        bc - gc
    } else if g == maxc {
        2.0 + rc - bc
    } else {
        4.0 + gc - rc
    };
    // C's fmod keeps the sign of the dividend; h/6 + 1 is always positive here.
    let h = (h / 6.0 + 1.0) % 1.0;
    let clip8 = |v: f32| (v * 255.0) as i32;
    [
        clip8(h).clamp(0, 255) as u8,
        clip8(s).clamp(0, 255) as u8,
        maxc,
    ]
}

/// The 96-bin HSV histogram, each channel normalised to sum 1.
pub fn color_histogram(image: &RgbImage) -> [f32; HISTOGRAM_LEN] {
    let mut counts = [0u64; HISTOGRAM_LEN];
    for pixel in image.pixels() {
        let hsv = pillow_hsv(pixel.0);
        for (channel, value) in hsv.iter().enumerate() {
            counts[channel * BINS_PER_CHANNEL + usize::from(*value >> 3)] += 1;
        }
    }
    let total = (image.width() as u64 * image.height() as u64).max(1) as f64;
    let mut out = [0f32; HISTOGRAM_LEN];
    for (o, c) in out.iter_mut().zip(counts) {
        *o = (c as f64 / total) as f32;
    }
    out
}

/// Pillow's `convert("L")`: ITU-R 601-2 luma in 16-bit fixed point.
fn pillow_luma([r, g, b]: [u8; 3]) -> u8 {
    ((u32::from(r) * 19595 + u32::from(g) * 38470 + u32::from(b) * 7471 + 0x8000) >> 16) as u8
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

fn lanczos(x: f64) -> f64 {
    fn sinc(x: f64) -> f64 {
        if x == 0.0 {
            1.0
        } else {
            let px = std::f64::consts::PI * x;
            px.sin() / px
        }
    }
    if (-3.0..3.0).contains(&x) {
        sinc(x) * sinc(x / 3.0)
    } else {
        0.0
    }
}

/// Pillow's resampling coefficients (`Resample.c`, `precompute_coeffs` and
/// `normalize_coeffs_8bpc`): per output index, the first input index and its fixed-point taps.
fn pillow_coefficients(in_size: usize, out_size: usize) -> Vec<(usize, Vec<i32>)> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 3.0 * filterscale;
    let ss = 1.0 / filterscale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let taps: Vec<f64> = (xmin..xmax)
                .map(|x| lanczos((x as f64 - center + 0.5) * ss))
                .collect();
            let sum: f64 = taps.iter().sum();
            let fixed = taps
                .iter()
                .map(|w| {
                    let w = if sum != 0.0 { w / sum } else { *w };
                    let scaled = w * f64::from(1u32 << PRECISION_BITS);
                    if w < 0.0 {
                        (scaled - 0.5) as i32
                    } else {
                        (scaled + 0.5) as i32
                    }
                })
                .collect();
            (xmin, fixed)
        })
        .collect()
}

fn apply_taps(values: impl Iterator<Item = u8>, taps: &[i32]) -> u8 {
    let mut acc: i64 = 1 << (PRECISION_BITS - 1);
    for (v, k) in values.zip(taps) {
        acc += i64::from(v) * i64::from(*k);
    }
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Pillow's `resize((w, h), LANCZOS)` of a grey image: horizontal pass, then vertical, each
/// rounded to 8 bits.
fn pillow_lanczos_resize(
    grey: &[u8],
    width: usize,
    height: usize,
    out_w: usize,
    out_h: usize,
) -> Vec<u8> {
    let horizontal = if width != out_w {
        let coeffs = pillow_coefficients(width, out_w);
        let mut out = vec![0u8; out_w * height];
        for y in 0..height {
            let row = &grey[y * width..(y + 1) * width];
            for (x, (start, taps)) in coeffs.iter().enumerate() {
                out[y * out_w + x] = apply_taps(row[*start..].iter().copied(), taps);
            }
        }
        out
    } else {
        grey.to_vec()
    };
    if height == out_h {
        return horizontal;
    }
    let coeffs = pillow_coefficients(height, out_h);
    let mut out = vec![0u8; out_w * out_h];
    for (y, (start, taps)) in coeffs.iter().enumerate() {
        for x in 0..out_w {
            let column = (*start..height).map(|yy| horizontal[yy * out_w + x]);
            out[y * out_w + x] = apply_taps(column, taps);
        }
    }
    out
}

/// scipy's unnormalised DCT-II of `input` (`y[k] = 2 Σ x[n] cos(π k (2n+1) / 2N)`).
fn dct_ii(input: &[f64], output: &mut [f64]) {
    let n = input.len();
    for (k, out) in output.iter_mut().enumerate() {
        *out = 2.0
            * input
                .iter()
                .enumerate()
                .map(|(i, x)| {
                    x * (std::f64::consts::PI * k as f64 * (2 * i + 1) as f64 / (2 * n) as f64)
                        .cos()
                })
                .sum::<f64>();
    }
}

/// imagehash's `phash(image, hash_size=8)` as a `u64` (first coefficient in the top bit).
pub fn phash(image: &RgbImage) -> u64 {
    const SIZE: usize = 32;
    const HASH: usize = 8;
    let grey: Vec<u8> = image.pixels().map(|p| pillow_luma(p.0)).collect();
    let small = pillow_lanczos_resize(
        &grey,
        image.width() as usize,
        image.height() as usize,
        SIZE,
        SIZE,
    );
    let pixels: Vec<f64> = small.iter().map(|v| f64::from(*v)).collect();
    // Along axis 0 (down each column), then along axis 1 (each row).
    let mut cols = vec![0f64; SIZE * SIZE];
    let mut column = [0f64; SIZE];
    let mut transformed = [0f64; SIZE];
    for x in 0..SIZE {
        for y in 0..SIZE {
            column[y] = pixels[y * SIZE + x];
        }
        dct_ii(&column, &mut transformed);
        for y in 0..SIZE {
            cols[y * SIZE + x] = transformed[y];
        }
    }
    let mut low = Vec::with_capacity(HASH * HASH);
    for y in 0..HASH {
        dct_ii(&cols[y * SIZE..(y + 1) * SIZE], &mut transformed);
        low.extend_from_slice(&transformed[..HASH]);
    }
    let mut sorted = low.clone();
    sorted.sort_by(f64::total_cmp);
    let median = (sorted[31] + sorted[32]) / 2.0;
    low.iter()
        .fold(0u64, |hash, c| (hash << 1) | u64::from(*c > median))
}

mod hex_u64 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{value:016x}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let text = String::deserialize(d)?;
        u64::from_str_radix(&text, 16)
            .map_err(|e| serde::de::Error::custom(format!("pHash {text:?}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hsv_matches_pillow_by_hand() {
        // Pure colours: H = 0, 1/3, 2/3 of 255 (truncated), S = 255, V = max.
        assert_eq!(pillow_hsv([255, 0, 0]), [0, 255, 255]);
        assert_eq!(pillow_hsv([0, 255, 0]), [85, 255, 255]);
        assert_eq!(pillow_hsv([0, 0, 255]), [170, 255, 255]);
        // Grey: no hue, no saturation.
        assert_eq!(pillow_hsv([77, 77, 77]), [0, 0, 77]);
        // (200, 100, 50): max 200, cr 150, s = 0.75 → 191; h = (bc-gc)/6 = (1-2/3)/6 = 1/18 → 14.
        assert_eq!(pillow_hsv([200, 100, 50]), [14, 191, 200]);
    }

    #[test]
    fn histogram_sums_to_one_per_channel_and_identical_pictures_score_three() {
        let image = RgbImage::from_fn(64, 32, |x, y| {
            image::Rgb([(x * 4) as u8, (y * 8) as u8, 90])
        });
        let h = color_histogram(&image);
        for c in 0..3 {
            let sum: f32 = h[c * 32..(c + 1) * 32].iter().sum();
            assert!((sum - 1.0).abs() < 1e-5);
        }
        let e = Embedding::of(&image);
        assert!((e.color_similarity(&e) - 3.0).abs() < 1e-5);
        assert_eq!(e.structure_similarity(&e), 1.0);
        let black = Embedding::of(&RgbImage::new(64, 32));
        // Black vs this gradient: H bins share only bin 0 partly; the figure is well below 3.
        assert!(e.color_similarity(&black) < 2.0);
    }

    #[test]
    fn phash_of_a_synthetic_picture_matches_imagehash() {
        // imagehash.phash of this 100×60 picture (tools/similarity_ref.py's recipe).
        let image = RgbImage::from_fn(100, 60, |x, y| {
            image::Rgb([
                ((x * 5 + y) % 256) as u8,
                ((y * 4) % 256) as u8,
                ((x * y) % 256) as u8,
            ])
        });
        assert_eq!(format!("{:016x}", phash(&image)), SYNTHETIC_PHASH);
    }

    #[test]
    fn lanczos_resize_keeps_a_flat_picture_flat() {
        let grey = vec![200u8; 100 * 50];
        let out = pillow_lanczos_resize(&grey, 100, 50, 32, 32);
        assert!(out.iter().all(|v| *v == 200));
    }

    #[test]
    fn embedding_round_trips_through_json_with_a_hex_phash() {
        let image = RgbImage::from_fn(33, 17, |x, y| {
            image::Rgb([(x * 7) as u8, (y * 13) as u8, 3])
        });
        let e = Embedding::of(&image);
        let json = serde_json::to_string(&e).unwrap();
        assert!(json.contains(&format!("\"{:016x}\"", e.phash)));
        let back: Embedding = serde_json::from_str(&json).unwrap();
        assert_eq!(back, e);
        assert!(back.is_well_formed());
    }

    /// Figures from `tools/similarity_ref.py` (Pillow 11, imagehash 4.3, numpy) on the shared
    /// pictures: the pHash hex strings and the colour similarity of the first picture to each.
    #[test]
    fn shared_pictures_match_the_reference_script() {
        let Some(dir) = shared_images() else {
            eprintln!(
                "SKIP shared_pictures_match_the_reference_script: ../shared/images not found"
            );
            return;
        };
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "png" || e == "jpg"))
            .collect();
        files.sort();
        let embeddings: Vec<(String, Embedding)> = files
            .iter()
            .map(|p| {
                let img = image::open(p).unwrap().to_rgb8();
                (
                    p.file_name().unwrap().to_string_lossy().into_owned(),
                    Embedding::of(&img),
                )
            })
            .collect();
        for (name, hash, color_to_first) in REFERENCE {
            let (_, e) = embeddings
                .iter()
                .find(|(n, _)| n == name)
                .unwrap_or_else(|| panic!("{name} missing from the shared pictures"));
            let bits = (e.phash ^ u64::from_str_radix(hash, 16).unwrap()).count_ones();
            assert!(
                bits <= 1,
                "{name}: pHash {:016x} vs {hash} ({bits} bits differ)",
                e.phash
            );
            let c = embeddings[0].1.color_similarity(e);
            assert!(
                (c - color_to_first).abs() < 2e-3,
                "{name}: colour similarity to the first {c} vs {color_to_first}"
            );
        }
    }

    fn shared_images() -> Option<std::path::PathBuf> {
        let root = std::env::var_os("DREAMD_SHARED")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"));
        let dir = root.join("images");
        dir.is_dir().then_some(dir)
    }

    const SYNTHETIC_PHASH: &str = "a408190d5f1f3f3e";

    const REFERENCE: &[(&str, &str, f32)] = &[
        ("c3tdIb0XYt0.png", "c64cbb5073c71ccc", 3.00000),
        ("inverted_desktop.png", "9993656d26766689", 0.96253),
        ("test_00024_.png", "acd52b2b03c7d534", 1.13263),
        ("test_00025_.png", "8687e0e8f87a6c27", 1.33895),
        ("test_00034_.png", "c4c9f07a3e36a668", 1.53260),
        ("test_00087_.png", "9c28e38f95849dad", 1.51814),
    ];
}
