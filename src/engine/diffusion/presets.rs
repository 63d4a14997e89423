//! The architectures dreamd knows, and how a model folder says which it is.
//!
//! candle-transformers has SD 1.5, SD 2.1 and SDXL-Turbo configs, but keeps them private to its
//! `StableDiffusionConfig`, and has no SD-Turbo preset at all. So the three are written out here
//! from the models' published `unet/config.json`; `model = "auto"` instead reads the folder's
//! own `unet/config.json` (how the tiny test fixture loads).
//!
//! - **SD 1.5**: blocks 320/640/1280/1280 (cross-attention in the first three), 8 heads,
//!   cross-attention 768 (CLIP ViT-L/14), conv projections. DDIM, leading spacing, CFG.
//! - **SD-Turbo**: the SD 2.1 architecture (adversarially distilled, epsilon prediction, not
//!   v): blocks 320/640/1280/1280, heads 5/10/20/20, cross-attention 1024 (OpenCLIP ViT-H),
//!   linear projections, 512×512 native. Euler, trailing spacing, 1–4 steps, no CFG.
//! - **SDXL-Turbo**: blocks 320/640/1280, cross-attention in the last two with 2 and 10
//!   transformer layers, heads 5/10/20, cross-attention 2048 (CLIP-L ⊕ OpenCLIP-bigG),
//!   linear projections. candle's UNet has no SDXL `add_embedding` (pooled text + size ids):
//!   those weights are not read, as in candle's own SDXL example.
//!
//! Every real SD model uses 32 groups in its norms. candle's `DownBlock2D`/`UpBlock2D` ignore
//! `norm_num_groups` and always use 32, so a config with another count is refused rather than
//! silently mis-loaded; test fixtures keep 32 groups for the same reason.

use std::path::Path;

use candle_transformers::models::stable_diffusion::unet_2d::{
    BlockConfig, UNet2DConditionModelConfig,
};
use serde::{Deserialize, Serialize};

use super::{read_json, DiffusionError, Result};

/// `[diffusion] model`: which architecture the folder holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum ModelChoice {
    #[serde(rename = "sd15")]
    Sd15,
    #[serde(rename = "sd-turbo")]
    SdTurbo,
    #[serde(rename = "sdxl-turbo")]
    SdxlTurbo,
    /// From the folder's `unet/config.json` (and `text_encoder/config.json`).
    #[default]
    #[serde(rename = "auto")]
    Auto,
}

/// The family: which text encoder(s) and scheduler defaults go with the UNet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    /// SD 1.x: CLIP ViT-L/14 (QuickGELU), DDIM.
    Sd1,
    /// SD 2.x / SD-Turbo: OpenCLIP ViT-H (GELU), Euler trailing.
    SdTurbo,
    /// SDXL-Turbo: two encoders, Euler trailing.
    SdxlTurbo,
}

impl ModelKind {
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Sd1 => "sd15",
            ModelKind::SdTurbo => "sd-turbo",
            ModelKind::SdxlTurbo => "sdxl-turbo",
        }
    }

    /// The family of `choice`; `auto` asks the folder.
    pub fn resolve(choice: ModelChoice, dir: &Path) -> Result<ModelKind> {
        Ok(match choice {
            ModelChoice::Sd15 => ModelKind::Sd1,
            ModelChoice::SdTurbo => ModelKind::SdTurbo,
            ModelChoice::SdxlTurbo => ModelKind::SdxlTurbo,
            ModelChoice::Auto => {
                let unet = read_json(&dir.join("unet").join("config.json"))?;
                let text = dir.join("text_encoder").join("config.json");
                if unet["cross_attention_dim"].as_u64() == Some(2048)
                    || dir.join("text_encoder_2").is_dir()
                {
                    ModelKind::SdxlTurbo
                } else if text.is_file() && read_json(&text)?["hidden_act"].as_str() == Some("gelu")
                {
                    ModelKind::SdTurbo
                } else {
                    ModelKind::Sd1
                }
            }
        })
    }

    /// The published UNet architecture of this family.
    pub fn preset(self) -> UNet2DConditionModelConfig {
        let bc = |out_channels, use_cross_attn, attention_head_dim| BlockConfig {
            out_channels,
            use_cross_attn,
            attention_head_dim,
        };
        let base = UNet2DConditionModelConfig::default();
        match self {
            ModelKind::Sd1 => UNet2DConditionModelConfig {
                blocks: vec![
                    bc(320, Some(1), 8),
                    bc(640, Some(1), 8),
                    bc(1280, Some(1), 8),
                    bc(1280, None, 8),
                ],
                cross_attention_dim: 768,
                use_linear_projection: false,
                ..base
            },
            ModelKind::SdTurbo => UNet2DConditionModelConfig {
                blocks: vec![
                    bc(320, Some(1), 5),
                    bc(640, Some(1), 10),
                    bc(1280, Some(1), 20),
                    bc(1280, None, 20),
                ],
                cross_attention_dim: 1024,
                use_linear_projection: true,
                ..base
            },
            ModelKind::SdxlTurbo => UNet2DConditionModelConfig {
                blocks: vec![
                    bc(320, None, 5),
                    bc(640, Some(2), 10),
                    bc(1280, Some(10), 20),
                ],
                cross_attention_dim: 2048,
                use_linear_projection: true,
                ..base
            },
        }
    }
}

/// The UNet architecture to build: the folder's own `unet/config.json` when it has one, else
/// the family's preset.
pub fn unet_config(kind: ModelKind, dir: &Path) -> Result<UNet2DConditionModelConfig> {
    let path = dir.join("unet").join("config.json");
    if path.is_file() {
        from_diffusers_config(&path)
    } else {
        Ok(kind.preset())
    }
}

/// Reads a diffusers `UNet2DConditionModel` config. `attention_head_dim` is diffusers' name
/// for the head *count* (unless `num_attention_heads` is set), which is what candle's
/// `BlockConfig::attention_head_dim` takes.
pub fn from_diffusers_config(path: &Path) -> Result<UNet2DConditionModelConfig> {
    let json = read_json(path)?;
    let bad = |message: String| DiffusionError::Config {
        path: path.to_path_buf(),
        message,
    };
    let per_block = |name: &str, n: usize| -> Result<Option<Vec<usize>>> {
        Ok(match &json[name] {
            serde_json::Value::Null => None,
            serde_json::Value::Number(v) => Some(vec![v.as_u64().unwrap_or(0) as usize; n]),
            serde_json::Value::Array(a) => Some(
                a.iter()
                    .map(|v| v.as_u64().map(|v| v as usize))
                    .collect::<Option<Vec<_>>>()
                    .filter(|v| v.len() == n)
                    .ok_or_else(|| bad(format!("{name} must list {n} numbers")))?,
            ),
            _ => return Err(bad(format!("{name} must be a number or a list"))),
        })
    };
    let channels: Vec<usize> = json["block_out_channels"]
        .as_array()
        .and_then(|a| a.iter().map(|v| v.as_u64().map(|v| v as usize)).collect())
        .ok_or_else(|| bad("block_out_channels is missing".into()))?;
    let n = channels.len();
    let kinds: Vec<String> = json["down_block_types"]
        .as_array()
        .and_then(|a| a.iter().map(|v| v.as_str().map(String::from)).collect())
        .filter(|v: &Vec<String>| v.len() == n)
        .ok_or_else(|| bad(format!("down_block_types must list {n} block types")))?;
    let heads = match per_block("num_attention_heads", n)? {
        Some(h) => h,
        None => per_block("attention_head_dim", n)?.unwrap_or(vec![8; n]),
    };
    let layers = per_block("transformer_layers_per_block", n)?.unwrap_or(vec![1; n]);
    let groups = json["norm_num_groups"].as_u64().unwrap_or(32) as usize;
    if groups != 32 {
        return Err(bad(format!(
            "norm_num_groups {groups}: candle's Down/UpBlock2D always use 32 groups"
        )));
    }
    let number = |name: &str, default: f64| json[name].as_f64().unwrap_or(default);
    Ok(UNet2DConditionModelConfig {
        center_input_sample: json["center_input_sample"].as_bool().unwrap_or(false),
        flip_sin_to_cos: json["flip_sin_to_cos"].as_bool().unwrap_or(true),
        freq_shift: number("freq_shift", 0.0),
        blocks: (0..n)
            .map(|i| BlockConfig {
                out_channels: channels[i],
                use_cross_attn: kinds[i].starts_with("CrossAttn").then_some(layers[i]),
                attention_head_dim: heads[i],
            })
            .collect(),
        layers_per_block: json["layers_per_block"].as_u64().unwrap_or(2) as usize,
        downsample_padding: json["downsample_padding"].as_u64().unwrap_or(1) as usize,
        mid_block_scale_factor: number("mid_block_scale_factor", 1.0),
        norm_num_groups: groups,
        norm_eps: number("norm_eps", 1e-5),
        cross_attention_dim: json["cross_attention_dim"]
            .as_u64()
            .ok_or_else(|| bad("cross_attention_dim is missing".into()))?
            as usize,
        sliced_attention_size: None,
        use_linear_projection: json["use_linear_projection"].as_bool().unwrap_or(false),
    })
}
