//! Keeps the stream playing while ComfyUI is away: [`FallbackSource`] asks the ComfyUI source
//! first and, when the server is unreachable (or known to be down and not yet due for a
//! probe), takes the keyframe from another source instead (`comfyui.fallback`: the procedural
//! field or the image folder). The fallback's keyframe becomes the next img2img's starting
//! picture, so when ComfyUI returns the dream continues from what was on screen.
//!
//! Other ComfyUI failures (a node error, the per-keyframe deadline) are returned as errors:
//! the pipeline drops that keyframe and the next one tries again from the same picture.

use async_trait::async_trait;

use super::health::{ComfyUiHealth, KeyframeOrigin};
use super::source::ComfyUiSource;
use crate::keyframes::{Keyframe, KeyframeError, KeyframeSource};

/// The ComfyUI source with a fallback; see the module docs.
pub struct FallbackSource {
    primary: ComfyUiSource,
    fallback: Option<Box<dyn KeyframeSource>>,
    last_origin: Option<KeyframeOrigin>,
}

impl FallbackSource {
    /// `fallback` is `None` for `comfyui.fallback = "none"`: keyframes then fail while the
    /// server is away (quickly, without waiting for timeouts).
    pub fn new(primary: ComfyUiSource, fallback: Option<Box<dyn KeyframeSource>>) -> Self {
        Self {
            primary,
            fallback,
            last_origin: None,
        }
    }

    /// The ComfyUI health handle (shared with the source and its client).
    pub fn health(&self) -> ComfyUiHealth {
        self.primary.health()
    }

    /// Where the last keyframe came from.
    pub fn last_origin(&self) -> Option<KeyframeOrigin> {
        self.last_origin
    }

    /// The ComfyUI source.
    pub fn primary(&mut self) -> &mut ComfyUiSource {
        &mut self.primary
    }

    async fn play_fallback(&mut self, index: u64, why: String) -> Result<Keyframe, KeyframeError> {
        let Some(fallback) = self.fallback.as_mut() else {
            return Err(KeyframeError::Source {
                source_name: "comfyui".into(),
                message: why,
            });
        };
        let keyframe = fallback.keyframe(index).await?;
        tracing::debug!(index, fallback = fallback.name(), reason = %why, "fallback keyframe");
        self.primary.feedback().set_keyframe(&keyframe);
        self.primary.health().record_fallback();
        self.last_origin = Some(KeyframeOrigin::Fallback);
        Ok(keyframe)
    }
}

#[async_trait]
impl KeyframeSource for FallbackSource {
    fn name(&self) -> &str {
        "comfyui"
    }

    fn describe(&self) -> String {
        match (self.last_origin, &self.fallback) {
            (Some(KeyframeOrigin::Fallback), Some(fallback)) => {
                format!("{} (ComfyUI unreachable)", fallback.describe())
            }
            _ => self.primary.describe(),
        }
    }

    fn uses_prompts(&self) -> bool {
        true
    }

    fn set_prompt(&mut self, prompt: &crate::direction::themes::PromptChoice) {
        self.primary.set_prompt(prompt);
    }

    fn continue_from(&mut self, keyframe: &Keyframe) {
        self.primary.continue_from(keyframe);
    }

    fn detail(&self) -> Option<crate::events::KeyframeDetail> {
        match self.last_origin {
            Some(KeyframeOrigin::Fallback) => Some(crate::events::KeyframeDetail {
                origin: Some("fallback".into()),
                ..Default::default()
            }),
            _ => self.primary.detail(),
        }
    }

    async fn keyframe(&mut self, index: u64) -> Result<Keyframe, KeyframeError> {
        match self.primary.make(index).await {
            Ok(keyframe) => {
                self.last_origin = Some(KeyframeOrigin::ComfyUi);
                Ok(keyframe)
            }
            Err(e) if e.is_unreachable() => self.play_fallback(index, e.to_string()).await,
            Err(e) => Err(e.into()),
        }
    }
}
