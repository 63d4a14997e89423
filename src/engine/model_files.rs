//! Model files on disk: where dreamd looks for the TAESD weights, which it finds, and checking
//! that a found file loads and runs (`dreamd models list|verify`).
//!
//! Model folders are searched in order: the configured `generation.models_dir`, then
//! `$DREAMD_MODELS`, then `./models`; in each, both the folder itself and its `taesd/`
//! subfolder.

use std::path::{Path, PathBuf};

use image::RgbImage;

use super::taesd::cpu::TaesdCpuDecoder;
use super::taesd::weights::{Part, WeightFile};
use super::taesd::{Family, TaesdEncoderModel};
use super::{Decoder, Device, EngineError};
use crate::config::Precision;
use crate::latent::{Latent, LatentBatch, LatentShape};

/// The folders searched for model files, in order (only those that exist).
pub fn search_dirs(configured: Option<&Path>) -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = Vec::new();
    roots.extend(configured.map(Path::to_path_buf));
    roots.extend(std::env::var_os("DREAMD_MODELS").map(PathBuf::from));
    roots.push(PathBuf::from("models"));
    roots
        .into_iter()
        .flat_map(|root| [root.join("taesd"), root])
        .filter(|dir| dir.is_dir())
        .collect()
}

/// The first file for `family`'s `part` in `dirs`.
pub fn find(dirs: &[PathBuf], family: Family, part: Part) -> Option<PathBuf> {
    let name = family.file_name(part);
    dirs.iter().map(|d| d.join(&name)).find(|p| p.is_file())
}

/// A model file found on disk.
#[derive(Debug, Clone)]
pub struct FoundModel {
    pub family: Family,
    pub part: Part,
    pub path: PathBuf,
    pub bytes: u64,
}

/// Every family member's files found in `dirs` (the first of each name wins).
pub fn list(dirs: &[PathBuf]) -> Vec<FoundModel> {
    Family::ALL
        .iter()
        .flat_map(|&family| [Part::Decoder, Part::Encoder].map(|part| (family, part)))
        .filter_map(|(family, part)| {
            let path = find(dirs, family, part)?;
            let bytes = std::fs::metadata(&path).map_or(0, |m| m.len());
            Some(FoundModel {
                family,
                part,
                path,
                bytes,
            })
        })
        .collect()
}

/// Loads a found file, checks every tensor's name and shape, runs it once on a small input
/// (the golden vectors' pattern) and checks the output; returns a one-line summary.
pub fn verify(model: &FoundModel) -> Result<String, EngineError> {
    let channels = model.family.latent_channels();
    let fail = |what: String| EngineError::Model(format!("{}: {what}", model.path.display()));
    match model.part {
        Part::Decoder => {
            let weights = WeightFile::load(&model.path, Part::Decoder)?;
            let decoder = TaesdCpuDecoder::new(model.family.name(), &weights, Precision::Exact)?;
            if decoder.latent_channels() != channels {
                return Err(fail(format!(
                    "takes {}-channel latents; {} expects {channels}",
                    decoder.latent_channels(),
                    model.family
                )));
            }
            let shape = LatentShape::new(channels, 8, 8);
            let mut data = Vec::with_capacity(shape.len());
            for c in 0..channels {
                for h in 0..8 {
                    for w in 0..8 {
                        data.push(2.0 * (0.7 * c as f32 + 0.3 * h as f32 + 0.11 * w as f32).sin());
                    }
                }
            }
            let mut batch = LatentBatch::with_capacity(shape, 1);
            batch
                .push(&Latent::new(shape, data).map_err(|e| fail(e.to_string()))?)
                .map_err(|e| fail(e.to_string()))?;
            let out = decoder.decode_raw(&batch);
            let mean = out.iter().sum::<f32>() / out.len() as f32;
            if out.len() != 3 * 64 * 64
                || !out.iter().all(|v| v.is_finite())
                || !(0.0..=1.0).contains(&mean)
            {
                return Err(fail(format!(
                    "test decode gave {} values with mean {mean} (expected 12288 finite values, mean in [0, 1])",
                    out.len()
                )));
            }
            Ok(format!(
                "decoder, {channels}-channel latents, test decode mean {mean:.4}"
            ))
        }
        Part::Encoder => {
            let encoder = TaesdEncoderModel::load(&model.path, Device::Cpu, Precision::Exact)?;
            if encoder.latent_channels() != channels {
                return Err(fail(format!(
                    "makes {}-channel latents; {} expects {channels}",
                    encoder.latent_channels(),
                    model.family
                )));
            }
            let picture = RgbImage::from_fn(64, 64, |x, y| {
                image::Rgb([(x * 4) as u8, (y * 4) as u8, 128])
            });
            let latent = encoder.encode(&[picture])?.remove(0);
            if latent.shape() != LatentShape::new(channels, 8, 8)
                || !latent.data().iter().all(|v| v.is_finite())
            {
                return Err(fail(format!(
                    "test encode gave a {} latent with non-finite values",
                    latent.shape()
                )));
            }
            Ok(format!(
                "encoder, {channels}-channel latents, test encode ok"
            ))
        }
    }
}

/// Reads a little-endian f32 file (the golden vectors).
#[cfg(test)]
pub fn read_f32_file(path: &Path) -> Vec<f32> {
    std::fs::read(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// Where the shared test models live: `$DREAMD_MODELS` or `../shared/models`.
#[cfg(test)]
pub fn test_models_dir() -> PathBuf {
    std::env::var_os("DREAMD_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/models"))
}
