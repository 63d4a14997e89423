//! The `diffusion` keyframe source: the dream loop in latent space, in process.
//!
//! Keyframe k+1 is img2img of keyframe k's *latent* (TAESD latents are the scaled SD
//! latents): noise it to the strength's timestep, run the UNet for the remaining steps, and
//! the result is the next keyframe latent — no VAE, no PNG. The first keyframe is txt2img, or
//! img2img of the first picture of `keyframes.images_dir` when the engine has an encoder.
//!
//! Prompts come from the creative direction (`set_prompt`); their embeddings are cached per
//! prompt, and a new prompt glides in over `diffusion.prompt_blend_keyframes` keyframes by
//! interpolating the embeddings. An injection (`continue_from`) becomes the next start.
//!
//! Every UNet step takes the engine's GPU lock on its own, so decoding interleaves between
//! steps. Dropping the keyframe future (timeout, shutdown) cancels the remaining steps; a
//! failed or slow step fails that keyframe only.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use candle_core::{Device as CandleDevice, Tensor};
use parking_lot::Mutex;
use rand::{Rng, SeedableRng};

use super::{Keyframe, KeyframeError, KeyframeSource};
use crate::direction::themes::PromptChoice;
use crate::engine::diffusion::{DiffusionConfig, DiffusionError, DiffusionModel, PromptEmbedding};
use crate::engine::{Engine, LockAccount, Priority};
use crate::latent::{Latent, LatentShape};

/// Prompt embeddings kept (themes are few; injections add none).
const CACHE_LIMIT: usize = 64;

/// Embeddings per prompt, and the glide between prompts.
#[derive(Default)]
struct Conditioning {
    cache: HashMap<String, PromptEmbedding>,
    /// The prompt of the last keyframe, and the embedding it used.
    last: Option<(String, PromptEmbedding)>,
    /// Gliding from this embedding; keyframes into the glide so far.
    glide: Option<(PromptEmbedding, u32)>,
}

impl Conditioning {
    fn embed(
        &mut self,
        model: &DiffusionModel,
        prompt: &str,
    ) -> Result<PromptEmbedding, DiffusionError> {
        if let Some(e) = self.cache.get(prompt) {
            return Ok(e.clone());
        }
        let e = model.embed(prompt)?;
        if self.cache.len() >= CACHE_LIMIT {
            self.cache.clear();
        }
        self.cache.insert(prompt.to_string(), e.clone());
        Ok(e)
    }

    /// The conditioning for the next keyframe under `prompt`: the prompt's embedding, or a
    /// point on the way to it from the previous prompt's.
    fn next(
        &mut self,
        model: &DiffusionModel,
        prompt: &str,
        blend: u32,
    ) -> Result<PromptEmbedding, DiffusionError> {
        let target = self.embed(model, prompt)?;
        if let Some((last_prompt, last)) = &self.last {
            if last_prompt != prompt && blend > 1 {
                self.glide = Some((last.clone(), 0));
            }
        }
        let used = match self.glide.take() {
            Some((from, k)) => {
                let k = k + 1;
                if k < blend {
                    let e = from.lerp(&target, k as f64 / blend as f64)?;
                    self.glide = Some((from, k));
                    e
                } else {
                    target
                }
            }
            None => target,
        };
        self.last = Some((prompt.to_string(), used.clone()));
        Ok(used)
    }
}

/// Where the next keyframe starts.
#[derive(Clone)]
enum Start {
    /// txt2img from noise.
    Noise,
    /// img2img of this latent (the previous keyframe, an injection, the first picture).
    Latent(Latent),
}

/// How the last keyframe was made.
#[derive(Clone)]
struct Made {
    seed: u64,
    denoise: f64,
    prompt: String,
    theme: String,
}

/// In-process Stable Diffusion keyframes.
pub struct DiffusionSource {
    model: Arc<DiffusionModel>,
    engine: Arc<Engine>,
    config: DiffusionConfig,
    lock_timeout: Duration,
    shape: LatentShape,
    prompt: PromptChoice,
    conditioning: Arc<Mutex<Conditioning>>,
    start: Start,
    /// The first picture, encoded at the first keyframe.
    first_picture: Option<image::RgbImage>,
    made: Option<Made>,
}

/// Sets the flag when dropped: the keyframe future went away, so its steps stop.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl DiffusionSource {
    /// Loads `config.model_dir` on the engine's device. The model's latent channels must be
    /// the decoder's.
    pub fn new(
        config: DiffusionConfig,
        engine: Arc<Engine>,
        first_picture: Option<image::RgbImage>,
        lock_timeout: Duration,
    ) -> Result<DiffusionSource, KeyframeError> {
        let fail = |message: String| KeyframeError::Source {
            source_name: "diffusion".into(),
            message,
        };
        let device = crate::engine::taesd::candle::candle_device(engine.device())
            .map_err(|e| fail(e.to_string()))?;
        let dtype = config.dtype.resolve(&device);
        let model = DiffusionModel::load(&config.model_dir, config.model, dtype, &device)
            .map_err(|e| fail(e.to_string()))?;
        Self::with_model(Arc::new(model), config, engine, first_picture, lock_timeout)
    }

    /// A source around an already loaded model.
    pub fn with_model(
        model: Arc<DiffusionModel>,
        config: DiffusionConfig,
        engine: Arc<Engine>,
        first_picture: Option<image::RgbImage>,
        lock_timeout: Duration,
    ) -> Result<DiffusionSource, KeyframeError> {
        let shape = engine.latent_shape();
        if shape.channels != model.unet.in_channels {
            return Err(KeyframeError::Source {
                source_name: "diffusion".into(),
                message: format!(
                    "the UNet takes {}-channel latents but decoder {} makes {}",
                    model.unet.in_channels,
                    engine.decoder_name(),
                    shape.channels
                ),
            });
        }
        tracing::info!(
            model = model.kind.name(),
            dir = %config.model_dir.display(),
            strength = config.strength,
            steps = config.steps,
            "diffusion model loaded"
        );
        Ok(DiffusionSource {
            model,
            engine,
            config,
            lock_timeout,
            shape,
            prompt: PromptChoice {
                theme: "dream".into(),
                prompt: "a dream".into(),
                negative: String::new(),
            },
            conditioning: Arc::default(),
            start: Start::Noise,
            first_picture,
            made: None,
        })
    }
}

/// Seeded standard normal noise (Box–Muller), the same on every device.
fn noise(seed: u64, n: usize) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
            let u2: f64 = rng.random::<f64>();
            ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
        })
        .collect()
}

/// One keyframe's work, for the blocking pool.
struct Job {
    model: Arc<DiffusionModel>,
    engine: Arc<Engine>,
    conditioning: Arc<Mutex<Conditioning>>,
    config: DiffusionConfig,
    lock_timeout: Duration,
    shape: LatentShape,
    prompt: PromptChoice,
    start: Start,
    seed: u64,
    cancel: Arc<AtomicBool>,
}

impl Job {
    fn run(self) -> Result<Latent, DiffusionError> {
        let account = LockAccount::default();
        // Background: a decode the starving display waits for goes between two steps.
        let lock = |timeout| {
            self.engine
                .lock()
                .acquire_as(Priority::Background, &account, timeout)
                .map_err(|e| DiffusionError::Run(e.to_string()))
        };
        let guided = self.config.guidance > 1.0;
        let (cond, uncond) = {
            let _gpu = lock(self.lock_timeout)?;
            let mut c = self.conditioning.lock();
            let cond = c.next(
                &self.model,
                &self.prompt.prompt,
                self.config.prompt_blend_keyframes,
            )?;
            let uncond = match guided {
                true => Some(c.embed(&self.model, &self.prompt.negative)?),
                false => None,
            };
            (cond, uncond)
        };
        let dims = (1, self.shape.channels, self.shape.height, self.shape.width);
        let device: &CandleDevice = &self.model.device;
        let noise = Tensor::from_vec(noise(self.seed, self.shape.len()), dims, device)?;
        let init = match &self.start {
            Start::Noise => None,
            Start::Latent(l) => Some(Tensor::from_slice(l.data(), dims, device)?),
        };
        let mut run = self.model.start(
            init.as_ref(),
            &noise,
            self.config.steps,
            self.config.strength,
        )?;
        let step_timeout = Duration::from_secs_f64(self.config.step_timeout_seconds);
        while !run.done() {
            if self.cancel.load(Ordering::Relaxed) {
                return Err(DiffusionError::Cancelled);
            }
            let _gpu = lock(step_timeout)?;
            let started = Instant::now();
            run.step(&self.model, &cond, uncond.as_ref(), self.config.guidance)?;
            if started.elapsed() > step_timeout {
                return Err(DiffusionError::Run(format!(
                    "a UNet step took {:.1} s (diffusion.step_timeout_seconds = {})",
                    started.elapsed().as_secs_f64(),
                    self.config.step_timeout_seconds
                )));
            }
        }
        let data = run.latent.flatten_all()?.to_vec1::<f32>()?;
        if data.iter().any(|v| !v.is_finite()) {
            return Err(DiffusionError::Run(
                "the UNet produced non-finite values".into(),
            ));
        }
        Latent::new(self.shape, data).map_err(|e| DiffusionError::Run(e.to_string()))
    }
}

#[async_trait]
impl KeyframeSource for DiffusionSource {
    fn name(&self) -> &str {
        "diffusion"
    }

    fn theme(&self) -> Option<String> {
        Some(self.prompt.theme.clone())
    }

    fn describe(&self) -> String {
        format!("diffusion: {}", self.prompt.prompt)
    }

    fn uses_prompts(&self) -> bool {
        true
    }

    fn set_prompt(&mut self, prompt: &PromptChoice) {
        self.prompt = prompt.clone();
    }

    fn continue_from(&mut self, keyframe: &Keyframe) {
        if keyframe.latent.shape() == self.shape {
            self.start = Start::Latent(keyframe.latent.clone());
        }
    }

    fn detail(&self) -> Option<crate::events::KeyframeDetail> {
        let made = self.made.as_ref()?;
        Some(crate::events::KeyframeDetail {
            theme: Some(made.theme.clone()),
            prompt: Some(made.prompt.clone()),
            seed: Some(made.seed),
            denoise: Some(made.denoise),
            origin: Some("diffusion".into()),
            ..Default::default()
        })
    }

    async fn keyframe(&mut self, index: u64) -> Result<Keyframe, KeyframeError> {
        let fail = |message: String| KeyframeError::Source {
            source_name: "diffusion".into(),
            message,
        };
        if let Some(picture) = self.first_picture.take() {
            if self.engine.encoder().is_some() {
                let (engine, timeout) = (Arc::clone(&self.engine), self.lock_timeout);
                let encoded = tokio::task::spawn_blocking(move || {
                    engine.encode_batch(&[picture], &LockAccount::default(), timeout)
                })
                .await
                .map_err(|e| KeyframeError::Worker(e.to_string()))?;
                match encoded.map(|mut l| l.pop()) {
                    Ok(Some(latent)) if latent.shape() == self.shape => {
                        self.start = Start::Latent(latent)
                    }
                    Ok(_) => {
                        tracing::warn!("the first picture did not encode; dreaming from noise")
                    }
                    Err(e) => {
                        tracing::warn!("cannot encode the first picture ({e}); dreaming from noise")
                    }
                }
            }
        }
        let seed = self.config.seed.wrapping_add(index);
        let cancel = Arc::new(AtomicBool::new(false));
        let _cancel_on_drop = CancelOnDrop(Arc::clone(&cancel));
        let job = Job {
            model: Arc::clone(&self.model),
            engine: Arc::clone(&self.engine),
            conditioning: Arc::clone(&self.conditioning),
            config: self.config.clone(),
            lock_timeout: self.lock_timeout,
            shape: self.shape,
            prompt: self.prompt.clone(),
            start: self.start.clone(),
            seed,
            cancel,
        };
        let denoise = match self.start {
            Start::Noise => 1.0,
            Start::Latent(_) => self.config.strength,
        };
        let latent = tokio::task::spawn_blocking(move || job.run())
            .await
            .map_err(|e| KeyframeError::Worker(e.to_string()))?
            .map_err(|e| fail(e.to_string()))?;
        self.start = Start::Latent(latent.clone());
        self.made = Some(Made {
            seed,
            denoise,
            prompt: self.prompt.prompt.clone(),
            theme: self.prompt.theme.clone(),
        });
        Ok(Keyframe {
            index,
            latent,
            image: None,
        })
    }
}

/// Whether `dir` looks like a diffusers model folder (for `dreamd models list`).
pub fn is_model_dir(dir: &Path) -> bool {
    dir.join("unet").is_dir() && dir.join("text_encoder").is_dir()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_is_seeded_and_standard() {
        let a = noise(3, 4096);
        assert_eq!(a, noise(3, 4096));
        assert_ne!(a, noise(4, 4096));
        let mean = a.iter().sum::<f32>() / a.len() as f32;
        let var = a.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / a.len() as f32;
        assert!(mean.abs() < 0.1 && (var - 1.0).abs() < 0.1, "{mean} {var}");
    }
}
