//! The decode engine: device choice, the instrumented GPU lock, and the decoders that turn a
//! batch of latents into pictures.
//!
//! Decoders come in families, one folder each: the built-in [`preview`] map and the learned
//! [`taesd`] networks (which choose their backend, CPU, CUDA or wgpu, in one place), on the CPU
//! [`kernels`], on any GPU through [`wgpu`] (WGSL kernels from `shaders/`). Model files are
//! found by [`model_search`] (and loaded and checked through [`model_files`]); [`pth`] reads
//! PyTorch checkpoints; [`resize`] resamples to the output size. A new backend or family is
//! another folder beside `taesd`.
//!
//! [`Engine::decode_batch`] is stage 2 of the pipeline: it takes the GPU lock once, makes one
//! decoder call for the whole `[N, C, h, w]` batch, releases the lock, and only then resamples
//! the pictures to the output size.

pub mod diffusion;
pub mod gpu_lock;
pub mod kernels;
pub mod model_files;
pub mod model_search;
pub mod preview;
pub mod pth;
pub mod resize;
pub mod taesd;
pub mod wgpu;

use std::fmt;
use std::time::{Duration, Instant};

use image::RgbImage;

use crate::config::{Config, DecoderChoice, DeviceRequest};
use crate::latent::{LatentBatch, LatentShape};
pub use gpu_lock::{GpuLock, LockAccount, LockStats, LockTimeout, Priority};
use taesd::weights::Part;
use taesd::{Family, TaesdEncoderModel};

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
    #[error(transparent)]
    Wgpu(#[from] wgpu::WgpuError),
}

/// Where decoding runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda(usize),
    /// A GPU through wgpu (the adapter is chosen when the networks load: [`wgpu::GpuContext`]).
    Wgpu,
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
            Device::Wgpu => f.write_str("wgpu"),
        }
    }
}

impl Device {
    /// Resolves `generation.device`: `auto` is the first CUDA GPU in a CUDA build when one
    /// answers, else a real GPU through wgpu (never a software adapter), else the CPU;
    /// `wgpu` takes any wgpu adapter (a software one with a warning, when it loads).
    pub fn select(request: DeviceRequest) -> Result<Device, EngineError> {
        Device::select_for(request, true)
    }

    /// [`Device::select`], where `auto` looks for a wgpu adapter only when `wgpu_useful` (the
    /// preview decoder and candle's work do not run on wgpu, so they need not open a driver).
    pub fn select_for(request: DeviceRequest, wgpu_useful: bool) -> Result<Device, EngineError> {
        match request {
            DeviceRequest::Cpu => Ok(Device::Cpu),
            DeviceRequest::Wgpu => Ok(Device::Wgpu),
            DeviceRequest::Auto => {
                if cfg!(feature = "cuda") && candle_core::utils::cuda_is_available() {
                    return Ok(Device::Cuda(0));
                }
                if !wgpu_useful {
                    return Ok(Device::Cpu);
                }
                Ok(match wgpu::real_adapter() {
                    Some(adapter) => {
                        tracing::info!(%adapter, "device auto: no CUDA device; using a GPU through wgpu");
                        Device::Wgpu
                    }
                    None => Device::Cpu,
                })
            }
            DeviceRequest::Cuda(n) if cfg!(feature = "cuda") => Ok(Device::Cuda(n)),
            DeviceRequest::Cuda(n) => Err(EngineError::Device(
                format!("cuda:{n}"),
                "this build of dreamd has no CUDA backend (build with --features cuda)".to_string(),
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

/// The folders a search looked in that exist, comma-separated (for error messages).
fn searched_folders(report: &model_search::SearchReport) -> String {
    let existing: Vec<String> = report
        .searched
        .iter()
        .filter(|c| c.dir.is_dir())
        .map(|c| c.dir.display().to_string())
        .collect();
    if existing.is_empty() {
        "(no model folder exists)".to_string()
    } else {
        existing.join(", ")
    }
}

/// A decoder behind the GPU lock, producing frames of the output size.
pub struct Engine {
    decoder: Box<dyn Decoder>,
    encoder: Option<TaesdEncoderModel>,
    lock: GpuLock,
    device: Device,
    width: u32,
    height: u32,
    divisor: u32,
    precision: crate::config::Precision,
    /// The wgpu adapter the networks run on, when the device is wgpu.
    adapter: Option<wgpu::AdapterSummary>,
}

impl Engine {
    /// Builds the engine that `config` asks for: resolves the device, finds and loads the
    /// decoder (and the matching encoder when its file is there), and logs the choice.
    pub fn from_config(config: &Config) -> Result<Engine, EngineError> {
        let g = &config.generation;
        let request = crate::config::parse_device(&g.device)
            .map_err(|e| EngineError::Device(g.device.clone(), e.to_string()))?;
        let report = model_files::search_for(g);
        let family = match g.decoder {
            DecoderChoice::Preview => None,
            DecoderChoice::Auto => {
                let found = report
                    .find(Family::Taesd, Part::Decoder)
                    .map(|_| Family::Taesd);
                if found.is_none() {
                    tracing::info!(
                        searched = %searched_folders(&report),
                        "decoder auto: no taesd decoder (.safetensors, .pth or diffusers folder) \
                         found; using the preview decoder"
                    );
                }
                found
            }
            DecoderChoice::Taesd => Some(Family::Taesd),
            DecoderChoice::Taesdxl => Some(Family::Taesdxl),
            DecoderChoice::Taesd3 => Some(Family::Taesd3),
            DecoderChoice::Taef1 => Some(Family::Taef1),
            DecoderChoice::Taef2 => Some(Family::Taef2),
        };
        // TAEF2 runs on candle (CPU) whatever the device: only the other members use wgpu.
        let device = Device::select_for(request, family.is_some_and(|f| f != Family::Taef2))?;
        let mut adapter = None;
        let (decoder, encoder): (Box<dyn Decoder>, _) = match family {
            None => (Box::new(preview::PreviewDecoder), None),
            Some(family) => {
                let found = report.find(family, Part::Decoder).ok_or_else(|| {
                    let stem = family.file_stem(Part::Decoder);
                    EngineError::Model(format!(
                        "generation.decoder = \"{family}\": {stem}.safetensors, {stem}.pth or a \
                         {family} diffusers folder not found in {} (`dreamd models list` shows \
                         where dreamd looked; `dreamd models pull {family}` downloads it; see \
                         models/README.md)",
                        searched_folders(&report)
                    ))
                })?;
                let decoder = taesd::load_decoder(&found.path, family, device, g.precision)?;
                let encoder = match report.find(family, Part::Encoder) {
                    Some(found) => Some(TaesdEncoderModel::load(&found.path, device, g.precision)?),
                    None => None,
                };
                tracing::info!(
                    decoder = family.name(),
                    file = %found.path.display(),
                    found_via = %found.origin,
                    %device,
                    "loaded decoder"
                );
                if device == Device::Wgpu {
                    adapter = Some(
                        wgpu::GpuContext::shared(wgpu::AdapterPolicy::AllowSoftware)?
                            .adapter()
                            .clone(),
                    );
                }
                (decoder, encoder)
            }
        };
        let mut engine = Engine::new(decoder, device, g.width, g.height);
        engine.encoder = encoder;
        engine.adapter = adapter;
        // Full size by default: with the Winograd CPU engine, TAESD keeps a 4 fps display fed at
        // 512×256 on two cores (BENCHMARKS.md); a busier machine sets a divisor.
        engine.divisor = g.decode_divisor.unwrap_or(1);
        engine.precision = g.precision;
        Ok(engine)
    }

    /// Wraps `decoder`; frames come out at `width × height`, decoded at full size.
    pub fn new(decoder: Box<dyn Decoder>, device: Device, width: u32, height: u32) -> Engine {
        Engine {
            decoder,
            encoder: None,
            lock: GpuLock::new(),
            device,
            width,
            height,
            divisor: 1,
            precision: crate::config::Precision::default(),
            adapter: None,
        }
    }

    /// The wgpu adapter the networks run on (None unless the device is wgpu).
    pub fn adapter(&self) -> Option<&wgpu::AdapterSummary> {
        self.adapter.as_ref()
    }

    /// The CPU arithmetic asked for (it matters only to the TAESD networks on the CPU).
    pub fn precision(&self) -> crate::config::Precision {
        self.precision
    }

    /// Decodes at 1/`divisor` of the output size (the latents shrink to match, and so do the
    /// pictures [`Engine::encode_batch`] encodes).
    pub fn with_divisor(mut self, divisor: u32) -> Engine {
        self.divisor = divisor.max(1);
        self
    }

    /// Replaces the decoder with `wrap(decoder)` (fault injection wraps it this way).
    pub fn wrap_decoder(
        mut self,
        wrap: impl FnOnce(Box<dyn Decoder>) -> Box<dyn Decoder>,
    ) -> Engine {
        self.decoder = wrap(self.decoder);
        self
    }

    /// The divisor in use.
    pub fn divisor(&self) -> u32 {
        self.divisor
    }

    /// The encoder, when its weights were found.
    pub fn encoder(&self) -> Option<&TaesdEncoderModel> {
        self.encoder.as_ref()
    }

    /// Encodes pictures to latents of [`Engine::latent_shape`] under one GPU-lock acquisition,
    /// after resizing each to the decode size (8 pixels per latent cell). Blocking.
    pub fn encode_batch(
        &self,
        images: &[RgbImage],
        account: &LockAccount,
        lock_timeout: Duration,
    ) -> Result<Vec<crate::latent::Latent>, EngineError> {
        let encoder = self.encoder.as_ref().ok_or_else(|| {
            EngineError::Model(format!(
                "decoder {} has no encoder loaded",
                self.decoder.name()
            ))
        })?;
        let shape = self.latent_shape();
        let (w, h) = ((shape.width * 8) as u32, (shape.height * 8) as u32);
        let resized = images
            .iter()
            .map(|image| resize::resize_rgb(image.clone(), w, h))
            .collect::<Result<Vec<_>, _>>()?;
        let _gpu = self.lock.acquire(account, lock_timeout)?;
        encoder.encode(&resized)
    }

    /// The latent shape the pipeline feeds this engine: `[C, height/8, width/8]`.
    pub fn latent_shape(&self) -> LatentShape {
        LatentShape::new(
            self.decoder.latent_channels(),
            (self.height / 8 / self.divisor) as usize,
            (self.width / 8 / self.divisor) as usize,
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

    /// Decodes one latent to a picture at the output size (one GPU-lock acquisition), as the
    /// sources and the director need for a keyframe that has no picture. Blocking.
    pub fn decode_one(
        &self,
        latent: &crate::latent::Latent,
        lock_timeout: Duration,
    ) -> Result<RgbImage, String> {
        let mut batch = LatentBatch::with_capacity(latent.shape(), 1);
        batch.push(latent).map_err(|e| e.to_string())?;
        self.decode_batch(&batch, &LockAccount::default(), lock_timeout)
            .map_err(|e| e.to_string())?
            .images
            .pop()
            .ok_or_else(|| format!("decoder {} returned no picture", self.decoder_name()))
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
        self.decode_batch_as(batch, Priority::Normal, account, lock_timeout)
    }

    /// [`Engine::decode_batch`] taking the lock at `priority` (the pipeline decodes urgently
    /// while the display is below its start gate).
    pub fn decode_batch_as(
        &self,
        batch: &LatentBatch,
        priority: Priority,
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
            let _gpu = self.lock.acquire_as(priority, account, lock_timeout)?;
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

    /// `auto` takes a wgpu adapter only when it is a real GPU: on a machine whose only adapter
    /// is software (lavapipe in CI) or that has none, it is the CPU.
    #[cfg(not(feature = "cuda"))]
    #[test]
    fn auto_never_takes_a_software_adapter() {
        let expected = match wgpu::real_adapter() {
            Some(adapter) => {
                assert!(!adapter.is_software(), "{adapter}");
                Device::Wgpu
            }
            None => Device::Cpu,
        };
        assert_eq!(Device::select(DeviceRequest::Auto).unwrap(), expected);
        // The preview decoder does not look for a GPU at all.
        assert_eq!(
            Device::select_for(DeviceRequest::Auto, false).unwrap(),
            Device::Cpu
        );
        assert_eq!(Device::select(DeviceRequest::Wgpu).unwrap(), Device::Wgpu);
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_backend_is_a_clear_error() {
        let err = Device::select(DeviceRequest::Cuda(0)).unwrap_err();
        assert!(err.to_string().contains("cuda:0"), "{err}");
    }
}
