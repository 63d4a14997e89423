//! The built-in preview decoder: a per-pixel linear map from SD1.5 latents to RGB.
//!
//! `rgb = Σ_c z[c]·F[c]`, clamped to [−1, 1] and mapped to 0..255, at latent resolution (the
//! engine upscales). The factors are the published SD1.5 latent-to-RGB approximation from
//! ComfyUI's latent formats (GPL-3.0 project, credited here; the numbers are facts about the
//! SD1.5 VAE). It needs no model files, so `dreamd run` works on a fresh clone.

use image::RgbImage;

use super::{Decoder, EngineError};
use crate::latent::LatentBatch;

/// `FACTORS[c] = [R, G, B]` contribution of latent channel c.
const FACTORS: [[f32; 3]; 4] = [
    [0.3512, 0.2297, 0.3227],
    [0.3250, 0.4974, 0.2350],
    [-0.2829, 0.1762, 0.2721],
    [-0.2120, -0.2616, -0.7177],
];

/// The latent-to-RGB preview decoder (4 channels in, RGB at latent resolution out).
#[derive(Debug, Clone, Copy, Default)]
pub struct PreviewDecoder;

impl Decoder for PreviewDecoder {
    fn name(&self) -> &str {
        "preview"
    }

    fn latent_channels(&self) -> usize {
        FACTORS.len()
    }

    fn decode(&self, batch: &LatentBatch) -> Result<Vec<RgbImage>, EngineError> {
        let shape = batch.shape();
        if shape.channels != FACTORS.len() {
            return Err(EngineError::Channels {
                decoder: self.name().to_string(),
                expected: FACTORS.len(),
                got: shape.channels,
            });
        }
        let plane = shape.height * shape.width;
        let images = (0..batch.len())
            .map(|i| {
                let z = batch.item(i);
                let mut image = RgbImage::new(shape.width as u32, shape.height as u32);
                for (p, pixel) in image.pixels_mut().enumerate() {
                    for (rgb, out) in pixel.0.iter_mut().enumerate() {
                        let v: f32 = (0..FACTORS.len())
                            .map(|c| z[c * plane + p] * FACTORS[c][rgb])
                            .sum();
                        *out = ((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8;
                    }
                }
                image
            })
            .collect();
        Ok(images)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::latent::{Latent, LatentShape};

    #[test]
    fn zero_latent_is_mid_grey_and_factors_apply_per_channel() {
        let shape = LatentShape::new(4, 1, 2);
        // Pixel 0: all zeros. Pixel 1: channel 3 = 1.
        let data = vec![0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0];
        let mut batch = LatentBatch::with_capacity(shape, 1);
        batch.push(&Latent::new(shape, data).unwrap()).unwrap();
        let images = PreviewDecoder.decode(&batch).unwrap();
        assert_eq!(images.len(), 1);
        assert_eq!(images[0].get_pixel(0, 0).0, [128, 128, 128]);
        let expected = FACTORS[3].map(|v| ((v + 1.0) * 127.5).round() as u8);
        assert_eq!(images[0].get_pixel(1, 0).0, expected);
    }

    #[test]
    fn saturates_instead_of_wrapping() {
        let shape = LatentShape::new(4, 1, 1);
        let mut batch = LatentBatch::with_capacity(shape, 1);
        batch
            .push(&Latent::new(shape, vec![10.0, 10.0, 0.0, 0.0]).unwrap())
            .unwrap();
        let images = PreviewDecoder.decode(&batch).unwrap();
        assert_eq!(images[0].get_pixel(0, 0).0, [255, 255, 255]);
    }
}
