//! What `dreamd models list|verify` says about the in-process diffusion model
//! (`[diffusion] model_dir`): the files [`DiffusionModel::load`] would read, and a check that
//! loads them all and runs the model once.
//!
//! The list uses the same file choices as the loader (`weights_file` with the same names, in
//! the same order), so what it shows is what the daemon will open.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device as CandleDevice, Tensor};

use super::presets::{ModelChoice, ModelKind};
use super::{weights_file, DiffusionError, DiffusionModel, Result};

/// One file of a diffusers-layout model folder.
#[derive(Debug, Clone, PartialEq)]
pub struct ComponentFile {
    /// `unet`, `text_encoder`, `tokenizer`, … (the sub-folder).
    pub component: &'static str,
    pub path: PathBuf,
    pub bytes: u64,
}

/// The model folder's family and the files the loader reads from it.
#[derive(Debug, Clone)]
pub struct Inventory {
    pub kind: ModelKind,
    pub files: Vec<ComponentFile>,
}

/// The files of `dir` for `choice`, or the first one missing (named).
pub fn inventory(dir: &Path, choice: ModelChoice) -> Result<Inventory> {
    if !dir.is_dir() {
        return Err(DiffusionError::Missing {
            path: dir.to_path_buf(),
            what: "model folder (diffusion.model_dir)".into(),
        });
    }
    let kind = ModelKind::resolve(choice, dir)?;
    let mut wanted: Vec<(&'static str, PathBuf)> = vec![
        (
            "unet",
            weights_file(
                &dir.join("unet"),
                &[
                    "diffusion_pytorch_model.safetensors",
                    "diffusion_pytorch_model.fp16.safetensors",
                ],
            )?,
        ),
        ("unet", dir.join("unet/config.json")),
        (
            "text_encoder",
            weights_file(
                &dir.join("text_encoder"),
                &["model.safetensors", "model.fp16.safetensors"],
            )?,
        ),
        ("tokenizer", dir.join("tokenizer/tokenizer.json")),
        ("scheduler", dir.join("scheduler/scheduler_config.json")),
    ];
    if kind == ModelKind::SdxlTurbo {
        wanted.push((
            "text_encoder_2",
            weights_file(
                &dir.join("text_encoder_2"),
                &["model.safetensors", "model.fp16.safetensors"],
            )?,
        ));
        wanted.push(("tokenizer_2", dir.join("tokenizer_2/tokenizer.json")));
    }
    let mut files = Vec::with_capacity(wanted.len());
    for (component, path) in wanted {
        let bytes = std::fs::metadata(&path)
            .map_err(|_| DiffusionError::Missing {
                path: path.clone(),
                what: format!("{component} file"),
            })?
            .len();
        files.push(ComponentFile {
            component,
            path,
            bytes,
        });
    }
    Ok(Inventory { kind, files })
}

/// Loads the whole model on the CPU (every tensor by name and shape), encodes a prompt and runs
/// one UNet step on a small latent; the output must be finite. Returns a one-line summary.
pub fn verify(dir: &Path, choice: ModelChoice) -> Result<String> {
    let device = CandleDevice::Cpu;
    let model = DiffusionModel::load(dir, choice, DType::F32, &device)?;
    let cond = model.embed("a quiet lake at dawn")?;
    let (n, c, h, w) = model.latent_dims(64, 64);
    let noise = Tensor::randn(0f32, 1f32, (n, c, h, w), &device)?;
    let mut denoise = model.start(None, &noise, 1, 1.0)?;
    denoise.step(&model, &cond, None, 0.0)?;
    let values = denoise.latent.flatten_all()?.to_vec1::<f32>()?;
    if values.iter().any(|v| !v.is_finite()) {
        return Err(DiffusionError::Run(format!(
            "{}: one UNet step gave non-finite values",
            dir.display()
        )));
    }
    Ok(format!(
        "{} model: text embedding {:?}, one UNet step on a {c}x{h}x{w} latent is finite",
        model.kind.name(),
        cond.0.dims(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tiny_pipeline_lists_and_verifies() {
        let Some(dir) = super::super::tests::tiny_sd() else {
            return;
        };
        let pipeline = dir.join("pipeline");
        let inventory = inventory(&pipeline, ModelChoice::Auto).unwrap();
        let components: Vec<&str> = inventory.files.iter().map(|f| f.component).collect();
        for wanted in ["unet", "text_encoder", "tokenizer", "scheduler"] {
            assert!(components.contains(&wanted), "{components:?}");
        }
        assert!(inventory.files.iter().all(|f| f.bytes > 0));
        let summary = verify(&pipeline, ModelChoice::Auto).unwrap();
        assert!(summary.contains("finite"), "{summary}");
    }

    #[test]
    fn a_missing_part_is_named() {
        let Some(dir) = super::super::tests::tiny_sd() else {
            return;
        };
        let tmp = tempfile::tempdir().unwrap();
        let parts = ["unet", "text_encoder", "scheduler"];
        let copy = super::super::tests::copy_pipeline(&dir, &parts, tmp.path());
        let err = inventory(&copy, ModelChoice::Auto).unwrap_err();
        assert!(err.to_string().contains("tokenizer.json"), "{err}");
        let err = inventory(&copy.join("nowhere"), ModelChoice::Auto).unwrap_err();
        assert!(err.to_string().contains("diffusion.model_dir"), "{err}");
    }
}
