//! The TAESD encoder on wgpu: pictures in [0, 1] → latents at 1/8 of their size.
//!
//! Same architecture and weights as [`crate::engine::taesd::cpu::TaesdCpuEncoder`]; its three
//! stride-2 convolutions run `conv3x3_down.wgsl`, everything else the decoder's kernels.

use std::sync::Arc;

use image::RgbImage;

use super::decoder::{block, conv, storage};
use super::kernels::ConvMode;
use super::network::{Layer, Network};
use super::{AdapterSummary, GpuContext};
use crate::config::Precision;
use crate::engine::taesd::weights::{Part, WeightFile};
use crate::engine::EngineError;
use crate::latent::{Latent, LatentShape};

/// Width of every hidden layer.
const HIDDEN: usize = 64;

/// The TAESD encoder on a wgpu device.
#[derive(Debug)]
pub struct TaesdWgpuEncoder {
    latent_channels: usize,
    network: Network,
}

impl TaesdWgpuEncoder {
    /// Uploads the encoder's weights (index layout) to `context`'s device.
    pub fn new(
        weights: &WeightFile,
        context: Arc<GpuContext>,
        precision: Precision,
    ) -> Result<Self, EngineError> {
        let latent_channels = weights.taesd_latent_channels(Part::Encoder)?;
        let mut layers = vec![
            Layer::Conv {
                conv: conv(&context, weights, "0", 3, HIDDEN, true)?,
                mode: ConvMode::Same,
                relu: false,
                clamp: false,
            },
            block(&context, weights, 1)?,
        ];
        let mut index = 2;
        for _ in 0..3 {
            layers.push(Layer::Down(conv(
                &context,
                weights,
                &index.to_string(),
                HIDDEN,
                HIDDEN,
                false,
            )?));
            index += 1;
            for _ in 0..3 {
                layers.push(block(&context, weights, index)?);
                index += 1;
            }
        }
        layers.push(Layer::Conv {
            conv: conv(
                &context,
                weights,
                &index.to_string(),
                HIDDEN,
                latent_channels,
                true,
            )?,
            mode: ConvMode::Same,
            relu: false,
            clamp: false,
        });
        let network = Network::new(context, "encode", 3, layers, storage(precision))?;
        Ok(Self {
            latent_channels,
            network,
        })
    }

    /// Latent channels it makes.
    pub fn latent_channels(&self) -> usize {
        self.latent_channels
    }

    /// The adapter it runs on.
    pub fn adapter(&self) -> &AdapterSummary {
        self.network.context().adapter()
    }

    /// Encodes `[N, 3, H, W]` values (C-order, [0, 1]) into `[N, C, H/8, W/8]` (C-order).
    pub fn encode_raw(
        &self,
        values: &[f32],
        batch: usize,
        height: usize,
        width: usize,
    ) -> Result<Vec<f32>, EngineError> {
        Ok(self.network.run_raw(values, batch, height, width)?)
    }

    /// Encodes pictures (all the same size, sides multiples of 8) in one batched call.
    pub fn encode(&self, images: &[RgbImage]) -> Result<Vec<Latent>, EngineError> {
        let Some((w, h)) = crate::engine::taesd::encoder_input_size(images)? else {
            return Ok(Vec::new());
        };
        let (w, h) = (w as usize, h as usize);
        let values = crate::engine::taesd::encoder_planes(images, w, h);
        let shape = LatentShape::new(self.latent_channels, h / 8, w / 8);
        self.encode_raw(&values, images.len(), h, w)?
            .chunks_exact(shape.len())
            .map(|chunk| {
                Latent::new(shape, chunk.to_vec()).map_err(|e| EngineError::Model(e.to_string()))
            })
            .collect()
    }

    /// The network (tests force batch splitting through it).
    #[cfg(test)]
    pub(crate) fn network_mut(&mut self) -> &mut Network {
        &mut self.network
    }
}
