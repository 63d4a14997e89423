//! The decode engine: device choice, the instrumented GPU lock, and the decoders that turn a
//! batch of latents into pictures.
//!
//! [`Engine::decode_batch`] is stage 2 of the pipeline: it takes the GPU lock once, makes one
//! decoder call for the whole `[N, C, h, w]` batch, releases the lock, and only then resamples
//! the pictures to the output size.

pub mod gpu_lock;
pub mod models;
pub mod preview;
pub mod resize;
pub mod taesd;
pub mod weights;

use std::fmt;
use std::time::{Duration, Instant};

use image::RgbImage;

use crate::config::{Config, DecoderChoice, DeviceRequest};
use crate::latent::{LatentBatch, LatentShape};
pub use gpu_lock::{GpuLock, LockAccount, LockStats, LockTimeout};

/// Why decoding failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Lock(#[from] LockTimeout),
    #[error("decoder {decoder} takes {expected}-channel latents, got {got} channels")]
    Channels {
        decoder: String,
        expected: usize,
        got: usize,
    },
    #[error("decoder {decoder} returned {got} images for a batch of {expected}")]
    BatchSize {
        decoder: String,
        expected: usize,
        got: usize,
    },
    #[error("cannot resize {from:?} to {to:?}: {what}")]
    Resize {
        from: (u32, u32),
        to: (u32, u32),
        what: String,
    },
    #[error("device {0} is not available: {1}")]
    Device(String, String),
    #[error("{0}")]
    Model(String),
}

/// Where decoding runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda(usize),
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl Device {
    /// Resolves `generation.device`. `auto` is the CPU until a GPU backend is built in.
    pub fn select(request: DeviceRequest) -> Result<Device, EngineError> {
        match request {
            DeviceRequest::Auto | DeviceRequest::Cpu => Ok(Device::Cpu),
            DeviceRequest::Cuda(n) => Err(EngineError::Device(
                format!("cuda:{n}"),
                "this build of dreamd has no CUDA backend".to_string(),
            )),
        }
    }
}

/// Turns a batch of latents into pictures.
pub trait Decoder: Send + Sync {
    /// Short name for logs and status (`preview`, `taesd`, …).
    fn name(&self) -> &str;
    /// Latent channels it takes (4 for SD1/SDXL latents).
    fn latent_channels(&self) -> usize;
    /// Decodes the whole batch `[N, C, h, w]` in one call and returns N pictures, in order, at
    /// the decoder's native size.
    fn decode(&self, batch: &LatentBatch) -> Result<Vec<RgbImage>, EngineError>;
}

/// Pictures from one batched decode, with timings.
pub struct DecodeOutput {
    /// One picture per latent, at the output size.
    pub images: Vec<RgbImage>,
    /// Time inside the decoder call (under the lock).
    pub decode: Duration,
    /// Time spent resampling to the output size (outside the lock).
    pub resize: Duration,
}

/// A decoder behind the GPU lock, producing frames of the output size.
pub struct Engine {
    decoder: Box<dyn Decoder>,
    lock: GpuLock,
    device: Device,
    width: u32,
    height: u32,
}

impl Engine {
    /// Builds the engine that `config` asks for.
    pub fn from_config(config: &Config) -> Result<Engine, EngineError> {
        let device = Device::select(
            crate::config::parse_device(&config.generation.device).map_err(|e| {
                EngineError::Device(config.generation.device.clone(), e.to_string())
            })?,
        )?;
        let decoder: Box<dyn Decoder> = match config.generation.decoder {
            DecoderChoice::Auto | DecoderChoice::Preview => Box::new(preview::PreviewDecoder),
        };
        Ok(Engine::new(
            decoder,
            device,
            config.generation.width,
            config.generation.height,
        ))
    }

    /// Wraps `decoder`; frames come out at `width × height`.
    pub fn new(decoder: Box<dyn Decoder>, device: Device, width: u32, height: u32) -> Engine {
        Engine {
            decoder,
            lock: GpuLock::new(),
            device,
            width,
            height,
        }
    }

    /// The latent shape the pipeline feeds this engine: `[C, height/8, width/8]`.
    pub fn latent_shape(&self) -> LatentShape {
        LatentShape::new(
            self.decoder.latent_channels(),
            (self.height / 8) as usize,
            (self.width / 8) as usize,
        )
    }

    /// Size of the frames this engine produces.
    pub fn output_size(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    pub fn decoder_name(&self) -> &str {
        self.decoder.name()
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// The lock every user of the decode device goes through.
    pub fn lock(&self) -> &GpuLock {
        &self.lock
    }

    /// Decodes `batch` under one acquisition of the GPU lock, with one decoder call, then
    /// resamples each picture to the output size outside the lock. Blocking: call it from a
    /// worker thread, never from the async runtime.
    pub fn decode_batch(
        &self,
        batch: &LatentBatch,
        account: &LockAccount,
        lock_timeout: Duration,
    ) -> Result<DecodeOutput, EngineError> {
        let expected = self.decoder.latent_channels();
        if batch.shape().channels != expected {
            return Err(EngineError::Channels {
                decoder: self.decoder.name().to_string(),
                expected,
                got: batch.shape().channels,
            });
        }
        let (images, decode) = {
            let _gpu = self.lock.acquire(account, lock_timeout)?;
            let start = Instant::now();
            let images = self.decoder.decode(batch)?;
            (images, start.elapsed())
        };
        if images.len() != batch.len() {
            return Err(EngineError::BatchSize {
                decoder: self.decoder.name().to_string(),
                expected: batch.len(),
                got: images.len(),
            });
        }
        let start = Instant::now();
        let images = images
            .into_iter()
            .map(|image| resize::resize_rgb(image, self.width, self.height))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(DecodeOutput {
            images,
            decode,
            resize: start.elapsed(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::latent::Latent;

    #[test]
    fn batch_decodes_under_one_acquisition_at_output_size() {
        let engine = Engine::new(Box::new(preview::PreviewDecoder), Device::Cpu, 64, 32);
        let shape = engine.latent_shape();
        assert_eq!(shape, LatentShape::new(4, 4, 8));
        let mut batch = LatentBatch::with_capacity(shape, 5);
        for i in 0..5 {
            let latent = Latent::new(shape, vec![i as f32 * 0.1; shape.len()]).unwrap();
            batch.push(&latent).unwrap();
        }
        let account = LockAccount::default();
        let out = engine
            .decode_batch(&batch, &account, Duration::from_secs(1))
            .unwrap();
        assert_eq!(out.images.len(), 5);
        assert!(out.images.iter().all(|i| i.dimensions() == (64, 32)));
        assert_eq!(account.acquisitions(), 1);
        assert_eq!(engine.lock().stats().acquisitions, 1);
    }

    #[test]
    fn wrong_channel_count_is_an_error_before_locking() {
        let engine = Engine::new(Box::new(preview::PreviewDecoder), Device::Cpu, 64, 32);
        let shape = LatentShape::new(16, 4, 8);
        let mut batch = LatentBatch::with_capacity(shape, 1);
        batch
            .push(&Latent::new(shape, vec![0.0; shape.len()]).unwrap())
            .unwrap();
        let account = LockAccount::default();
        let err = engine
            .decode_batch(&batch, &account, Duration::from_secs(1))
            .err()
            .unwrap();
        assert!(err.to_string().contains("4-channel"), "{err}");
        assert_eq!(account.acquisitions(), 0);
    }

    #[test]
    fn cuda_without_backend_is_a_clear_error() {
        let err = Device::select(DeviceRequest::Cuda(0)).unwrap_err();
        assert!(err.to_string().contains("cuda:0"), "{err}");
    }
}
