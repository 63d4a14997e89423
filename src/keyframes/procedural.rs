//! The procedural keyframe source: seeded, smooth, slowly drifting latent fields.
//!
//! Each latent channel is fractal Perlin noise sampled on a plane that moves through a third
//! (time) axis by `drift` per keyframe, plus a per-channel offset that wanders more slowly, so
//! the palette shifts over minutes while shapes morph between keyframes. Values are zero-mean
//! with a spread near one, like scaled SD latents, which the preview decoder turns into soft
//! colour fields. The same seed always gives the same stream.

use std::sync::Arc;

use async_trait::async_trait;
use noise::{Fbm, MultiFractal, NoiseFn, Perlin};

use super::{Keyframe, KeyframeError, KeyframeSource};
use crate::latent::{Latent, LatentShape};

/// Feature size: about this many blobs fit across the frame's height.
const SPATIAL_FREQUENCY: f64 = 1.6;
/// Spread of the shapes (noise values are roughly ±0.5).
const SHAPE_GAIN: f64 = 2.2;
/// Spread of the slowly wandering per-channel offset.
const PALETTE_GAIN: f64 = 0.9;
/// How much slower the palette moves than the shapes.
const PALETTE_RATE: f64 = 0.12;

/// The noise fields behind a stream; shared with the blocking pool.
struct Field {
    shapes: Vec<Fbm<Perlin>>,
    palette: Vec<Perlin>,
    drift: f64,
    shape: LatentShape,
}

impl Field {
    fn latent(&self, index: u64) -> Result<Latent, KeyframeError> {
        let LatentShape {
            channels,
            height,
            width,
        } = self.shape;
        let time = index as f64 * self.drift;
        let scale = SPATIAL_FREQUENCY / height as f64;
        let mut data = Vec::with_capacity(self.shape.len());
        for c in 0..channels {
            let offset = PALETTE_GAIN * self.palette[c].get([time * PALETTE_RATE, 0.5]) * 2.0;
            for y in 0..height {
                for x in 0..width {
                    let v = self.shapes[c].get([x as f64 * scale, y as f64 * scale, time]);
                    data.push((SHAPE_GAIN * v + offset) as f32);
                }
            }
        }
        Ok(Latent::new(self.shape, data)?)
    }
}

/// Seeded, slowly drifting latent fields; see the module docs.
pub struct ProceduralSource {
    field: Arc<Field>,
    seed: u64,
}

impl ProceduralSource {
    /// A stream for `seed`, moving `drift` noise units per keyframe, making latents of `shape`.
    pub fn new(seed: u64, drift: f64, shape: LatentShape) -> Self {
        // Each channel gets its own noise seeds, derived from the stream seed.
        let channel_seed = |c: usize, salt: u64| -> u32 {
            let mixed = seed
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .wrapping_add((c as u64 + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9))
                .wrapping_add(salt);
            (mixed >> 32) as u32 ^ mixed as u32
        };
        let shapes = (0..shape.channels)
            .map(|c| Fbm::<Perlin>::new(channel_seed(c, 1)).set_octaves(4))
            .collect();
        let palette = (0..shape.channels)
            .map(|c| Perlin::new(channel_seed(c, 2)))
            .collect();
        Self {
            field: Arc::new(Field {
                shapes,
                palette,
                drift,
                shape,
            }),
            seed,
        }
    }
}

#[async_trait]
impl KeyframeSource for ProceduralSource {
    fn name(&self) -> &str {
        "procedural"
    }

    fn describe(&self) -> String {
        format!("procedural seed {}", self.seed)
    }

    async fn keyframe(&mut self, index: u64) -> Result<Keyframe, KeyframeError> {
        let field = Arc::clone(&self.field);
        let latent = tokio::task::spawn_blocking(move || field.latent(index))
            .await
            .map_err(|e| KeyframeError::Worker(e.to_string()))??;
        Ok(Keyframe {
            index,
            latent,
            image: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> LatentShape {
        LatentShape::new(4, 32, 64)
    }

    fn latent(seed: u64, index: u64) -> Latent {
        ProceduralSource::new(seed, 0.35, shape())
            .field
            .latent(index)
            .unwrap()
    }

    fn mean_std(v: &[f32]) -> (f32, f32) {
        let mean = v.iter().sum::<f32>() / v.len() as f32;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / v.len() as f32;
        (mean, var.sqrt())
    }

    #[test]
    fn same_seed_same_stream_different_seed_different_stream() {
        assert_eq!(latent(7, 3), latent(7, 3));
        assert_ne!(latent(7, 3), latent(8, 3));
    }

    #[test]
    fn values_have_latent_like_statistics() {
        for index in [0, 5, 50] {
            let l = latent(42, index);
            assert!(l.data().iter().all(|v| v.is_finite()));
            let (_, std) = mean_std(l.data());
            assert!((0.3..2.0).contains(&std), "std {std}");
        }
    }

    #[test]
    fn fields_are_smooth_not_noise() {
        // Neighbouring cells differ far less than the overall spread.
        let l = latent(42, 1);
        let (_, std) = mean_std(l.data());
        let row = &l.data()[..64];
        let step = row.windows(2).map(|w| (w[1] - w[0]).abs()).sum::<f32>() / 63.0;
        assert!(step < std * 0.3, "step {step} vs std {std}");
    }

    #[test]
    fn consecutive_keyframes_differ_but_are_related() {
        let a = latent(42, 10);
        let b = latent(42, 11);
        let far = latent(42, 40);
        let dist = |x: &Latent, y: &Latent| {
            x.data()
                .iter()
                .zip(y.data())
                .map(|(p, q)| (p - q).powi(2))
                .sum::<f32>()
                .sqrt()
        };
        assert!(dist(&a, &b) > 1.0);
        assert!(dist(&a, &b) < dist(&a, &far));
    }

    #[tokio::test]
    async fn source_yields_keyframes_of_the_requested_shape() {
        let mut source = ProceduralSource::new(1, 0.35, shape());
        let kf = source.keyframe(2).await.unwrap();
        assert_eq!(kf.index, 2);
        assert_eq!(kf.latent.shape(), shape());
        assert!(kf.image.is_none());
    }
}
