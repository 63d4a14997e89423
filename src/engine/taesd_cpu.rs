//! The TAESD decoder on the CPU, built from [`super::conv`]'s shifted-GEMM convolutions.
//!
//! Same architecture and weights as [`super::taesd::TaesdDecoder`] (the candle module, used on
//! CUDA and as the reference in tests), laid out for the CPU: activations stay in the padded,
//! channel-major layout for the whole network, and bias, residual and ReLU are fused into each
//! convolution's epilogue.

use image::RgbImage;

use super::conv::{Conv3x3, Epilogue, Padded};
use super::weights::{Part, WeightError, WeightFile};
use super::winograd::Winograd3x3;
use super::{Decoder, EngineError};
use crate::config::Precision;
use crate::latent::LatentBatch;

const HIDDEN: usize = 64;

/// A stride-1 3×3 convolution in the chosen [`Precision`].
#[derive(Debug, Clone)]
pub(crate) enum Conv {
    /// Direct shifted-GEMM convolution ([`Precision::Exact`]).
    Direct(Conv3x3),
    /// Winograd F(4,3) ([`Precision::Fast`]).
    Winograd(Winograd3x3),
}

impl Conv {
    /// From PyTorch-layout weights `[c_out][c_in][3][3]` and an optional bias.
    pub(crate) fn new(
        precision: Precision,
        c_in: usize,
        c_out: usize,
        weight: &[f32],
        bias: Option<Vec<f32>>,
    ) -> Self {
        match precision {
            Precision::Exact => Conv::Direct(Conv3x3::new(c_in, c_out, weight, bias)),
            Precision::Fast => Conv::Winograd(Winograd3x3::new(c_in, c_out, weight, bias)),
        }
    }

    /// Convolves `input`, then applies the epilogue; borders of the result are zero.
    pub(crate) fn forward(&self, input: &Padded, epilogue: Epilogue) -> Padded {
        match self {
            Conv::Direct(conv) => conv.forward(input, epilogue),
            Conv::Winograd(conv) => conv.forward(input, epilogue),
        }
    }
}

/// One stage of the network.
#[derive(Debug, Clone)]
enum Layer {
    Conv { conv: Conv, relu: bool },
    Block([Conv; 3]),
    Upsample,
}

/// The TAESD decoder for the CPU.
#[derive(Debug, Clone)]
pub struct TaesdCpuDecoder {
    name: String,
    latent_channels: usize,
    layers: Vec<Layer>,
}

fn conv(
    weights: &WeightFile,
    precision: Precision,
    prefix: &str,
    c_in: usize,
    c_out: usize,
    bias: bool,
) -> Result<Conv, WeightError> {
    let weight = weights.values(&format!("{prefix}.weight"), &[c_out, c_in, 3, 3])?;
    let bias = if bias {
        Some(weights.values(&format!("{prefix}.bias"), &[c_out])?)
    } else {
        None
    };
    Ok(Conv::new(precision, c_in, c_out, &weight, bias))
}

fn block(weights: &WeightFile, precision: Precision, index: usize) -> Result<Layer, WeightError> {
    if weights.contains(&format!("{index}.skip.weight")) {
        return Err(weights.error(format!(
            "block {index} has a skip convolution, which the CPU decoder does not support"
        )));
    }
    let c = |i: usize| {
        conv(
            weights,
            precision,
            &format!("{index}.conv.{i}"),
            HIDDEN,
            HIDDEN,
            true,
        )
    };
    Ok(Layer::Block([c(0)?, c(2)?, c(4)?]))
}

impl TaesdCpuDecoder {
    /// Builds the decoder from index-layout weights (see [`super::weights`]), computing in
    /// `precision`.
    pub fn new(
        name: &str,
        weights: &WeightFile,
        precision: Precision,
    ) -> Result<Self, WeightError> {
        let latent_channels = weights.taesd_latent_channels(Part::Decoder)?;
        let mut layers = vec![Layer::Conv {
            conv: conv(weights, precision, "1", latent_channels, HIDDEN, true)?,
            relu: true,
        }];
        let mut index = 3;
        for _ in 0..3 {
            layers.push(block(weights, precision, index)?);
            index += 1;
        }
        for stage in 0..3 {
            layers.push(Layer::Upsample);
            index += 1;
            layers.push(Layer::Conv {
                conv: conv(
                    weights,
                    precision,
                    &index.to_string(),
                    HIDDEN,
                    HIDDEN,
                    false,
                )?,
                relu: false,
            });
            index += 1;
            for _ in 0..if stage < 2 { 3 } else { 1 } {
                layers.push(block(weights, precision, index)?);
                index += 1;
            }
        }
        layers.push(Layer::Conv {
            conv: conv(weights, precision, &index.to_string(), HIDDEN, 3, true)?,
            relu: false,
        });
        Ok(Self {
            name: name.to_string(),
            latent_channels,
            layers,
        })
    }

    /// Runs the network; returns `[3][N][8h+2][8w+2]` padded output (≈[0, 1], unclamped).
    fn run(&self, batch: &LatentBatch) -> Padded {
        let s = batch.shape();
        let mut x = Padded::from_nchw(batch.data(), batch.len(), s.channels, s.height, s.width);
        x.map_interior(|v| (v / 3.0).tanh() * 3.0);
        for layer in &self.layers {
            x = match layer {
                Layer::Conv { conv, relu } => conv.forward(
                    &x,
                    Epilogue {
                        relu: *relu,
                        residual: None,
                    },
                ),
                Layer::Block([c0, c2, c4]) => {
                    let h = c0.forward(
                        &x,
                        Epilogue {
                            relu: true,
                            residual: None,
                        },
                    );
                    let h = c2.forward(
                        &h,
                        Epilogue {
                            relu: true,
                            residual: None,
                        },
                    );
                    c4.forward(
                        &h,
                        Epilogue {
                            relu: true,
                            residual: Some(&x),
                        },
                    )
                }
                Layer::Upsample => x.upsample2(),
            };
        }
        x
    }

    /// The raw output `[N, 3, 8h, 8w]` in C-order (≈[0, 1], unclamped).
    pub fn decode_raw(&self, batch: &LatentBatch) -> Vec<f32> {
        let out = self.run(batch);
        let (h, w) = (out.height, out.width);
        let mut values = Vec::with_capacity(batch.len() * 3 * h * w);
        for b in 0..batch.len() {
            for c in 0..3 {
                for y in 0..h {
                    values.extend((0..w).map(|x| out.get(c, b, y, x)));
                }
            }
        }
        values
    }
}

impl Decoder for TaesdCpuDecoder {
    fn name(&self) -> &str {
        &self.name
    }

    fn latent_channels(&self) -> usize {
        self.latent_channels
    }

    fn decode(&self, batch: &LatentBatch) -> Result<Vec<RgbImage>, EngineError> {
        let shape = batch.shape();
        if shape.channels != self.latent_channels {
            return Err(EngineError::Channels {
                decoder: self.name.clone(),
                expected: self.latent_channels,
                got: shape.channels,
            });
        }
        let out = self.run(batch);
        let (h, w) = (out.height, out.width);
        let to_u8 = |v: f32| (v.clamp(0.0, 1.0) * 255.0).round() as u8;
        Ok((0..batch.len())
            .map(|b| {
                RgbImage::from_fn(w as u32, h as u32, |x, y| {
                    let (x, y) = (x as usize, y as usize);
                    image::Rgb([0, 1, 2].map(|c| to_u8(out.get(c, b, y, x))))
                })
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::models::{
        find, read_f32_file, search_dirs, test_models_dir, Family, TaesdDecoderModel,
    };
    use crate::engine::Device;
    use crate::latent::{Latent, LatentShape};

    fn decoder_path(family: Family) -> std::path::PathBuf {
        find(
            &search_dirs(Some(&test_models_dir())),
            family,
            Part::Decoder,
        )
        .unwrap_or_else(|| {
            panic!(
                "{family} decoder not found under {}",
                test_models_dir().display()
            )
        })
    }

    fn max_abs(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn matches_golden_vectors() {
        for (family, channels) in [(Family::Taesd, 4), (Family::Taef1, 16)] {
            let golden = test_models_dir().join("golden");
            let input =
                read_f32_file(&golden.join(format!("{family}_dec_in_{channels}x8x8_f32le.bin")));
            let expected =
                read_f32_file(&golden.join(format!("{family}_dec_out_3x64x64_f32le.bin")));
            let weights = WeightFile::load(&decoder_path(family), Part::Decoder).unwrap();
            let decoder = TaesdCpuDecoder::new(family.name(), &weights, Precision::Exact).unwrap();
            let shape = LatentShape::new(channels, 8, 8);
            let mut batch = LatentBatch::with_capacity(shape, 1);
            batch.push(&Latent::new(shape, input).unwrap()).unwrap();
            let err = max_abs(&decoder.decode_raw(&batch), &expected);
            assert!(err <= 1e-3, "{family}: max abs error {err}");
        }
    }

    #[test]
    fn agrees_with_the_candle_module_on_a_batch() {
        let path = decoder_path(Family::Taesd);
        let weights = WeightFile::load(&path, Part::Decoder).unwrap();
        let cpu = TaesdCpuDecoder::new("taesd", &weights, Precision::Exact).unwrap();
        let candle = TaesdDecoderModel::load(&path, "taesd", Device::Cpu).unwrap();
        let shape = LatentShape::new(4, 5, 7);
        let mut batch = LatentBatch::with_capacity(shape, 3);
        for n in 0..3 {
            let data = (0..shape.len())
                .map(|i| ((i * 3 + n * 11) as f32 * 0.29).sin() * 1.5)
                .collect();
            batch.push(&Latent::new(shape, data).unwrap()).unwrap();
        }
        let err = max_abs(&cpu.decode_raw(&batch), &candle.decode_raw(&batch).unwrap());
        assert!(err <= 1e-3, "max abs error {err}");
    }
}
