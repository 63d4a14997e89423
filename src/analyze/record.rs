//! The records both readers produce: one shape for dreamd's JSON lines and the Python log.

/// Time of a record, seconds since the Unix epoch (UTC).
pub type Timestamp = f64;

/// What a log line says, once understood.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Pair(PairRecord),
    Keyframe(KeyframeRecord),
    /// A display tick that came late by `late_ms`.
    Late {
        ts: Timestamp,
        late_ms: f64,
    },
    /// The display held the current frame one interval (next frame not ready).
    Held {
        ts: Timestamp,
    },
    /// The display skipped a frame.
    Skipped {
        ts: Timestamp,
    },
    /// Buffered seconds at a moment.
    Buffer {
        ts: Timestamp,
        seconds: f64,
        target_seconds: Option<f64>,
        /// Frames per second implied by the line (ready frames / seconds), when it says.
        fps_hint: Option<f64>,
    },
    /// The daemon's reported state changed.
    State {
        ts: Timestamp,
        state: String,
    },
    /// Cumulative display figures since the process started.
    DisplayStats(DisplayStatsRecord),
    /// Cumulative GPU/VAE lock figures since the process started (the Python controller's
    /// status-loop line).
    LockSnapshot {
        ts: Timestamp,
        acquisitions: u64,
        avg_wait_ms: f64,
        max_wait_ms: Option<f64>,
    },
    /// One lock acquisition that waited (the Python `VAE lock contention: waited` line).
    LockContention {
        ts: Timestamp,
        wait_ms: f64,
    },
    /// A keyframe attempt whose event also says how it was made (dreamd's creative direction:
    /// theme, prompt, origin); counted as a keyframe and by [`super::dream`].
    DirectedKeyframe(KeyframeRecord, KeyframeDirection),
    /// One analysis of the mode-collapse detector (`collapse` event).
    Collapse(CollapseRecord),
    /// A keyframe offered to the diverse-frame cache (`cache` event).
    Cache(CacheRecord),
    /// A keyframe made by blending in a cached frame or a seed picture (`injection` event).
    Injection(InjectionRecord),
}

impl Record {
    /// When it happened.
    pub fn timestamp(&self) -> Timestamp {
        match self {
            Record::Pair(p) => p.ts,
            Record::Keyframe(k) => k.ts,
            Record::DisplayStats(d) => d.ts,
            Record::DirectedKeyframe(k, _) => k.ts,
            Record::Collapse(c) => c.ts,
            Record::Cache(c) => c.ts,
            Record::Injection(i) => i.ts,
            Record::Late { ts, .. }
            | Record::Held { ts }
            | Record::Skipped { ts }
            | Record::Buffer { ts, .. }
            | Record::State { ts, .. }
            | Record::LockSnapshot { ts, .. }
            | Record::LockContention { ts, .. } => *ts,
        }
    }
}

/// How a pair ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Partial,
    Failed,
}

/// One interpolated pair. Durations in ms; `None` where the log does not say.
#[derive(Debug, Clone, PartialEq)]
pub struct PairRecord {
    pub ts: Timestamp,
    pub from: u64,
    pub to: u64,
    /// Frames decoded for the pair, when known.
    pub frames: Option<u64>,
    pub total_ms: Option<f64>,
    pub slerp_ms: Option<f64>,
    pub decode_ms: Option<f64>,
    pub decode_ms_per_frame: Option<f64>,
    pub save_ms: Option<f64>,
    pub lock_wait_ms: Option<f64>,
    pub lock_hold_ms: Option<f64>,
    pub lock_acquisitions: Option<u64>,
    pub outcome: Outcome,
    /// The failing stage of a failed pair (`save` for a partial one).
    pub stage: Option<String>,
    pub error: Option<String>,
}

impl PairRecord {
    /// A pair with only its identity known; readers fill in the rest.
    pub fn new(ts: Timestamp, from: u64, to: u64) -> Self {
        Self {
            ts,
            from,
            to,
            frames: None,
            total_ms: None,
            slerp_ms: None,
            decode_ms: None,
            decode_ms_per_frame: None,
            save_ms: None,
            lock_wait_ms: None,
            lock_hold_ms: None,
            lock_acquisitions: None,
            outcome: Outcome::Ok,
            stage: None,
            error: None,
        }
    }
}

/// One keyframe attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyframeRecord {
    pub ts: Timestamp,
    pub source: String,
    pub ms: Option<f64>,
    pub ok: bool,
    pub error: Option<String>,
}

/// How a keyframe was made, as far as the creative direction goes (`keyframe` event's
/// `theme`, `prompt`, `origin`); each `None` when the line does not say.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeyframeDirection {
    pub theme: Option<String>,
    pub prompt: Option<String>,
    /// `comfyui`/`fallback` for the ComfyUI source, `cache`/`seed` for an injected keyframe.
    pub origin: Option<String>,
}

/// One collapse analysis. Similarities and deltas as the detector reports them: colour in
/// histogram-intersection units (0–3), structure 0–1; deltas are recent minus early.
#[derive(Debug, Clone, PartialEq)]
pub struct CollapseRecord {
    pub ts: Timestamp,
    /// The keyframe analysed.
    pub index: u64,
    pub state: crate::direction::collapse::CollapseState,
    pub color_similarity: f64,
    pub structure_similarity: f64,
    pub color_delta: Option<f64>,
    pub structure_delta: Option<f64>,
    pub severity: f64,
}

/// One offer to the diverse-frame cache.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheRecord {
    pub ts: Timestamp,
    pub accepted: bool,
    /// Entries after the offer.
    pub size: u64,
    /// Whether an entry was evicted to make room.
    pub evicted: bool,
}

/// One injection.
#[derive(Debug, Clone, PartialEq)]
pub struct InjectionRecord {
    pub ts: Timestamp,
    /// The keyframe it became.
    pub index: u64,
    pub kind: crate::direction::injection::InjectionKind,
    pub source_id: String,
    /// Share of the injected picture's latent.
    pub weight: f64,
    pub reason: String,
}

/// Cumulative display figures (dreamd's `display_stats` event).
#[derive(Debug, Clone, PartialEq)]
pub struct DisplayStatsRecord {
    pub ts: Timestamp,
    pub target_fps: Option<f64>,
    pub frames_displayed: u64,
    pub actual_fps: Option<f64>,
    pub interval_error_p50_ms: Option<f64>,
    pub interval_error_p99_ms: Option<f64>,
}

/// Parses an RFC 3339 timestamp (`2024-05-01T12:00:00.123Z`, or the Python log's
/// `2024-05-01 12:00:00`, taken as UTC) into seconds since the epoch.
pub fn parse_timestamp(text: &str) -> Option<Timestamp> {
    let text = text.trim();
    let time = humantime::parse_rfc3339_weak(text).ok()?;
    let since = time.duration_since(std::time::UNIX_EPOCH).ok()?;
    Some(since.as_secs_f64())
}

/// Formats seconds since the epoch as RFC 3339 (UTC, whole seconds).
pub fn format_timestamp(ts: Timestamp) -> String {
    if !ts.is_finite() || ts < 0.0 {
        return "?".to_string();
    }
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(ts.floor() as u64);
    humantime::format_rfc3339_seconds(time).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_of_both_formats() {
        let a = parse_timestamp("2024-05-01T12:00:00.250Z").unwrap();
        let b = parse_timestamp("2024-05-01 12:00:00").unwrap();
        assert!((a - b - 0.25).abs() < 1e-6);
        assert_eq!(format_timestamp(b), "2024-05-01T12:00:00Z");
        assert!(parse_timestamp("yesterday").is_none());
    }
}
