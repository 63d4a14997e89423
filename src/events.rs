//! The `dreamd.jsonl` events: one typed record per kind of line, written by the daemon and read
//! back by `dreamd analyze` from the same struct, so a renamed field cannot silently break the
//! analyzer.
//!
//! A component makes a record and calls [`LogEvent::emit`]: the record is serialised once and
//! logged as an ordinary tracing event with target [`TARGET`], its JSON in the field
//! [`RECORD_FIELD`] and a sentence for people as the message. The JSON-lines layer
//! ([`crate::logging`]) writes `timestamp`, `level`, the record's fields, `message` and
//! `target` as one line; the console and `dreamd.log` show the message and the fields. The README's
//! "dreamd.jsonl events" table lists the fields.
//!
//! Reading is lenient, as the analyzer needs for older or partial logs: fields the writer
//! always sets but older lines may lack are `Option`s or default, and unknown fields are
//! ignored. [`AnyEvent::parse`] reads any of them given the line's `event` name.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tracing::Level;

/// Target of the structured events that go to `dreamd.jsonl`.
pub const TARGET: &str = "dreamd::event";
/// The tracing field that carries an event's JSON record.
pub const RECORD_FIELD: &str = "record";

/// A kind of `dreamd.jsonl` line.
pub trait LogEvent: Serialize + DeserializeOwned {
    /// The line's `event` value.
    const NAME: &'static str;
    /// The level it is logged at.
    fn level(&self) -> Level;
    /// The sentence the console and `dreamd.log` show.
    fn message(&self) -> String;

    /// Logs the record (see the module docs).
    fn emit(&self) {
        let record = match serde_json::to_string(&Tagged {
            event: Self::NAME,
            record: self,
        }) {
            Ok(record) => record,
            Err(e) => {
                tracing::error!("cannot serialise a {} event: {e}", Self::NAME);
                return;
            }
        };
        let record = record.as_str();
        let message = self.message();
        match self.level() {
            Level::ERROR => tracing::error!(target: TARGET, record, "{message}"),
            Level::WARN => tracing::warn!(target: TARGET, record, "{message}"),
            Level::INFO => tracing::info!(target: TARGET, record, "{message}"),
            Level::DEBUG => tracing::debug!(target: TARGET, record, "{message}"),
            _ => tracing::trace!(target: TARGET, record, "{message}"),
        }
    }
}

/// A record with its `event` name first.
#[derive(Serialize)]
struct Tagged<'a, T> {
    event: &'static str,
    #[serde(flatten)]
    record: &'a T,
}

/// How a pair ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PairOutcome {
    /// Some frames were not saved.
    Partial,
    /// A stage failed; no frame of the pair was made.
    Failed,
    /// Every frame saved (also what an unknown or missing outcome reads as).
    #[default]
    #[serde(other)]
    Ok,
}

/// `pair`: one interpolated pair, at the end of its stage 3 or when a stage failed. Durations
/// in ms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairEvent {
    /// Keyframe numbers (`from` = `to` = 0 for the first keyframe, decoded alone).
    pub from: u64,
    pub to: u64,
    #[serde(default)]
    pub first_seq: u64,
    #[serde(default)]
    pub last_seq: u64,
    /// Frames decoded.
    pub frames: Option<u64>,
    pub frames_ready: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slerp_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decode_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decode_ms_per_frame: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resize_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub save_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lock_wait_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lock_hold_ms: Option<f64>,
    /// Times the pair took the GPU lock (always 1 for a decoded pair).
    pub lock_acquisitions: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub write_failures: Option<u64>,
    #[serde(default)]
    pub outcome: PairOutcome,
    /// The stage that failed, on failed pairs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// The first error (empty when none).
    #[serde(default)]
    pub error: String,
}

impl PairEvent {
    /// A pair that failed in `stage`: no frame of `first_seq..=last_seq` was made.
    pub fn failed(to: u64, first_seq: u64, last_seq: u64, stage: &str, error: &str) -> Self {
        PairEvent {
            from: to.saturating_sub(1),
            to,
            first_seq,
            last_seq,
            frames: Some(0),
            frames_ready: Some(0),
            batch_size: None,
            slerp_ms: None,
            decode_ms: None,
            decode_ms_per_frame: None,
            resize_ms: None,
            save_ms: None,
            total_ms: None,
            lock_wait_ms: None,
            lock_hold_ms: None,
            lock_acquisitions: Some(0),
            write_failures: None,
            outcome: PairOutcome::Failed,
            stage: Some(stage.to_string()),
            error: error.to_string(),
        }
    }
}

impl LogEvent for PairEvent {
    const NAME: &'static str = "pair";

    fn level(&self) -> Level {
        match self.outcome {
            PairOutcome::Failed => Level::WARN,
            _ => Level::INFO,
        }
    }

    fn message(&self) -> String {
        let (to, first, last) = (self.to, self.first_seq, self.last_seq);
        match self.outcome {
            PairOutcome::Failed => format!(
                "pair ending at keyframe {to} failed in {}: {}; frames {first}-{last} skipped",
                self.stage.as_deref().unwrap_or("?"),
                self.error
            ),
            _ => format!(
                "pair {}->{to} done: {} frames in {:.0} ms (decode {:.1} ms/frame)",
                self.from,
                self.frames_ready.unwrap_or(0),
                self.total_ms.unwrap_or(0.0),
                self.decode_ms_per_frame.unwrap_or(0.0),
            ),
        }
    }
}

/// How a keyframe attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyframeOutcome {
    Failed,
    /// Made (also what an unknown or missing outcome reads as).
    #[default]
    #[serde(other)]
    Ok,
}

/// `keyframe`: one keyframe attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyframeEvent {
    #[serde(default)]
    pub index: u64,
    /// Its sequence number.
    #[serde(default)]
    pub seq: u64,
    /// The source's name.
    #[serde(default)]
    pub source: String,
    pub ms: Option<f64>,
    #[serde(default)]
    pub outcome: KeyframeOutcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl LogEvent for KeyframeEvent {
    const NAME: &'static str = "keyframe";

    fn level(&self) -> Level {
        match self.outcome {
            KeyframeOutcome::Ok => Level::INFO,
            KeyframeOutcome::Failed => Level::WARN,
        }
    }

    fn message(&self) -> String {
        let (index, source) = (self.index, &self.source);
        match &self.error {
            Some(error) => format!("keyframe {index} from {source} failed: {error}"),
            None => format!(
                "keyframe {index} from {source} in {:.1} ms",
                self.ms.unwrap_or(0.0)
            ),
        }
    }
}

/// `display`: a tick that did not go to plan, or an operator's skip; `kind` says which.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DisplayEvent {
    /// The tick woke up late.
    Late {
        #[serde(default)]
        late_ms: f64,
    },
    /// Frame `seq` was not ready: the current frame stays one more interval.
    Held {
        #[serde(default)]
        seq: u64,
    },
    /// Frame `seq` was skipped (`failed`, or `late` after a hold).
    Skipped {
        #[serde(default)]
        seq: u64,
        #[serde(default)]
        reason: String,
    },
    /// An operator's skip dropped `dropped` frames; `arrived` once a keyframe is in front.
    SkipRequest {
        #[serde(default)]
        dropped: u64,
        #[serde(default)]
        arrived: bool,
    },
}

impl LogEvent for DisplayEvent {
    const NAME: &'static str = "display";

    fn level(&self) -> Level {
        match self {
            DisplayEvent::Held { .. } | DisplayEvent::Skipped { .. } => Level::WARN,
            DisplayEvent::Late { .. } | DisplayEvent::SkipRequest { .. } => Level::INFO,
        }
    }

    fn message(&self) -> String {
        match self {
            DisplayEvent::Late { late_ms } => format!("display tick {late_ms:.1} ms late"),
            DisplayEvent::Held { seq } => {
                format!("frame {seq} not ready: holding the current frame one interval")
            }
            DisplayEvent::Skipped { seq, reason } => format!("skipped frame {seq} ({reason})"),
            DisplayEvent::SkipRequest { dropped, arrived } => format!(
                "skip requested: dropped {dropped} frames{}",
                if *arrived {
                    ""
                } else {
                    " (next keyframe not ready yet)"
                }
            ),
        }
    }
}

/// `buffer`: the buffer level, every 5 s.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BufferEvent {
    /// Seconds of ready frames at the target rate.
    pub seconds: f64,
    pub target_seconds: Option<f64>,
    pub frames_ready: Option<u64>,
    pub frames_registered: Option<u64>,
}

impl LogEvent for BufferEvent {
    const NAME: &'static str = "buffer";

    fn level(&self) -> Level {
        Level::DEBUG
    }

    fn message(&self) -> String {
        format!("buffer {:.1}s", self.seconds)
    }
}

/// `state`: the reported state changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateEvent {
    /// The state's Rust name (`Playing`); readers compare it lower-cased.
    #[serde(default)]
    pub state: String,
}

impl LogEvent for StateEvent {
    const NAME: &'static str = "state";

    fn level(&self) -> Level {
        Level::INFO
    }

    fn message(&self) -> String {
        format!("state {}", self.state)
    }
}

/// `display_stats`: display figures since start, with every `buffer` event and at shutdown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DisplayStatsEvent {
    pub target_fps: Option<f64>,
    #[serde(default)]
    pub frames_displayed: u64,
    pub actual_fps: Option<f64>,
    pub interval_error_p50_ms: Option<f64>,
    pub interval_error_p99_ms: Option<f64>,
    #[serde(default)]
    pub late: u64,
    #[serde(default)]
    pub held: u64,
    #[serde(default)]
    pub skipped: u64,
}

impl LogEvent for DisplayStatsEvent {
    const NAME: &'static str = "display_stats";

    fn level(&self) -> Level {
        Level::DEBUG
    }

    fn message(&self) -> String {
        format!("display {:.2} fps", self.actual_fps.unwrap_or(0.0))
    }
}

/// `config_reload`: a changed config file was applied or rejected; `outcome` says which.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ConfigReloadEvent {
    /// Keys applied live and keys that changed but need a restart (comma-separated).
    Applied {
        #[serde(default)]
        file: String,
        #[serde(default)]
        applied: String,
        #[serde(default)]
        needs_restart: String,
    },
    /// The file did not parse or validate; the running config stays.
    Rejected {
        #[serde(default)]
        error: String,
    },
}

impl LogEvent for ConfigReloadEvent {
    const NAME: &'static str = "config_reload";

    fn level(&self) -> Level {
        match self {
            ConfigReloadEvent::Applied { .. } => Level::INFO,
            ConfigReloadEvent::Rejected { .. } => Level::ERROR,
        }
    }

    fn message(&self) -> String {
        match self {
            ConfigReloadEvent::Applied {
                file,
                applied,
                needs_restart,
            } => format!(
                "config {file} reloaded: applied [{applied}]{}",
                if needs_restart.is_empty() {
                    String::new()
                } else {
                    format!("; changed but needs a restart to apply: [{needs_restart}]")
                }
            ),
            ConfigReloadEvent::Rejected { error } => {
                format!("config reload rejected, the running config stays: {error}")
            }
        }
    }
}

/// Any event, as read back from a line.
#[derive(Debug, Clone, PartialEq)]
pub enum AnyEvent {
    Pair(PairEvent),
    Keyframe(KeyframeEvent),
    Display(DisplayEvent),
    Buffer(BufferEvent),
    State(StateEvent),
    DisplayStats(DisplayStatsEvent),
    ConfigReload(ConfigReloadEvent),
}

impl AnyEvent {
    /// Reads the record of the line `line`, whose `event` is `name`; `Ok(None)` for a name no
    /// record here has.
    pub fn parse(name: &str, line: &str) -> Result<Option<AnyEvent>, serde_json::Error> {
        Ok(Some(match name {
            PairEvent::NAME => AnyEvent::Pair(serde_json::from_str(line)?),
            KeyframeEvent::NAME => AnyEvent::Keyframe(serde_json::from_str(line)?),
            DisplayEvent::NAME => AnyEvent::Display(serde_json::from_str(line)?),
            BufferEvent::NAME => AnyEvent::Buffer(serde_json::from_str(line)?),
            StateEvent::NAME => AnyEvent::State(serde_json::from_str(line)?),
            DisplayStatsEvent::NAME => AnyEvent::DisplayStats(serde_json::from_str(line)?),
            ConfigReloadEvent::NAME => AnyEvent::ConfigReload(serde_json::from_str(line)?),
            _ => return Ok(None),
        }))
    }

    /// Logs it ([`LogEvent::emit`]).
    pub fn emit(&self) {
        match self {
            AnyEvent::Pair(e) => e.emit(),
            AnyEvent::Keyframe(e) => e.emit(),
            AnyEvent::Display(e) => e.emit(),
            AnyEvent::Buffer(e) => e.emit(),
            AnyEvent::State(e) => e.emit(),
            AnyEvent::DisplayStats(e) => e.emit(),
            AnyEvent::ConfigReload(e) => e.emit(),
        }
    }
}
