//! The TAESD decoder on wgpu: latents `[N, C, h, w]` → pictures `8h × 8w`, behind the engine's
//! [`Decoder`] trait.
//!
//! Same architecture and weights as [`crate::engine::taesd::cpu::TaesdCpuDecoder`]; the
//! soft clamp `tanh(z/3)·3` is fused into the first convolution's input, each nearest 2×
//! upsampling into the following convolution's indexing, bias/residual/ReLU into every
//! convolution's epilogue, and the output scaling to bytes into `to_rgb8.wgsl`, so only 1 byte
//! per channel comes back.

use std::sync::Arc;

use image::RgbImage;

use super::kernels::{ConvWeights, Storage};
use super::network::{Layer, Network, Readout};
use super::{AdapterSummary, GpuContext};
use crate::config::Precision;
use crate::engine::taesd::weights::{Part, WeightFile};
use crate::engine::{Decoder, EngineError};
use crate::latent::LatentBatch;

/// Width of every hidden layer.
const HIDDEN: usize = 64;

/// Activation storage for `precision`: `fast` stores f16 where the device has it, `exact` f32.
pub(super) fn storage(precision: Precision) -> Storage {
    match precision {
        Precision::Fast | Precision::Bf16 => Storage::F16,
        Precision::Exact => Storage::F32,
    }
}

/// One 3×3 convolution `prefix.weight` (`[c_out, c_in, 3, 3]`, and `prefix.bias` when `bias`)
/// uploaded to the GPU.
pub(super) fn conv(
    context: &GpuContext,
    weights: &WeightFile,
    prefix: &str,
    c_in: usize,
    c_out: usize,
    bias: bool,
) -> Result<ConvWeights, EngineError> {
    let weight = weights.values(&format!("{prefix}.weight"), &[c_out, c_in, 3, 3])?;
    let bias = if bias {
        Some(weights.values(&format!("{prefix}.bias"), &[c_out])?)
    } else {
        None
    };
    Ok(ConvWeights::upload(
        context,
        prefix,
        c_in,
        c_out,
        &weight,
        bias.as_deref(),
    )?)
}

/// Residual block `index` (`index.conv.{0,2,4}`); the variants with a skip convolution or a
/// GroupNorm mid-block (TAEF2) are refused, as on the CPU.
pub(super) fn block(
    context: &GpuContext,
    weights: &WeightFile,
    index: usize,
) -> Result<Layer, EngineError> {
    if weights.contains(&format!("{index}.skip.weight")) {
        return Err(weights
            .error(format!(
                "block {index} has a skip convolution, which the wgpu networks do not support"
            ))
            .into());
    }
    if weights.contains(&format!("{index}.pool.0.weight")) {
        return Err(weights
            .error(format!(
                "block {index} has a GroupNorm mid-block (TAEF2), which the wgpu networks do \
                 not implement (it runs on candle's CPU backend instead)"
            ))
            .into());
    }
    let c = |i: usize| {
        conv(
            context,
            weights,
            &format!("{index}.conv.{i}"),
            HIDDEN,
            HIDDEN,
            true,
        )
    };
    Ok(Layer::Block([c(0)?, c(2)?, c(4)?]))
}

/// The TAESD decoder on a wgpu device.
#[derive(Debug)]
pub struct TaesdWgpuDecoder {
    name: String,
    latent_channels: usize,
    network: Network,
}

impl TaesdWgpuDecoder {
    /// Uploads the decoder's weights (index layout, see [`crate::engine::taesd::weights`]) to
    /// `context`'s device.
    pub fn new(
        name: &str,
        weights: &WeightFile,
        context: Arc<GpuContext>,
        precision: Precision,
    ) -> Result<Self, EngineError> {
        let latent_channels = weights.taesd_latent_channels(Part::Decoder)?;
        let mut layers = vec![Layer::Conv {
            conv: conv(&context, weights, "1", latent_channels, HIDDEN, true)?,
            mode: super::kernels::ConvMode::Same,
            relu: true,
            clamp: true,
        }];
        let mut index = 3;
        for _ in 0..3 {
            layers.push(block(&context, weights, index)?);
            index += 1;
        }
        for stage in 0..3 {
            // `index` is the Upsample module; it is folded into the next convolution.
            index += 1;
            layers.push(Layer::Conv {
                conv: conv(&context, weights, &index.to_string(), HIDDEN, HIDDEN, false)?,
                mode: super::kernels::ConvMode::Upsample,
                relu: false,
                clamp: false,
            });
            index += 1;
            for _ in 0..if stage < 2 { 3 } else { 1 } {
                layers.push(block(&context, weights, index)?);
                index += 1;
            }
        }
        layers.push(Layer::Conv {
            conv: conv(&context, weights, &index.to_string(), HIDDEN, 3, true)?,
            mode: super::kernels::ConvMode::Same,
            relu: false,
            clamp: false,
        });
        let network = Network::new(
            context,
            &format!("{name} decode"),
            latent_channels,
            layers,
            storage(precision),
        )?;
        Ok(Self {
            name: name.to_string(),
            latent_channels,
            network,
        })
    }

    /// The adapter it runs on.
    pub fn adapter(&self) -> &AdapterSummary {
        self.network.context().adapter()
    }

    /// How its activations are stored.
    pub fn storage(&self) -> Storage {
        self.network.storage()
    }

    /// The raw output `[N, 3, 8h, 8w]` in C-order (≈[0, 1], unclamped).
    pub fn decode_raw(&self, batch: &LatentBatch) -> Result<Vec<f32>, EngineError> {
        self.check(batch)?;
        let s = batch.shape();
        Ok(self
            .network
            .run_raw(batch.data(), batch.len(), s.height, s.width)?)
    }

    fn check(&self, batch: &LatentBatch) -> Result<(), EngineError> {
        let channels = batch.shape().channels;
        if channels != self.latent_channels {
            return Err(EngineError::Channels {
                decoder: self.name.clone(),
                expected: self.latent_channels,
                got: channels,
            });
        }
        Ok(())
    }

    /// The network (tests force batch splitting through it).
    #[cfg(test)]
    pub(crate) fn network_mut(&mut self) -> &mut Network {
        &mut self.network
    }
}

impl Decoder for TaesdWgpuDecoder {
    fn name(&self) -> &str {
        &self.name
    }

    fn latent_channels(&self) -> usize {
        self.latent_channels
    }

    fn decode(&self, batch: &LatentBatch) -> Result<Vec<RgbImage>, EngineError> {
        self.check(batch)?;
        let s = batch.shape();
        let bytes =
            self.network
                .run(batch.data(), batch.len(), s.height, s.width, Readout::Rgb8)?;
        let (w, h) = (8 * s.width, 8 * s.height);
        bytes
            .chunks_exact(4 * w * h)
            .map(|picture| {
                let rgb: Vec<u8> = picture
                    .chunks_exact(4)
                    .flat_map(|p| [p[0], p[1], p[2]])
                    .collect();
                RgbImage::from_raw(w as u32, h as u32, rgb).ok_or_else(|| {
                    EngineError::Model(format!("{}: decoded frame has the wrong size", self.name))
                })
            })
            .collect()
    }
}
