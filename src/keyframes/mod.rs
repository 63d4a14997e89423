//! Keyframes: the endpoints the pipeline interpolates between, and the sources that make them.
//!
//! A source is asynchronous and fallible: the coordinator asks it for keyframe `k` under a
//! timeout, and a failure costs that keyframe's frames, never the pipeline.

pub mod decoded;
pub mod diffusion;
pub mod images;
pub mod procedural;

use async_trait::async_trait;
use image::RgbImage;

use crate::comfyui::{ComfyUiHealth, ComfyUiSource, FallbackChoice, FallbackSource, SourceOptions};
use crate::config::{Config, SourceKind};
use std::sync::Arc;

use crate::engine::Engine;
use crate::latent::{Latent, LatentError};

/// One keyframe: its latent, and its picture when the source has one (an image folder does; a
/// latent-only source leaves the decoder to draw it).
#[derive(Debug, Clone)]
pub struct Keyframe {
    /// Keyframe number, from 0.
    pub index: u64,
    pub latent: Latent,
    pub image: Option<RgbImage>,
}

/// Why a keyframe could not be made.
#[derive(Debug, thiserror::Error)]
pub enum KeyframeError {
    #[error("keyframe source {source_name}: {message}")]
    Source {
        source_name: String,
        message: String,
    },
    #[error(transparent)]
    Latent(#[from] LatentError),
    #[error("keyframe worker stopped: {0}")]
    Worker(String),
}

/// Something that makes keyframes.
#[async_trait]
pub trait KeyframeSource: Send {
    /// Short name for logs and status (`procedural`, `images`, …).
    fn name(&self) -> &str;

    /// The current theme or prompt, when the source has one.
    fn theme(&self) -> Option<String> {
        None
    }

    /// Whether the source has themes to move through with [`KeyframeSource::next_theme`].
    fn has_themes(&self) -> bool {
        false
    }

    /// Moves to the next theme from the next keyframe on (sources with themes).
    fn next_theme(&mut self) {}

    /// What is playing, for people: the prompt, the picture's name, `procedural seed 42`.
    /// Never empty (status.json consumers reject empty strings).
    fn describe(&self) -> String {
        self.name().to_string()
    }

    /// Whether keyframes are made from a prompt ([`KeyframeSource::set_prompt`]).
    fn uses_prompts(&self) -> bool {
        false
    }

    /// The prompt for the next keyframe (sources that use prompts).
    fn set_prompt(&mut self, _prompt: &crate::direction::themes::PromptChoice) {}

    /// The keyframe just played was made elsewhere (an injection): continue from it.
    fn continue_from(&mut self, _keyframe: &Keyframe) {}

    /// How the last keyframe was made, for its `keyframe` event (prompt, ComfyUI prompt id, …).
    fn detail(&self) -> Option<crate::events::KeyframeDetail> {
        None
    }

    /// Makes keyframe `index`. Blocking work inside must go to the blocking pool.
    async fn keyframe(&mut self, index: u64) -> Result<Keyframe, KeyframeError>;
}

/// A source built from the config, with the ComfyUI health handle (`disabled` unless the
/// source is `comfyui`) for status.json and `/metrics`.
pub struct BuiltSource {
    pub source: Box<dyn KeyframeSource>,
    pub comfyui: ComfyUiHealth,
}

/// Builds the source that `config` names, making latents for `engine`. The `comfyui` source
/// needs a tokio runtime (its WebSocket connects in the background).
pub fn from_config(config: &Config, engine: &Arc<Engine>) -> Result<BuiltSource, KeyframeError> {
    let k = &config.keyframes;
    let procedural = || -> Box<dyn KeyframeSource> {
        Box::new(procedural::ProceduralSource::new(
            k.seed,
            k.drift,
            engine.latent_shape(),
        ))
    };
    let pictures = || -> Result<Box<dyn KeyframeSource>, KeyframeError> {
        Ok(Box::new(images::ImageSource::new(
            &k.images_dir,
            k.order,
            k.fit,
            k.seed,
            Arc::clone(engine),
            config.timeouts.keyframe(),
        )?))
    };
    let plain = |source| BuiltSource {
        source,
        comfyui: ComfyUiHealth::disabled(),
    };
    match k.source {
        SourceKind::Procedural => Ok(plain(procedural())),
        SourceKind::Images => Ok(plain(pictures()?)),
        SourceKind::Diffusion => Ok(plain(Box::new(diffusion::DiffusionSource::new(
            config.diffusion.clone(),
            Arc::clone(engine),
            first_picture(&k.images_dir),
            config.timeouts.decode(),
        )?))),
        SourceKind::Comfyui => {
            let options = SourceOptions {
                fit: k.fit,
                lock_timeout: config.timeouts.decode(),
                initial_picture: first_picture(&k.images_dir),
                ..SourceOptions::default()
            };
            let source = ComfyUiSource::new(config.comfyui.clone(), Arc::clone(engine), options)?;
            let comfyui = source.health();
            let fallback = match config.comfyui.fallback {
                FallbackChoice::Procedural => Some(procedural()),
                FallbackChoice::Images => Some(pictures()?),
                FallbackChoice::None => None,
            };
            Ok(BuiltSource {
                source: Box::new(FallbackSource::new(source, fallback)),
                comfyui,
            })
        }
    }
}

/// The first picture of `dir` (by name) that reads, if any: where a ComfyUI dream starts.
fn first_picture(dir: &std::path::Path) -> Option<image::RgbImage> {
    let files = images::list_images(dir).ok()?;
    files
        .iter()
        .find_map(|path| match images::load_bounded(path) {
            Ok(picture) => Some(picture),
            Err(e) => {
                tracing::warn!("skipping picture {}: {e}", path.display());
                None
            }
        })
}
