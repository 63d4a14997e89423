//! The TAESD family (Tiny AutoEncoder for Stable Diffusion, Ollin Boer Bohan, MIT licence):
//! which member a config asks for, and the one place a backend is chosen for its networks.
//!
//! One architecture serves the whole family ([`Family`]). It runs on one of two backends
//! ([`Backend::for_device`]): on the CPU, dreamd's own networks ([`cpu`], over the
//! [`kernels`](super::kernels)); on CUDA, candle's modules ([`candle`], also the reference the
//! CPU networks are tested against). [`weights`] reads either layout of the weight files.

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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// SD 1.x / 2.x latents, 4 channels.
    Taesd,
    /// SDXL latents, 4 channels.
    Taesdxl,
    /// SD3 latents, 16 channels.
    Taesd3,
    /// FLUX.1 latents, 16 channels.
    Taef1,
}

impl Family {
    pub const ALL: [Family; 4] = [
        Family::Taesd,
        Family::Taesdxl,
        Family::Taesd3,
        Family::Taef1,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Family::Taesd => "taesd",
            Family::Taesdxl => "taesdxl",
            Family::Taesd3 => "taesd3",
            Family::Taef1 => "taef1",
        }
    }

    pub fn latent_channels(self) -> usize {
        match self {
            Family::Taesd | Family::Taesdxl => 4,
            Family::Taesd3 | Family::Taef1 => 16,
        }
    }

    /// File name of one half, e.g. `taesd_decoder.safetensors`.
    pub fn file_name(self, part: Part) -> String {
        let part = match part {
            Part::Decoder => "decoder",
            Part::Encoder => "encoder",
        };
        format!("{}_{part}.safetensors", self.name())
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
}

impl Backend {
    /// The backend for `device`: the CPU networks on the CPU, candle on CUDA. Decoder and
    /// encoder both get theirs here.
    pub fn for_device(device: Device, precision: Precision) -> Result<Backend, EngineError> {
        match device {
            Device::Cpu => Ok(Backend::Cpu(precision)),
            Device::Cuda(_) => Ok(Backend::Candle(candle::candle_device(device)?)),
        }
    }
}

/// Loads `family`'s decoder file at `path` on the backend for `device`.
pub fn load_decoder(
    path: &Path,
    family: Family,
    device: Device,
    precision: Precision,
) -> Result<Box<dyn Decoder>, EngineError> {
    Ok(match Backend::for_device(device, precision)? {
        Backend::Cpu(precision) => {
            let weights = WeightFile::load(path, Part::Decoder)?;
            Box::new(cpu::TaesdCpuDecoder::new(
                family.name(),
                &weights,
                precision,
            )?)
        }
        Backend::Candle(device) => {
            Box::new(candle::TaesdDecoderModel::on(path, family.name(), device)?)
        }
    })
}

/// The TAESD encoder: pictures to latents, on the backend [`Backend::for_device`] picks
/// ([`cpu::TaesdCpuEncoder`] on the CPU, the candle module on CUDA).
pub struct TaesdEncoderModel {
    inner: EncoderImpl,
}

enum EncoderImpl {
    Candle(candle::CandleEncoder),
    Cpu(cpu::TaesdCpuEncoder),
}

impl TaesdEncoderModel {
    /// Loads an encoder file; its latent channel count comes from its last convolution.
    /// `precision` applies on the CPU.
    pub fn load(path: &Path, device: Device, precision: Precision) -> Result<Self, EngineError> {
        let weights = WeightFile::load(path, Part::Encoder)?;
        let inner = match Backend::for_device(device, precision)? {
            Backend::Cpu(precision) => {
                EncoderImpl::Cpu(cpu::TaesdCpuEncoder::new(&weights, precision)?)
            }
            Backend::Candle(device) => {
                EncoderImpl::Candle(candle::CandleEncoder::load(path, &weights, device)?)
            }
        };
        Ok(Self { inner })
    }

    pub fn latent_channels(&self) -> usize {
        match &self.inner {
            EncoderImpl::Candle(encoder) => encoder.latent_channels(),
            EncoderImpl::Cpu(encoder) => encoder.latent_channels(),
        }
    }

    /// Encodes pictures (all the same size, sides multiples of 8) in one batched call.
    pub fn encode(&self, images: &[RgbImage]) -> Result<Vec<Latent>, EngineError> {
        match &self.inner {
            EncoderImpl::Cpu(encoder) => encoder.encode(images),
            EncoderImpl::Candle(encoder) => encoder.encode(images),
        }
    }
}

/// The size `(width, height)` of an encoder's input pictures (None for no pictures): they
/// must all be the same size, with sides multiples of 8.
fn encoder_input_size(images: &[RgbImage]) -> Result<Option<(u32, u32)>, EngineError> {
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

impl From<WeightError> for EngineError {
    fn from(e: WeightError) -> Self {
        EngineError::Model(e.to_string())
    }
}

#[cfg(test)]
mod tests;
