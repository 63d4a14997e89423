//! TAESD, the Tiny AutoEncoder for Stable Diffusion (Ollin Boer Bohan, MIT licence), as candle
//! modules. One architecture serves the whole family: taesd and taesdxl (4 latent channels),
//! taesd3 and taef1 (16), and taef2 (32), whose files add a GroupNorm mid-block to three blocks
//! (`N.pool.*`: `x + conv1x1(256→64)(relu(GroupNorm(4, 256)(conv1x1(64→256)(x))))` before the
//! block's convolutions), used when the weights have it.
//!
//! ```text
//! decoder: tanh(z/3)·3 → conv(C,64) → ReLU → 3×Block
//!          → [Upsample×2 → conv(no bias) → 3×Block] ×2 → Upsample×2 → conv(no bias) → Block
//!          → conv(64,3)
//! encoder: conv(3,64) → Block → [conv(stride 2, no bias) → 3×Block] ×3 → conv(64,C)
//! Block(x) = ReLU(conv(ReLU(conv(ReLU(conv(x))))) + skip(x))
//! ```
//!
//! Weights are found by name through a `VarBuilder` in the original index layout (`1.weight`,
//! `3.conv.0.weight`, … — the position in the original `nn.Sequential`); [`super::weights`]
//! maps the diffusers `AutoencoderTiny` layout onto it.
//!
//! [`TaesdDecoderModel`] and [`CandleEncoder`] put the modules behind the engine's types: the
//! CUDA backend, and on the CPU the reference the CPU networks are tested against.

use std::path::Path;

use candle_core::{DType, Device as CandleDevice, Module, Result, Tensor};
use candle_nn::{conv2d, conv2d_no_bias, group_norm, Conv2d, Conv2dConfig, GroupNorm, VarBuilder};
use image::RgbImage;

use super::weights::{Part, WeightFile};
use crate::engine::{Decoder, Device, EngineError};
use crate::latent::{Latent, LatentBatch, LatentShape};

/// Width of every hidden layer.
const HIDDEN: usize = 64;

fn conv3x3(c_in: usize, c_out: usize, bias: bool, stride: usize, vb: VarBuilder) -> Result<Conv2d> {
    let config = Conv2dConfig {
        padding: 1,
        stride,
        ..Default::default()
    };
    if bias {
        conv2d(c_in, c_out, 3, config, vb)
    } else {
        conv2d_no_bias(c_in, c_out, 3, config, vb)
    }
}

/// The residual block: three 3×3 convolutions with ReLUs, plus a skip path.
#[derive(Debug, Clone)]
struct Block {
    conv: [Conv2d; 3],
    skip: Option<Conv2d>,
    pool: Option<Box<MidBlock>>,
}

/// TAEF2's GroupNorm mid-block, added to the block's input: `pool.{0,1,3}`.
#[derive(Debug, Clone)]
struct MidBlock {
    expand: Conv2d,
    norm: GroupNorm,
    project: Conv2d,
}

impl MidBlock {
    /// Present when the weights have `pool.0.weight` under `vb`.
    fn new(channels: usize, vb: &VarBuilder) -> Result<Option<Self>> {
        if !vb.contains_tensor("pool.0.weight") {
            return Ok(None);
        }
        let wide = channels * 4;
        Ok(Some(Self {
            expand: conv2d_no_bias(channels, wide, 1, Default::default(), vb.pp("pool.0"))?,
            norm: group_norm(4, wide, 1e-5, vb.pp("pool.1"))?,
            project: conv2d_no_bias(wide, channels, 1, Default::default(), vb.pp("pool.3"))?,
        }))
    }
}

impl Module for MidBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.expand.forward(x)?;
        let h = self.norm.forward(&h)?.relu()?;
        self.project.forward(&h)
    }
}

impl Block {
    fn new(c_in: usize, c_out: usize, vb: VarBuilder) -> Result<Self> {
        let conv = [
            conv3x3(c_in, c_out, true, 1, vb.pp("conv.0"))?,
            conv3x3(c_out, c_out, true, 1, vb.pp("conv.2"))?,
            conv3x3(c_out, c_out, true, 1, vb.pp("conv.4"))?,
        ];
        let skip = if c_in == c_out {
            None
        } else {
            Some(conv2d_no_bias(
                c_in,
                c_out,
                1,
                Default::default(),
                vb.pp("skip"),
            )?)
        };
        let pool = MidBlock::new(c_in, &vb)?.map(Box::new);
        Ok(Self { conv, skip, pool })
    }
}

impl Module for Block {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let pooled;
        let x = match &self.pool {
            Some(pool) => {
                pooled = (x + pool.forward(x)?)?;
                &pooled
            }
            None => x,
        };
        let h = self.conv[0].forward(x)?.relu()?;
        let h = self.conv[1].forward(&h)?.relu()?;
        let h = self.conv[2].forward(&h)?;
        let skip = match &self.skip {
            Some(skip) => skip.forward(x)?,
            None => x.clone(),
        };
        (h + skip)?.relu()
    }
}

/// One entry of the original `nn.Sequential`.
#[derive(Debug, Clone)]
enum Layer {
    /// `tanh(x/3)·3`: soft clamp of the input latents.
    Clamp,
    Conv(Conv2d),
    Relu,
    Block(Block),
    /// Nearest-neighbour upsampling by 2.
    Upsample,
}

impl Module for Layer {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Layer::Clamp => (x / 3.0)?.tanh()? * 3.0,
            Layer::Conv(conv) => conv.forward(x),
            Layer::Relu => x.relu(),
            Layer::Block(block) => block.forward(x),
            Layer::Upsample => {
                let (_, _, h, w) = x.dims4()?;
                x.upsample_nearest2d(h * 2, w * 2)
            }
        }
    }
}

fn run(layers: &[Layer], x: &Tensor) -> Result<Tensor> {
    layers
        .iter()
        .try_fold(x.clone(), |x, layer| layer.forward(&x))
}

/// The TAESD decoder: latents `[N, C, h, w]` → pictures `[N, 3, 8h, 8w]` in ≈[0, 1].
#[derive(Debug, Clone)]
pub struct TaesdDecoder {
    layers: Vec<Layer>,
    latent_channels: usize,
}

impl TaesdDecoder {
    /// Builds the decoder for `latent_channels`-channel latents from weights named as in the
    /// original index layout.
    pub fn new(latent_channels: usize, vb: VarBuilder) -> Result<Self> {
        let mut layers = vec![
            Layer::Clamp,
            Layer::Conv(conv3x3(latent_channels, HIDDEN, true, 1, vb.pp("1"))?),
            Layer::Relu,
        ];
        let mut index = 3;
        let block = |layers: &mut Vec<Layer>, index: &mut usize| -> Result<()> {
            layers.push(Layer::Block(Block::new(
                HIDDEN,
                HIDDEN,
                vb.pp(index.to_string()),
            )?));
            *index += 1;
            Ok(())
        };
        for _ in 0..3 {
            block(&mut layers, &mut index)?;
        }
        for stage in 0..3 {
            layers.push(Layer::Upsample);
            index += 1;
            let conv = conv3x3(HIDDEN, HIDDEN, false, 1, vb.pp(index.to_string()))?;
            layers.push(Layer::Conv(conv));
            index += 1;
            let blocks = if stage < 2 { 3 } else { 1 };
            for _ in 0..blocks {
                block(&mut layers, &mut index)?;
            }
        }
        layers.push(Layer::Conv(conv3x3(
            HIDDEN,
            3,
            true,
            1,
            vb.pp(index.to_string()),
        )?));
        Ok(Self {
            layers,
            latent_channels,
        })
    }

    pub fn latent_channels(&self) -> usize {
        self.latent_channels
    }
}

impl Module for TaesdDecoder {
    fn forward(&self, z: &Tensor) -> Result<Tensor> {
        run(&self.layers, z)
    }
}

/// The TAESD encoder: pictures `[N, 3, H, W]` in [0, 1] → latents `[N, C, H/8, W/8]`.
#[derive(Debug, Clone)]
pub struct TaesdEncoder {
    layers: Vec<Layer>,
    latent_channels: usize,
}

impl TaesdEncoder {
    /// Builds the encoder producing `latent_channels`-channel latents from weights named as in
    /// the original index layout.
    pub fn new(latent_channels: usize, vb: VarBuilder) -> Result<Self> {
        let mut layers = vec![
            Layer::Conv(conv3x3(3, HIDDEN, true, 1, vb.pp("0"))?),
            Layer::Block(Block::new(HIDDEN, HIDDEN, vb.pp("1"))?),
        ];
        let mut index = 2;
        for _ in 0..3 {
            let down = conv3x3(HIDDEN, HIDDEN, false, 2, vb.pp(index.to_string()))?;
            layers.push(Layer::Conv(down));
            index += 1;
            for _ in 0..3 {
                layers.push(Layer::Block(Block::new(
                    HIDDEN,
                    HIDDEN,
                    vb.pp(index.to_string()),
                )?));
                index += 1;
            }
        }
        layers.push(Layer::Conv(conv3x3(
            HIDDEN,
            latent_channels,
            true,
            1,
            vb.pp(index.to_string()),
        )?));
        Ok(Self {
            layers,
            latent_channels,
        })
    }

    pub fn latent_channels(&self) -> usize {
        self.latent_channels
    }
}

impl Module for TaesdEncoder {
    fn forward(&self, image: &Tensor) -> Result<Tensor> {
        run(&self.layers, image)
    }
}

/// Results of the engine-facing types here (`Result` is candle's in this file).
type EngineResult<T> = std::result::Result<T, EngineError>;

/// The candle device for an engine device. candle has no wgpu backend: on wgpu, candle's work
/// (in-process diffusion, TAEF2) runs on its CPU backend.
pub fn candle_device(device: Device) -> EngineResult<CandleDevice> {
    match device {
        Device::Cpu | Device::Wgpu => Ok(CandleDevice::Cpu),
        Device::Cuda(n) => CandleDevice::new_cuda(n)
            .map_err(|e| EngineError::Device(device.to_string(), e.to_string())),
    }
}

fn model_error(path: &Path, e: impl std::fmt::Display) -> EngineError {
    EngineError::Model(format!("{}: {e}", path.display()))
}

/// The TAESD decoder behind the engine's [`Decoder`] trait.
pub struct TaesdDecoderModel {
    name: String,
    model: TaesdDecoder,
    device: CandleDevice,
}

impl TaesdDecoderModel {
    /// Loads a decoder file; its latent channel count comes from its first convolution.
    pub fn load(path: &Path, name: &str, device: Device) -> EngineResult<Self> {
        Self::on(path, name, candle_device(device)?)
    }

    /// [`TaesdDecoderModel::load`] onto a candle device.
    pub fn on(path: &Path, name: &str, device: CandleDevice) -> EngineResult<Self> {
        let weights = WeightFile::load(path, Part::Decoder)?;
        let channels = weights.taesd_latent_channels(Part::Decoder)?;
        let model = TaesdDecoder::new(channels, weights.var_builder(&device))
            .map_err(|e| model_error(path, e))?;
        Ok(Self {
            name: name.to_string(),
            model,
            device,
        })
    }

    /// The raw model output `[N, 3, 8h, 8w]` (≈[0, 1], unclamped), as f32 in C-order.
    pub fn decode_raw(&self, batch: &LatentBatch) -> EngineResult<Vec<f32>> {
        let out = self.forward(batch)?;
        out.flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| EngineError::Model(e.to_string()))
    }

    fn forward(&self, batch: &LatentBatch) -> EngineResult<Tensor> {
        let s = batch.shape();
        let z = Tensor::from_slice(
            batch.data(),
            (batch.len(), s.channels, s.height, s.width),
            &self.device,
        )
        .and_then(|z| self.model.forward(&z))
        .map_err(|e| EngineError::Model(format!("{} decode: {e}", self.name)))?;
        Ok(z)
    }
}

impl Decoder for TaesdDecoderModel {
    fn name(&self) -> &str {
        &self.name
    }

    fn latent_channels(&self) -> usize {
        self.model.latent_channels()
    }

    fn decode(&self, batch: &LatentBatch) -> EngineResult<Vec<RgbImage>> {
        let out = self.forward(batch)?;
        let pixels = (|| {
            let (n, _, h, w) = out.dims4()?;
            let bytes = (out.clamp(0f32, 1f32)? * 255.0)?
                .round()?
                .to_dtype(DType::U8)?
                .permute((0, 2, 3, 1))?
                .flatten_all()?
                .to_vec1::<u8>()?;
            Ok::<_, candle_core::Error>((n, h, w, bytes))
        })();
        let (n, h, w, bytes) =
            pixels.map_err(|e| EngineError::Model(format!("{} decode: {e}", self.name)))?;
        let frame = h * w * 3;
        (0..n)
            .map(|i| {
                RgbImage::from_raw(
                    w as u32,
                    h as u32,
                    bytes[i * frame..(i + 1) * frame].to_vec(),
                )
                .ok_or_else(|| EngineError::Model("decoded frame has the wrong size".into()))
            })
            .collect()
    }
}

/// The candle encoder module behind the engine's encoder (see [`super::TaesdEncoderModel`]).
pub struct CandleEncoder {
    model: TaesdEncoder,
    device: CandleDevice,
}

impl CandleEncoder {
    /// Builds the module from `weights` (read from `path`) on `device`; its latent channel
    /// count comes from its last convolution.
    pub fn load(path: &Path, weights: &WeightFile, device: CandleDevice) -> EngineResult<Self> {
        let channels = weights.taesd_latent_channels(Part::Encoder)?;
        let model = TaesdEncoder::new(channels, weights.var_builder(&device))
            .map_err(|e| model_error(path, e))?;
        Ok(Self { model, device })
    }

    pub fn latent_channels(&self) -> usize {
        self.model.latent_channels()
    }

    /// Encodes pictures (all the same size, sides multiples of 8) in one batched call.
    pub fn encode(&self, images: &[RgbImage]) -> EngineResult<Vec<Latent>> {
        let Some((w, h)) = super::encoder_input_size(images)? else {
            return Ok(Vec::new());
        };
        let mut data = Vec::with_capacity(images.len() * (w * h * 3) as usize);
        for image in images {
            data.extend(image.as_raw().iter().map(|&v| f32::from(v) / 255.0));
        }
        let shape = LatentShape::new(self.latent_channels(), h as usize / 8, w as usize / 8);
        let values = (|| {
            let x = Tensor::from_vec(
                data,
                (images.len(), h as usize, w as usize, 3),
                &self.device,
            )?
            .permute((0, 3, 1, 2))?
            .contiguous()?;
            self.model.forward(&x)?.flatten_all()?.to_vec1::<f32>()
        })()
        .map_err(|e| EngineError::Model(format!("encode: {e}")))?;
        values
            .chunks(shape.len())
            .map(|chunk| {
                Latent::new(shape, chunk.to_vec()).map_err(|e| EngineError::Model(e.to_string()))
            })
            .collect()
    }
}
