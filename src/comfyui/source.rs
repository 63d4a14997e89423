//! The `comfyui` keyframe source: keyframe k+1 is ComfyUI's img2img of keyframe k's picture,
//! so the stream slowly drifts into new shapes (the original's core loop, §2.2).
//!
//! The picture fed back is the one in the [`FeedbackHandle`]: the source puts each keyframe it
//! makes there, and another stage (a blend, an injected keyframe, the fallback source) may
//! replace it with what was really displayed; a latent without a picture is decoded first.
//! The first keyframe, with nothing to feed back, is the `initial_picture` when one is given
//! (the first picture of `images_dir`), else the built-in txt2img graph (or, for a user
//! workflow, a noise picture at denoise 1.0). ComfyUI's picture is fitted to the output size
//! without distortion (crop or pad) and encoded with the TAESD encoder into the pipeline's
//! latent; everything downstream is unchanged.
//!
//! When the server is unreachable the source fails fast and probes it with backoff (1 s
//! doubling to 30 s) instead of waiting out a timeout per keyframe; [`super::FallbackSource`]
//! plays another source meanwhile.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::direction::themes::PromptChoice;
use image::RgbImage;
use parking_lot::Mutex;

use super::client::{ClientOptions, ComfyClient, ComfyError, GenerateRequest, Generated};
use super::config::{ComfyUiConfig, SeedChoice, WorkflowChoice};
use super::health::{ComfyUiHealth, ComfyUiStatus, KeyframeReport};
use super::workflow::{Values, Workflow};
use crate::config::FitMode;
use crate::engine::{Engine, LockAccount};
use crate::keyframes::images::fit;
use crate::keyframes::{Keyframe, KeyframeError, KeyframeSource};
use crate::latent::Latent;

/// What the next img2img starts from.
#[derive(Debug, Clone)]
enum Previous {
    Picture(RgbImage),
    Latent(Latent),
}

/// Shared slot holding the keyframe the next img2img starts from. Clone it before boxing the
/// source; [`FeedbackHandle::set_keyframe`] replaces it with the displayed keyframe.
#[derive(Debug, Clone, Default)]
pub struct FeedbackHandle(Arc<Mutex<Option<Previous>>>);

impl FeedbackHandle {
    /// The next keyframe starts from `keyframe` (its picture, else its latent decoded).
    pub fn set_keyframe(&self, keyframe: &Keyframe) {
        let previous = match &keyframe.image {
            Some(picture) => Previous::Picture(picture.clone()),
            None => Previous::Latent(keyframe.latent.clone()),
        };
        *self.0.lock() = Some(previous);
    }

    /// The next keyframe starts from `picture`.
    pub fn set_picture(&self, picture: RgbImage) {
        *self.0.lock() = Some(Previous::Picture(picture));
    }

    /// Whether there is something to start from.
    pub fn is_set(&self) -> bool {
        self.0.lock().is_some()
    }

    fn get(&self) -> Option<Previous> {
        self.0.lock().clone()
    }
}

/// Settings of the source that come from outside `[comfyui]`.
#[derive(Debug, Clone)]
pub struct SourceOptions {
    /// How ComfyUI's picture is fitted to the output size (`keyframes.fit`).
    pub fit: FitMode,
    /// GPU-lock wait for the encoder and decoder.
    pub lock_timeout: Duration,
    /// The first keyframe's starting picture (the first of `keyframes.images_dir` when set).
    pub initial_picture: Option<RgbImage>,
    pub client: ClientOptions,
    /// Probe backoff while the server is unreachable.
    pub probe_min: Duration,
    pub probe_max: Duration,
}

impl Default for SourceOptions {
    fn default() -> Self {
        Self {
            fit: FitMode::Crop,
            lock_timeout: Duration::from_secs(30),
            initial_picture: None,
            client: ClientOptions::default(),
            probe_min: Duration::from_secs(1),
            probe_max: Duration::from_secs(30),
        }
    }
}

/// Why a ComfyUI keyframe failed, keeping whether the server was reachable at all.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Comfy(#[from] ComfyError),
    /// The server is known to be down; no request was made.
    #[error("ComfyUI at {url} is unreachable ({reason}); next probe in {next:.1?}")]
    Waiting {
        url: String,
        reason: String,
        next: Duration,
    },
    /// The workflow does not fit the server (missing node class or model).
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Local(String),
}

impl SourceError {
    /// Whether the fallback source should play instead.
    pub fn is_unreachable(&self) -> bool {
        match self {
            SourceError::Comfy(e) => e.is_unreachable(),
            SourceError::Waiting { .. } => true,
            SourceError::Invalid(_) | SourceError::Local(_) => false,
        }
    }
}

impl From<SourceError> for KeyframeError {
    fn from(e: SourceError) -> Self {
        KeyframeError::Source {
            source_name: "comfyui".into(),
            message: e.to_string(),
        }
    }
}

/// What `preflight` found.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerInfo {
    pub version: String,
    pub node_classes: usize,
}

/// The ComfyUI keyframe source; see the module docs.
pub struct ComfyUiSource {
    config: ComfyUiConfig,
    client: ComfyClient,
    engine: Arc<Engine>,
    options: SourceOptions,
    workflow: Workflow,
    first_workflow: Workflow,
    feedback: FeedbackHandle,
    health: ComfyUiHealth,
    validated: bool,
    /// The prompt of the next keyframe, from the creative direction.
    prompt: PromptChoice,
    next_probe: Option<Instant>,
    probe_delay: Duration,
    seed_state: u64,
}

impl ComfyUiSource {
    /// Checks the config, loads the workflow and starts the client (its WebSocket connects in
    /// the background; needs a tokio runtime). Does not need the server: call
    /// [`ComfyUiSource::preflight`] at start-up to check it.
    pub fn new(
        config: ComfyUiConfig,
        engine: Arc<Engine>,
        options: SourceOptions,
    ) -> Result<Self, KeyframeError> {
        let error = |message: String| KeyframeError::Source {
            source_name: "comfyui".into(),
            message,
        };
        let problems = config.validate();
        if !problems.is_empty() {
            let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
            return Err(error(list.join("; ")));
        }
        if engine.encoder().is_none() {
            return Err(error(format!(
                "keyframes.source = \"comfyui\" needs the {} encoder \
                 ({}_encoder.safetensors next to its decoder; see models/README.md)",
                engine.decoder_name(),
                engine.decoder_name()
            )));
        }
        let workflow = Workflow::from_choice(&config.workflow).map_err(|e| error(e.to_string()))?;
        if !workflow.uses_image() {
            tracing::warn!(
                workflow = %workflow.name,
                "the ComfyUI workflow has no {{{{image}}}} placeholder: keyframes will not feed back"
            );
        }
        let first_workflow = match config.workflow {
            WorkflowChoice::Img2Img => Workflow::txt2img(),
            WorkflowChoice::File(_) => workflow.clone(),
        };
        let health = ComfyUiHealth::new(ComfyUiStatus::Unreachable);
        health.mark_unreachable(format!("not contacted yet ({})", config.url));
        let client = ComfyClient::new(&config.url, options.client.clone(), health.clone())
            .map_err(|e| error(e.to_string()))?;
        let seed_state = match config.seed {
            SeedChoice::Fixed(n) => n,
            SeedChoice::Random => uuid::Uuid::new_v4().as_u64_pair().0,
        };
        tracing::info!(url = %config.url, workflow = %workflow.name, client_id = client.client_id(), "ComfyUI keyframe source");
        Ok(Self {
            probe_delay: options.probe_min,
            config,
            client,
            engine,
            options,
            workflow,
            first_workflow,
            feedback: FeedbackHandle::default(),
            health,
            validated: false,
            prompt: super::workflow::default_prompt(),
            next_probe: None,
            seed_state,
        })
    }

    /// The shared health handle (`comfyui_status`, counters, the last keyframe's report).
    pub fn health(&self) -> ComfyUiHealth {
        self.health.clone()
    }

    /// The slot the next img2img starts from.
    pub fn feedback(&self) -> FeedbackHandle {
        self.feedback.clone()
    }

    /// The client (tests and diagnostics).
    pub fn client(&self) -> &ComfyClient {
        &self.client
    }

    /// Checks the server: reachable (`/system_stats`), and every node class and model the
    /// workflows use exists (`/object_info`). A missing one is one error naming it.
    pub async fn preflight(&mut self) -> Result<ServerInfo, SourceError> {
        let stats = self.client.system_stats().await?;
        let info = self.client.object_info().await?;
        let (w, h) = self.generation_size();
        let values = Values::from_config(&self.config, w, h);
        let mut workflows = vec![&self.workflow];
        if self.options.initial_picture.is_none() && !self.feedback.is_set() {
            workflows.push(&self.first_workflow);
        }
        for workflow in workflows {
            let graph = workflow.fill(&values).map_err(ComfyError::from)?;
            workflow.validate(&graph, &info).map_err(|e| {
                SourceError::Invalid(format!("ComfyUI at {}: {e}", self.config.url))
            })?;
        }
        self.validated = true;
        tracing::info!(version = %stats.system.comfyui_version, nodes = info.len(), "ComfyUI server checked");
        Ok(ServerInfo {
            version: stats.system.comfyui_version,
            node_classes: info.len(),
        })
    }

    /// Whether a request would go out now (false while waiting for the next probe).
    pub fn probe_due(&self) -> bool {
        self.next_probe.is_none_or(|t| Instant::now() >= t)
    }

    fn next_seed(&mut self) -> u64 {
        match self.config.seed {
            SeedChoice::Fixed(n) => n,
            SeedChoice::Random => {
                // splitmix64 over a random start; below 2^53 so every JSON reader keeps it.
                self.seed_state = self.seed_state.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = self.seed_state;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                (z ^ (z >> 31)) >> 11
            }
        }
    }

    /// The size asked of ComfyUI: the output size rounded to multiples of 8.
    fn generation_size(&self) -> (u32, u32) {
        let (w, h) = self.engine.output_size();
        let round = |v: u32| (v.div_ceil(8) * 8).max(64);
        (round(w), round(h))
    }

    fn schedule_probe(&mut self) {
        self.next_probe = Some(Instant::now() + self.probe_delay);
        self.probe_delay = (self.probe_delay * 2).min(self.options.probe_max);
    }

    fn reset_probe(&mut self) {
        self.next_probe = None;
        self.probe_delay = self.options.probe_min;
    }

    /// Makes keyframe `index`, keeping whether the failure means "server unreachable".
    pub async fn make(&mut self, index: u64) -> Result<Keyframe, SourceError> {
        if let Some(at) = self.next_probe {
            let now = Instant::now();
            // The WebSocket task reconnecting is as good as a probe.
            if now < at && self.health.status() == ComfyUiStatus::Unreachable {
                return Err(SourceError::Waiting {
                    url: self.config.url.clone(),
                    reason: self.health.reason().unwrap_or_default(),
                    next: at - now,
                });
            }
        }
        let result = self.make_inner(index).await;
        match &result {
            Ok(_) => self.reset_probe(),
            Err(e) => {
                self.health.record_failure(&e.to_string());
                if e.is_unreachable() {
                    if !matches!(e, SourceError::Waiting { .. }) {
                        self.health.mark_unreachable(e.to_string());
                    }
                    self.schedule_probe();
                } else if matches!(e, SourceError::Invalid(_)) {
                    self.schedule_probe();
                } else {
                    self.reset_probe();
                }
                tracing::warn!(index, error = %e, "ComfyUI keyframe failed");
            }
        }
        result
    }

    async fn make_inner(&mut self, index: u64) -> Result<Keyframe, SourceError> {
        if !self.validated {
            self.preflight().await?;
        } else if self.health.status() == ComfyUiStatus::Unreachable {
            // The probe: one cheap call (fails at once on a refused connection).
            self.client.system_stats().await?;
        }
        let started = Instant::now();
        let (width, height) = self.generation_size();
        let mut values = Values::from_config(&self.config, width, height);
        values.prompt = self.prompt.prompt.clone();
        values.negative = self.prompt.negative.clone();
        values.seed = self.next_seed();

        // What to start from, as PNG bytes (encoded off the runtime).
        let previous = self.feedback.get();
        let (workflow, start) = match previous {
            Some(previous) => (self.workflow.clone(), Some(previous)),
            None => match &self.options.initial_picture {
                Some(p) => (self.workflow.clone(), Some(Previous::Picture(p.clone()))),
                None if self.config.workflow == WorkflowChoice::Img2Img => {
                    (self.first_workflow.clone(), None)
                }
                None => {
                    values.denoise = 1.0;
                    let noise = noise_picture(width, height, values.seed);
                    (self.first_workflow.clone(), Some(Previous::Picture(noise)))
                }
            },
        };
        if workflow.name == "txt2img" {
            values.denoise = 1.0;
        }
        let input_png = match start {
            None => None,
            Some(previous) => {
                let (engine, lock_timeout) = (Arc::clone(&self.engine), self.options.lock_timeout);
                let (w, h) = (width, height);
                let fit_mode = self.options.fit;
                Some(
                    tokio::task::spawn_blocking(move || {
                        let picture = match previous {
                            Previous::Picture(p) => p,
                            Previous::Latent(latent) => engine
                                .decode_one(&latent, lock_timeout)
                                .map_err(|e| format!("cannot decode the previous keyframe: {e}"))?,
                        };
                        let picture = if picture.dimensions() == (w, h) {
                            picture
                        } else {
                            fit(image::DynamicImage::ImageRgb8(picture), w, h, fit_mode)
                                .map_err(|e| e.to_string())?
                        };
                        encode_png(&picture)
                    })
                    .await
                    .map_err(|e| SourceError::Local(format!("picture worker: {e}")))?
                    .map_err(SourceError::Local)?,
                )
            }
        };

        let request = GenerateRequest {
            workflow,
            values: values.clone(),
            input_png,
            deadline: self.config.timeout(),
        };
        let generated: Generated = self.client.generate(request).await?;

        let (engine, fit_mode, lock_timeout) = (
            Arc::clone(&self.engine),
            self.options.fit,
            self.options.lock_timeout,
        );
        let bytes = generated.image.clone();
        let (latent, picture) = tokio::task::spawn_blocking(move || {
            let decoded = crate::keyframes::images::decode_bounded_bytes(&bytes, "from ComfyUI")
                .map_err(|e| e.to_string())?;
            let (w, h) = engine.output_size();
            let framed = fit(decoded, w, h, fit_mode).map_err(|e| e.to_string())?;
            let mut latents = engine
                .encode_batch(
                    std::slice::from_ref(&framed),
                    &LockAccount::default(),
                    lock_timeout,
                )
                .map_err(|e| format!("cannot encode ComfyUI's picture: {e}"))?;
            let latent = latents.pop().ok_or("the encoder returned nothing")?;
            Ok::<_, String>((latent, framed))
        })
        .await
        .map_err(|e| SourceError::Local(format!("picture worker: {e}")))?
        .map_err(SourceError::Local)?;

        self.feedback.set_picture(picture.clone());
        let ms = started.elapsed().as_millis() as u64;
        self.health.record_success(KeyframeReport {
            index,
            prompt_id: generated.prompt_id.clone(),
            seed: values.seed,
            denoise: values.denoise,
            ms,
            cached: generated.cached,
            prompt: values.prompt.clone(),
        });
        tracing::info!(
            index,
            prompt_id = %generated.prompt_id,
            seed = values.seed,
            denoise = values.denoise,
            ms,
            cached = generated.cached,
            "ComfyUI keyframe"
        );
        Ok(Keyframe {
            index,
            latent,
            image: Some(picture),
        })
    }
}

fn encode_png(picture: &RgbImage) -> Result<Vec<u8>, String> {
    let mut out = std::io::Cursor::new(Vec::new());
    picture
        .write_to(&mut out, image::ImageFormat::Png)
        .map_err(|e| format!("cannot encode the picture to upload: {e}"))?;
    Ok(out.into_inner())
}

/// Soft coloured noise: the start of a user workflow's first keyframe (denoise 1.0).
fn noise_picture(width: u32, height: u32, seed: u64) -> RgbImage {
    let cell = 32u32;
    let hash = |x: u32, y: u32, c: u32| -> f32 {
        let mut z = seed
            ^ (u64::from(x) << 40)
            ^ (u64::from(y) << 20)
            ^ u64::from(c).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) & 0xFF) as f32
    };
    RgbImage::from_fn(width, height, |x, y| {
        let (gx, gy) = (x / cell, y / cell);
        let (fx, fy) = (
            (x % cell) as f32 / cell as f32,
            (y % cell) as f32 / cell as f32,
        );
        let mut px = [0u8; 3];
        for (c, v) in px.iter_mut().enumerate() {
            let c = c as u32;
            let top = hash(gx, gy, c) * (1.0 - fx) + hash(gx + 1, gy, c) * fx;
            let bottom = hash(gx, gy + 1, c) * (1.0 - fx) + hash(gx + 1, gy + 1, c) * fx;
            *v = (top * (1.0 - fy) + bottom * fy) as u8;
        }
        image::Rgb(px)
    })
}

#[async_trait]
impl KeyframeSource for ComfyUiSource {
    fn name(&self) -> &str {
        "comfyui"
    }

    fn describe(&self) -> String {
        self.prompt.prompt.clone()
    }

    fn uses_prompts(&self) -> bool {
        true
    }

    fn set_prompt(&mut self, prompt: &PromptChoice) {
        self.prompt = prompt.clone();
    }

    fn continue_from(&mut self, keyframe: &Keyframe) {
        self.feedback.set_keyframe(keyframe);
    }

    fn detail(&self) -> Option<crate::events::KeyframeDetail> {
        let last = self.health.snapshot().last?;
        Some(crate::events::KeyframeDetail {
            prompt_id: Some(last.prompt_id),
            seed: Some(last.seed),
            denoise: Some(last.denoise),
            origin: Some("comfyui".into()),
            ..Default::default()
        })
    }

    async fn keyframe(&mut self, index: u64) -> Result<Keyframe, KeyframeError> {
        self.make(index).await.map_err(KeyframeError::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_is_deterministic_and_varied() {
        let a = noise_picture(64, 32, 7);
        assert_eq!(a, noise_picture(64, 32, 7));
        assert_ne!(a, noise_picture(64, 32, 8));
        let distinct: std::collections::BTreeSet<[u8; 3]> = a.pixels().map(|p| p.0).collect();
        assert!(distinct.len() > 50);
    }

    #[test]
    fn source_errors_classify() {
        let waiting = SourceError::Waiting {
            url: "http://x".into(),
            reason: "refused".into(),
            next: Duration::from_secs(2),
        };
        assert!(waiting.is_unreachable());
        assert!(waiting.to_string().contains("http://x"));
        assert!(!SourceError::Invalid("no node".into()).is_unreachable());
        let k: KeyframeError = SourceError::Local("bad".into()).into();
        assert!(k.to_string().contains("comfyui"));
    }
}
