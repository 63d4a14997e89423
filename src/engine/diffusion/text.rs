//! Prompt → conditioning: the CLIP BPE tokenizer and the CLIP text encoders.
//!
//! One loading path per real architecture:
//! - SD 1.x (OpenAI CLIP ViT-L/14, QuickGELU): candle's `clip::text_model::ClipTextTransformer`,
//!   sized from `text_encoder/config.json` (so the tiny test fixture, whose 32-wide encoder
//!   candle's private-field `stable_diffusion::clip::Config` cannot describe, loads the same
//!   way). Tested against diffusers' embeddings in `tests.rs`.
//! - SD 2.x / SD-Turbo (OpenCLIP ViT-H, GELU): candle's `stable_diffusion::clip` with its
//!   `Config::v2_1` preset. Tested for construction with random weights (`dreamd bench
//!   diffusion`); numbers need the real weights.
//! - SDXL-Turbo: `text_encoder` (CLIP-L) and `text_encoder_2` (OpenCLIP-bigG), each's
//!   penultimate hidden state, concatenated to 2048 channels (as diffusers does).
//!
//! Text-encoder files saved by recent transformers lack `position_ids` (candle builds them)
//! and may lack the `text_model.` prefix (detected from the file's keys).

use std::path::Path;

use candle_core::{DType, Device as CandleDevice, Module, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::clip::text_model::{
    Activation as QuickActivation, ClipTextConfig, ClipTextTransformer as QuickGeluClip,
};
use candle_transformers::models::stable_diffusion::clip as sd_clip;

use super::presets::ModelKind;
use super::{load_tensors, read_json, weights_file, DiffusionError, Result};

/// Token positions: every SD text encoder reads 77.
pub const MAX_TOKENS: usize = 77;

/// The CLIP byte-level BPE tokenizer of a model folder, with SD's padding.
pub struct ClipTokenizer {
    inner: tokenizers::Tokenizer,
    start: u32,
    end: u32,
    pad: u32,
}

impl ClipTokenizer {
    /// Loads `dir/tokenizer.json`. The pad token is `tokenizer_config.json`'s `pad_token`
    /// (SD 1.x: the end token; SD 2.x: `!`), else the end token.
    pub fn load(dir: &Path) -> Result<ClipTokenizer> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(DiffusionError::Missing {
                path,
                what: "tokenizer".into(),
            });
        }
        let inner = tokenizers::Tokenizer::from_file(&path).map_err(|e| DiffusionError::Read {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let id = |token: &str| {
            inner
                .token_to_id(token)
                .ok_or_else(|| DiffusionError::Config {
                    path: path.clone(),
                    message: format!("the vocabulary has no {token}"),
                })
        };
        let start = id("<|startoftext|>")?;
        let end = id("<|endoftext|>")?;
        let config = dir.join("tokenizer_config.json");
        let pad = match config.is_file().then(|| read_json(&config)).transpose()? {
            Some(json) => match &json["pad_token"] {
                serde_json::Value::String(s) => id(s)?,
                serde_json::Value::Object(o) => match o.get("content").and_then(|c| c.as_str()) {
                    Some(s) => id(s)?,
                    None => end,
                },
                _ => end,
            },
            None => end,
        };
        Ok(ClipTokenizer {
            inner,
            start,
            end,
            pad,
        })
    }

    /// `[start] + BPE(prompt) + [end]`, cut to 77 (keeping the end token) and padded to 77.
    pub fn encode(&self, prompt: &str) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(prompt, true)
            .map_err(|e| DiffusionError::Run(format!("tokenizing {prompt:?}: {e}")))?;
        let mut ids: Vec<u32> = encoding.get_ids().to_vec();
        // tokenizer.json usually adds the start and end tokens itself; add them if not.
        if ids.first() != Some(&self.start) {
            ids.insert(0, self.start);
        }
        if ids.last() != Some(&self.end) {
            ids.push(self.end);
        }
        if ids.len() > MAX_TOKENS {
            ids.truncate(MAX_TOKENS - 1);
            ids.push(self.end);
        }
        ids.resize(MAX_TOKENS, self.pad);
        Ok(ids)
    }
}

/// Loads one text encoder's weights from `dir`, every name under `text_model.` whether or not
/// the file had that prefix.
fn encoder_weights(
    dir: &Path,
    dtype: DType,
    device: &CandleDevice,
) -> Result<(VarBuilder<'static>, std::path::PathBuf)> {
    let path = weights_file(dir, &["model.safetensors", "model.fp16.safetensors"])?;
    let tensors = load_tensors(&path, device)?
        .into_iter()
        .map(|(name, t)| match name.starts_with("text_model.") {
            true => (name, t),
            false => (format!("text_model.{name}"), t),
        })
        .collect();
    Ok((VarBuilder::from_tensors(tensors, dtype, device), path))
}

fn weights_error(path: &Path, e: candle_core::Error) -> DiffusionError {
    DiffusionError::Weights {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// A QuickGELU CLIP text encoder's size from its `config.json`.
fn quick_gelu_config(dir: &Path) -> Result<ClipTextConfig> {
    let path = dir.join("config.json");
    let json = read_json(&path)?;
    let act = json["hidden_act"].as_str().unwrap_or("quick_gelu");
    if act != "quick_gelu" {
        return Err(DiffusionError::Config {
            path,
            message: format!(
                "hidden_act {act:?}: this loading path is for quick_gelu encoders (SD 1.x)"
            ),
        });
    }
    let field = |name: &str| {
        json[name]
            .as_u64()
            .map(|v| v as usize)
            .ok_or_else(|| DiffusionError::Config {
                path: path.clone(),
                message: format!("{name} is missing or not a number"),
            })
    };
    Ok(ClipTextConfig {
        vocab_size: field("vocab_size")?,
        embed_dim: field("hidden_size")?,
        activation: QuickActivation::QuickGelu,
        intermediate_size: field("intermediate_size")?,
        max_position_embeddings: field("max_position_embeddings")?,
        pad_with: None,
        num_hidden_layers: field("num_hidden_layers")?,
        num_attention_heads: field("num_attention_heads")?,
        projection_dim: field("projection_dim").unwrap_or(0),
    })
}

/// The text encoder(s) of one model.
pub enum TextEncoder {
    /// SD 1.x: last hidden state after the final layer norm.
    QuickGelu(QuickGeluClip),
    /// SD 2.x / SD-Turbo: last hidden state after the final layer norm.
    OpenClip(sd_clip::ClipTextTransformer),
    /// SDXL-Turbo: penultimate hidden states of both encoders, concatenated.
    Sdxl {
        one: sd_clip::ClipTextTransformer,
        two: sd_clip::ClipTextTransformer,
        tokenizer_2: Box<ClipTokenizer>,
    },
}

impl TextEncoder {
    /// Loads the encoder(s) of `kind` from the model folder `root`.
    pub fn load(
        root: &Path,
        kind: ModelKind,
        dtype: DType,
        device: &CandleDevice,
    ) -> Result<TextEncoder> {
        let dir = root.join("text_encoder");
        match kind {
            ModelKind::Sd1 => {
                let config = quick_gelu_config(&dir)?;
                let (vb, path) = encoder_weights(&dir, dtype, device)?;
                let model = QuickGeluClip::new(vb.pp("text_model"), &config)
                    .map_err(|e| weights_error(&path, e))?;
                Ok(TextEncoder::QuickGelu(model))
            }
            ModelKind::SdTurbo => {
                let (vb, path) = encoder_weights(&dir, dtype, device)?;
                Ok(TextEncoder::OpenClip(sd_clip_model(
                    vb,
                    &sd_clip::Config::v2_1(),
                    &path,
                )?))
            }
            ModelKind::SdxlTurbo => {
                let (vb, path) = encoder_weights(&dir, dtype, device)?;
                let one = sd_clip_model(vb, &sd_clip::Config::sdxl(), &path)?;
                let (vb, path) = encoder_weights(&root.join("text_encoder_2"), dtype, device)?;
                let two = sd_clip_model(vb, &sd_clip::Config::sdxl2(), &path)?;
                let tokenizer_2 = Box::new(ClipTokenizer::load(&root.join("tokenizer_2"))?);
                Ok(TextEncoder::Sdxl {
                    one,
                    two,
                    tokenizer_2,
                })
            }
        }
    }

    /// Random weights of `kind`'s real architecture (benchmarks).
    pub fn random(kind: ModelKind, dtype: DType, device: &CandleDevice) -> Result<TextEncoder> {
        let random = |config: &sd_clip::Config| -> Result<sd_clip::ClipTextTransformer> {
            let map = candle_nn::VarMap::new();
            let vb = VarBuilder::from_varmap(&map, dtype, device);
            Ok(sd_clip::ClipTextTransformer::new(vb, config)?)
        };
        Ok(match kind {
            ModelKind::Sd1 => TextEncoder::OpenClip(random(&sd_clip::Config::v1_5())?),
            ModelKind::SdTurbo => TextEncoder::OpenClip(random(&sd_clip::Config::v2_1())?),
            ModelKind::SdxlTurbo => TextEncoder::OpenClip(random(&sd_clip::Config::sdxl2())?),
        })
    }

    /// Conditioning for the token ids `[1, 77]` (the first tokenizer's; SDXL tokenizes
    /// `prompt` again for its second encoder).
    pub fn forward(&self, ids: &Tensor, prompt: &str) -> Result<Tensor> {
        Ok(match self {
            TextEncoder::QuickGelu(m) => m.forward_with_mask(ids, usize::MAX)?,
            TextEncoder::OpenClip(m) => m.forward(ids)?,
            TextEncoder::Sdxl {
                one,
                two,
                tokenizer_2,
            } => {
                let ids2 = tokenizer_2.encode(prompt)?;
                let ids2 = Tensor::new(ids2.as_slice(), ids.device())?.unsqueeze(0)?;
                let (_, h1) = one.forward_until_encoder_layer(ids, usize::MAX, -2)?;
                let (_, h2) = two.forward_until_encoder_layer(&ids2, usize::MAX, -2)?;
                Tensor::cat(&[h1, h2], candle_core::D::Minus1)?
            }
        })
    }
}

/// candle's `stable_diffusion::clip` model reads under `text_model.` itself.
fn sd_clip_model(
    vb: VarBuilder<'static>,
    config: &sd_clip::Config,
    path: &Path,
) -> Result<sd_clip::ClipTextTransformer> {
    sd_clip::ClipTextTransformer::new(vb, config).map_err(|e| weights_error(path, e))
}
