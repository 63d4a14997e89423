//! The `[comfyui]` table: where the server is, which workflow to run, the sampler settings, how
//! long a keyframe may take, and what plays while the server is away.
//!
//! It is its own serde struct (unknown keys refused) so the daemon's `Config` can embed it as
//! `pub comfyui: ComfyUiConfig` and call [`ComfyUiConfig::validate`] beside its own checks;
//! every error names the key, e.g. `comfyui.denoise must be in (0, 1] (got 1.5)`.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// The value of `comfyui.workflow`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkflowChoice {
    /// The built-in img2img graph (core nodes only).
    Img2Img,
    /// An API-format workflow JSON with placeholders.
    File(PathBuf),
}

impl Serialize for WorkflowChoice {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            WorkflowChoice::Img2Img => s.serialize_str("img2img"),
            WorkflowChoice::File(p) => s.serialize_str(&p.to_string_lossy()),
        }
    }
}

impl<'de> Deserialize<'de> for WorkflowChoice {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(if s == "img2img" {
            WorkflowChoice::Img2Img
        } else {
            WorkflowChoice::File(PathBuf::from(s))
        })
    }
}

/// The value of `comfyui.seed`: `"random"` (a fresh seed per keyframe) or a fixed number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeedChoice {
    Random,
    Fixed(u64),
}

impl Serialize for SeedChoice {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            SeedChoice::Random => s.serialize_str("random"),
            SeedChoice::Fixed(n) => s.serialize_u64(*n),
        }
    }
}

impl<'de> Deserialize<'de> for SeedChoice {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = SeedChoice;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("\"random\" or a non-negative integer")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<SeedChoice, E> {
                if v == "random" {
                    Ok(SeedChoice::Random)
                } else {
                    v.parse().map(SeedChoice::Fixed).map_err(|_| {
                        E::custom(format!("expected \"random\" or a number, got {v:?}"))
                    })
                }
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<SeedChoice, E> {
                Ok(SeedChoice::Fixed(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<SeedChoice, E> {
                u64::try_from(v)
                    .map(SeedChoice::Fixed)
                    .map_err(|_| E::custom(format!("seed must not be negative (got {v})")))
            }
        }
        d.deserialize_any(V)
    }
}

/// The value of `comfyui.fallback`: the source that plays while ComfyUI is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FallbackChoice {
    /// The procedural colour field.
    Procedural,
    /// The `keyframes.images_dir` folder.
    Images,
    /// Nothing: keyframes fail (the display holds) until ComfyUI is back.
    None,
}

/// `[comfyui]`; see the module docs and the README's ComfyUI section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ComfyUiConfig {
    /// Base URL of the server (`http://host:port`, optionally with a path prefix).
    pub url: String,
    /// `"img2img"` (built in) or the path of an API-format workflow JSON with placeholders.
    pub workflow: WorkflowChoice,
    /// Checkpoint file name as the server lists it (`CheckpointLoaderSimple.ckpt_name`).
    pub checkpoint: String,
    pub steps: u32,
    pub cfg: f64,
    /// Sampler name (`KSampler.sampler_name`).
    pub sampler: String,
    pub scheduler: String,
    /// How far each keyframe moves from the previous one (0.2 like the original).
    pub denoise: f64,
    pub seed: SeedChoice,
    /// The longest one keyframe may take, from upload to picture; then only our prompt is
    /// cancelled. Keep it below `timeouts.keyframe_seconds`.
    pub timeout_seconds: f64,
    pub fallback: FallbackChoice,
}

impl Default for ComfyUiConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8188".into(),
            workflow: WorkflowChoice::Img2Img,
            checkpoint: "v1-5-pruned-emaonly.safetensors".into(),
            steps: 10,
            cfg: 7.0,
            sampler: "euler_ancestral".into(),
            scheduler: "normal".into(),
            denoise: 0.2,
            seed: SeedChoice::Random,
            timeout_seconds: 25.0,
            fallback: FallbackChoice::Procedural,
        }
    }
}

/// One invalid `[comfyui]` value; the message names the key.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl ComfyUiConfig {
    /// The per-keyframe deadline.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs_f64(self.timeout_seconds)
    }

    /// Checks every value; returns one error per bad key (empty when all is well).
    pub fn validate(&self) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        let mut bad = |msg: String| errors.push(ConfigError(msg));
        if let Err(e) = super::client::BaseUrl::parse(&self.url) {
            bad(format!("comfyui.url {e}"));
        }
        if let WorkflowChoice::File(path) = &self.workflow {
            if path.as_os_str().is_empty() {
                bad("comfyui.workflow must be \"img2img\" or the path of a workflow JSON (got \"\")".into());
            }
        }
        if self.checkpoint.trim().is_empty() && self.workflow == WorkflowChoice::Img2Img {
            bad("comfyui.checkpoint must name a checkpoint file for the built-in workflow (got \"\")".into());
        }
        if !(1..=1000).contains(&self.steps) {
            bad(format!(
                "comfyui.steps must be in 1..=1000 (got {})",
                self.steps
            ));
        }
        if !(self.cfg.is_finite() && self.cfg > 0.0 && self.cfg <= 100.0) {
            bad(format!(
                "comfyui.cfg must be in (0, 100] (got {})",
                self.cfg
            ));
        }
        if self.sampler.trim().is_empty() {
            bad("comfyui.sampler must not be empty".into());
        }
        if self.scheduler.trim().is_empty() {
            bad("comfyui.scheduler must not be empty".into());
        }
        if !(self.denoise.is_finite() && self.denoise > 0.0 && self.denoise <= 1.0) {
            bad(format!(
                "comfyui.denoise must be in (0, 1] (got {})",
                self.denoise
            ));
        }
        if !(self.timeout_seconds.is_finite()
            && self.timeout_seconds >= 1.0
            && self.timeout_seconds <= 3600.0)
        {
            bad(format!(
                "comfyui.timeout_seconds must be in [1, 3600] (got {})",
                self.timeout_seconds
            ));
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ComfyUiConfig, String> {
        toml::from_str::<ComfyUiConfig>(text).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_valid_and_like_the_original() {
        let c = ComfyUiConfig::default();
        assert!(c.validate().is_empty(), "{:?}", c.validate());
        assert_eq!(c.url, "http://127.0.0.1:8188");
        assert_eq!(c.steps, 10);
        assert_eq!(c.denoise, 0.2);
        assert_eq!(parse("").unwrap(), c);
    }

    #[test]
    fn values_parse() {
        let c = parse(
            "url = \"http://gpu:8188\"\nworkflow = \"flows/my.json\"\nseed = 7\n\
             fallback = \"images\"\ndenoise = 0.35\n",
        )
        .unwrap();
        assert_eq!(c.workflow, WorkflowChoice::File("flows/my.json".into()));
        assert_eq!(c.seed, SeedChoice::Fixed(7));
        assert_eq!(c.fallback, FallbackChoice::Images);
        assert_eq!(parse("seed = \"random\"").unwrap().seed, SeedChoice::Random);
        assert_eq!(
            parse("fallback = \"none\"").unwrap().fallback,
            FallbackChoice::None
        );
    }

    #[test]
    fn errors_name_the_key() {
        let err = parse("denoize = 0.3").unwrap_err();
        assert!(err.contains("denoize"), "{err}");
        let err = parse("seed = \"sometimes\"").unwrap_err();
        assert!(err.contains("sometimes"), "{err}");
        let err = parse("fallback = \"gpu\"").unwrap_err();
        assert!(err.contains("gpu"), "{err}");
        let c = ComfyUiConfig {
            denoise: 1.5,
            steps: 0,
            url: "ftp://x".into(),
            timeout_seconds: 0.0,
            ..Default::default()
        };
        let errors: Vec<String> = c.validate().iter().map(|e| e.to_string()).collect();
        assert!(
            errors.contains(&"comfyui.denoise must be in (0, 1] (got 1.5)".to_string()),
            "{errors:?}"
        );
        assert!(
            errors.iter().any(|e| e.starts_with("comfyui.steps")),
            "{errors:?}"
        );
        assert!(
            errors.iter().any(|e| e.starts_with("comfyui.url")),
            "{errors:?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("comfyui.timeout_seconds")),
            "{errors:?}"
        );
    }
}
