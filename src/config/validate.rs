//! Range checks: every value of a parsed [`Config`] against what it allows, with errors that
//! name the key, the value and the rule. Kept apart from the schema so that the list of keys
//! and defaults in `mod.rs` stays readable.

use super::{invalid, parse_device, Config, ConfigError, FrameFormat};

/// The most memory any settings may need, whatever the machine (64 GiB).
const MEMORY_CEILING: u64 = 64 << 30;
/// Bytes a pixel of a decoded batch costs while a pair is made: the decoder's f32 RGB output
/// (12), the 8-bit frame (3) and its resampled copy (3).
const PAIR_BYTES_PER_PIXEL: u64 = 18;

impl Config {
    /// Checks every value against its allowed range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_direction()?;
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
        if g.keyframe_dwell_frames > 240 {
            return Err(invalid(
                "generation.keyframe_dwell_frames",
                g.keyframe_dwell_frames,
                "between 0 and 240",
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
        if let Some(m) = g.max_frames_per_pair {
            if m < g.frames_per_pair || m > 240 {
                return Err(invalid(
                    "generation.max_frames_per_pair",
                    m,
                    "frames_per_pair..=240",
                ));
            }
        }
        if let Some(d) = g.decode_divisor {
            if ![1, 2, 4, 8].contains(&d)
                || !(g.width / 8).is_multiple_of(d)
                || !(g.height / 8).is_multiple_of(d)
            {
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
        if o.keep_mb == Some(0) {
            return Err(invalid("output.keep_mb", 0, ">= 1"));
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
        if !(1..=100_000).contains(&server.max_connections) {
            return Err(invalid(
                "server.max_connections",
                server.max_connections,
                "between 1 and 100000",
            ));
        }
        check_range(
            "server.header_timeout_seconds",
            server.header_timeout_seconds,
            0.0,
            3600.0,
            "> 0 and <= 3600",
        )?;
        check_range(
            "server.idle_timeout_seconds",
            server.idle_timeout_seconds,
            15.0,
            86_400.0,
            "> 15 (the event stream's keep-alive) and <= 86400",
        )?;
        self.check_memory()?;
        if let Some(bad) = server
            .allowed_hosts
            .iter()
            .find(|h| h.trim().is_empty() || h.contains(['/', ' ', ':']))
        {
            return Err(invalid(
                "server.allowed_hosts",
                format!("{bad:?}"),
                "host names without scheme, port or path (or \"*\")",
            ));
        }
        Ok(())
    }
}

impl Config {
    /// Memory the frame buffer and one pair in flight need, estimated from above: the ring holds
    /// the buffer target plus one pair of encoded frames (PNG counted at 3 bytes a pixel, JPEG at
    /// 1), and making a pair holds its frames decoded ([`PAIR_BYTES_PER_PIXEL`]).
    pub fn estimated_memory_bytes(&self) -> u64 {
        let g = &self.generation;
        let pixels = u64::from(g.width) * u64::from(g.height);
        let encoded = match self.output.format {
            FrameFormat::Png => 3 * pixels,
            FrameFormat::Jpeg => pixels,
        };
        let pair = g.frames_per_pair as u64 + 1;
        let ring = (self.buffer_frames() as u64).saturating_add(pair);
        ring.saturating_mul(encoded)
            .saturating_add(pair.saturating_mul(pixels * PAIR_BYTES_PER_PIXEL))
    }

    /// Refuses settings whose [`Config::estimated_memory_bytes`] exceed half this machine's
    /// memory, or [`MEMORY_CEILING`].
    fn check_memory(&self) -> Result<(), ConfigError> {
        let needed = self.estimated_memory_bytes();
        let gb = |b: u64| b as f64 / f64::from(1u32 << 30);
        let (limit, limit_why) = match physical_memory() {
            Some(ram) if ram / 2 < MEMORY_CEILING => {
                (ram / 2, format!("half of this machine's {:.1} GB", gb(ram)))
            }
            _ => (MEMORY_CEILING, "the ceiling for any machine".to_string()),
        };
        if needed <= limit {
            return Ok(());
        }
        let g = &self.generation;
        Err(ConfigError::TooMuchMemory {
            settings: format!(
                "buffer.target_seconds = {} x display.target_fps = {} ({} frames) of {}x{} \
                 pixels, with generation.frames_per_pair = {},",
                self.buffer.target_seconds,
                self.display.target_fps,
                self.buffer_frames(),
                g.width,
                g.height,
                g.frames_per_pair
            ),
            needed_gb: gb(needed),
            limit_gb: gb(limit),
            limit_why,
        })
    }
}

/// Total physical memory, when the system says.
fn physical_memory() -> Option<u64> {
    // SAFETY: sysconf takes and returns plain integers.
    let (pages, page) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    (pages > 0 && page > 0).then(|| pages as u64 * page as u64)
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

impl Config {
    /// `[prompts]`, `[collapse]`, `[cache]` and `[injection]`.
    fn validate_direction(&self) -> Result<(), ConfigError> {
        if let Some(problem) = self.comfyui.validate().into_iter().next() {
            return Err(ConfigError::Message(problem.to_string()));
        }
        if let Some(problem) = self.diffusion.validate().into_iter().next() {
            return Err(ConfigError::Message(problem));
        }
        self.prompts
            .validate()
            .map_err(|e| ConfigError::InvalidEntry {
                key: e.key,
                value: e.value,
                allowed: e.allowed.to_string(),
            })?;
        for check in [
            self.collapse.validate(),
            self.cache.validate(),
            self.injection.validate(),
        ] {
            check.map_err(|(key, value, allowed)| invalid(key, value, allowed))?;
        }
        Ok(())
    }
}
