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
}

impl Record {
    /// When it happened.
    pub fn timestamp(&self) -> Timestamp {
        match self {
            Record::Pair(p) => p.ts,
            Record::Keyframe(k) => k.ts,
            Record::DisplayStats(d) => d.ts,
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
