//! Schedulers: which timesteps a keyframe visits and how each noise prediction moves the
//! latent. DDIM (η = 0, SD 1.x) and Euler (the Turbo models), written out from diffusers'
//! `DDIMScheduler` and `EulerDiscreteScheduler` so the numbers match theirs.
//!
//! The strength → timesteps mapping is diffusers' img2img one (`init = ⌊steps·strength⌋`,
//! run the last `init` timesteps), except that it always runs at least one step: where
//! diffusers (and candle's example) would run none — 1-step Turbo at strength < 1 — the
//! schedule is stretched to `⌈1/strength⌉` steps and its last step runs, so the keyframe
//! starts from about `strength·1000` (SD-Turbo's model card: 2 steps at strength 0.5 = 1 step).

use std::path::Path;

use candle_core::Tensor;

use super::presets::ModelKind;
use super::{read_json, DiffusionError, Result};

/// Which update rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SamplerKind {
    Ddim,
    Euler,
}

/// How the inference timesteps are spread over the training ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spacing {
    Leading,
    Trailing,
    Linspace,
}

/// What the UNet predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prediction {
    Epsilon,
    VPrediction,
}

/// A scheduler's settings (from `scheduler/scheduler_config.json` or the family's defaults).
#[derive(Debug, Clone, PartialEq)]
pub struct SchedulerConfig {
    pub kind: SamplerKind,
    pub train_steps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    /// `scaled_linear` (true) or `linear`.
    pub scaled_linear: bool,
    pub spacing: Spacing,
    pub steps_offset: usize,
    pub set_alpha_to_one: bool,
    pub prediction: Prediction,
}

impl SchedulerConfig {
    /// The family's default scheduler.
    pub fn default_for(kind: ModelKind) -> SchedulerConfig {
        let ddim = SchedulerConfig {
            kind: SamplerKind::Ddim,
            train_steps: 1000,
            beta_start: 0.00085,
            beta_end: 0.012,
            scaled_linear: true,
            spacing: Spacing::Leading,
            steps_offset: 1,
            set_alpha_to_one: false,
            prediction: Prediction::Epsilon,
        };
        match kind {
            ModelKind::Sd1 => ddim,
            ModelKind::SdTurbo | ModelKind::SdxlTurbo => SchedulerConfig {
                kind: SamplerKind::Euler,
                spacing: Spacing::Trailing,
                steps_offset: 0,
                ..ddim
            },
        }
    }

    /// Reads `dir/scheduler_config.json` when there is one; unknown scheduler classes keep the
    /// family's update rule but take the file's betas and spacing.
    pub fn load(dir: &Path, kind: ModelKind) -> Result<SchedulerConfig> {
        let mut config = Self::default_for(kind);
        let path = dir.join("scheduler_config.json");
        if !path.is_file() {
            return Ok(config);
        }
        let json = read_json(&path)?;
        let bad = |message: String| DiffusionError::Config {
            path: path.clone(),
            message,
        };
        match json["_class_name"].as_str() {
            Some("DDIMScheduler") => config.kind = SamplerKind::Ddim,
            Some(c) if c.starts_with("Euler") => config.kind = SamplerKind::Euler,
            _ => {}
        }
        if let Some(v) = json["num_train_timesteps"].as_u64() {
            config.train_steps = v as usize;
        }
        if let Some(v) = json["beta_start"].as_f64() {
            config.beta_start = v;
        }
        if let Some(v) = json["beta_end"].as_f64() {
            config.beta_end = v;
        }
        match json["beta_schedule"].as_str() {
            None | Some("scaled_linear") => config.scaled_linear = true,
            Some("linear") => config.scaled_linear = false,
            Some(other) => return Err(bad(format!("beta_schedule {other:?} is not supported"))),
        }
        match json["timestep_spacing"].as_str() {
            None => {}
            Some("leading") => config.spacing = Spacing::Leading,
            Some("trailing") => config.spacing = Spacing::Trailing,
            Some("linspace") => config.spacing = Spacing::Linspace,
            Some(other) => return Err(bad(format!("timestep_spacing {other:?} is not supported"))),
        }
        if let Some(v) = json["steps_offset"].as_u64() {
            config.steps_offset = v as usize;
        }
        if let Some(v) = json["set_alpha_to_one"].as_bool() {
            config.set_alpha_to_one = v;
        }
        match json["prediction_type"].as_str() {
            None | Some("epsilon") => config.prediction = Prediction::Epsilon,
            Some("v_prediction") => config.prediction = Prediction::VPrediction,
            Some(other) => return Err(bad(format!("prediction_type {other:?} is not supported"))),
        }
        Ok(config)
    }

    /// ᾱ_t for t in 0..train_steps (accumulated in f32 as diffusers does).
    pub fn alphas_cumprod(&self) -> Vec<f64> {
        let n = self.train_steps;
        let beta = |i: usize| -> f64 {
            let f = if n > 1 {
                i as f64 / (n - 1) as f64
            } else {
                0.0
            };
            if self.scaled_linear {
                let (a, b) = (self.beta_start.sqrt(), self.beta_end.sqrt());
                (a + (b - a) * f).powi(2)
            } else {
                self.beta_start + (self.beta_end - self.beta_start) * f
            }
        };
        let mut acc = 1.0f32;
        (0..n)
            .map(|i| {
                acc *= 1.0 - beta(i) as f32;
                acc as f64
            })
            .collect()
    }

    /// The `n` inference timesteps of a full denoise, first (noisiest) to last.
    pub fn timesteps(&self, n: usize) -> Vec<usize> {
        let n = n.clamp(1, self.train_steps);
        let last = self.train_steps - 1;
        match self.spacing {
            Spacing::Leading => {
                let ratio = self.train_steps / n;
                (0..n)
                    .rev()
                    .map(|i| (i * ratio + self.steps_offset).min(last))
                    .collect()
            }
            Spacing::Trailing => {
                let ratio = self.train_steps as f64 / n as f64;
                (0..n)
                    .map(|i| {
                        ((self.train_steps as f64 - i as f64 * ratio).round() as usize)
                            .saturating_sub(1)
                    })
                    .collect()
            }
            Spacing::Linspace => (0..n)
                .rev()
                .map(|i| {
                    let f = if n > 1 {
                        i as f64 / (n - 1) as f64
                    } else {
                        0.0
                    };
                    (f * last as f64).round() as usize
                })
                .collect(),
        }
    }
}

/// The timesteps one keyframe runs, and how to move between them.
#[derive(Debug, Clone)]
pub struct Sampler {
    config: SchedulerConfig,
    alphas_cumprod: Vec<f64>,
    /// The timesteps that run, noisiest first.
    timesteps: Vec<usize>,
    /// Steps of the full schedule these come from (the DDIM step size is train/total).
    total: usize,
    /// True for txt2img: start from pure noise.
    from_noise: bool,
}

impl Sampler {
    /// txt2img: every one of `steps` timesteps, from pure noise.
    pub fn txt2img(config: &SchedulerConfig, steps: usize) -> Sampler {
        let steps = steps.clamp(1, config.train_steps);
        Sampler {
            alphas_cumprod: config.alphas_cumprod(),
            timesteps: config.timesteps(steps),
            total: steps,
            from_noise: true,
            config: config.clone(),
        }
    }

    /// img2img at `strength`: diffusers' mapping, but never fewer than one step.
    pub fn img2img(config: &SchedulerConfig, steps: usize, strength: f64) -> Sampler {
        let steps = steps.clamp(1, config.train_steps);
        let strength = strength.clamp(1e-3, 1.0);
        let init = ((steps as f64 * strength) as usize).min(steps);
        let (total, run) = if init >= 1 {
            (steps, init)
        } else {
            let total = ((1.0 / strength).ceil() as usize).clamp(1, config.train_steps);
            (total, 1)
        };
        let all = config.timesteps(total);
        Sampler {
            alphas_cumprod: config.alphas_cumprod(),
            timesteps: all[total - run..].to_vec(),
            total,
            from_noise: false,
            config: config.clone(),
        }
    }

    pub fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }

    fn sigma(&self, t: usize) -> f64 {
        let a = self.alphas_cumprod[t];
        ((1.0 - a) / a).sqrt()
    }

    /// The starting latent: `noise` scaled for txt2img, else `init` noised to the first
    /// timestep (DDIM: √ᾱ·x₀ + √(1−ᾱ)·ε; Euler: x₀ + σ·ε).
    pub fn init_latent(&self, init: Option<&Tensor>, noise: &Tensor) -> Result<Tensor> {
        let t = self.timesteps[0];
        Ok(match (init, self.from_noise, self.config.kind) {
            (Some(x0), false, SamplerKind::Ddim) => {
                let a = self.alphas_cumprod[t];
                ((x0 * a.sqrt())? + (noise * (1.0 - a).sqrt())?)?
            }
            (Some(x0), false, SamplerKind::Euler) => (x0 + (noise * self.sigma(t))?)?,
            (_, _, SamplerKind::Ddim) => noise.clone(),
            (_, _, SamplerKind::Euler) => {
                let s = self.sigma(t);
                (noise * (s * s + 1.0).sqrt())?
            }
        })
    }

    /// The UNet's input at step `i` (Euler scales by 1/√(σ²+1); DDIM does not).
    pub fn scale_input(&self, x: &Tensor, i: usize) -> Result<Tensor> {
        Ok(match self.config.kind {
            SamplerKind::Ddim => x.clone(),
            SamplerKind::Euler => {
                let s = self.sigma(self.timesteps[i]);
                (x / (s * s + 1.0).sqrt())?
            }
        })
    }

    /// One update from step `i`'s model output `out` (ε or v) and latent `x`.
    pub fn step(&self, out: &Tensor, i: usize, x: &Tensor) -> Result<Tensor> {
        let t = self.timesteps[i];
        match self.config.kind {
            SamplerKind::Ddim => {
                let a_t = self.alphas_cumprod[t];
                let ratio = self.config.train_steps / self.total;
                let a_prev = match t.checked_sub(ratio) {
                    Some(prev) => self.alphas_cumprod[prev],
                    None if self.config.set_alpha_to_one => 1.0,
                    None => self.alphas_cumprod[0],
                };
                // x̂₀ and ε̂ from the prediction, then x_{t−1} = √ᾱ_prev·x̂₀ + √(1−ᾱ_prev)·ε̂.
                let (x0, eps) = match self.config.prediction {
                    Prediction::Epsilon => (
                        ((x - (out * (1.0 - a_t).sqrt())?)? / a_t.sqrt())?,
                        out.clone(),
                    ),
                    Prediction::VPrediction => (
                        ((x * a_t.sqrt())? - (out * (1.0 - a_t).sqrt())?)?,
                        ((out * a_t.sqrt())? + (x * (1.0 - a_t).sqrt())?)?,
                    ),
                };
                Ok(((x0 * a_prev.sqrt())? + (eps * (1.0 - a_prev).sqrt())?)?)
            }
            SamplerKind::Euler => {
                let s = self.sigma(t);
                let s_next = self.timesteps.get(i + 1).map_or(0.0, |&n| self.sigma(n));
                let x0 = match self.config.prediction {
                    Prediction::Epsilon => (x - (out * s)?)?,
                    Prediction::VPrediction => {
                        let c = 1.0 / (s * s + 1.0);
                        ((out * (-s * c.sqrt()))? + (x * c)?)?
                    }
                };
                // dx/dσ = (x − x̂₀)/σ, one Euler step to σ_next.
                let d = ((x - x0)? / s)?;
                Ok((x + (d * (s_next - s))?)?)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ddim_leading_and_strength_mapping() {
        let c = SchedulerConfig::default_for(ModelKind::Sd1);
        assert_eq!(c.timesteps(4), vec![751, 501, 251, 1]);
        assert_eq!(Sampler::img2img(&c, 4, 0.5).timesteps(), &[251, 1]);
    }

    #[test]
    fn one_step_turbo_always_runs_a_step() {
        let c = SchedulerConfig::default_for(ModelKind::SdTurbo);
        assert_eq!(c.timesteps(1), vec![999]);
        assert_eq!(c.timesteps(4), vec![999, 749, 499, 249]);
        // diffusers would run none here; dreamd runs the last step of a 2-step schedule.
        assert_eq!(Sampler::img2img(&c, 1, 0.5).timesteps(), &[499]);
        assert_eq!(Sampler::img2img(&c, 1, 0.2).timesteps(), &[199]);
        assert_eq!(Sampler::img2img(&c, 2, 0.5).timesteps(), &[499]);
        assert_eq!(Sampler::img2img(&c, 1, 1.0).timesteps(), &[999]);
        for steps in 1..8 {
            for s in [0.01, 0.1, 0.3, 0.5, 0.99, 1.0] {
                assert!(!Sampler::img2img(&c, steps, s).timesteps().is_empty());
            }
        }
    }
}
