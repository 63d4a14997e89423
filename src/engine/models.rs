//! Learned models on disk: which TAESD files exist, where, and the engine-facing decoder and
//! encoder built from them.
//!
//! Model folders are searched in order: the configured `generation.models_dir`, then
//! `$DREAMD_MODELS`, then `./models`; in each, both the folder itself and its `taesd/`
//! subfolder.

use std::fmt;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device as CandleDevice, Module, Tensor};
use image::RgbImage;

use super::taesd::{TaesdDecoder, TaesdEncoder};
use super::weights::{Part, WeightError, WeightFile};
use super::{Decoder, Device, EngineError};
use crate::config::Precision;
use crate::latent::{Latent, LatentBatch, LatentShape};

/// A member of the TAESD family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// SD 1.x / 2.x latents, 4 channels.
    Taesd,
    /// SDXL latents, 4 channels.
    Taesdxl,
    /// SD3 latents, 16 channels.
    Taesd3,
    /// FLUX.1 latents, 16 channels.
    Taef1,
}

impl Family {
    pub const ALL: [Family; 4] = [
        Family::Taesd,
        Family::Taesdxl,
        Family::Taesd3,
        Family::Taef1,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Family::Taesd => "taesd",
            Family::Taesdxl => "taesdxl",
            Family::Taesd3 => "taesd3",
            Family::Taef1 => "taef1",
        }
    }

    pub fn latent_channels(self) -> usize {
        match self {
            Family::Taesd | Family::Taesdxl => 4,
            Family::Taesd3 | Family::Taef1 => 16,
        }
    }

    /// File name of one half, e.g. `taesd_decoder.safetensors`.
    pub fn file_name(self, part: Part) -> String {
        let part = match part {
            Part::Decoder => "decoder",
            Part::Encoder => "encoder",
        };
        format!("{}_{part}.safetensors", self.name())
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

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

/// The first file for `family`'s `part` in `dirs` (in each, `.safetensors` before the upstream
/// `.pth`).
pub fn find(dirs: &[PathBuf], family: Family, part: Part) -> Option<PathBuf> {
    let name = family.file_name(part);
    let pth = Path::new(&name).with_extension("pth");
    dirs.iter()
        .flat_map(|d| [d.join(&name), d.join(&pth)])
        .find(|p| p.is_file())
}

/// The candle device for an engine device.
pub fn candle_device(device: Device) -> Result<CandleDevice, EngineError> {
    match device {
        Device::Cpu => Ok(CandleDevice::Cpu),
        Device::Cuda(n) => CandleDevice::new_cuda(n)
            .map_err(|e| EngineError::Device(device.to_string(), e.to_string())),
    }
}

fn model_error(path: &Path, e: impl fmt::Display) -> EngineError {
    EngineError::Model(format!("{}: {e}", path.display()))
}

/// The TAESD decoder behind the engine's [`Decoder`] trait.
pub struct TaesdDecoderModel {
    name: String,
    model: TaesdDecoder,
    device: CandleDevice,
}

impl TaesdDecoderModel {
    /// Loads a decoder file; its latent channel count comes from its first convolution.
    pub fn load(path: &Path, name: &str, device: Device) -> Result<Self, EngineError> {
        let weights = WeightFile::load(path, Part::Decoder)?;
        let channels = weights.taesd_latent_channels(Part::Decoder)?;
        let device = candle_device(device)?;
        let model = TaesdDecoder::new(channels, weights.var_builder(&device))
            .map_err(|e| model_error(path, e))?;
        Ok(Self {
            name: name.to_string(),
            model,
            device,
        })
    }

    /// The raw model output `[N, 3, 8h, 8w]` (≈[0, 1], unclamped), as f32 in C-order.
    pub fn decode_raw(&self, batch: &LatentBatch) -> Result<Vec<f32>, EngineError> {
        let out = self.forward(batch)?;
        out.flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| EngineError::Model(e.to_string()))
    }

    fn forward(&self, batch: &LatentBatch) -> Result<Tensor, EngineError> {
        let s = batch.shape();
        let z = Tensor::from_slice(
            batch.data(),
            (batch.len(), s.channels, s.height, s.width),
            &self.device,
        )
        .and_then(|z| self.model.forward(&z))
        .map_err(|e| EngineError::Model(format!("{} decode: {e}", self.name)))?;
        Ok(z)
    }
}

impl Decoder for TaesdDecoderModel {
    fn name(&self) -> &str {
        &self.name
    }

    fn latent_channels(&self) -> usize {
        self.model.latent_channels()
    }

    fn decode(&self, batch: &LatentBatch) -> Result<Vec<RgbImage>, EngineError> {
        let out = self.forward(batch)?;
        let pixels = (|| {
            let (n, _, h, w) = out.dims4()?;
            let bytes = (out.clamp(0f32, 1f32)? * 255.0)?
                .round()?
                .to_dtype(DType::U8)?
                .permute((0, 2, 3, 1))?
                .flatten_all()?
                .to_vec1::<u8>()?;
            Ok::<_, candle_core::Error>((n, h, w, bytes))
        })();
        let (n, h, w, bytes) =
            pixels.map_err(|e| EngineError::Model(format!("{} decode: {e}", self.name)))?;
        let frame = h * w * 3;
        (0..n)
            .map(|i| {
                RgbImage::from_raw(
                    w as u32,
                    h as u32,
                    bytes[i * frame..(i + 1) * frame].to_vec(),
                )
                .ok_or_else(|| EngineError::Model("decoded frame has the wrong size".into()))
            })
            .collect()
    }
}

/// The TAESD encoder: pictures to latents. On the CPU it runs on
/// [`super::taesd_cpu::TaesdCpuEncoder`]; on CUDA on the candle module.
pub struct TaesdEncoderModel {
    inner: EncoderImpl,
}

enum EncoderImpl {
    Candle {
        model: TaesdEncoder,
        device: CandleDevice,
    },
    Cpu(super::taesd_cpu::TaesdCpuEncoder),
}

impl TaesdEncoderModel {
    /// Loads an encoder file; its latent channel count comes from its last convolution.
    /// `precision` applies on the CPU.
    pub fn load(path: &Path, device: Device, precision: Precision) -> Result<Self, EngineError> {
        let weights = WeightFile::load(path, Part::Encoder)?;
        let inner = match device {
            Device::Cpu => {
                EncoderImpl::Cpu(super::taesd_cpu::TaesdCpuEncoder::new(&weights, precision)?)
            }
            Device::Cuda(_) => {
                let channels = weights.taesd_latent_channels(Part::Encoder)?;
                let device = candle_device(device)?;
                let model = TaesdEncoder::new(channels, weights.var_builder(&device))
                    .map_err(|e| model_error(path, e))?;
                EncoderImpl::Candle { model, device }
            }
        };
        Ok(Self { inner })
    }

    pub fn latent_channels(&self) -> usize {
        match &self.inner {
            EncoderImpl::Candle { model, .. } => model.latent_channels(),
            EncoderImpl::Cpu(encoder) => encoder.latent_channels(),
        }
    }

    /// Encodes pictures (all the same size, sides multiples of 8) in one batched call.
    pub fn encode(&self, images: &[RgbImage]) -> Result<Vec<Latent>, EngineError> {
        let (model, device) = match &self.inner {
            EncoderImpl::Cpu(encoder) => return encoder.encode(images),
            EncoderImpl::Candle { model, device } => (model, device),
        };
        let Some(first) = images.first() else {
            return Ok(Vec::new());
        };
        let (w, h) = first.dimensions();
        if images.iter().any(|i| i.dimensions() != (w, h)) || w % 8 != 0 || h % 8 != 0 {
            return Err(EngineError::Model(format!(
                "encoder input must be same-size pictures with sides divisible by 8 (got {w}x{h})"
            )));
        }
        let mut data = Vec::with_capacity(images.len() * (w * h * 3) as usize);
        for image in images {
            data.extend(image.as_raw().iter().map(|&v| f32::from(v) / 255.0));
        }
        let shape = LatentShape::new(self.latent_channels(), h as usize / 8, w as usize / 8);
        let values = (|| {
            let x = Tensor::from_vec(data, (images.len(), h as usize, w as usize, 3), device)?
                .permute((0, 3, 1, 2))?
                .contiguous()?;
            model.forward(&x)?.flatten_all()?.to_vec1::<f32>()
        })()
        .map_err(|e| EngineError::Model(format!("encode: {e}")))?;
        values
            .chunks(shape.len())
            .map(|chunk| {
                Latent::new(shape, chunk.to_vec()).map_err(|e| EngineError::Model(e.to_string()))
            })
            .collect()
    }
}

impl From<WeightError> for EngineError {
    fn from(e: WeightError) -> Self {
        EngineError::Model(e.to_string())
    }
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
            let decoder = super::taesd_cpu::TaesdCpuDecoder::new(
                model.family.name(),
                &weights,
                Precision::Exact,
            )?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn model_file(family: Family, part: Part) -> PathBuf {
        let dirs = search_dirs(Some(&test_models_dir()));
        find(&dirs, family, part).unwrap_or_else(|| {
            panic!(
                "{} not found under {} (set DREAMD_MODELS)",
                family.file_name(part),
                test_models_dir().display()
            )
        })
    }

    fn golden(family: Family, channels: usize) {
        let dir = test_models_dir().join("golden");
        let input = read_f32_file(&dir.join(format!("{family}_dec_in_{channels}x8x8_f32le.bin")));
        let expected = read_f32_file(&dir.join(format!("{family}_dec_out_3x64x64_f32le.bin")));
        let shape = LatentShape::new(channels, 8, 8);
        let mut batch = LatentBatch::with_capacity(shape, 1);
        batch.push(&Latent::new(shape, input).unwrap()).unwrap();
        let decoder = TaesdDecoderModel::load(
            &model_file(family, Part::Decoder),
            family.name(),
            Device::Cpu,
        )
        .unwrap();
        assert_eq!(decoder.latent_channels(), channels);
        let got = decoder.decode_raw(&batch).unwrap();
        assert_eq!(got.len(), expected.len());
        let max_err = got
            .iter()
            .zip(&expected)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(max_err <= 1e-3, "{family}: max abs error {max_err}");
    }

    #[test]
    fn taesd_decoder_matches_golden() {
        golden(Family::Taesd, 4);
    }

    #[test]
    fn taef1_decoder_matches_golden() {
        golden(Family::Taef1, 16);
    }

    #[test]
    fn batched_decode_equals_one_by_one() {
        let decoder = TaesdDecoderModel::load(
            &model_file(Family::Taesd, Part::Decoder),
            "taesd",
            Device::Cpu,
        )
        .unwrap();
        let shape = LatentShape::new(4, 4, 6);
        let latents: Vec<Latent> = (0..3)
            .map(|n| {
                let data = (0..shape.len())
                    .map(|i| ((i + 7 * n) as f32 * 0.37).sin() * 2.0)
                    .collect();
                Latent::new(shape, data).unwrap()
            })
            .collect();
        let mut batch = LatentBatch::with_capacity(shape, 3);
        for l in &latents {
            batch.push(l).unwrap();
        }
        let together = decoder.decode(&batch).unwrap();
        assert_eq!(together.len(), 3);
        assert_eq!(together[0].dimensions(), (48, 32));
        for (l, image) in latents.iter().zip(&together) {
            let mut single = LatentBatch::with_capacity(shape, 1);
            single.push(l).unwrap();
            let alone = decoder.decode(&single).unwrap().remove(0);
            let diff = alone
                .as_raw()
                .iter()
                .zip(image.as_raw())
                .map(|(a, b)| a.abs_diff(*b))
                .max()
                .unwrap();
            assert!(diff <= 1, "batched and single decodes differ by {diff}");
        }
    }

    #[test]
    fn every_family_member_loads_with_its_channel_count() {
        for family in Family::ALL {
            let d = TaesdDecoderModel::load(
                &model_file(family, Part::Decoder),
                family.name(),
                Device::Cpu,
            )
            .unwrap();
            assert_eq!(d.latent_channels(), family.latent_channels(), "{family}");
            let e = TaesdEncoderModel::load(
                &model_file(family, Part::Encoder),
                Device::Cpu,
                Precision::Exact,
            )
            .unwrap();
            assert_eq!(e.latent_channels(), family.latent_channels(), "{family}");
        }
    }

    #[test]
    fn decoder_file_given_as_encoder_is_a_clear_error() {
        let err = TaesdEncoderModel::load(
            &model_file(Family::Taesd, Part::Decoder),
            Device::Cpu,
            Precision::Exact,
        )
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("taesd_decoder.safetensors"), "{err}");
        assert!(err.contains("14.weight"), "{err}");
    }
}
