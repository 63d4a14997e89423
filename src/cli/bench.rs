//! `dreamd bench pacing|http|motion|decode|encode|resolution`: measurements, printed as text or
//! JSON.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use dreamd::bench::{self, codec};
use dreamd::config::{
    locate, Config, DecoderChoice, GenerationConfig, KeyframeImage, PathKind, Precision, SourceKind,
};
use dreamd::engine::Engine;
use dreamd::logging::{self, LogGuards};

/// The `dreamd bench` subcommands.
#[derive(clap::Subcommand)]
pub enum BenchCommand {
    /// Frames/s and encode→decode PSNR for each decode_divisor, on real pictures.
    Resolution {
        /// Config file to start from (decoder, device, output size, models_dir).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Decoder (overrides generation.decoder).
        #[arg(long, default_value = "taesd")]
        decoder: DecoderChoice,
        /// Folder of pictures (default: keyframes.images_dir).
        #[arg(long)]
        images: Option<PathBuf>,
        /// Divisors to compare, comma-separated.
        #[arg(long, default_value = "1,2,4", value_delimiter = ',')]
        divisors: Vec<u32>,
        /// Latents per timed decode call.
        #[arg(long, default_value_t = 10)]
        batch: usize,
        /// Timed runs per divisor (the median is reported).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Print JSON instead of a Markdown table.
        #[arg(long)]
        json: bool,
    },
    /// Run the real daemon on the embedded default and report display pacing, lock and memory.
    Pacing {
        /// Config file to start from (gate, output and log folders are overridden).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// How long to run.
        #[arg(long, default_value_t = 60.0)]
        seconds: f64,
        /// Target fps (overrides display.target_fps).
        #[arg(long)]
        fps: Option<f64>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Display pacing idle and under HTTP load (SSE clients, stalled clients, /frame/current
    /// polling), in one run of the real daemon.
    Http {
        /// Config file to start from (gate, output, log folders and bind are overridden).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Live-event clients that read their stream.
        #[arg(long, default_value_t = 200)]
        clients: usize,
        /// Extra live-event clients that connect and never read.
        #[arg(long, default_value_t = 20)]
        stalled: usize,
        /// Tasks polling /frame/current.
        #[arg(long, default_value_t = 10)]
        pollers: usize,
        /// Milliseconds between one poller's requests.
        #[arg(long, default_value_t = 100)]
        poll_ms: u64,
        /// Seconds measured idle, and again loaded.
        #[arg(long, default_value_t = 30.0)]
        seconds: f64,
        /// Alternating idle/loaded rounds the seconds are split into.
        #[arg(long, default_value_t = 6)]
        rounds: usize,
        /// Target fps (overrides display.target_fps).
        #[arg(long)]
        fps: Option<f64>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The ComfyUI client's cost per keyframe and its memory over many keyframes, against the
    /// replaying ComfyUI (the recorded protocol on loopback) or a real server.
    Comfyui {
        /// Timed keyframes (at least 10).
        #[arg(long, default_value_t = 1000)]
        keyframes: usize,
        /// A running ComfyUI instead of the replay (then only totals and phases are known).
        #[arg(long)]
        url: Option<String>,
        /// An API-format workflow with placeholders (default: the built-in img2img graph).
        #[arg(long)]
        workflow: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run the real daemon for a number of keyframe pairs and measure how its frames move
    /// (step evenness, seams, keyframe sharpness, direction through keyframes, contrast).
    Motion {
        /// Config file to start from (gate, output and log folders, buffer and retention are
        /// overridden).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Keyframe pairs to make and measure (at least 2).
        #[arg(long, default_value_t = 6)]
        pairs: usize,
        /// Keyframe source (overrides keyframes.source).
        #[arg(long)]
        source: Option<SourceKind>,
        /// Folder of pictures for the image source (overrides keyframes.images_dir).
        #[arg(long)]
        images: Option<PathBuf>,
        /// Path of the in-betweens (overrides generation.path).
        #[arg(long)]
        path: Option<PathKind>,
        /// true or false (overrides generation.keep_contrast).
        #[arg(long, action = clap::ArgAction::Set)]
        keep_contrast: Option<bool>,
        /// What keyframe frames show (overrides generation.keyframe_image).
        #[arg(long)]
        keyframe_image: Option<KeyframeImage>,
        /// In-betweens per pair (overrides generation.frames_per_pair).
        #[arg(long)]
        frames_per_pair: Option<u32>,
        /// Extra frames each keyframe is held (overrides generation.keyframe_dwell_frames).
        #[arg(long)]
        dwell: Option<u32>,
        /// Decoder (overrides generation.decoder).
        #[arg(long)]
        decoder: Option<DecoderChoice>,
        /// Decode at 1/N of the frame size (overrides generation.decode_divisor).
        #[arg(long)]
        decode_divisor: Option<u32>,
        /// Frame width (overrides generation.width).
        #[arg(long)]
        width: Option<u32>,
        /// Frame height (overrides generation.height).
        #[arg(long)]
        height: Option<u32>,
        /// Folder searched first for model files (overrides generation.models_dir).
        #[arg(long)]
        models_dir: Option<PathBuf>,
        /// Stop waiting for the pairs after this long and measure what is there.
        #[arg(long, default_value_t = 600.0)]
        max_seconds: f64,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// In-process diffusion with random weights of the real architecture (no download):
    /// text encoding, one UNet step and a whole img2img keyframe.
    Diffusion {
        /// Config file to start from (`[diffusion]` strength, steps, guidance, dtype; output
        /// size; device).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Architecture: sd15, sd-turbo or sdxl-turbo.
        #[arg(long, default_value = "sd-turbo")]
        model: String,
        /// Picture width (default: generation.width ÷ decode_divisor).
        #[arg(long)]
        width: Option<usize>,
        /// Picture height (default: generation.height ÷ decode_divisor).
        #[arg(long)]
        height: Option<usize>,
        /// Timed runs (the median is reported).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Time one batched decode call (warm-up, then the median of several runs).
    Decode {
        /// Decoder.
        #[arg(long, default_value = "auto")]
        decoder: DecoderChoice,
        /// Latents per call.
        #[arg(long, default_value_t = 10)]
        batch: usize,
        /// Latent shape CxHxW (output is 8H x 8W).
        #[arg(long, default_value = "4x32x64")]
        latent: String,
        #[command(flatten)]
        codec: CodecArgs,
    },
    /// Time one batched encode call (pictures to latents; warm-up, then the median of several runs).
    Encode {
        /// Model family.
        #[arg(long, default_value = "taesd")]
        decoder: DecoderChoice,
        /// Pictures per call.
        #[arg(long, default_value_t = 10)]
        batch: usize,
        /// Picture shape 3xHxW (sides multiples of 8).
        #[arg(long, default_value = "3x256x512")]
        size: String,
        #[command(flatten)]
        codec: CodecArgs,
    },
}

/// The flags `dreamd bench decode` and `encode` share.
#[derive(clap::Args)]
pub struct CodecArgs {
    /// Config file to start from (for models_dir and the like).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Device: auto, cpu, cuda, cuda:N, wgpu.
    #[arg(long, default_value = "auto")]
    device: String,
    /// CPU arithmetic (default: generation.precision of the config).
    #[arg(long)]
    precision: Option<Precision>,
    /// Timed runs after two warm-up runs.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

impl BenchCommand {
    pub fn run(self) -> anyhow::Result<()> {
        match self {
            BenchCommand::Pacing {
                config,
                seconds,
                fps,
                json,
            } => {
                let (config, _logs) = daemon_config(config, fps, seconds)?;
                let options = bench::pacing::PacingOptions {
                    seconds,
                    warmup_seconds: (seconds * 0.1).min(10.0),
                };
                let report = super::runtime()?
                    .block_on_with_signals(|_| bench::pacing::run(config, options))?;
                super::print_report(json, &report, report.to_text())
            }
            BenchCommand::Http {
                config,
                clients,
                stalled,
                pollers,
                poll_ms,
                seconds,
                rounds,
                fps,
                json,
            } => {
                anyhow::ensure!(poll_ms > 0, "--poll-ms must be at least 1");
                let (config, _logs) = daemon_config(config, fps, seconds)?;
                let options = bench::http::HttpLoadOptions {
                    clients,
                    stalled,
                    pollers,
                    poll_every: Duration::from_millis(poll_ms),
                    seconds,
                    rounds,
                    warmup_seconds: 3.0,
                };
                let report = super::runtime()?
                    .block_on_with_signals(|_| bench::http::run(config, options))?;
                super::print_report(json, &report, report.to_text())
            }
            BenchCommand::Comfyui {
                keyframes,
                url,
                workflow,
                json,
            } => {
                let workflow = match workflow {
                    Some(path) => dreamd::comfyui::workflow::Workflow::load(&path)?,
                    None => dreamd::comfyui::workflow::Workflow::img2img(),
                };
                let options = bench::comfyui::ComfyOptions {
                    keyframes,
                    url,
                    workflow,
                };
                let report =
                    super::runtime()?.block_on_with_signals(|_| bench::comfyui::run(options))?;
                super::print_report(json, &report, report.to_text())
            }
            BenchCommand::Motion {
                config,
                pairs,
                source,
                images,
                path,
                keep_contrast,
                keyframe_image,
                frames_per_pair,
                dwell,
                decoder,
                decode_divisor,
                width,
                height,
                models_dir,
                max_seconds,
                json,
            } => {
                let (mut config, _logs) = daemon_config(config, None, max_seconds)?;
                let k = &mut config.keyframes;
                set(&mut k.source, source);
                set(&mut k.images_dir, images);
                let g = &mut config.generation;
                set(&mut g.path, path);
                set(&mut g.keep_contrast, keep_contrast);
                set(&mut g.keyframe_image, keyframe_image);
                set(&mut g.frames_per_pair, frames_per_pair);
                set(&mut g.keyframe_dwell_frames, dwell);
                set(&mut g.decoder, decoder);
                set(&mut g.width, width);
                set(&mut g.height, height);
                if decode_divisor.is_some() {
                    g.decode_divisor = decode_divisor;
                }
                if models_dir.is_some() {
                    g.models_dir = models_dir;
                }
                config.validate()?;
                let options = bench::motion::MotionOptions { pairs, max_seconds };
                let report = super::runtime()?
                    .block_on_with_signals(|_| bench::motion::run(config, options))?;
                super::print_report(json, &report, report.to_text())
            }
            BenchCommand::Diffusion {
                config,
                model,
                width,
                height,
                runs,
                json,
            } => {
                use dreamd::engine::diffusion::presets::ModelKind;
                let config = locate::load(config.as_deref())?.config;
                let kind = match model.as_str() {
                    "sd15" => ModelKind::Sd1,
                    "sd-turbo" => ModelKind::SdTurbo,
                    "sdxl-turbo" => ModelKind::SdxlTurbo,
                    other => anyhow::bail!(
                        "--model must be sd15, sd-turbo or sdxl-turbo (got {other:?})"
                    ),
                };
                let g = &config.generation;
                let divisor = g.decode_divisor.unwrap_or(1).max(1) as usize;
                let device =
                    dreamd::engine::Device::select(dreamd::config::parse_device(&g.device)?)?;
                let device = dreamd::engine::taesd::candle::candle_device(device)?;
                let d = &config.diffusion;
                let options = bench::diffusion::DiffusionBenchOptions {
                    kind,
                    width: width.unwrap_or(g.width as usize / divisor),
                    height: height.unwrap_or(g.height as usize / divisor),
                    steps: d.steps,
                    strength: d.strength,
                    guidance: d.guidance,
                    runs,
                    dtype: d.dtype.resolve(&device),
                };
                let report = bench::diffusion::run(&options, &device)?;
                super::print_report(json, &report, report.to_text())
            }
            BenchCommand::Decode {
                decoder,
                batch,
                latent,
                codec,
            } => {
                let [channels, height, width] = parse_dims(&latent, "--latent")?;
                ensure_counts(batch, codec.runs)?;
                let engine = codec.engine(decoder, width * 8, height * 8)?;
                let shape = engine.latent_shape();
                anyhow::ensure!(
                    shape.channels == channels,
                    "decoder {} takes {}-channel latents, --latent asks for {channels}",
                    engine.decoder_name(),
                    shape.channels,
                );
                let options = codec::DecodeOptions::new(batch, shape, codec.runs);
                let report = codec::decode(&engine, &options)?;
                super::print_report(codec.json, &report, report.to_text())
            }
            BenchCommand::Encode {
                decoder,
                batch,
                size,
                codec,
            } => {
                let [channels, height, width] = parse_dims(&size, "--size")?;
                anyhow::ensure!(
                    channels == 3,
                    "--size must be 3xHxW (RGB pictures), got {size:?}"
                );
                ensure_counts(batch, codec.runs)?;
                let engine = codec.engine(decoder, width, height)?;
                let options = codec::DecodeOptions::new(batch, engine.latent_shape(), codec.runs);
                let report = codec::encode(&engine, &options)?;
                super::print_report(codec.json, &report, report.to_text())
            }
            BenchCommand::Resolution {
                config,
                decoder,
                images,
                divisors,
                batch,
                runs,
                json,
            } => {
                let mut config = locate::load(config.as_deref())?.config;
                config.generation.decoder = decoder;
                let options = bench::resolution::ResolutionOptions {
                    images: images.unwrap_or_else(|| config.keyframes.images_dir.clone()),
                    divisors,
                    batch,
                    runs,
                };
                let report = bench::resolution::resolution(&config, &options)?;
                super::print_report(json, &report, report.to_text())
            }
        }
    }
}

/// The config a bench of the whole daemon (`pacing`, `http`) runs on, with `fps` over
/// `display.target_fps` and warnings only, and its logs (in a temporary folder) started.
fn daemon_config(
    config: Option<PathBuf>,
    fps: Option<f64>,
    seconds: f64,
) -> anyhow::Result<(Config, LogGuards)> {
    let mut config = locate::load(config.as_deref())?.config;
    if let Some(fps) = fps {
        config.display.target_fps = fps;
    }
    config.logging.level = "warn".to_string();
    config.validate()?;
    super::seconds(seconds)?;
    let logs = logging::init(
        &config.logging,
        &std::env::temp_dir().join("dreamd-bench-logs"),
    )?;
    Ok((config, logs))
}

/// Replaces `value` with the flag's, when given.
fn set<T>(value: &mut T, flag: Option<T>) {
    if let Some(flag) = flag {
        *value = flag;
    }
}

fn ensure_counts(batch: usize, runs: usize) -> anyhow::Result<()> {
    anyhow::ensure!(
        batch > 0 && runs > 0,
        "--batch and --runs must be at least 1"
    );
    Ok(())
}

/// Parses `CxHxW` with positive numbers.
fn parse_dims(text: &str, flag: &str) -> anyhow::Result<[usize; 3]> {
    let dims: Vec<usize> = text
        .split('x')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()
        .filter(|d: &Vec<usize>| d.len() == 3 && d.iter().all(|&v| v > 0))
        .with_context(|| format!("{flag} must be CxHxW with positive numbers (got {text:?})"))?;
    Ok([dims[0], dims[1], dims[2]])
}

impl CodecArgs {
    /// Builds the engine for `width × height` frames, decoded at full size: the config's
    /// `[generation]` replaced by `decoder` and the flags (defaults elsewhere, `models_dir` and
    /// `comfyui_dir` kept).
    fn engine(
        &self,
        decoder: DecoderChoice,
        width: usize,
        height: usize,
    ) -> anyhow::Result<Engine> {
        let mut config = locate::load(self.config.as_deref())?.config;
        let side = |pixels: usize| u32::try_from(pixels).unwrap_or(u32::MAX);
        config.generation = GenerationConfig {
            decoder,
            device: self.device.clone(),
            precision: self.precision.unwrap_or(config.generation.precision),
            width: side(width),
            height: side(height),
            decode_divisor: Some(1),
            models_dir: config.generation.models_dir.clone(),
            comfyui_dir: config.generation.comfyui_dir.clone(),
            ..GenerationConfig::default()
        };
        config.validate()?;
        Ok(Engine::from_config(&config)?)
    }
}
