//! The TAESD decoder and encoder on the CPU, built from [`kernels::conv`]'s shifted-GEMM
//! convolutions (`exact`) or [`kernels::winograd`]'s F(4,3) convolutions (`fast`).
//!
//! Same architecture and weights as [`super::candle::TaesdDecoder`] and
//! [`super::candle::TaesdEncoder`] (the candle modules, used on CUDA and as the reference in
//! tests), laid out for the CPU: activations stay in the padded, channel-major layout for the
//! whole network, and bias, residual and ReLU are fused into each convolution's epilogue. In the
//! Winograd precisions the decoder's nearest 2× upsamplings are folded into the convolution
//! after each ([`Winograd3x3::upsampled`]), so the upsampled activation is never made. The
//! encoder's stride-2 convolutions use [`Conv3x3Stride2`] in both precisions.
//!
//! [`kernels::conv`]: crate::engine::kernels::conv
//! [`kernels::winograd`]: crate::engine::kernels::winograd

use image::RgbImage;

use super::weights::{Part, WeightError, WeightFile};
use crate::config::Precision;
use crate::engine::kernels::conv::{Conv3x3, Conv3x3Stride2, Epilogue, Padded};
use crate::engine::kernels::tile_products::Products;
use crate::engine::kernels::winograd::Winograd3x3;
use crate::engine::{Decoder, EngineError};
use crate::latent::{Latent, LatentBatch, LatentShape};

const HIDDEN: usize = 64;

/// Largest hidden activation (bytes) one pass of a network may make; bigger batches run in
/// sub-batches. Caps resident memory (≈4 live activations plus the pool) without costing speed:
/// 1 frame per pass at 512×256, 5 at 256×128.
const ACTIVATION_BUDGET: usize = 48 << 20;

/// Pictures per pass so that a `height × width` hidden activation stays within `budget` bytes.
fn per_pass(budget: usize, height: usize, width: usize) -> usize {
    (budget / (HIDDEN * (height + 2) * (width + 2) * 4)).max(1)
}

/// A stride-1 3×3 convolution in the chosen [`Precision`], optionally of its input upsampled 2×.
#[derive(Debug, Clone)]
pub(crate) enum Conv {
    /// Direct shifted-GEMM convolution ([`Precision::Exact`]).
    Direct(Conv3x3),
    /// Direct, of the input upsampled 2× (nearest neighbour) first ([`Precision::Exact`]).
    DirectUpsampled(Conv3x3),
    /// Winograd F(4,3) ([`Precision::Fast`], [`Precision::Bf16`]), which folds an upsampling
    /// into its weights when built with [`Winograd3x3::upsampled`].
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
        match winograd_products(precision) {
            None => Conv::Direct(Conv3x3::new(c_in, c_out, weight, bias)),
            Some(products) => Conv::Winograd(Winograd3x3::new(c_in, c_out, weight, bias, products)),
        }
    }

    /// The same convolution of the input upsampled 2× (nearest neighbour), TAESD's `Upsample →
    /// conv`: in `exact` the upsampled activation is made and convolved; the Winograd
    /// precisions compute each sub-pixel phase from the input as it is
    /// ([`Winograd3x3::upsampled`]).
    pub(crate) fn upsampling(
        precision: Precision,
        c_in: usize,
        c_out: usize,
        weight: &[f32],
        bias: Option<Vec<f32>>,
    ) -> Self {
        match winograd_products(precision) {
            None => Conv::DirectUpsampled(Conv3x3::new(c_in, c_out, weight, bias)),
            Some(products) => {
                Conv::Winograd(Winograd3x3::upsampled(c_in, c_out, weight, bias, products))
            }
        }
    }

    /// Convolves `input`, then applies the epilogue; borders of the result are zero.
    pub(crate) fn forward(&self, input: &Padded, epilogue: Epilogue) -> Padded {
        match self {
            Conv::Direct(conv) => conv.forward(input, epilogue),
            Conv::DirectUpsampled(conv) => conv.forward(&input.upsample2(), epilogue),
            Conv::Winograd(conv) => conv.forward(input, epilogue),
        }
    }
}

/// The arithmetic of the Winograd-domain products under `precision`; None for `exact`, which
/// convolves directly.
pub fn winograd_products(precision: Precision) -> Option<Products> {
    match precision {
        Precision::Exact => None,
        Precision::Fast => Some(Products::F32),
        Precision::Bf16 => Some(Products::Bf16),
    }
}

/// One stage of the network.
#[derive(Debug, Clone)]
enum Layer {
    Conv {
        conv: Conv,
        relu: bool,
    },
    Block(Box<[Conv; 3]>),
    /// Stride-2 convolution (encoder).
    Down(Conv3x3Stride2),
}

/// Runs `layers` on `x`.
fn run_layers(layers: &[Layer], mut x: Padded) -> Padded {
    let plain = Epilogue {
        relu: false,
        residual: None,
    };
    let relu = Epilogue {
        relu: true,
        residual: None,
    };
    for layer in layers {
        x = match layer {
            Layer::Conv { conv, relu: r } => conv.forward(&x, if *r { relu } else { plain }),
            Layer::Block(convs) => {
                let [c0, c2, c4] = &**convs;
                let h = c0.forward(&x, relu);
                let h = c2.forward(&h, relu);
                c4.forward(
                    &h,
                    Epilogue {
                        relu: true,
                        residual: Some(&x),
                    },
                )
            }
            Layer::Down(conv) => conv.forward(&x),
        };
    }
    x
}

/// Runs `layers` over `[batch][channels][height][width]` values `per_pass` pictures at a time,
/// `prepare` applied to each pass's input, and hands each pass's output to `each`, in order.
fn run_passes(
    layers: &[Layer],
    values: &[f32],
    (batch, channels, height, width): (usize, usize, usize, usize),
    per_pass: usize,
    prepare: impl Fn(&mut Padded),
    mut each: impl FnMut(&Padded),
) {
    let picture = channels * height * width;
    for start in (0..batch).step_by(per_pass.max(1)) {
        let n = per_pass.min(batch - start);
        let pass = &values[start * picture..][..n * picture];
        let mut x = Padded::from_nchw(pass, n, channels, height, width);
        prepare(&mut x);
        each(&run_layers(layers, x));
    }
}

/// The TAESD decoder for the CPU.
#[derive(Debug, Clone)]
pub struct TaesdCpuDecoder {
    name: String,
    latent_channels: usize,
    layers: Vec<Layer>,
    /// [`ACTIVATION_BUDGET`], smaller in tests.
    budget: usize,
}

fn conv(
    weights: &WeightFile,
    precision: Precision,
    prefix: &str,
    c_in: usize,
    c_out: usize,
    bias: bool,
) -> Result<Conv, WeightError> {
    let (weight, bias) = conv_values(weights, prefix, c_in, c_out, bias)?;
    Ok(Conv::new(precision, c_in, c_out, &weight, bias))
}

/// A convolution's weights `[c_out][c_in][3][3]` and, when it has one, its bias.
fn conv_values(
    weights: &WeightFile,
    prefix: &str,
    c_in: usize,
    c_out: usize,
    bias: bool,
) -> Result<(Vec<f32>, Option<Vec<f32>>), WeightError> {
    let weight = weights.values(&format!("{prefix}.weight"), &[c_out, c_in, 3, 3])?;
    let bias = if bias {
        Some(weights.values(&format!("{prefix}.bias"), &[c_out])?)
    } else {
        None
    };
    Ok((weight, bias))
}

fn block(weights: &WeightFile, precision: Precision, index: usize) -> Result<Layer, WeightError> {
    if weights.contains(&format!("{index}.skip.weight")) {
        return Err(weights.error(format!(
            "block {index} has a skip convolution, which the CPU decoder does not support"
        )));
    }
    if weights.contains(&format!("{index}.pool.0.weight")) {
        return Err(weights.error(format!(
            "block {index} has a GroupNorm mid-block (TAEF2), which the CPU engine does not \
             implement yet (the candle module in engine::taesd::candle does)"
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
    Ok(Layer::Block(Box::new([c(0)?, c(2)?, c(4)?])))
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
            // `index` is the Upsample module, folded into the convolution after it.
            index += 1;
            let (weight, bias) = conv_values(weights, &index.to_string(), HIDDEN, HIDDEN, false)?;
            layers.push(Layer::Conv {
                conv: Conv::upsampling(precision, HIDDEN, HIDDEN, &weight, bias),
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
            budget: ACTIVATION_BUDGET,
        })
    }

    /// Runs the network in sub-batches (see [`ACTIVATION_BUDGET`]) and hands each one's padded
    /// output `[3][n][8h+2][8w+2]` (≈[0, 1], unclamped) to `each`, in order.
    fn run(&self, batch: &LatentBatch, each: impl FnMut(&Padded)) {
        let s = batch.shape();
        run_passes(
            &self.layers,
            batch.data(),
            (batch.len(), s.channels, s.height, s.width),
            per_pass(self.budget, 8 * s.height, 8 * s.width),
            |x| x.map_interior(|v| (v / 3.0).tanh() * 3.0),
            each,
        );
    }

    /// The raw output `[N, 3, 8h, 8w]` in C-order (≈[0, 1], unclamped).
    pub fn decode_raw(&self, batch: &LatentBatch) -> Vec<f32> {
        let s = batch.shape();
        let mut values = Vec::with_capacity(batch.len() * 3 * 64 * s.height * s.width);
        self.run(batch, |out| out.append_nchw(&mut values));
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
        let to_u8 = |v: f32| (v.clamp(0.0, 1.0) * 255.0).round() as u8;
        let mut images = Vec::with_capacity(batch.len());
        self.run(batch, |out| {
            let (h, w) = (out.height, out.width);
            images.extend((0..out.batch).map(|b| {
                RgbImage::from_fn(w as u32, h as u32, |x, y| {
                    let (x, y) = (x as usize, y as usize);
                    image::Rgb([0, 1, 2].map(|c| to_u8(out.get(c, b, y, x))))
                })
            }));
        });
        Ok(images)
    }
}

/// The TAESD encoder for the CPU: pictures in [0, 1] → latents at 1/8 of their size.
#[derive(Debug, Clone)]
pub struct TaesdCpuEncoder {
    latent_channels: usize,
    layers: Vec<Layer>,
    /// [`ACTIVATION_BUDGET`], smaller in tests.
    budget: usize,
}

impl TaesdCpuEncoder {
    /// Builds the encoder from index-layout weights (see [`super::weights`]), computing its
    /// stride-1 convolutions in `precision`.
    pub fn new(weights: &WeightFile, precision: Precision) -> Result<Self, WeightError> {
        let latent_channels = weights.taesd_latent_channels(Part::Encoder)?;
        let mut layers = vec![
            Layer::Conv {
                conv: conv(weights, precision, "0", 3, HIDDEN, true)?,
                relu: false,
            },
            block(weights, precision, 1)?,
        ];
        let mut index = 2;
        for _ in 0..3 {
            let name = format!("{index}.weight");
            let weight = weights.values(&name, &[HIDDEN, HIDDEN, 3, 3])?;
            layers.push(Layer::Down(Conv3x3Stride2::new(
                HIDDEN, HIDDEN, &weight, None,
            )));
            index += 1;
            for _ in 0..3 {
                layers.push(block(weights, precision, index)?);
                index += 1;
            }
        }
        layers.push(Layer::Conv {
            conv: conv(
                weights,
                precision,
                &index.to_string(),
                HIDDEN,
                latent_channels,
                true,
            )?,
            relu: false,
        });
        Ok(Self {
            latent_channels,
            layers,
            budget: ACTIVATION_BUDGET,
        })
    }

    /// Latent channels it makes.
    pub fn latent_channels(&self) -> usize {
        self.latent_channels
    }

    /// Encodes `[N, 3, H, W]` values (C-order, [0, 1]) into `[N, C, H/8, W/8]` (C-order), in
    /// sub-batches as the decoder does (see [`ACTIVATION_BUDGET`]): a batch of big pictures
    /// costs the memory of one pass, not of all of them at once.
    pub fn encode_raw(
        &self,
        values: &[f32],
        batch: usize,
        height: usize,
        width: usize,
    ) -> Vec<f32> {
        let mut latents =
            Vec::with_capacity(batch * self.latent_channels * (height / 8) * (width / 8));
        run_passes(
            &self.layers,
            values,
            (batch, 3, height, width),
            per_pass(self.budget, height, width),
            |_| {},
            |out| out.append_nchw(&mut latents),
        );
        latents
    }

    /// Encodes pictures (all the same size, sides multiples of 8) in one batched call.
    pub fn encode(&self, images: &[RgbImage]) -> Result<Vec<Latent>, EngineError> {
        let Some((w, h)) = super::encoder_input_size(images)? else {
            return Ok(Vec::new());
        };
        let (w, h) = (w as usize, h as usize);
        let values = super::encoder_planes(images, w, h);
        let shape = LatentShape::new(self.latent_channels, h / 8, w / 8);
        self.encode_raw(&values, images.len(), h, w)
            .chunks_exact(shape.len())
            .map(|chunk| {
                Latent::new(shape, chunk.to_vec()).map_err(|e| EngineError::Model(e.to_string()))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::taesd::candle::TaesdDecoderModel;
    use crate::engine::taesd::Family;
    use crate::engine::Device;
    use crate::latent::{Latent, LatentShape};
    use crate::test_weights::{max_abs_diff, psnr_unit, read_f32_file, shared_file, weights};

    #[test]
    fn matches_golden_vectors() {
        for (family, channels) in [(Family::Taesd, 4), (Family::Taef1, 16)] {
            let (Some(input), Some(expected), Some(path)) = (
                shared_file(&format!("golden/{family}_dec_in_{channels}x8x8_f32le.bin")),
                shared_file(&format!("golden/{family}_dec_out_3x64x64_f32le.bin")),
                weights(family, Part::Decoder),
            ) else {
                continue;
            };
            let input = read_f32_file(&input);
            let expected = read_f32_file(&expected);
            let weights = WeightFile::load(&path, Part::Decoder).unwrap();
            let decoder = TaesdCpuDecoder::new(family.name(), &weights, Precision::Exact).unwrap();
            let shape = LatentShape::new(channels, 8, 8);
            let mut batch = LatentBatch::with_capacity(shape, 1);
            batch.push(&Latent::new(shape, input).unwrap()).unwrap();
            let err = max_abs_diff(&decoder.decode_raw(&batch), &expected);
            assert!(err <= 1e-3, "{family}: max abs error {err}");
        }
    }

    #[test]
    fn sub_batches_cover_big_batches_in_order() {
        assert_eq!(per_pass(ACTIVATION_BUDGET, 256, 512), 1);
        assert_eq!(per_pass(ACTIVATION_BUDGET, 128, 256), 5);
        assert_eq!(per_pass(ACTIVATION_BUDGET, 100_000, 100_000), 1);
    }

    #[test]
    fn agrees_with_the_candle_module_on_a_batch() {
        let Some(path) = weights(Family::Taesd, Part::Decoder) else {
            return;
        };
        let weights = WeightFile::load(&path, Part::Decoder).unwrap();
        let mut cpu = TaesdCpuDecoder::new("taesd", &weights, Precision::Exact).unwrap();
        // One picture per pass: the three passes must come back in order.
        cpu.budget = 1;
        let candle = TaesdDecoderModel::load(&path, "taesd", Device::Cpu).unwrap();
        let shape = LatentShape::new(4, 5, 7);
        let mut batch = LatentBatch::with_capacity(shape, 3);
        for n in 0..3 {
            let data = (0..shape.len())
                .map(|i| ((i * 3 + n * 11) as f32 * 0.29).sin() * 1.5)
                .collect();
            batch.push(&Latent::new(shape, data).unwrap()).unwrap();
        }
        let err = max_abs_diff(&cpu.decode_raw(&batch), &candle.decode_raw(&batch).unwrap());
        assert!(err <= 1e-3, "max abs error {err}");
    }

    #[test]
    fn encoder_agrees_with_the_candle_module() {
        use candle_core::{Module, Tensor};
        let Some(path) = weights(Family::Taesd, Part::Encoder) else {
            return;
        };
        let weights = WeightFile::load(&path, Part::Encoder).unwrap();
        let (n, h, w) = (2, 24, 40);
        let values: Vec<f32> = (0..n * 3 * h * w)
            .map(|i| 0.5 + 0.5 * (i as f32 * 0.013).sin() * (i as f32 * 0.0007).cos())
            .collect();
        let candle = crate::engine::taesd::candle::TaesdEncoder::new(
            4,
            weights.var_builder(&candle_core::Device::Cpu),
        )
        .unwrap();
        let x = Tensor::from_slice(&values, (n, 3, h, w), &candle_core::Device::Cpu).unwrap();
        let expected = candle
            .forward(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for precision in [Precision::Exact, Precision::Fast] {
            let mut cpu = TaesdCpuEncoder::new(&weights, precision).unwrap();
            let got = cpu.encode_raw(&values, n, h, w);
            let err = max_abs_diff(&got, &expected);
            assert!(err <= 1e-3, "{precision}: max abs error {err}");
            // One picture per pass: the passes must come back in order, with the same values.
            cpu.budget = 1;
            assert_eq!(
                cpu.encode_raw(&values, n, h, w),
                got,
                "{precision}: one per pass"
            );
        }
    }

    /// The bound for `precision = "fast"`: every frame ≥ 45 dB against the exact path, on the
    /// encodings of the shared pictures and slerps between them (and for the fast encoder, its
    /// latents decoded exactly against the exact encoder's).
    #[test]
    fn fast_precision_stays_above_45_db_on_real_latents() {
        assert_worst_frame_at_least(Precision::Fast, 45.0);
    }

    /// `precision = "bf16"` (bf16 Winograd-domain products where the CPU has AVX512_BF16):
    /// every frame ≥ 32 dB against the exact path on the same frames as `fast` (measured worst
    /// 34.1 dB; README and BENCHMARKS.md give the figures).
    #[test]
    fn bf16_precision_stays_above_32_db_on_real_latents() {
        assert_worst_frame_at_least(Precision::Bf16, 32.0);
    }

    /// Every frame of [`psnr_against_exact`] at `bound` dB or more (printed with the products'
    /// level; skips without the pictures or weights).
    fn assert_worst_frame_at_least(precision: Precision, bound: f64) {
        let Some(figures) = psnr_against_exact(precision) else {
            return;
        };
        let worst = figures.iter().copied().fold(f64::MAX, f64::min);
        let level = winograd_products(precision).map(Products::level);
        eprintln!("{precision} ({level:?}): worst {worst:.1} dB ({figures:.1?})");
        assert!(worst >= bound, "worst {worst:.1} dB ({figures:.1?})");
    }

    /// PSNR of every frame of `precision` against `exact`: the shared pictures at 256×128
    /// encoded exactly, the slerp midpoints of consecutive pairs, decoded both ways; and the
    /// `precision` encoder's latents decoded exactly against the exact encoder's. `None` (the
    /// test skips) without the pictures or weights.
    fn psnr_against_exact(precision: Precision) -> Option<Vec<f64>> {
        let (Some(images_dir), Some(encoder_path), Some(decoder_path)) = (
            shared_file("../images"),
            weights(Family::Taesd, Part::Encoder),
            weights(Family::Taesd, Part::Decoder),
        ) else {
            return None;
        };
        let mut files: Vec<_> = std::fs::read_dir(&images_dir)
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "png"))
            .collect();
        files.sort();
        assert!(files.len() >= 6, "pictures in {}", images_dir.display());
        let pictures: Vec<RgbImage> = files
            .iter()
            .map(|p| {
                image::open(p)
                    .unwrap()
                    .resize_exact(256, 128, image::imageops::FilterType::Triangle)
                    .to_rgb8()
            })
            .collect();
        let enc_weights = WeightFile::load(&encoder_path, Part::Encoder).unwrap();
        let exact_enc = TaesdCpuEncoder::new(&enc_weights, Precision::Exact).unwrap();
        let fast_enc = TaesdCpuEncoder::new(&enc_weights, precision).unwrap();
        let latents = exact_enc.encode(&pictures).unwrap();
        let fast_latents = fast_enc.encode(&pictures).unwrap();

        let dec_weights = WeightFile::load(&decoder_path, Part::Decoder).unwrap();
        let exact = TaesdCpuDecoder::new("taesd", &dec_weights, Precision::Exact).unwrap();
        let fast = TaesdCpuDecoder::new("taesd", &dec_weights, precision).unwrap();
        let shape = latents[0].shape();
        let mut batch = LatentBatch::with_capacity(shape, 2 * latents.len());
        for (i, a) in latents.iter().enumerate() {
            batch.push(a).unwrap();
            let b = &latents[(i + 1) % latents.len()];
            let mid = crate::latent::slerp_batch(a, b, &[0.5]).unwrap();
            batch
                .push(&Latent::new(shape, mid.item(0).to_vec()).unwrap())
                .unwrap();
        }
        let frame = 3 * shape.height * 8 * shape.width * 8;
        let reference = exact.decode_raw(&batch);
        let approx = fast.decode_raw(&batch);
        let mut fast_batch = LatentBatch::with_capacity(shape, latents.len());
        for latent in &fast_latents {
            fast_batch.push(latent).unwrap();
        }
        let from_fast_encoder = exact.decode_raw(&fast_batch);
        let mut figures = Vec::new();
        for (i, (a, b)) in reference
            .chunks_exact(frame)
            .zip(approx.chunks_exact(frame))
            .enumerate()
        {
            figures.push(psnr_unit(a, b));
            if i % 2 == 0 {
                let e = &from_fast_encoder[(i / 2) * frame..][..frame];
                figures.push(psnr_unit(a, e));
            }
        }
        Some(figures)
    }
}
