//! Loading model weights from safetensors files, with errors that name the file, the tensor and
//! what was expected.
//!
//! A [`WeightFile`] holds one file's tensors (F32, F16 or BF16 on disk, widened to F32),
//! renamed to the original TAESD index layout when the file uses the diffusers
//! `AutoencoderTiny` layout (`decoder.layers.{i}.…` is `{i+1}.…`; `encoder.layers.{i}.…` is
//! `{i}.…`). Models read it through a `VarBuilder` whose backend checks every requested name and
//! shape, so a missing or misshapen tensor fails with a sentence a user can act on.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::safetensors::Load;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

/// Why weights could not be used.
#[derive(Debug, thiserror::Error)]
pub enum WeightError {
    #[error("cannot read model file {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path} is not a valid safetensors file: {message}")]
    Format { path: PathBuf, message: String },
    #[error("{path}: tensor {tensor} has dtype {dtype}; expected F32, F16 or BF16")]
    Dtype {
        path: PathBuf,
        tensor: String,
        dtype: String,
    },
    #[error("{path}: {message}")]
    Model { path: PathBuf, message: String },
    #[error(transparent)]
    Pth(#[from] crate::engine::pth::PthError),
}

/// Which half of an autoencoder a file is read for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Encoder,
    Decoder,
}

/// The tensors of one file, F32, named in the index layout.
#[derive(Debug)]
pub struct WeightFile {
    path: PathBuf,
    tensors: HashMap<String, Tensor>,
}

impl WeightFile {
    /// Reads `path` and keeps the tensors of `part` (all of them for an index-layout file).
    /// A PyTorch `.pth` checkpoint (by extension or zip magic) is read by [`crate::engine::pth`].
    pub fn load(path: &Path, part: Part) -> Result<WeightFile, WeightError> {
        if crate::engine::pth::is_pth(path) {
            return Self::from_named(path, part, crate::engine::pth::read_tensors(path)?);
        }
        let bytes = std::fs::read(path).map_err(|error| WeightError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        let file =
            safetensors::SafeTensors::deserialize(&bytes).map_err(|e| WeightError::Format {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        let diffusers = file
            .names()
            .iter()
            .any(|n| n.starts_with("decoder.layers.") || n.starts_with("encoder.layers."));
        let mut tensors = HashMap::new();
        for (name, view) in file.tensors() {
            let renamed = if diffusers {
                match diffusers_to_index(&name, part) {
                    Some(renamed) => renamed,
                    None => continue,
                }
            } else {
                name.clone()
            };
            let dtype = view.dtype();
            if !matches!(
                dtype,
                safetensors::Dtype::F32 | safetensors::Dtype::F16 | safetensors::Dtype::BF16
            ) {
                return Err(WeightError::Dtype {
                    path: path.to_path_buf(),
                    tensor: name,
                    dtype: format!("{dtype:?}"),
                });
            }
            let tensor = view
                .load(&Device::Cpu)
                .and_then(|t| t.to_dtype(DType::F32))
                .map_err(|e| WeightError::Format {
                    path: path.to_path_buf(),
                    message: format!("tensor {name}: {e}"),
                })?;
            tensors.insert(renamed, tensor);
        }
        Ok(WeightFile {
            path: path.to_path_buf(),
            tensors,
        })
    }

    /// The tensors of `part` among already-read `(name, tensor)` pairs (a `.pth` file's),
    /// renamed and widened to F32 as [`WeightFile::load`] does for safetensors.
    fn from_named(
        path: &Path,
        part: Part,
        named: Vec<(String, Tensor)>,
    ) -> Result<WeightFile, WeightError> {
        let diffusers = named
            .iter()
            .any(|(n, _)| n.starts_with("decoder.layers.") || n.starts_with("encoder.layers."));
        let mut tensors = HashMap::new();
        for (name, tensor) in named {
            let renamed = match diffusers {
                true => match diffusers_to_index(&name, part) {
                    Some(renamed) => renamed,
                    None => continue,
                },
                false => name.clone(),
            };
            let tensor = tensor
                .to_dtype(DType::F32)
                .map_err(|e| WeightError::Format {
                    path: path.to_path_buf(),
                    message: format!("tensor {name}: {e}"),
                })?;
            tensors.insert(renamed, tensor);
        }
        Ok(WeightFile {
            path: path.to_path_buf(),
            tensors,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The shape of a tensor, if present.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.tensors.get(name).map(|t| t.dims())
    }

    /// The shape of `name`, or an error naming the file, the tensor and why it was needed.
    pub fn require_shape(&self, name: &str, why: &str) -> Result<&[usize], WeightError> {
        self.shape(name)
            .ok_or_else(|| self.error(format!("missing tensor {name} ({why})")))
    }

    /// The values of tensor `name`, which must have exactly `shape`.
    pub fn values(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, WeightError> {
        let tensor = self.tensors.get(name).ok_or_else(|| {
            self.error(format!("missing tensor {name} (expected shape {shape:?})"))
        })?;
        if tensor.dims() != shape {
            return Err(self.error(format!(
                "tensor {name} has shape {:?}, expected {shape:?}",
                tensor.dims()
            )));
        }
        tensor
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| self.error(format!("tensor {name}: {e}")))
    }

    /// The latent channel count of a TAESD file: the input channels of the decoder's first
    /// convolution (`1.weight`, `[64, C, 3, 3]`) or the output channels of the encoder's last
    /// (`14.weight`, `[C, 64, 3, 3]`).
    pub fn taesd_latent_channels(&self, part: Part) -> Result<usize, WeightError> {
        let (name, why, expected) = match part {
            Part::Decoder => (
                "1.weight",
                "the decoder's first convolution",
                "[64, C, 3, 3]",
            ),
            Part::Encoder => (
                "14.weight",
                "the encoder's last convolution",
                "[C, 64, 3, 3]",
            ),
        };
        match (part, self.require_shape(name, why)?) {
            (Part::Decoder, [64, c, 3, 3]) | (Part::Encoder, [c, 64, 3, 3]) => Ok(*c),
            (_, other) => Err(self.error(format!(
                "tensor {name} has shape {other:?}, expected {expected}"
            ))),
        }
    }

    /// Whether a tensor is present.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// A `VarBuilder` over these tensors on `device`; every lookup checks name and shape.
    pub fn var_builder(&self, device: &Device) -> VarBuilder<'static> {
        let backend = CheckedTensors {
            path: self.path.clone(),
            tensors: self.tensors.clone(),
        };
        VarBuilder::from_backend(Box::new(backend), DType::F32, device.clone())
    }

    /// An error about this file.
    pub fn error(&self, message: impl Into<String>) -> WeightError {
        WeightError::Model {
            path: self.path.clone(),
            message: message.into(),
        }
    }
}

/// `decoder.layers.4.conv.0.weight` → `5.conv.0.weight` (decoder); `encoder.layers.4.…` →
/// `4.…` (encoder). Tensors of the other part map to None.
fn diffusers_to_index(name: &str, part: Part) -> Option<String> {
    let (prefix, offset) = match part {
        Part::Decoder => ("decoder.layers.", 1),
        Part::Encoder => ("encoder.layers.", 0),
    };
    let rest = name.strip_prefix(prefix)?;
    let (index, tail) = rest.split_once('.')?;
    let index: usize = index.parse().ok()?;
    Some(format!("{}.{tail}", index + offset))
}

/// The VarBuilder backend: hands out tensors by name, checking the shape the model expects.
struct CheckedTensors {
    path: PathBuf,
    tensors: HashMap<String, Tensor>,
}

impl SimpleBackend for CheckedTensors {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _init: candle_nn::Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let tensor = self.tensors.get(name).ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "{}: missing tensor {name} (expected shape {:?})",
                self.path.display(),
                shape.dims()
            ))
        })?;
        if tensor.shape() != &shape {
            return Err(candle_core::Error::Msg(format!(
                "{}: tensor {name} has shape {:?}, expected {:?}",
                self.path.display(),
                tensor.dims(),
                shape.dims()
            )));
        }
        tensor.to_dtype(dtype)?.to_device(device)
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let tensor = self.tensors.get(name).ok_or_else(|| {
            candle_core::Error::Msg(format!("{}: missing tensor {name}", self.path.display()))
        })?;
        tensor.to_dtype(dtype)?.to_device(device)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diffusers_names_map_to_index_layout() {
        assert_eq!(
            diffusers_to_index("decoder.layers.0.weight", Part::Decoder).as_deref(),
            Some("1.weight")
        );
        assert_eq!(
            diffusers_to_index("decoder.layers.17.conv.4.bias", Part::Decoder).as_deref(),
            Some("18.conv.4.bias")
        );
        assert_eq!(
            diffusers_to_index("encoder.layers.14.weight", Part::Encoder).as_deref(),
            Some("14.weight")
        );
        assert_eq!(
            diffusers_to_index("encoder.layers.1.weight", Part::Decoder),
            None
        );
    }

    #[test]
    fn missing_file_names_the_path() {
        let err = WeightFile::load(Path::new("/nonexistent/taesd.safetensors"), Part::Decoder)
            .unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/taesd.safetensors"),
            "{err}"
        );
    }

    #[test]
    fn garbage_is_not_a_safetensors_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.safetensors");
        std::fs::write(&path, b"this is not a model").unwrap();
        let err = WeightFile::load(&path, Part::Decoder).unwrap_err();
        assert!(
            err.to_string().contains("not a valid safetensors file"),
            "{err}"
        );
    }
}
