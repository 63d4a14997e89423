//! The WGSL kernels of `shaders/` as compute pipelines, and convolution weights on the GPU in
//! the layout those kernels read.
//!
//! - `conv3x3.wgsl`: stride-1 3×3 convolution with bias, optional residual add and ReLU fused,
//!   optional input soft-clamp `tanh(x/3)·3`, and nearest 2× upsampling folded into its input
//!   indexing ([`ConvMode`]).
//! - `conv3x3_down.wgsl`: the encoder's stride-2 convolution.
//! - `to_rgb8.wgsl`: the decoder's output scaling, `round(clamp(v, 0, 1)·255)`, packed to one
//!   `u32` per pixel.
//!
//! The shaders are compiled into the binary (`include_str!`) and built into pipelines once per
//! device. Activations may be stored as f16 where the device has `SHADER_F16` ([`Storage`]): the
//! convolution shaders name their buffers' element types through aliases (`in_t`, `res_t`,
//! `out_t`), and each combination a network needs is compiled from the same source with
//! `enable f16;` and those aliases changed ([`Kernels::conv_pipeline`]).

use std::collections::HashMap;
use std::sync::Mutex;

use wgpu::util::DeviceExt;

use super::{GpuContext, WgpuError};

/// conv3x3.wgsl.
pub const CONV3X3_WGSL: &str = include_str!("../../../shaders/conv3x3.wgsl");
/// conv3x3_down.wgsl.
pub const CONV3X3_DOWN_WGSL: &str = include_str!("../../../shaders/conv3x3_down.wgsl");
/// to_rgb8.wgsl.
pub const TO_RGB8_WGSL: &str = include_str!("../../../shaders/to_rgb8.wgsl");

/// Output pixels per workgroup of the convolutions, along x and y.
pub const TILE_W: u32 = 16;
/// See [`TILE_W`].
pub const TILE_H: u32 = 4;
/// Output channels per workgroup of the convolutions.
pub const OC_BLOCK: usize = 32;
/// Input channels are padded to a multiple of this in the weight layout.
pub const CI_PAD: usize = 8;
/// Pixels per workgroup of `to_rgb8.wgsl`.
pub const RGB8_GROUP: u32 = 256;
/// Workgroups along x in a `to_rgb8.wgsl` dispatch (more go along y).
pub const RGB8_GROUPS_X: u32 = 4096;

/// `Params.flags` of conv3x3.wgsl.
pub mod flags {
    /// ReLU last.
    pub const RELU: u32 = 1;
    /// Add the residual binding before the ReLU.
    pub const RESIDUAL: u32 = 2;
    /// `tanh(x/3)·3` on the input as it is read.
    pub const CLAMP: u32 = 4;
    /// Nearest 2× upsampling of the input, folded into the indexing.
    pub const UPSAMPLE: u32 = 8;
}

/// How a convolution maps input to output size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvMode {
    /// Stride 1: same size.
    Same,
    /// Nearest 2× upsampling, then stride 1: twice the size.
    Upsample,
    /// Stride 2: half the size, rounded up.
    Down,
}

impl ConvMode {
    /// Output `(height, width)` for an input `(height, width)`.
    pub fn output_size(self, h: usize, w: usize) -> (usize, usize) {
        match self {
            ConvMode::Same => (h, w),
            ConvMode::Upsample => (2 * h, 2 * w),
            ConvMode::Down => (h.div_ceil(2), w.div_ceil(2)),
        }
    }
}

/// Element type of an activation buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Storage {
    F32,
    /// Half precision (arithmetic stays f32): half the memory and bandwidth.
    F16,
}

impl Storage {
    /// Bytes per element.
    pub fn bytes(self) -> usize {
        match self {
            Storage::F32 => 4,
            Storage::F16 => 2,
        }
    }

    fn wgsl(self) -> &'static str {
        match self {
            Storage::F32 => "f32",
            Storage::F16 => "f16",
        }
    }
}

/// Storage types of a convolution's input, residual and output buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Types {
    pub input: Storage,
    pub residual: Storage,
    pub output: Storage,
}

impl Types {
    /// All f32.
    pub const F32: Types = Types {
        input: Storage::F32,
        residual: Storage::F32,
        output: Storage::F32,
    };
}

/// The compiled pipelines: the output scaling, and the convolutions by mode and storage types
/// (compiled when first asked for).
#[derive(Debug)]
pub struct Kernels {
    convs: Mutex<HashMap<(bool, Types), wgpu::ComputePipeline>>,
    pub(crate) rgb8: wgpu::ComputePipeline,
}

impl Kernels {
    /// Compiles the shaders (the f32 convolutions at once, so a shader the device refuses is
    /// found here) on `context`'s device; a refused shader is a [`WgpuError::Shader`] naming it.
    pub fn new(context: &GpuContext) -> Result<Kernels, WgpuError> {
        let kernels = Kernels {
            convs: Mutex::new(HashMap::new()),
            rgb8: compile(context, "to_rgb8.wgsl", TO_RGB8_WGSL)?,
        };
        kernels.conv_pipeline(context, ConvMode::Same, Types::F32)?;
        kernels.conv_pipeline(context, ConvMode::Down, Types::F32)?;
        Ok(kernels)
    }

    /// The pipeline for a convolution in `mode` over buffers of `types`.
    pub(crate) fn conv_pipeline(
        &self,
        context: &GpuContext,
        mode: ConvMode,
        types: Types,
    ) -> Result<wgpu::ComputePipeline, WgpuError> {
        let down = mode == ConvMode::Down;
        // The stride-2 shader has no residual binding.
        let types = if down {
            Types {
                residual: Storage::F32,
                ..types
            }
        } else {
            types
        };
        let mut convs = self.convs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pipeline) = convs.get(&(down, types)) {
            return Ok(pipeline.clone());
        }
        let (name, source) = if down {
            ("conv3x3_down.wgsl", CONV3X3_DOWN_WGSL)
        } else {
            ("conv3x3.wgsl", CONV3X3_WGSL)
        };
        let pipeline = compile(context, name, &variant(source, types))?;
        convs.insert((down, types), pipeline.clone());
        Ok(pipeline)
    }
}

/// `source` with its storage aliases set to `types` (and `enable f16;` when one is f16).
fn variant(source: &str, types: Types) -> String {
    if types == Types::F32 {
        return source.to_string();
    }
    let mut text = String::from("enable f16;\n");
    text += &source
        .replace(
            "alias in_t = f32;",
            &format!("alias in_t = {};", types.input.wgsl()),
        )
        .replace(
            "alias res_t = f32;",
            &format!("alias res_t = {};", types.residual.wgsl()),
        )
        .replace(
            "alias out_t = f32;",
            &format!("alias out_t = {};", types.output.wgsl()),
        );
    text
}

/// Compiles `source` (named `shader` in errors) into a compute pipeline.
fn compile(
    context: &GpuContext,
    shader: &'static str,
    source: &str,
) -> Result<wgpu::ComputePipeline, WgpuError> {
    let device = context.device();
    context
        .checked(shader, || {
            let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(shader),
                source: wgpu::ShaderSource::Wgsl(source.into()),
            });
            device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(shader),
                layout: None,
                module: &module,
                entry_point: Some("main"),
                compilation_options: Default::default(),
                cache: None,
            })
        })
        .map_err(|e| WgpuError::Shader {
            shader,
            adapter: context.adapter().to_string(),
            error: match e {
                WgpuError::Gpu { error, .. } => error,
                other => other.to_string(),
            },
        })
}

/// One 3×3 convolution's weights and bias on the GPU, in the kernels' layout.
#[derive(Debug)]
pub struct ConvWeights {
    pub(crate) c_in: usize,
    pub(crate) c_out: usize,
    pub(crate) weights: wgpu::Buffer,
    pub(crate) bias: wgpu::Buffer,
}

impl ConvWeights {
    /// Uploads PyTorch-layout weights `[c_out][c_in][3][3]` and an optional bias (`name` labels
    /// the buffers and errors).
    pub fn upload(
        context: &GpuContext,
        name: &str,
        c_in: usize,
        c_out: usize,
        weight: &[f32],
        bias: Option<&[f32]>,
    ) -> Result<ConvWeights, WgpuError> {
        if weight.len() != c_out * c_in * 9 || bias.is_some_and(|b| b.len() != c_out) {
            return Err(WgpuError::Model(format!(
                "{name}: {} weights and {:?} biases for a {c_in}→{c_out} 3×3 convolution",
                weight.len(),
                bias.map(<[f32]>::len)
            )));
        }
        let packed = pack_weights(c_in, c_out, weight);
        let mut padded_bias = vec![0.0; c_out.next_multiple_of(OC_BLOCK)];
        if let Some(bias) = bias {
            padded_bias[..c_out].copy_from_slice(bias);
        }
        let device = context.device();
        let (weights, bias) = context.checked(&format!("upload of {name}"), || {
            let buffer = |label: &str, values: &[f32]| {
                device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some(label),
                    contents: &f32_bytes(values),
                    usage: wgpu::BufferUsages::STORAGE,
                })
            };
            (
                buffer(&format!("{name}.weight"), &packed),
                buffer(&format!("{name}.bias"), &padded_bias),
            )
        })?;
        Ok(ConvWeights {
            c_in,
            c_out,
            weights,
            bias,
        })
    }

    /// Input channels padded as in the weight layout.
    pub(crate) fn c_in_pad(&self) -> usize {
        self.c_in.next_multiple_of(CI_PAD)
    }

    /// Blocks of [`OC_BLOCK`] output channels.
    pub(crate) fn oc_blocks(&self) -> usize {
        self.c_out.div_ceil(OC_BLOCK)
    }
}

/// `[c_out][c_in][3][3]` → `[c_out/32][c_in_pad][9][32]`, zero-padded (see conv3x3.wgsl).
pub fn pack_weights(c_in: usize, c_out: usize, weight: &[f32]) -> Vec<f32> {
    let c_in_pad = c_in.next_multiple_of(CI_PAD);
    let blocks = c_out.div_ceil(OC_BLOCK);
    let mut packed = vec![0.0; blocks * c_in_pad * 9 * OC_BLOCK];
    for oc in 0..c_out {
        let (ob, o) = (oc / OC_BLOCK, oc % OC_BLOCK);
        for ci in 0..c_in {
            for k in 0..9 {
                packed[((ob * c_in_pad + ci) * 9 + k) * OC_BLOCK + o] =
                    weight[(oc * c_in + ci) * 9 + k];
            }
        }
    }
    packed
}

/// conv3x3.wgsl's `Params`, as the bytes of its uniform.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvParams {
    pub c_in: u32,
    pub c_out: u32,
    pub in_h: u32,
    pub in_w: u32,
    pub out_h: u32,
    pub out_w: u32,
    pub flags: u32,
    pub c_in_pad: u32,
}

impl ConvParams {
    /// The uniform's 32 bytes.
    pub fn bytes(&self) -> Vec<u8> {
        u32_bytes(&[
            self.c_in,
            self.c_out,
            self.in_h,
            self.in_w,
            self.out_h,
            self.out_w,
            self.flags,
            self.c_in_pad,
        ])
    }

    /// Workgroups `(x, y)` covering the output (z is pictures × channel blocks).
    pub fn workgroups(&self) -> (u32, u32) {
        (self.out_w.div_ceil(TILE_W), self.out_h.div_ceil(TILE_H))
    }
}

/// Little-endian bytes of `values` (what the GPU reads).
pub fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Little-endian bytes of `values`.
pub fn u32_bytes(values: &[u32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// `bytes` (little-endian) as f32 values.
pub fn bytes_f32(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// A buffer of `size` bytes (at least 4) with `usage`.
pub(crate) fn buffer(
    device: &wgpu::Device,
    label: &str,
    size: u64,
    usage: wgpu::BufferUsages,
) -> wgpu::Buffer {
    device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: size.max(4).next_multiple_of(4),
        usage,
        mapped_at_creation: false,
    })
}
