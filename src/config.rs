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

/// The commented default configuration, as written by `dreamd init`.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../assets/dreamd.toml");

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
            target_fps: 4.0,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
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
}

/// Arithmetic of the CPU TAESD convolutions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Direct convolutions in f32 (within 1e-3 of the reference vectors).
    Exact,
    /// Winograd F(4,3) in f32 for the 3×3 convolutions: ≈2× faster, within 45 dB PSNR of
    /// `exact` on real latents.
    #[default]
    Fast,
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Precision::Exact => f.write_str("exact"),
            Precision::Fast => f.write_str("fast"),
        }
    }
}

/// `[generation]`: frame size, in-betweens, decoder and device.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GenerationConfig {
    pub frames_per_pair: u32,
    pub width: u32,
    pub height: u32,
    pub decoder: DecoderChoice,
    pub device: String,
    /// Arithmetic of the CPU TAESD convolutions.
    pub precision: Precision,
    /// Decode at 1/d of the output size and upscale (None: 1, full size).
    pub decode_divisor: Option<u32>,
    /// Folder searched first for model files.
    pub models_dir: Option<PathBuf>,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        Self {
            frames_per_pair: 10,
            width: 512,
            height: 256,
            decoder: DecoderChoice::Auto,
            device: "auto".to_string(),
            precision: Precision::default(),
            decode_divisor: None,
            models_dir: None,
        }
    }
}

/// Where keyframes come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// Seeded, smooth, slowly drifting latent fields.
    Procedural,
    /// Pictures from a folder, encoded with the TAESD encoder.
    Images,
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceKind::Procedural => f.write_str("procedural"),
            SourceKind::Images => f.write_str("images"),
        }
    }
}

/// The order in which the image source visits its pictures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageOrder {
    /// In file-name order, round and round.
    Cycle,
    /// A fresh seeded permutation each round.
    Shuffle,
}

/// How a picture of another aspect ratio is fitted to the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
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
}

impl Default for OutputConfig {
    fn default() -> Self {
        Self {
            format: FrameFormat::Png,
            jpeg_quality: 90,
            keep_frames: None,
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
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_path_buf(),
            error,
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

    /// Checks every value against its allowed range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let d = &self.display;
        check_range(
            "display.target_fps",
            d.target_fps,
            0.0,
            120.0,
            "> 0 and <= 120",
        )?;
        let b = &self.buffer;
        check_range(
            "buffer.target_seconds",
            b.target_seconds,
            0.0,
            3600.0,
            "> 0 and <= 3600",
        )?;
        if !(d.start_gate_seconds.is_finite()
            && d.start_gate_seconds >= 0.0
            && d.start_gate_seconds <= b.target_seconds)
        {
            return Err(invalid(
                "display.start_gate_seconds",
                d.start_gate_seconds,
                format!(">= 0 and <= buffer.target_seconds ({})", b.target_seconds),
            ));
        }
        if self.buffer_frames() < 1 {
            return Err(invalid(
                "buffer.target_seconds",
                b.target_seconds,
                "long enough to hold one frame at display.target_fps",
            ));
        }
        let g = &self.generation;
        if !(1..=240).contains(&g.frames_per_pair) {
            return Err(invalid(
                "generation.frames_per_pair",
                g.frames_per_pair,
                "between 1 and 240",
            ));
        }
        for (key, value) in [
            ("generation.width", g.width),
            ("generation.height", g.height),
        ] {
            if value % 8 != 0 || !(64..=4096).contains(&value) {
                return Err(invalid(key, value, "a multiple of 8 between 64 and 4096"));
            }
        }
        parse_device(&g.device)?;
        if let Some(d) = g.decode_divisor {
            if ![1, 2, 4, 8].contains(&d) || (g.width / 8) % d != 0 || (g.height / 8) % d != 0 {
                return Err(invalid(
                    "generation.decode_divisor",
                    d,
                    format!(
                        "1, 2, 4 or 8, dividing the latent size {}x{}",
                        g.width / 8,
                        g.height / 8
                    ),
                ));
            }
        }
        check_range(
            "keyframes.drift",
            self.keyframes.drift,
            0.0,
            10.0,
            "> 0 and <= 10",
        )?;
        let o = &self.output;
        if !(1..=100).contains(&o.jpeg_quality) {
            return Err(invalid(
                "output.jpeg_quality",
                o.jpeg_quality,
                "between 1 and 100",
            ));
        }
        if o.keep_frames == Some(0) {
            return Err(invalid("output.keep_frames", 0, ">= 1"));
        }
        let t = &self.timeouts;
        for (key, value) in [
            ("timeouts.keyframe_seconds", t.keyframe_seconds),
            ("timeouts.slerp_seconds", t.slerp_seconds),
            ("timeouts.decode_seconds", t.decode_seconds),
            ("timeouts.save_seconds", t.save_seconds),
        ] {
            check_range(key, value, 0.0, 86_400.0, "> 0 and <= 86400")?;
        }
        if let Err(err) = tracing_subscriber::EnvFilter::builder().parse(&self.logging.level) {
            return Err(invalid(
                "logging.level",
                format!("{:?}", self.logging.level),
                format!("a level or tracing directives ({err})"),
            ));
        }
        if self.logging.keep_days == 0 {
            return Err(invalid("logging.keep_days", 0, ">= 1"));
        }
        if !(1..=65_536).contains(&self.logging.jsonl_max_mb) {
            return Err(invalid(
                "logging.jsonl_max_mb",
                self.logging.jsonl_max_mb,
                "between 1 and 65536",
            ));
        }
        if !(1..=1000).contains(&self.logging.jsonl_keep) {
            return Err(invalid(
                "logging.jsonl_keep",
                self.logging.jsonl_keep,
                "between 1 and 1000",
            ));
        }
        check_range(
            "health.degraded_seconds",
            self.health.degraded_seconds,
            0.0,
            86_400.0,
            "> 0 and <= 86400",
        )?;
        for (key, window) in self.faults.windows() {
            let Some(w) = window else { continue };
            let valid = w.after_seconds.is_finite()
                && w.after_seconds >= 0.0
                && !w.for_seconds.is_nan()
                && w.for_seconds > 0.0;
            if !valid {
                return Err(invalid(
                    key,
                    format!(
                        "{{ after_seconds = {}, for_seconds = {} }}",
                        w.after_seconds, w.for_seconds
                    ),
                    "after_seconds >= 0 and for_seconds > 0",
                ));
            }
        }
        if self.faults.slow_disk_ms > 600_000 {
            return Err(invalid(
                "faults.slow_disk_ms",
                self.faults.slow_disk_ms,
                "<= 600000",
            ));
        }
        let server = &self.server;
        server.bind_addr()?;
        if server.token.as_deref().is_some_and(|t| t.trim().is_empty()) {
            return Err(invalid("server.token", "\"\"", "a non-empty string"));
        }
        if !(1..=100_000).contains(&server.max_sse_clients) {
            return Err(invalid(
                "server.max_sse_clients",
                server.max_sse_clients,
                "between 1 and 100000",
            ));
        }
        check_range(
            "server.request_timeout_seconds",
            server.request_timeout_seconds,
            0.0,
            3600.0,
            "> 0 and <= 3600",
        )?;
        let unhealthy = server.unhealthy_after_seconds;
        if !(unhealthy.is_finite() && (0.0..=86_400.0).contains(&unhealthy)) {
            return Err(invalid(
                "server.unhealthy_after_seconds",
                unhealthy,
                ">= 0 and <= 86400",
            ));
        }
        Ok(())
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

    /// The time one frame is shown.
    pub fn frame_interval(&self) -> Duration {
        Duration::from_secs_f64(1.0 / self.display.target_fps)
    }
}

/// Where decoding runs, as named by `generation.device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceRequest {
    Auto,
    Cpu,
    Cuda(usize),
}

/// Parses `auto`, `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(text: &str) -> Result<DeviceRequest, ConfigError> {
    let bad = || {
        invalid(
            "generation.device",
            format!("{text:?}"),
            "\"auto\", \"cpu\", \"cuda\" or \"cuda:N\"",
        )
    };
    match text {
        "auto" => Ok(DeviceRequest::Auto),
        "cpu" => Ok(DeviceRequest::Cpu),
        "cuda" => Ok(DeviceRequest::Cuda(0)),
        other => match other.strip_prefix("cuda:") {
            Some(n) => n.parse().map(DeviceRequest::Cuda).map_err(|_| bad()),
            None => Err(bad()),
        },
    }
}

fn invalid(key: &'static str, value: impl fmt::Display, allowed: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        value: value.to_string(),
        allowed: allowed.into(),
    }
}

/// `value` must be finite, > `min` and <= `max`.
fn check_range(
    key: &'static str,
    value: f64,
    min: f64,
    max: f64,
    allowed: &str,
) -> Result<(), ConfigError> {
    if value.is_finite() && value > min && value <= max {
        Ok(())
    } else {
        Err(invalid(key, value, allowed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        Config::parse(text, "test.toml").unwrap_err().to_string()
    }

    #[test]
    fn embedded_default_file_matches_defaults() {
        let parsed = Config::parse(DEFAULT_CONFIG_TOML, "default").unwrap();
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn empty_file_is_all_defaults() {
        let config = Config::parse("", "empty").unwrap();
        assert_eq!(config, Config::default());
        assert_eq!(config.buffer_frames(), 120);
        assert_eq!(config.keep_frames(), 240);
        assert_eq!(config.frame_interval(), Duration::from_millis(250));
    }

    #[test]
    fn zero_fps_names_key_value_and_rule() {
        assert_eq!(
            err("[display]\ntarget_fps = 0"),
            "display.target_fps must be > 0 and <= 120 (got 0)"
        );
    }

    #[test]
    fn unknown_key_is_named_with_its_section() {
        let message = err("[display]\ntarget_fsp = 3");
        assert!(message.contains("target_fsp"), "{message}");
        assert!(message.starts_with("test.toml: display"), "{message}");
    }

    #[test]
    fn unknown_section_is_an_error() {
        let message = err("[displays]\ntarget_fps = 3");
        assert!(message.contains("displays"), "{message}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let message = err("[generation]\nframes_per_pair = \"ten\"");
        assert!(message.contains("generation.frames_per_pair"), "{message}");
    }

    #[test]
    fn unknown_decoder_lists_allowed_values() {
        let message = err("[generation]\ndecoder = \"sdxl\"");
        assert!(message.contains("generation.decoder"), "{message}");
        assert!(message.contains("preview"), "{message}");
    }

    #[test]
    fn precision_is_fast_or_exact() {
        assert_eq!(Config::default().generation.precision, Precision::Fast);
        let config = Config::parse("[generation]\nprecision = \"exact\"", "t").unwrap();
        assert_eq!(config.generation.precision, Precision::Exact);
        let message = err("[generation]\nprecision = \"bf16\"");
        assert!(message.contains("generation.precision"), "{message}");
        assert!(message.contains("exact"), "{message}");
    }

    #[test]
    fn broken_toml_names_the_origin() {
        let message = err("[display\n");
        assert!(message.starts_with("test.toml"), "{message}");
    }

    #[test]
    fn sizes_must_be_multiples_of_eight() {
        assert_eq!(
            err("[generation]\nwidth = 500"),
            "generation.width must be a multiple of 8 between 64 and 4096 (got 500)"
        );
    }

    #[test]
    fn start_gate_cannot_exceed_buffer() {
        let message = err("[display]\nstart_gate_seconds = 40");
        assert!(
            message.starts_with("display.start_gate_seconds"),
            "{message}"
        );
    }

    #[test]
    fn decode_divisor_must_divide_the_latent() {
        let config = Config::parse("[generation]\ndecode_divisor = 2", "t").unwrap();
        assert_eq!(config.generation.decode_divisor, Some(2));
        assert!(err("[generation]\ndecode_divisor = 3").starts_with("generation.decode_divisor"));
        assert!(err("[generation]\nwidth = 520\ndecode_divisor = 2")
            .contains("dividing the latent size 65x32"));
    }

    #[test]
    fn device_names() {
        assert_eq!(parse_device("cuda:1").unwrap(), DeviceRequest::Cuda(1));
        assert_eq!(parse_device("cuda").unwrap(), DeviceRequest::Cuda(0));
        assert!(err("[generation]\ndevice = \"gpu\"").contains("generation.device"));
    }

    #[test]
    fn bad_log_level_is_rejected() {
        assert!(err("[logging]\nlevel = \"info,=,\"").starts_with("logging.level"));
    }

    #[test]
    fn server_defaults_to_loopback_and_checks_its_values() {
        let config = Config::default();
        assert!(config.server.enabled);
        assert!(config.server.bind_addr().unwrap().ip().is_loopback());
        assert_eq!(
            err("[server]\nbind = \"localhost\""),
            "server.bind must be an IP address and port such as \"127.0.0.1:8765\" or \
             \"0.0.0.0:8765\" (got \"localhost\")"
        );
        assert!(err("[server]\nmax_sse_clients = 0").starts_with("server.max_sse_clients"));
        assert!(err("[server]\ntoken = \" \"").starts_with("server.token"));
        assert!(err("[server]\nrequest_timeout_seconds = 0")
            .starts_with("server.request_timeout_seconds"));
        let parsed =
            Config::parse("[server]\nbind = \"0.0.0.0:0\"\ntoken = \"s3cret\"", "t").unwrap();
        assert_eq!(parsed.server.token.as_deref(), Some("s3cret"));
    }

    #[test]
    fn keep_frames_overrides_default() {
        let config = Config::parse("[output]\nkeep_frames = 12", "t").unwrap();
        assert_eq!(config.keep_frames(), 12);
        assert!(err("[output]\nkeep_frames = 0").starts_with("output.keep_frames"));
    }
}
