//! The denoiser: candle-transformers' `UNet2DConditionModel`, loaded by name from a diffusers
//! `unet/` folder. Latents and conditioning stay f32 outside; the weights' dtype (f16, bf16,
//! f32) is used inside the call.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device as CandleDevice, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::stable_diffusion::unet_2d::{
    UNet2DConditionModel, UNet2DConditionModelConfig,
};

use super::{load_tensors, read_json, weights_file, DiffusionError, Result};

/// A loaded UNet.
pub struct Unet {
    model: UNet2DConditionModel,
    pub in_channels: usize,
    pub cross_attention_dim: usize,
    dtype: DType,
    pub path: PathBuf,
}

impl Unet {
    /// Loads `dir/diffusion_pytorch_model.safetensors` as `config`. A missing tensor is one
    /// error naming the file and the tensor.
    pub fn load(
        dir: &Path,
        config: UNet2DConditionModelConfig,
        dtype: DType,
        device: &CandleDevice,
    ) -> Result<Unet> {
        let path = weights_file(
            dir,
            &[
                "diffusion_pytorch_model.safetensors",
                "diffusion_pytorch_model.fp16.safetensors",
            ],
        )?;
        let config_path = dir.join("config.json");
        let (in_channels, out_channels) = if config_path.is_file() {
            let json = read_json(&config_path)?;
            let get = |k: &str| json[k].as_u64().unwrap_or(4) as usize;
            (get("in_channels"), get("out_channels"))
        } else {
            (4, 4)
        };
        let tensors = load_tensors(&path, device)?;
        let vb = VarBuilder::from_tensors(tensors, dtype, device);
        Self::build(vb, config, in_channels, out_channels, dtype, path)
    }

    /// Random weights of an architecture (benchmarks: the real cost without a download).
    pub fn random(
        config: UNet2DConditionModelConfig,
        dtype: DType,
        device: &CandleDevice,
    ) -> Result<Unet> {
        let map = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&map, dtype, device);
        Self::build(vb, config, 4, 4, dtype, PathBuf::from("(random)"))
    }

    fn build(
        vb: VarBuilder<'static>,
        config: UNet2DConditionModelConfig,
        in_channels: usize,
        out_channels: usize,
        dtype: DType,
        path: PathBuf,
    ) -> Result<Unet> {
        let cross_attention_dim = config.cross_attention_dim;
        let model = UNet2DConditionModel::new(vb, in_channels, out_channels, false, config)
            .map_err(|e| DiffusionError::Weights {
                path: path.clone(),
                message: e.to_string(),
            })?;
        Ok(Unet {
            model,
            in_channels,
            cross_attention_dim,
            dtype,
            path,
        })
    }

    /// ε̂(x_t, t, c): the noise prediction for latents `x` `[B, 4, h, w]` at timestep `t`
    /// under conditioning `c` `[B, 77, D]`, as f32.
    pub fn forward(&self, x: &Tensor, t: f64, c: &Tensor) -> Result<Tensor> {
        let x = x.to_dtype(self.dtype)?;
        let c = c.to_dtype(self.dtype)?;
        Ok(self.model.forward(&x, t, &c)?.to_dtype(DType::F32)?)
    }
}
