//! The TAESD family (Tiny AutoEncoder for Stable Diffusion, Ollin Boer Bohan, MIT licence):
//! which member a config asks for, and the one place a backend is chosen for its networks.
//!
//! One architecture serves the whole family ([`Family`]). It runs on one of three backends
//! ([`Backend::for_device`]): on the CPU, dreamd's own networks ([`cpu`], over the
//! [`kernels`](super::kernels)); on CUDA, candle's modules ([`candle`], also the reference the
//! CPU networks are tested against); on wgpu, the WGSL networks of [`super::wgpu`]. [`weights`]
//! reads either layout of the weight files.
//!
//! TAEF2 (FLUX.2, 32 channels) adds GroupNorm mid-blocks that only the candle modules implement,
//! so its files run on candle's CPU backend when the device is the CPU or wgpu
//! ([`Backend::for_weights`]).

pub mod candle;
pub mod cpu;
pub mod weights;

use std::fmt;
use std::path::Path;

use image::RgbImage;

use super::{Decoder, Device, EngineError};
use crate::config::Precision;
use crate::latent::Latent;
use weights::{Part, WeightError, WeightFile};

/// A member of the TAESD family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// SD 1.x / 2.x latents, 4 channels.
    Taesd,
    /// SDXL latents, 4 channels.
    Taesdxl,
    /// SD3 latents, 16 channels.
    Taesd3,
    /// FLUX.1 latents, 16 channels.
    Taef1,
    /// FLUX.2 latents, 32 channels (GroupNorm mid-blocks: candle backend only).
    Taef2,
}

impl Family {
    /// Every member, in report order.
    pub const ALL: [Family; 5] = [
        Family::Taesd,
        Family::Taesdxl,
        Family::Taesd3,
        Family::Taef1,
        Family::Taef2,
    ];

    /// The member's name, as in its file names and `generation.decoder`.
    pub fn name(self) -> &'static str {
        match self {
            Family::Taesd => "taesd",
            Family::Taesdxl => "taesdxl",
            Family::Taesd3 => "taesd3",
            Family::Taef1 => "taef1",
            Family::Taef2 => "taef2",
        }
    }

    /// The member called `name` (as [`Family::name`] spells it).
    pub fn from_name(name: &str) -> Option<Family> {
        Family::ALL.into_iter().find(|f| f.name() == name)
    }

    /// Channels of the latents it decodes and encodes.
    pub fn latent_channels(self) -> usize {
        match self {
            Family::Taesd | Family::Taesdxl => 4,
            Family::Taesd3 | Family::Taef1 => 16,
            Family::Taef2 => 32,
        }
    }

    /// File name of one half without its extension, e.g. `taesd_decoder` (found as `.safetensors`
    /// or as the upstream `.pth`).
    pub fn file_stem(self, part: Part) -> String {
        let part = match part {
            Part::Decoder => "decoder",
            Part::Encoder => "encoder",
        };
        format!("{}_{part}", self.name())
    }

    /// File name of one half in dreamd's own layout, e.g. `taesd_decoder.safetensors`.
    pub fn file_name(self, part: Part) -> String {
        format!("{}.safetensors", self.file_stem(part))
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where the TAESD networks run.
pub enum Backend {
    /// dreamd's CPU networks, in this arithmetic.
    Cpu(Precision),
    /// candle's modules on this device (CUDA).
    Candle(candle_core::Device),
    /// The WGSL networks on this wgpu device, in this precision (`fast`: f16 activations where
    /// the device has them).
    Wgpu(std::sync::Arc<super::wgpu::GpuContext>, Precision),
}

impl Backend {
    /// The backend for `device`: the CPU networks on the CPU, candle on CUDA, the WGSL
    /// networks on wgpu (the process's one device: [`super::wgpu::GpuContext::shared`]).
    /// Decoder and encoder both get theirs here.
    pub fn for_device(device: Device, precision: Precision) -> Result<Backend, EngineError> {
        match device {
            Device::Cpu => Ok(Backend::Cpu(precision)),
            Device::Cuda(_) => Ok(Backend::Candle(candle::candle_device(device)?)),
            Device::Wgpu => Ok(Backend::Wgpu(
                super::wgpu::GpuContext::shared(super::wgpu::AdapterPolicy::AllowSoftware)?,
                precision,
            )),
        }
    }

    /// The backend for these weights on `device`: as [`Backend::for_device`], except that
    /// weights with GroupNorm mid-blocks (TAEF2), which dreamd's CPU and wgpu networks do not
    /// implement, run on candle's CPU backend (`precision` does not apply there).
    pub fn for_weights(
        weights: &WeightFile,
        device: Device,
        precision: Precision,
    ) -> Result<Backend, EngineError> {
        if matches!(device, Device::Cpu | Device::Wgpu) && has_mid_blocks(weights) {
            tracing::info!(
                file = %weights.path().display(),
                "GroupNorm mid-blocks (TAEF2): running on candle's CPU backend, not dreamd's CPU networks"
            );
            return Ok(Backend::Candle(candle_core::Device::Cpu));
        }
        Backend::for_device(device, precision)
    }
}

/// Whether any block of these weights has a GroupNorm mid-block (`N.pool.0.weight`, TAEF2).
pub fn has_mid_blocks(weights: &WeightFile) -> bool {
    (0..32).any(|index| weights.contains(&format!("{index}.pool.0.weight")))
}

/// Loads `family`'s decoder file at `path` on the backend for `device`.
pub fn load_decoder(
    path: &Path,
    family: Family,
    device: Device,
    precision: Precision,
) -> Result<Box<dyn Decoder>, EngineError> {
    let weights = WeightFile::load(path, Part::Decoder)?;
    Ok(match Backend::for_weights(&weights, device, precision)? {
        Backend::Cpu(precision) => Box::new(cpu::TaesdCpuDecoder::new(
            family.name(),
            &weights,
            precision,
        )?),
        Backend::Candle(device) => {
            Box::new(candle::TaesdDecoderModel::on(path, family.name(), device)?)
        }
        Backend::Wgpu(context, precision) => Box::new(super::wgpu::decoder::TaesdWgpuDecoder::new(
            family.name(),
            &weights,
            context,
            precision,
        )?),
    })
}

/// The TAESD encoder: pictures to latents, on the backend [`Backend::for_device`] picks
/// ([`cpu::TaesdCpuEncoder`] on the CPU, the candle module on CUDA, the WGSL network on wgpu).
pub struct TaesdEncoderModel {
    inner: EncoderImpl,
}

enum EncoderImpl {
    Candle(candle::CandleEncoder),
    Cpu(cpu::TaesdCpuEncoder),
    Wgpu(Box<super::wgpu::encoder::TaesdWgpuEncoder>),
}

impl TaesdEncoderModel {
    /// Loads an encoder file; its latent channel count comes from its last convolution.
    /// `precision` applies on the CPU.
    pub fn load(path: &Path, device: Device, precision: Precision) -> Result<Self, EngineError> {
        let weights = WeightFile::load(path, Part::Encoder)?;
        let inner = match Backend::for_weights(&weights, device, precision)? {
            Backend::Cpu(precision) => {
                EncoderImpl::Cpu(cpu::TaesdCpuEncoder::new(&weights, precision)?)
            }
            Backend::Candle(device) => {
                EncoderImpl::Candle(candle::CandleEncoder::load(path, &weights, device)?)
            }
            Backend::Wgpu(context, precision) => EncoderImpl::Wgpu(Box::new(
                super::wgpu::encoder::TaesdWgpuEncoder::new(&weights, context, precision)?,
            )),
        };
        Ok(Self { inner })
    }

    pub fn latent_channels(&self) -> usize {
        match &self.inner {
            EncoderImpl::Candle(encoder) => encoder.latent_channels(),
            EncoderImpl::Cpu(encoder) => encoder.latent_channels(),
            EncoderImpl::Wgpu(encoder) => encoder.latent_channels(),
        }
    }

    /// Encodes pictures (all the same size, sides multiples of 8) in one batched call.
    pub fn encode(&self, images: &[RgbImage]) -> Result<Vec<Latent>, EngineError> {
        match &self.inner {
            EncoderImpl::Cpu(encoder) => encoder.encode(images),
            EncoderImpl::Candle(encoder) => encoder.encode(images),
            EncoderImpl::Wgpu(encoder) => encoder.encode(images),
        }
    }
}

/// The size `(width, height)` of an encoder's input pictures (None for no pictures): they
/// must all be the same size, with sides multiples of 8.
pub(crate) fn encoder_input_size(images: &[RgbImage]) -> Result<Option<(u32, u32)>, EngineError> {
    let Some(first) = images.first() else {
        return Ok(None);
    };
    let (w, h) = first.dimensions();
    if images.iter().any(|i| i.dimensions() != (w, h)) || w % 8 != 0 || h % 8 != 0 {
        return Err(EngineError::Model(format!(
            "encoder input must be same-size pictures with sides divisible by 8 (got {w}x{h})"
        )));
    }
    Ok(Some((w, h)))
}

/// `images` (all `w × h`) as the encoders take them: `[N, 3, h, w]` planes scaled to 0–1.
pub(crate) fn encoder_planes(images: &[RgbImage], w: usize, h: usize) -> Vec<f32> {
    let mut values = vec![0.0; images.len() * 3 * h * w];
    for (image, out) in images.iter().zip(values.chunks_exact_mut(3 * h * w)) {
        for (i, pixel) in image.pixels().enumerate() {
            for c in 0..3 {
                out[c * h * w + i] = f32::from(pixel[c]) / 255.0;
            }
        }
    }
    values
}

impl From<WeightError> for EngineError {
    fn from(e: WeightError) -> Self {
        EngineError::Model(e.to_string())
    }
}

#[cfg(test)]
mod tests;
