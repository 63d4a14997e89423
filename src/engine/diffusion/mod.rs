//! In-process Stable Diffusion on candle: the model set behind the `diffusion` keyframe source.
//!
//! Why it exists: a GPU box should dream without a second server, and since the TAESD latents
//! *are* the scaled SD latents, keyframe k+1 is made from keyframe k's latent directly (add
//! noise at the strength's timestep, run the UNet for the remaining steps): no VAE, no PNG.
//!
//! One file per idea: [`text`] (CLIP tokenizer and text encoders), [`unet`] (the denoiser),
//! [`scheduler`] (DDIM / Euler and the strength → timesteps mapping), [`presets`] (the
//! architectures of SD 1.5, SD-Turbo and SDXL-Turbo, or a folder's own `unet/config.json`).
//! [`DiffusionModel::load`] is the one loading path: a diffusers-layout folder → tokenizer →
//! text encoder → UNet → scheduler, and [`Denoise`] runs one keyframe step by step so the
//! caller can take the GPU lock per step.

pub mod inventory;
pub mod presets;
pub mod scheduler;
pub mod text;
pub mod unet;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device as CandleDevice, Tensor};
use serde::{Deserialize, Serialize};

pub use presets::ModelChoice;
pub use scheduler::{Sampler, SchedulerConfig};
pub use text::{ClipTokenizer, TextEncoder};
pub use unet::Unet;

/// Why the diffusion model could not load or run. Each names the file or tensor at fault.
#[derive(Debug, thiserror::Error)]
pub enum DiffusionError {
    #[error("diffusion model: {path} is missing ({what})")]
    Missing { path: PathBuf, what: String },
    #[error("diffusion model: cannot read {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("diffusion model: {path}: {message}")]
    Weights { path: PathBuf, message: String },
    #[error("diffusion model: {path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("diffusion: {0}")]
    Run(String),
    #[error("diffusion: cancelled")]
    Cancelled,
}

impl From<candle_core::Error> for DiffusionError {
    fn from(e: candle_core::Error) -> Self {
        DiffusionError::Run(e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, DiffusionError>;

/// The weights' dtype in memory (`[diffusion] dtype`). Latents stay f32 outside the UNet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DTypeChoice {
    /// f16 on CUDA, f32 on the CPU (candle's CPU f16 kernels are slow).
    #[default]
    Auto,
    F16,
    Bf16,
    F32,
}

impl DTypeChoice {
    pub fn resolve(self, device: &CandleDevice) -> DType {
        match self {
            DTypeChoice::Auto if device.is_cuda() => DType::F16,
            DTypeChoice::Auto | DTypeChoice::F32 => DType::F32,
            DTypeChoice::F16 => DType::F16,
            DTypeChoice::Bf16 => DType::BF16,
        }
    }
}

/// `[diffusion]`: the in-process dream (`keyframes.source = "diffusion"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiffusionConfig {
    /// A diffusers-layout folder with `unet/`, `text_encoder/`, `tokenizer/` (and
    /// `text_encoder_2/` for SDXL).
    pub model_dir: PathBuf,
    pub model: ModelChoice,
    /// How far each keyframe moves from the previous one (0–1; the img2img denoise).
    pub strength: f64,
    /// Scheduler steps for a full denoise; a keyframe runs about `steps × strength` (≥ 1).
    pub steps: usize,
    /// Classifier-free guidance scale; ≤ 1 turns CFG off (Turbo models).
    pub guidance: f64,
    /// Seed of the noise; keyframe k uses `seed + k`.
    pub seed: u64,
    pub dtype: DTypeChoice,
    /// Keyframes over which the prompt embedding glides to a new prompt (1 = jump).
    pub prompt_blend_keyframes: u32,
    /// The longest one UNet step may take before the keyframe is given up.
    pub step_timeout_seconds: f64,
}

impl Default for DiffusionConfig {
    fn default() -> Self {
        Self {
            model_dir: PathBuf::from("models/sd-turbo"),
            model: ModelChoice::Auto,
            strength: 0.5,
            steps: 2,
            guidance: 0.0,
            seed: 42,
            dtype: DTypeChoice::Auto,
            prompt_blend_keyframes: 3,
            step_timeout_seconds: 30.0,
        }
    }
}

impl DiffusionConfig {
    /// Problems, each naming its key.
    pub fn validate(&self) -> Vec<String> {
        let mut bad = Vec::new();
        if !(self.strength > 0.0 && self.strength <= 1.0) {
            bad.push(format!(
                "diffusion.strength must be in (0, 1] (got {})",
                self.strength
            ));
        }
        if !(1..=1000).contains(&self.steps) {
            bad.push(format!(
                "diffusion.steps must be 1..=1000 (got {})",
                self.steps
            ));
        }
        if !(self.guidance.is_finite() && self.guidance >= 0.0) {
            bad.push(format!(
                "diffusion.guidance must be ≥ 0 (got {})",
                self.guidance
            ));
        }
        if self.prompt_blend_keyframes == 0 {
            bad.push("diffusion.prompt_blend_keyframes must be ≥ 1".into());
        }
        if !(self.step_timeout_seconds.is_finite() && self.step_timeout_seconds > 0.0) {
            bad.push(format!(
                "diffusion.step_timeout_seconds must be > 0 (got {})",
                self.step_timeout_seconds
            ));
        }
        bad
    }
}

/// Reads a safetensors file into a name → tensor map on `device`, as one error naming the
/// file when it is missing or unreadable.
pub(crate) fn load_tensors(
    path: &Path,
    device: &CandleDevice,
) -> Result<std::collections::HashMap<String, Tensor>> {
    if !path.is_file() {
        return Err(DiffusionError::Missing {
            path: path.to_path_buf(),
            what: "weights file".into(),
        });
    }
    candle_core::safetensors::load(path, device).map_err(|e| DiffusionError::Read {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// The first of `names` that exists in `dir` (diffusers writes `model.safetensors` for
/// transformers parts and `diffusion_pytorch_model.safetensors` for diffusers parts, with
/// optional `.fp16` variants).
pub(crate) fn weights_file(dir: &Path, names: &[&str]) -> Result<PathBuf> {
    names
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
        .ok_or_else(|| DiffusionError::Missing {
            path: dir.join(names[0]),
            what: format!("weights file (looked for {})", names.join(", ")),
        })
}

/// Reads and parses a JSON file, naming it in any error.
pub(crate) fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            DiffusionError::Missing {
                path: path.to_path_buf(),
                what: "config file".into(),
            }
        } else {
            DiffusionError::Read {
                path: path.to_path_buf(),
                message: e.to_string(),
            }
        }
    })?;
    serde_json::from_str(&text).map_err(|e| DiffusionError::Config {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// A prompt's conditioning: the text encoder's last hidden state `[1, 77, D]` (f32).
#[derive(Debug, Clone)]
pub struct PromptEmbedding(pub Tensor);

impl PromptEmbedding {
    /// `(1 − t)·self + t·other`: how a theme change glides.
    pub fn lerp(&self, other: &PromptEmbedding, t: f64) -> Result<PromptEmbedding> {
        let t = t.clamp(0.0, 1.0);
        Ok(PromptEmbedding(((&self.0 * (1.0 - t))? + (&other.0 * t)?)?))
    }
}

/// The whole model set: tokenizer, text encoder, UNet and scheduler, on one device.
pub struct DiffusionModel {
    pub kind: presets::ModelKind,
    pub tokenizer: ClipTokenizer,
    pub text: TextEncoder,
    pub unet: Unet,
    pub scheduler: SchedulerConfig,
    pub device: CandleDevice,
    pub dtype: DType,
}

impl DiffusionModel {
    /// Loads `dir` (diffusers layout) as `choice` on `device` in `dtype`.
    pub fn load(
        dir: &Path,
        choice: ModelChoice,
        dtype: DType,
        device: &CandleDevice,
    ) -> Result<DiffusionModel> {
        if !dir.is_dir() {
            return Err(DiffusionError::Missing {
                path: dir.to_path_buf(),
                what: "model folder (diffusion.model_dir)".into(),
            });
        }
        let kind = presets::ModelKind::resolve(choice, dir)?;
        let tokenizer = ClipTokenizer::load(&dir.join("tokenizer"))?;
        let text = TextEncoder::load(dir, kind, dtype, device)?;
        let unet_config = presets::unet_config(kind, dir)?;
        let unet = Unet::load(&dir.join("unet"), unet_config, dtype, device)?;
        let scheduler = SchedulerConfig::load(&dir.join("scheduler"), kind)?;
        Ok(DiffusionModel {
            kind,
            tokenizer,
            text,
            unet,
            scheduler,
            device: device.clone(),
            dtype,
        })
    }

    /// The conditioning for `prompt` (f32, `[1, 77, D]`).
    pub fn embed(&self, prompt: &str) -> Result<PromptEmbedding> {
        let ids = self.tokenizer.encode(prompt)?;
        let ids = Tensor::new(ids.as_slice(), &self.device)?.unsqueeze(0)?;
        Ok(PromptEmbedding(
            self.text.forward(&ids, prompt)?.to_dtype(DType::F32)?,
        ))
    }

    /// The latent shape `[1, 4, h, w]` for a picture of `width × height` (÷8).
    pub fn latent_dims(&self, width: usize, height: usize) -> (usize, usize, usize, usize) {
        (1, self.unet.in_channels, height / 8, width / 8)
    }

    /// Starts one keyframe: img2img from `init` at `strength` (txt2img when `init` is `None`),
    /// with `noise` the size of the latent.
    pub fn start(
        &self,
        init: Option<&Tensor>,
        noise: &Tensor,
        steps: usize,
        strength: f64,
    ) -> Result<Denoise> {
        let sampler = match init {
            Some(_) => Sampler::img2img(&self.scheduler, steps, strength),
            None => Sampler::txt2img(&self.scheduler, steps),
        };
        let latent = sampler.init_latent(init, noise)?;
        Ok(Denoise {
            sampler,
            latent,
            index: 0,
        })
    }
}

/// One keyframe in progress: the latent and the steps still to run.
pub struct Denoise {
    pub sampler: Sampler,
    pub latent: Tensor,
    index: usize,
}

impl Denoise {
    /// Whether every step has run.
    pub fn done(&self) -> bool {
        self.index >= self.sampler.timesteps().len()
    }

    /// Steps still to run.
    pub fn remaining(&self) -> usize {
        self.sampler.timesteps().len().saturating_sub(self.index)
    }

    /// Runs the next step: one UNet call (batched with the unconditional embedding under CFG)
    /// and one scheduler update. Returns the noise prediction it used.
    pub fn step(
        &mut self,
        model: &DiffusionModel,
        cond: &PromptEmbedding,
        uncond: Option<&PromptEmbedding>,
        guidance: f64,
    ) -> Result<Tensor> {
        let i = self.index;
        let t = *self
            .sampler
            .timesteps()
            .get(i)
            .ok_or_else(|| DiffusionError::Run("no step left".into()))?;
        let x = self.sampler.scale_input(&self.latent, i)?;
        let eps = match uncond {
            Some(uncond) if guidance > 1.0 => {
                // ε = ε_u + g·(ε_c − ε_u), from one batched call (as diffusers does).
                let x2 = Tensor::cat(&[&x, &x], 0)?;
                let c2 = Tensor::cat(&[&uncond.0, &cond.0], 0)?;
                let both = model.unet.forward(&x2, t as f64, &c2)?;
                let eps_u = both.narrow(0, 0, 1)?;
                let eps_c = both.narrow(0, 1, 1)?;
                (&eps_u + ((&eps_c - &eps_u)? * guidance)?)?
            }
            _ => model.unet.forward(&x, t as f64, &cond.0)?,
        };
        self.latent = self.sampler.step(&eps, i, &self.latent)?;
        self.index += 1;
        Ok(eps)
    }
}
