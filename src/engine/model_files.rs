//! Model files on disk: where dreamd looks for the TAESD weights, which it finds, and checking
//! that a found file loads and runs (`dreamd models list|verify`).
//!
//! Model folders are searched in order: the configured `generation.models_dir`, then
//! `$DREAMD_MODELS`, then `./models`; in each, both the folder itself and its `taesd/`
//! subfolder.

//! Model files for the engine and `dreamd models list|verify`: the search
//! ([`super::model_search`]) run with the config's folders, and checking that a found file loads
//! and runs.
//!
//! Where files are looked for, and in which order, is [`super::model_search`]'s business; this
//! module turns its report into what the engine loads and what `models verify` prints.

use image::RgbImage;

use super::model_search::{search, Format, FoundFile, SearchInputs, SearchReport};
use super::taesd::candle::TaesdDecoderModel;
use super::taesd::cpu::TaesdCpuDecoder;
use super::taesd::weights::{Part, WeightFile};
use super::taesd::{Backend, TaesdEncoderModel};
use super::{Device, EngineError};
use crate::config::{GenerationConfig, Precision};
use crate::latent::{Latent, LatentBatch, LatentShape};

/// Searches for model files as `generation` configures it (`models_dir`, `comfyui_dir`) and
/// this process's environment (`$DREAMD_MODELS`, `$COMFYUI_PATH`, the home folder, `./models`).
pub fn search_for(generation: &GenerationConfig) -> SearchReport {
    search(&SearchInputs::from_env(
        generation.models_dir.as_deref(),
        generation.comfyui_dir.as_deref(),
    ))
}

/// A found file as a person would name it: its file name (`taesd_decoder.pth`,
/// `taesd_decoder.safetensors`), or for a diffusers folder the family, part and the file
/// holding both halves.
pub fn label(file: &FoundFile) -> String {
    match file.format {
        Format::Diffusers => format!(
            "{} ({}/{})",
            file.family.file_stem(file.part),
            file.family,
            file.path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        ),
        Format::Safetensors | Format::Pth => file
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| file.family.file_stem(file.part)),
    }
}

/// Loads a found file, checks every tensor's name and shape, runs it once on a small input
/// (the golden vectors' pattern) and checks the output; returns a one-line summary.
pub fn verify(model: &FoundFile) -> Result<String, EngineError> {
    let channels = model.family.latent_channels();
    let fail = |what: String| EngineError::Model(format!("{}: {what}", model.path.display()));
    match model.part {
        Part::Decoder => {
            let weights = WeightFile::load(&model.path, Part::Decoder)?;
            let got = weights.taesd_latent_channels(Part::Decoder)?;
            if got != channels {
                return Err(fail(format!(
                    "takes {got}-channel latents; {} expects {channels}",
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
            // TAEF2's mid-blocks run on candle's CPU backend, the rest on dreamd's CPU networks.
            let out = match Backend::for_weights(&weights, Device::Cpu, Precision::Exact)? {
                Backend::Cpu(precision) => {
                    TaesdCpuDecoder::new(model.family.name(), &weights, precision)?
                        .decode_raw(&batch)
                }
                Backend::Candle(device) => {
                    TaesdDecoderModel::on(&model.path, model.family.name(), device)?
                        .decode_raw(&batch)?
                }
                // Not for Device::Cpu; verified through the wgpu networks all the same.
                Backend::Wgpu(context, precision) => {
                    let decoder = crate::engine::wgpu::decoder::TaesdWgpuDecoder::new(
                        model.family.name(),
                        &weights,
                        context,
                        precision,
                    )?;
                    decoder.decode_raw(&batch)?
                }
            };
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
