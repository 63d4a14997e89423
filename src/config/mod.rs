//! `dreamd.toml`: every setting the daemon reads, with a default for each key.
//!
//! Parsing is strict: an unknown key, a value of the wrong type or a value outside its allowed
//! range is an error naming the key (`display.target_fps`), the value and what is allowed. The
//! commented default file that `dreamd init` writes is `assets/dreamd.toml`, embedded in the
//! binary; a unit test keeps it identical to [`Config::default`].

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use crate::latent::path::PathKind;

pub mod dream_window;
pub mod live;
pub mod locate;
pub mod reload;
mod validate;

/// `display.target_fps` when the file does not set it (the original Dream Window's rate too).
pub const DEFAULT_TARGET_FPS: f64 = 4.0;

/// Largest config file read (1 MiB; the commented default is a few KiB).
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// The commented default configuration, as written by `dreamd init`.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../../assets/dreamd.toml");

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    /// The TOML is malformed, a key is unknown or a value has the wrong type.
    #[error("{origin}: {key}{message}")]
    Parse {
        origin: String,
        key: String,
        message: String,
    },
    /// A value parsed but is outside what is allowed.
    #[error("{key} must be {allowed} (got {value})")]
    Invalid {
        key: &'static str,
        value: String,
        allowed: String,
    },
    /// A value is outside what is allowed; the message names the key.
    #[error("{0}")]
    Message(String),
    /// A value in a list entry (`prompts.themes[2].weight`) is outside what is allowed.
    #[error("{key} must be {allowed} (got {value})")]
    InvalidEntry {
        key: String,
        value: String,
        allowed: String,
    },
    /// The settings need more memory than this machine can give (see
    /// [`Config::estimated_memory_bytes`]).
    #[error(
        "{settings} need about {needed_gb:.1} GB of memory, more than the {limit_gb:.1} GB \
         allowed here ({limit_why}); lower buffer.target_seconds, display.target_fps, \
         generation.frames_per_pair or the frame size"
    )]
    TooMuchMemory {
        settings: String,
        needed_gb: f64,
        limit_gb: f64,
        limit_why: String,
    },
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub paths: PathsConfig,
    pub display: DisplayConfig,
    pub buffer: BufferConfig,
    pub generation: GenerationConfig,
    pub keyframes: KeyframesConfig,
    pub output: OutputConfig,
    pub timeouts: TimeoutsConfig,
    pub logging: LoggingConfig,
    pub health: HealthConfig,
    pub faults: FaultsConfig,
    pub server: ServerConfig,
    /// `[comfyui]`: the ComfyUI server for `keyframes.source = "comfyui"`.
    pub comfyui: crate::comfyui::ComfyUiConfig,
    /// `[diffusion]`: the in-process model for `keyframes.source = "diffusion"`.
    pub diffusion: crate::engine::diffusion::DiffusionConfig,
    /// `[prompts]`: themes for sources that dream from prompts.
    pub prompts: crate::direction::themes::PromptsConfig,
    /// `[collapse]`: the mode-collapse detector.
    pub collapse: crate::direction::collapse::CollapseConfig,
    /// `[cache]`: the diverse-frame cache.
    pub cache: crate::direction::cache::CacheConfig,
    /// `[injection]`: cache and seed injections.
    pub injection: crate::direction::injection::InjectionConfig,
}

/// `[paths]`: where files go.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PathsConfig {
    pub output_dir: PathBuf,
    pub log_dir: PathBuf,
}

impl Default for PathsConfig {
    fn default() -> Self {
        Self {
            output_dir: PathBuf::from("output"),
            log_dir: PathBuf::from("logs"),
        }
    }
}

/// `[display]`: pacing and the start gate.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DisplayConfig {
    pub target_fps: f64,
    pub start_gate_seconds: f64,
}

impl Default for DisplayConfig {
    fn default() -> Self {
        Self {
            target_fps: DEFAULT_TARGET_FPS,
            start_gate_seconds: 10.0,
        }
    }
}

/// `[buffer]`: how far generation runs ahead of the display.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BufferConfig {
    pub target_seconds: f64,
}

impl Default for BufferConfig {
    fn default() -> Self {
        Self {
            target_seconds: 30.0,
        }
    }
}

/// Which decoder turns latents into pictures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
#[value(rename_all = "lower")]
pub enum DecoderChoice {
    /// TAESD when its weights are found, else the preview decoder.
    Auto,
    /// The built-in per-pixel latent-to-RGB map.
    Preview,
    /// TAESD for SD 1.x/2.x latents (4 channels).
    Taesd,
    /// TAESD for SDXL latents (4 channels).
    Taesdxl,
    /// TAESD for SD3 latents (16 channels).
    Taesd3,
    /// TAESD for FLUX.1 latents (16 channels).
    Taef1,
    /// TAESD for FLUX.2 latents (32 channels); runs on candle (its CPU backend on the CPU),
    /// since dreamd's CPU networks lack its GroupNorm mid-blocks.
    Taef2,
}

/// Arithmetic of the CPU TAESD convolutions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
#[value(rename_all = "lower")]
pub enum Precision {
    /// Direct convolutions in f32 (within 1e-3 of the reference vectors).
    Exact,
    /// Winograd F(4,3) in f32 for the 3×3 convolutions: ≈2× faster, within 45 dB PSNR of
    /// `exact` on real latents.
    #[default]
    Fast,
    /// [`Precision::Fast`] with the Winograd-domain products in bf16 (`vdpbf16ps`) where the
    /// CPU has AVX512_BF16 (elsewhere the same as `fast`): faster again, but ≈34 dB PSNR
    /// against `exact`, below `fast`'s 45 dB bound. On wgpu the same as `fast`.
    Bf16,
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Precision::Exact => f.write_str("exact"),
            Precision::Fast => f.write_str("fast"),
            Precision::Bf16 => f.write_str("bf16"),
        }
    }
}

/// `[generation]`: frame size, in-betweens, decoder and device.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GenerationConfig {
    pub frames_per_pair: u32,
    /// Pair lengthening: when keyframes come slower than the display shows a pair, the next
    /// pairs get more in-betweens, up to this many (None: off, always `frames_per_pair`).
    pub max_frames_per_pair: Option<u32>,
    pub width: u32,
    pub height: u32,
    pub decoder: DecoderChoice,
    pub device: String,
    /// Arithmetic of the CPU TAESD convolutions.
    pub precision: Precision,
    /// Decode at 1/d of the output size and upscale (None: the daemon chooses at start,
    /// `Engine::fit_divisor`; full size for every decoder but TAESD on the CPU).
    pub decode_divisor: Option<u32>,
    /// Folder searched first for model files.
    pub models_dir: Option<PathBuf>,
    /// The curve the in-betweens follow through the keyframes.
    pub path: PathKind,
    /// Keep each latent channel's mean and spread through the blend (contrast kept mid-pair).
    pub keep_contrast: bool,
    /// What a keyframe's own frame shows.
    pub keyframe_image: KeyframeImage,
    /// Extra frames each keyframe is held for (a gallery's dwell); 0 = none.
    pub keyframe_dwell_frames: u32,
    /// A ComfyUI install whose `models/vae_approx` is searched for the upstream `.pth` files
    /// (after models_dir, `$DREAMD_MODELS` and `./models`; `$COMFYUI_PATH` comes next).
    pub comfyui_dir: Option<PathBuf>,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        Self {
            frames_per_pair: 10,
            max_frames_per_pair: None,
            width: 512,
            height: 256,
            decoder: DecoderChoice::Auto,
            device: "auto".to_string(),
            precision: Precision::default(),
            decode_divisor: None,
            models_dir: None,
            path: PathKind::Spline,
            keep_contrast: true,
            keyframe_image: KeyframeImage::Decoded,
            keyframe_dwell_frames: 0,
            comfyui_dir: None,
        }
    }
}

/// What a keyframe's own frame shows (`generation.keyframe_image`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
#[value(rename_all = "lower")]
pub enum KeyframeImage {
    /// The keyframe latent through the same decoder, at the same size, as its in-betweens.
    Decoded,
    /// The source's own picture where it has one (crisper, but it pops against its decoded
    /// neighbours); latent-only keyframes are decoded.
    Picture,
}

/// Where keyframes come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
#[value(rename_all = "lower")]
pub enum SourceKind {
    /// Seeded, smooth, slowly drifting latent fields.
    Procedural,
    /// Pictures from a folder, encoded with the TAESD encoder.
    Images,
    /// img2img of the previous keyframe through a ComfyUI server (`[comfyui]`).
    Comfyui,
    /// img2img of the previous keyframe's latent, in process on candle (`[diffusion]`).
    Diffusion,
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceKind::Procedural => f.write_str("procedural"),
            SourceKind::Images => f.write_str("images"),
            SourceKind::Comfyui => f.write_str("comfyui"),
            SourceKind::Diffusion => f.write_str("diffusion"),
        }
    }
}

/// The order in which the image source visits its pictures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
#[value(rename_all = "lower")]
pub enum ImageOrder {
    /// In file-name order, round and round.
    Cycle,
    /// A fresh seeded permutation each round.
    Shuffle,
}

/// How a picture of another aspect ratio is fitted to the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
#[value(rename_all = "lower")]
pub enum FitMode {
    /// Scale to cover the frame and cut the overflow (centred).
    Crop,
    /// Scale to fit inside the frame and fill the rest with black.
    Pad,
}

/// `[keyframes]`: the keyframe source and its settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeyframesConfig {
    pub source: SourceKind,
    pub seed: u64,
    pub drift: f64,
    /// Folder of pictures for `source = "images"`.
    pub images_dir: PathBuf,
    pub order: ImageOrder,
    pub fit: FitMode,
}

impl Default for KeyframesConfig {
    fn default() -> Self {
        Self {
            source: SourceKind::Procedural,
            seed: 42,
            drift: 0.35,
            images_dir: PathBuf::from("images"),
            order: ImageOrder::Cycle,
            fit: FitMode::Crop,
        }
    }
}

/// How frames are encoded on disk and for publishing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
#[value(rename_all = "lower")]
pub enum FrameFormat {
    Png,
    Jpeg,
}

impl FrameFormat {
    /// File extension, without the dot.
    pub fn extension(self) -> &'static str {
        match self {
            FrameFormat::Png => "png",
            FrameFormat::Jpeg => "jpg",
        }
    }

    /// MIME type of the encoded bytes.
    pub fn content_type(self) -> &'static str {
        match self {
            FrameFormat::Png => "image/png",
            FrameFormat::Jpeg => "image/jpeg",
        }
    }
}

/// `[output]`: frame encoding and retention on disk.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutputConfig {
    pub format: FrameFormat,
    pub jpeg_quality: u8,
    pub keep_frames: Option<usize>,
    /// Megabytes of frames kept on disk at most (the oldest go first); none by default.
    pub keep_mb: Option<u64>,
}

impl Default for OutputConfig {
    fn default() -> Self {
        Self {
            format: FrameFormat::Png,
            jpeg_quality: 90,
            keep_frames: None,
            keep_mb: None,
        }
    }
}

/// `[timeouts]`: the longest each stage may take.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TimeoutsConfig {
    pub keyframe_seconds: f64,
    pub slerp_seconds: f64,
    pub decode_seconds: f64,
    pub save_seconds: f64,
}

impl Default for TimeoutsConfig {
    fn default() -> Self {
        Self {
            keyframe_seconds: 30.0,
            slerp_seconds: 10.0,
            decode_seconds: 30.0,
            save_seconds: 10.0,
        }
    }
}

impl TimeoutsConfig {
    pub fn keyframe(&self) -> Duration {
        Duration::from_secs_f64(self.keyframe_seconds)
    }
    pub fn slerp(&self) -> Duration {
        Duration::from_secs_f64(self.slerp_seconds)
    }
    pub fn decode(&self) -> Duration {
        Duration::from_secs_f64(self.decode_seconds)
    }
    pub fn save(&self) -> Duration {
        Duration::from_secs_f64(self.save_seconds)
    }
}

/// `[logging]`: log filter and file retention.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoggingConfig {
    pub level: String,
    pub keep_days: usize,
    /// `dreamd.jsonl` is rotated when it passes this many MiB …
    pub jsonl_max_mb: usize,
    /// … keeping this many rotated files (`dreamd.jsonl.1` … `.N`).
    pub jsonl_keep: usize,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self {
            level: "info".to_string(),
            keep_days: 7,
            jsonl_max_mb: 64,
            jsonl_keep: 4,
        }
    }
}

/// `[health]`: when the daemon reports itself `degraded`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthConfig {
    /// A stage failure keeps the state `degraded` for this long.
    pub degraded_seconds: f64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            degraded_seconds: 30.0,
        }
    }
}

/// `[server]`: the HTTP server (kiosk page, frames, events, status, metrics, control).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub enabled: bool,
    /// `IP:port` to listen on; port 0 picks a free port (the URL is logged and in status.json).
    pub bind: String,
    /// Bearer token for the control endpoints (`DREAMD_TOKEN` overrides it). Required when
    /// `bind` is not a loopback address.
    pub token: Option<String>,
    /// Live-event (SSE) clients served at once; more get 503.
    pub max_sse_clients: usize,
    /// Longest time a request (other than the event stream) may take.
    pub request_timeout_seconds: f64,
    /// `/healthz` answers 503 once the daemon has been `degraded` this long without a break.
    pub unhealthy_after_seconds: f64,
    /// HTTP connections open at once (event streams included); never more than the open-file
    /// limit minus the descriptors kept for the daemon's own files. Further ones get 503.
    pub max_connections: usize,
    /// A connection must send its request headers within this time, or it is closed.
    pub header_timeout_seconds: f64,
    /// A connection that neither sends nor receives a byte for this long is closed (event
    /// streams send a keep-alive every 15 s, so keep it above that).
    pub idle_timeout_seconds: f64,
    /// Host names (besides IP addresses and `localhost`) accepted in the `Host` header, e.g.
    /// `["kiosk.lan"]`; `["*"]` accepts any. Guards against DNS rebinding.
    pub allowed_hosts: Vec<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            bind: "127.0.0.1:8765".to_string(),
            token: None,
            max_sse_clients: 256,
            request_timeout_seconds: 10.0,
            unhealthy_after_seconds: 60.0,
            max_connections: 512,
            header_timeout_seconds: 10.0,
            idle_timeout_seconds: 60.0,
            allowed_hosts: Vec::new(),
        }
    }
}

impl HealthConfig {
    pub fn degraded_window(&self) -> Duration {
        Duration::from_secs_f64(self.degraded_seconds)
    }
}

/// `[faults]`: injected failures, a testing aid (all off by default). Each fault is active in a
/// window of time counted from start-up (or from the reload that set it).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultsConfig {
    /// Decode calls fail.
    pub decoder_error: Option<FaultWindow>,
    /// Decode calls block (holding the GPU lock) until the window ends.
    pub decoder_hang: Option<FaultWindow>,
    /// Keyframes fail.
    pub keyframe_error: Option<FaultWindow>,
    /// Keyframe requests block until the window ends.
    pub keyframe_hang: Option<FaultWindow>,
    /// Frame file writes (frames/ and current_frame) fail as on a full disk.
    pub write_error: Option<FaultWindow>,
    /// Frame file writes are delayed by `slow_disk_ms` each.
    pub slow_disk: Option<FaultWindow>,
    pub slow_disk_ms: u64,
}

impl Default for FaultsConfig {
    fn default() -> Self {
        Self {
            decoder_error: None,
            decoder_hang: None,
            keyframe_error: None,
            keyframe_hang: None,
            write_error: None,
            slow_disk: None,
            slow_disk_ms: 500,
        }
    }
}

/// When a fault is active: from `after_seconds` for `for_seconds` (default: for ever).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultWindow {
    #[serde(default)]
    pub after_seconds: f64,
    #[serde(default = "forever")]
    pub for_seconds: f64,
}

fn forever() -> f64 {
    f64::INFINITY
}

impl FaultsConfig {
    /// Each fault's config key and window.
    pub fn windows(&self) -> [(&'static str, Option<FaultWindow>); 6] {
        [
            ("faults.decoder_error", self.decoder_error),
            ("faults.decoder_hang", self.decoder_hang),
            ("faults.keyframe_error", self.keyframe_error),
            ("faults.keyframe_hang", self.keyframe_hang),
            ("faults.write_error", self.write_error),
            ("faults.slow_disk", self.slow_disk),
        ]
    }
}

impl ServerConfig {
    /// The parsed bind address.
    pub fn bind_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.bind.parse().map_err(|_| {
            invalid(
                "server.bind",
                format!("{:?}", self.bind),
                "an IP address and port such as \"127.0.0.1:8765\" or \"0.0.0.0:8765\"",
            )
        })
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.request_timeout_seconds)
    }

    pub fn unhealthy_after(&self) -> Duration {
        Duration::from_secs_f64(self.unhealthy_after_seconds)
    }

    pub fn header_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.header_timeout_seconds)
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.idle_timeout_seconds)
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let read_error = |error| ConfigError::Read {
            path: path.to_path_buf(),
            error,
        };
        // A regular file only (a FIFO would block), and bounded: a huge file is refused.
        let bytes =
            crate::regular_file::read_bounded(path, MAX_CONFIG_BYTES).map_err(read_error)?;
        let text = String::from_utf8(bytes).map_err(|e| {
            read_error(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                e.utf8_error(),
            ))
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Parses and validates TOML text; `origin` names it in errors (a file path, say).
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let deserializer = toml::Deserializer::new(text);
        let config: Config = serde_path_to_error::deserialize(deserializer).map_err(|err| {
            let key = err.path().to_string();
            let key = if key == "." {
                String::new()
            } else {
                format!("{key}: ")
            };
            ConfigError::Parse {
                origin: origin.to_string(),
                key,
                message: err.into_inner().to_string().trim_end().to_string(),
            }
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Frames the buffer aims to hold: `target_fps × target_seconds`.
    pub fn buffer_frames(&self) -> usize {
        (self.display.target_fps * self.buffer.target_seconds).round() as usize
    }

    /// Frames kept on disk: `output.keep_frames`, or twice the buffer.
    pub fn keep_frames(&self) -> usize {
        self.output
            .keep_frames
            .unwrap_or_else(|| 2 * self.buffer_frames())
    }

    /// The byte budget of frames on disk: `output.keep_mb`, if set.
    pub fn keep_bytes(&self) -> Option<u64> {
        self.output.keep_mb.map(|mb| mb.saturating_mul(1024 * 1024))
    }

    /// The time one frame is shown.
    pub fn frame_interval(&self) -> Duration {
        Duration::from_secs_f64(1.0 / self.display.target_fps)
    }
}

/// Where decoding runs, as named by `generation.device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceRequest {
    /// CUDA when built and present, else a real GPU through wgpu, else the CPU.
    Auto,
    Cpu,
    Cuda(usize),
    /// The portable GPU backend (Vulkan, Metal, DX12), software adapters included.
    Wgpu,
}

/// Parses `auto`, `cpu`, `cuda`, `cuda:N` or `wgpu`.
pub fn parse_device(text: &str) -> Result<DeviceRequest, ConfigError> {
    let bad = || {
        invalid(
            "generation.device",
            format!("{text:?}"),
            "\"auto\", \"cpu\", \"cuda\", \"cuda:N\" or \"wgpu\"",
        )
    };
    match text {
        "auto" => Ok(DeviceRequest::Auto),
        "cpu" => Ok(DeviceRequest::Cpu),
        "cuda" => Ok(DeviceRequest::Cuda(0)),
        "wgpu" => Ok(DeviceRequest::Wgpu),
        other => match other.strip_prefix("cuda:") {
            Some(n) => n.parse().map(DeviceRequest::Cuda).map_err(|_| bad()),
            None => Err(bad()),
        },
    }
}

/// The error for `key` holding `value`, which is not `allowed`.
pub(crate) fn invalid(
    key: &'static str,
    value: impl fmt::Display,
    allowed: impl Into<String>,
) -> ConfigError {
    ConfigError::Invalid {
        key,
        value: value.to_string(),
        allowed: allowed.into(),
    }
}

#[cfg(test)]
mod tests;
