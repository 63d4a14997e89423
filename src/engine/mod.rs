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

/// The share of a display interval one frame's decode may take when dreamd picks the decode
/// divisor: the rest of each pair's time goes to keyframes, saving and the display on the same
/// cores. Measured in the daemon (BENCHMARKS.md): 57 % (8 fps, two AVX-512 cores) and 80 %
/// (4 fps, an earlier engine) kept the buffer above 90 %; 134 % (4 fps, two AVX2 cores) drained
/// it.
pub const AUTO_DECODE_SHARE: f64 = 0.75;

/// Frames of the timed batch of [`Engine::fit_divisor`] (half-size ones): the daemon decodes
/// whole pairs in one call, and a batch costs less per frame than one frame alone.
const AUTO_TIMED_FRAMES: usize = 3;

/// The smallest divisor (1, 2, 4, 8; one that divides the latent's `(height, width)`) at which
/// a frame that decodes in `full_ms` at full size fits [`AUTO_DECODE_SHARE`] of a frame at
/// `fps`, assuming each halving of the sides divides the cost by 4; the largest valid one when
/// none fits.
pub fn auto_divisor(full_ms: f64, fps: f64, (height, width): (usize, usize)) -> u32 {
    let budget = AUTO_DECODE_SHARE * 1000.0 / fps.max(f64::MIN_POSITIVE);
    let valid = [1u32, 2, 4, 8]
        .into_iter()
        .filter(|&d| height.is_multiple_of(d as usize) && width.is_multiple_of(d as usize));
    let mut chosen = 1;
    for d in valid {
        chosen = d;
        if full_ms / f64::from(d * d) <= budget {
            break;
        }
    }
    chosen
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
    /// The full-size frame time the divisor was chosen from (`fit_divisor`).
    fitted_to: Option<Duration>,
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
        // Full size unless the config says otherwise; the daemon then sizes it to the machine
        // (`Engine::fit_divisor`).
        engine.divisor = g.decode_divisor.unwrap_or(1);
        engine.precision = g.precision;
        Ok(engine)
    }

    /// When `generation.decode_divisor` is unset and TAESD decodes on the CPU: the largest
    /// decode size the display rate leaves time for, from a full-size frame's decode time
    /// (estimated from a timed half-size batch) — 1 (full size) where a frame decodes in at most
    /// [`AUTO_DECODE_SHARE`] of a display interval, else 2, 4 or 8 (each 4× cheaper; the frames
    /// are upscaled to the output size). On two AVX-512 cores a 512×256 frame takes ≈75 ms
    /// (full size up to 8 fps); on two AVX2-only cores ≈250–330 ms, more than the 250 ms of a
    /// frame at 4 fps (BENCHMARKS.md), where full size drained the buffer. Elsewhere (a set
    /// divisor, the preview decoder, a GPU) the engine is returned as it is. Blocking (for about
    /// 1.5 full-size frames' decode): call it at start-up.
    pub fn fit_divisor(mut self, config: &Config) -> Engine {
        if config.generation.decode_divisor.is_some()
            || self.device != Device::Cpu
            || self.decoder.name() == preview::PreviewDecoder.name()
        {
            return self;
        }
        let shape = self.latent_shape();
        let fps = config.display.target_fps;
        match self.estimate_full_size_frame(config.timeouts.decode()) {
            Ok(elapsed) => {
                let ms = elapsed.as_secs_f64() * 1000.0;
                self.divisor = auto_divisor(ms, fps, (shape.height, shape.width));
                self.fitted_to = Some(elapsed);
                tracing::info!(
                    full_size_ms_per_frame = format!("{ms:.1}"),
                    target_fps = fps,
                    divisor = self.divisor,
                    "decode_divisor auto: a full-size frame decodes in ≈{ms:.0} ms of the {:.0} ms \
                     a frame is shown; decoding at 1/{} (set generation.decode_divisor to choose)",
                    1000.0 / fps,
                    self.divisor
                );
            }
            Err(e) => tracing::warn!(
                error = %e,
                "decode_divisor auto: the timing decode failed; decoding at full size"
            ),
        }
        self
    }

    /// A full-size frame's decode time, estimated from a batch of [`AUTO_TIMED_FRAMES`] decoded
    /// at half size, times four, after the same batch once untimed (the first decode pays for
    /// buffers, first-touch pages and threads: timed alone it read 160 ms per frame where warm
    /// batches take 72–96). The timing then costs about 1.5 full-size frames — start-up waits
    /// for it, and a slow CPU is exactly where it runs — and the estimate errs towards the
    /// slower side (a small decode has proportionally more fixed cost): 4 × 18 vs 74 ms on two
    /// AVX-512 cores, 4 × 72 vs 250–330 ms on two AVX2 cores (BENCHMARKS.md). It decodes
    /// through [`Engine::decode_batch`], as the pipeline does: under the GPU lock, the latent
    /// channels checked, and the decoder call's own time.
    fn estimate_full_size_frame(&self, lock_timeout: Duration) -> Result<Duration, String> {
        let full = self.latent_shape();
        let scale = if full.height.is_multiple_of(2) && full.width.is_multiple_of(2) {
            2
        } else {
            1
        };
        let shape = LatentShape::new(full.channels, full.height / scale, full.width / scale);
        let latent =
            crate::latent::Latent::new(shape, vec![0.0; shape.len()]).map_err(|e| e.to_string())?;
        let mut batch = LatentBatch::with_capacity(shape, AUTO_TIMED_FRAMES);
        for _ in 0..AUTO_TIMED_FRAMES {
            batch.push(&latent).map_err(|e| e.to_string())?;
        }
        let decode = || {
            self.decode_batch(&batch, &LockAccount::default(), lock_timeout)
                .map_err(|e| e.to_string())
        };
        decode()?;
        let timed = decode()?.decode;
        Ok(timed * (scale * scale) as u32 / AUTO_TIMED_FRAMES as u32)
    }

    /// The full-size frame time [`Engine::fit_divisor`] chose the divisor from; None when the
    /// divisor was set, or not chosen by timing.
    pub fn fitted_to(&self) -> Option<Duration> {
        self.fitted_to
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
            fitted_to: None,
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
    fn auto_divisor_keeps_full_size_where_the_decode_fits_the_display_rate() {
        let latent = (32, 64);
        // Two AVX-512 cores: ≈75 ms per 512×256 frame fits 75 % of a frame at 4 fps (187.5 ms)
        // and at 8 fps (93.75 ms).
        assert_eq!(auto_divisor(75.0, 4.0, latent), 1);
        assert_eq!(auto_divisor(75.0, 8.0, latent), 1);
        // Two AVX2 cores: 330 ms does not fit 4 fps; at half size (≈83 ms) it does.
        assert_eq!(auto_divisor(330.0, 4.0, latent), 2);
        // Very slow: a quarter (4× again), then an eighth, never past what divides the latent.
        assert_eq!(auto_divisor(1500.0, 4.0, latent), 4);
        assert_eq!(auto_divisor(1e6, 4.0, latent), 8);
        assert_eq!(auto_divisor(1e6, 4.0, (12, 20)), 4);
        assert_eq!(auto_divisor(1e6, 4.0, (3, 5)), 1);
    }

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
