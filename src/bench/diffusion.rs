//! `dreamd bench diffusion`: what one in-process keyframe costs — text encoding, one UNet step
//! and a whole img2img keyframe at the configured size — with random weights of the real
//! architecture (SD 1.5, SD-Turbo, SDXL-Turbo), so no download is needed. Random weights cost
//! the same arithmetic as trained ones; only the pictures differ.

use std::time::{Duration, Instant};

use candle_core::{DType, Device as CandleDevice, Tensor};
use serde::Serialize;

use crate::engine::diffusion::presets::ModelKind;
use crate::engine::diffusion::{Sampler, SchedulerConfig, TextEncoder, Unet};
use crate::stats::round;

/// Options of `dreamd bench diffusion`.
#[derive(Debug, Clone)]
pub struct DiffusionBenchOptions {
    pub kind: ModelKind,
    pub width: usize,
    pub height: usize,
    pub steps: usize,
    pub strength: f64,
    pub guidance: f64,
    pub runs: usize,
    pub dtype: DType,
}

/// Results of `dreamd bench diffusion` (medians, milliseconds).
#[derive(Debug, Clone, Serialize)]
pub struct DiffusionBenchReport {
    pub model: String,
    pub device: String,
    pub dtype: String,
    pub width: usize,
    pub height: usize,
    pub latent: [usize; 3],
    pub steps_run: usize,
    pub guidance: f64,
    pub load_ms: f64,
    pub text_encode_ms: f64,
    pub unet_step_ms: f64,
    pub keyframe_ms: f64,
    pub keyframes_per_s: f64,
    pub cpus: usize,
    pub load_average: String,
}

impl DiffusionBenchReport {
    pub fn to_text(&self) -> String {
        format!(
            "diffusion bench: {} on {} ({}), {}×{} (latent {}×{}×{}), {} step(s){}\n\
             build (random weights)  {:>10.1} ms\n\
             text encoding           {:>10.1} ms\n\
             one UNet step           {:>10.1} ms\n\
             whole keyframe          {:>10.1} ms  ({:.3} keyframes/s)\n\
             machine: {} CPUs, load average {}\n",
            self.model,
            self.device,
            self.dtype,
            self.width,
            self.height,
            self.latent[0],
            self.latent[1],
            self.latent[2],
            self.steps_run,
            if self.guidance > 1.0 {
                ", CFG (batch 2)"
            } else {
                ""
            },
            self.load_ms,
            self.text_encode_ms,
            self.unet_step_ms,
            self.keyframe_ms,
            self.keyframes_per_s,
            self.cpus,
            self.load_average,
        )
    }
}

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v.get(v.len() / 2)
        .map_or(0.0, |d| round(d.as_secs_f64() * 1000.0, 1))
}

/// Builds the architecture with random weights and times it on `device`.
pub fn run(
    options: &DiffusionBenchOptions,
    device: &CandleDevice,
) -> anyhow::Result<DiffusionBenchReport> {
    anyhow::ensure!(
        options.width.is_multiple_of(8) && options.height.is_multiple_of(8),
        "width and height must be multiples of 8"
    );
    let runs = options.runs.max(1);
    let started = Instant::now();
    let text = TextEncoder::random(options.kind, options.dtype, device)?;
    let unet = Unet::random(options.kind.preset(), options.dtype, device)?;
    let load_ms = round(started.elapsed().as_secs_f64() * 1000.0, 1);
    let scheduler = SchedulerConfig::default_for(options.kind);
    let (h, w) = (options.height / 8, options.width / 8);
    let dims = (1, 4, h, w);
    let ids: Vec<u32> = (0..77u32)
        .map(|i| if i < 8 { 320 + i } else { 49407 })
        .collect();
    let ids = Tensor::new(ids.as_slice(), device)?.unsqueeze(0)?;
    let sync = |t: &Tensor| -> anyhow::Result<()> {
        // Reading one value waits for the device (CUDA runs asynchronously).
        t.flatten_all()?
            .narrow(0, 0, 1)?
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?;
        Ok(())
    };

    let mut text_times = Vec::new();
    let mut cond = None;
    for i in 0..=runs {
        let t0 = Instant::now();
        let c = text.forward(&ids, "")?;
        sync(&c)?;
        if i > 0 {
            text_times.push(t0.elapsed());
        }
        cond = Some(c);
    }
    let cond = cond.ok_or_else(|| anyhow::anyhow!("no text encoding ran"))?;
    // The random text encoders are not the UNet's width for every family: feed the UNet
    // conditioning of its own cross-attention width.
    let cond = if cond.dim(2)? == unet.cross_attention_dim {
        cond.to_dtype(DType::F32)?
    } else {
        Tensor::randn(0f32, 1.0, (1, 77, unet.cross_attention_dim), device)?
    };
    let guided = options.guidance > 1.0;
    let (x_batch, c_batch) = if guided { (2, 2) } else { (1, 1) };
    let x = Tensor::randn(0f32, 1.0, (x_batch, 4, h, w), device)?;
    let c = cond.repeat((c_batch, 1, 1))?;

    let mut step_times = Vec::new();
    for i in 0..=runs {
        let t0 = Instant::now();
        let eps = unet.forward(&x, 500.0, &c)?;
        sync(&eps)?;
        if i > 0 {
            step_times.push(t0.elapsed());
        }
    }

    let mut keyframe_times = Vec::new();
    let mut steps_run = 0;
    let init = Tensor::randn(0f32, 1.0, dims, device)?;
    let noise = Tensor::randn(0f32, 1.0, dims, device)?;
    for _ in 0..runs {
        let t0 = Instant::now();
        let sampler = Sampler::img2img(&scheduler, options.steps, options.strength);
        let mut latent = sampler.init_latent(Some(&init), &noise)?;
        for (i, &t) in sampler.timesteps().iter().enumerate() {
            let input = sampler.scale_input(&latent, i)?;
            let eps = if guided {
                let both = unet.forward(&Tensor::cat(&[&input, &input], 0)?, t as f64, &c)?;
                let (u, k) = (both.narrow(0, 0, 1)?, both.narrow(0, 1, 1)?);
                (&u + ((&k - &u)? * options.guidance)?)?
            } else {
                unet.forward(&input, t as f64, &cond)?
            };
            latent = sampler.step(&eps, i, &latent)?;
        }
        sync(&latent)?;
        steps_run = sampler.timesteps().len();
        keyframe_times.push(t0.elapsed());
    }
    let keyframe_ms = median(keyframe_times);
    Ok(DiffusionBenchReport {
        model: options.kind.name().to_string(),
        device: format!("{device:?}"),
        dtype: format!("{:?}", options.dtype).to_lowercase(),
        width: options.width,
        height: options.height,
        latent: [4, h, w],
        steps_run,
        guidance: options.guidance,
        load_ms,
        text_encode_ms: median(text_times),
        unet_step_ms: median(step_times),
        keyframe_ms,
        keyframes_per_s: if keyframe_ms > 0.0 {
            round(1000.0 / keyframe_ms, 3)
        } else {
            0.0
        },
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        load_average: std::fs::read_to_string("/proc/loadavg")
            .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_else(|_| "unknown".into()),
    })
}
