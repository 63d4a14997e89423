//! ComfyUI's wire protocol as typed serde messages: the HTTP requests and replies the client
//! uses, the WebSocket events, and the binary preview frames.
//!
//! There is exactly one definition of each message, used both by [`super::client`] and by the
//! replaying test server in `tests/`, so the tests exercise the same shapes the client parses.
//! Every shape here was checked against the real recordings (`shared/comfyui/recordings`, from
//! ComfyUI 0.3.59): the unit tests below parse every recorded line.
//!
//! Parsing is tolerant where the server may grow: unknown fields are ignored, unknown WebSocket
//! message types become [`WsMessage::Unknown`], and a known type whose body does not match its
//! shape is an error the client logs and skips, never a reason to stop waiting.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A message did not have the shape the protocol says.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("WebSocket text is not a JSON message with a \"type\": {0}")]
    Envelope(serde_json::Error),
    #[error("WebSocket message {kind:?} does not have the expected shape: {source}")]
    Body {
        kind: String,
        source: serde_json::Error,
    },
    #[error("binary WebSocket frame of {len} bytes is too short for its header")]
    ShortBinary { len: usize },
    #[error(
        "binary WebSocket frame type 4 announces {announced} bytes of metadata but has {available}"
    )]
    MetadataLength { announced: usize, available: usize },
    #[error("binary WebSocket frame type 4 has unreadable metadata: {0}")]
    Metadata(serde_json::Error),
}

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------

/// An API-format graph: node id → `{class_type, inputs}`.
pub type Graph = serde_json::Map<String, Value>;

/// `POST /prompt` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptRequest {
    pub prompt: Graph,
    /// The WebSocket client that receives this prompt's events (without it, empty here, none
    /// are sent to anyone).
    #[serde(default)]
    pub client_id: String,
    /// Client-chosen id (accepted since 0.3.44; 0.38 requires a canonical UUID).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_id: Option<String>,
}

/// `POST /prompt` → 200.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptResponse {
    pub prompt_id: String,
    #[serde(default)]
    pub number: i64,
    #[serde(default)]
    pub node_errors: BTreeMap<String, Value>,
}

/// One error in a 400 reply, at the top or inside a node's list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ErrorInfo {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub details: String,
    #[serde(default)]
    pub extra_info: Value,
}

impl ErrorInfo {
    fn describe(&self) -> String {
        if self.details.is_empty() || self.details == self.message {
            self.message.clone()
        } else {
            format!("{}: {}", self.message, self.details)
        }
    }
}

/// The errors of one node in a 400 reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct NodeErrors {
    #[serde(default)]
    pub errors: Vec<ErrorInfo>,
    #[serde(default)]
    pub dependent_outputs: Vec<String>,
    #[serde(default)]
    pub class_type: String,
}

/// `POST /prompt` → 400: the graph was refused before it ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptErrorResponse {
    pub error: ErrorInfo,
    #[serde(default)]
    pub node_errors: BTreeMap<String, NodeErrors>,
}

impl PromptErrorResponse {
    /// One line naming the error and each node's errors, e.g. `Prompt outputs failed
    /// validation; node 1 (LoadImage): Custom validation failed for node: image - Invalid …`.
    pub fn summary(&self) -> String {
        let mut out = self.error.describe();
        for (id, node) in &self.node_errors {
            let errors: Vec<String> = node.errors.iter().map(ErrorInfo::describe).collect();
            out.push_str(&format!(
                "; node {id} ({}): {}",
                node.class_type,
                errors.join(", ")
            ));
        }
        out
    }
}

/// `POST /upload/image` → 200.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UploadReply {
    pub name: String,
    #[serde(default)]
    pub subfolder: String,
    #[serde(rename = "type", default)]
    pub kind: String,
}

/// A picture a node wrote: the query of `GET /view`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRef {
    pub filename: String,
    #[serde(default)]
    pub subfolder: String,
    #[serde(rename = "type", default = "output_type")]
    pub kind: String,
}

fn output_type() -> String {
    "output".into()
}

/// What one output node produced (`executed.output`, `history.outputs[node]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct NodeOutput {
    #[serde(default)]
    pub images: Vec<ImageRef>,
    /// Other output kinds (text, gifs, …), kept as they came.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// `status` of a history entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct HistoryStatus {
    /// `success` or `error` (an interrupted prompt is an `error`).
    #[serde(default)]
    pub status_str: String,
    #[serde(default)]
    pub completed: bool,
    /// `[type, data]` pairs: the execution events of this prompt.
    #[serde(default)]
    pub messages: Vec<(String, Value)>,
}

/// One entry of `GET /history/{id}` (the reply is `{id: entry}`, or `{}` for an unknown id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct HistoryEntry {
    /// `[number, id, graph, extra, output node ids]`.
    #[serde(default)]
    pub prompt: Value,
    #[serde(default)]
    pub outputs: BTreeMap<String, NodeOutput>,
    #[serde(default)]
    pub status: Option<HistoryStatus>,
    #[serde(default)]
    pub meta: Value,
}

/// `GET /history[/{id}]`.
pub type History = BTreeMap<String, HistoryEntry>;

/// How a finished history entry ended.
#[derive(Debug, Clone, PartialEq)]
pub enum HistoryOutcome {
    Success,
    Error(ExecutionError),
    Interrupted(ExecutionInterrupted),
    /// `error` without a readable error event.
    Failed(String),
}

impl HistoryEntry {
    /// How the prompt ended, when the entry says it did.
    pub fn outcome(&self) -> HistoryOutcome {
        let Some(status) = &self.status else {
            return HistoryOutcome::Success;
        };
        for (kind, data) in &status.messages {
            match kind.as_str() {
                "execution_error" => {
                    if let Ok(e) = serde_json::from_value(data.clone()) {
                        return HistoryOutcome::Error(e);
                    }
                }
                "execution_interrupted" => {
                    if let Ok(e) = serde_json::from_value(data.clone()) {
                        return HistoryOutcome::Interrupted(e);
                    }
                }
                _ => {}
            }
        }
        if status.status_str == "error" {
            HistoryOutcome::Failed(format!(
                "history says status {:?} without an error message",
                status.status_str
            ))
        } else {
            HistoryOutcome::Success
        }
    }
}

/// `POST /queue` body: removes pending prompts by id (`{"clear": true}` exists too; never used).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueDelete {
    pub delete: Vec<String>,
}

/// `POST /history` body: forgets entries by id.
pub type HistoryDelete = QueueDelete;

/// `POST /interrupt` body: interrupts only when this prompt is the one running (≥ 0.3.56).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InterruptRequest {
    pub prompt_id: String,
}

/// `POST /api/jobs/{id}/cancel` → 200 (0.38+).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobCancelReply {
    #[serde(default)]
    pub cancelled: bool,
}

/// `GET /queue`: running and pending prompts as `[number, id, graph, extra, outputs]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct QueueState {
    #[serde(default)]
    pub queue_running: Vec<Vec<Value>>,
    #[serde(default)]
    pub queue_pending: Vec<Vec<Value>>,
}

impl QueueState {
    /// Whether `prompt_id` is running or waiting.
    pub fn contains(&self, prompt_id: &str) -> bool {
        self.queue_running
            .iter()
            .chain(&self.queue_pending)
            .any(|item| item.get(1).and_then(Value::as_str) == Some(prompt_id))
    }
}

/// `GET /system_stats` (the part the client reads).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct SystemStats {
    #[serde(default)]
    pub system: SystemInfo,
    #[serde(default)]
    pub devices: Vec<Value>,
}

/// `system_stats.system`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct SystemInfo {
    #[serde(default)]
    pub comfyui_version: String,
    #[serde(default)]
    pub os: String,
}

/// One node class in `GET /object_info` (the part the client reads).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct NodeInfo {
    #[serde(default)]
    pub input: NodeInputs,
    #[serde(default)]
    pub output: Vec<Value>,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub display_name: String,
    #[serde(default)]
    pub category: String,
    #[serde(default)]
    pub output_node: bool,
}

/// `input` of a node class: input name → `[type or options, {settings}]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct NodeInputs {
    #[serde(default)]
    pub required: BTreeMap<String, Value>,
    #[serde(default)]
    pub optional: BTreeMap<String, Value>,
}

impl NodeInfo {
    /// The allowed values of a combo input (`ckpt_name`, `sampler_name`, …), in either the old
    /// form `[[options], {…}]` or the newer `["COMBO", {"options": [...]}]`; `None` when the
    /// input is not a combo or does not exist.
    pub fn combo_options(&self, input: &str) -> Option<Vec<String>> {
        let spec = self
            .input
            .required
            .get(input)
            .or_else(|| self.input.optional.get(input))?;
        let strings = |v: &Value| -> Option<Vec<String>> {
            v.as_array().map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
        };
        match spec.get(0)? {
            Value::Array(_) => strings(spec.get(0)?),
            Value::String(s) if s == "COMBO" => strings(spec.get(1)?.get("options")?),
            _ => None,
        }
    }
}

/// `GET /object_info`: class name → schema.
pub type ObjectInfo = BTreeMap<String, NodeInfo>;

// ---------------------------------------------------------------------------------------------
// WebSocket
// ---------------------------------------------------------------------------------------------

/// `status.data`: queue length, and on connect the session id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct StatusData {
    #[serde(default)]
    pub status: Option<QueueStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
}

/// `status.data.status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct QueueStatus {
    #[serde(default)]
    pub exec_info: ExecInfo,
}

/// `status.data.status.exec_info`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ExecInfo {
    #[serde(default)]
    pub queue_remaining: u64,
}

/// `execution_start` / `execution_success` data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptEvent {
    pub prompt_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<u64>,
}

/// `execution_cached` data: nodes whose outputs came from the cache.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecutionCached {
    #[serde(default)]
    pub nodes: Vec<String>,
    pub prompt_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<u64>,
}

/// `executing` data. `node: null` with our `prompt_id` is the "done" signal (the history
/// entry is written before it). After a reconnect the server may send it without `prompt_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Executing {
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_id: Option<String>,
}

/// `progress` data: step `value` of `max` in `node`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub value: f64,
    pub max: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// `progress_state` data: every node's progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProgressState {
    pub prompt_id: String,
    #[serde(default)]
    pub nodes: BTreeMap<String, NodeProgress>,
}

/// One node in `progress_state`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeProgress {
    pub value: f64,
    pub max: f64,
    #[serde(default)]
    pub state: String,
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// `executed` data: an output node finished.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Executed {
    pub node: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_node: Option<String>,
    #[serde(default)]
    pub output: NodeOutput,
    pub prompt_id: String,
}

/// `execution_error` data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecutionError {
    pub prompt_id: String,
    #[serde(default)]
    pub node_id: Option<String>,
    #[serde(default)]
    pub node_type: Option<String>,
    #[serde(default)]
    pub executed: Vec<String>,
    #[serde(default)]
    pub exception_message: String,
    #[serde(default)]
    pub exception_type: String,
    #[serde(default)]
    pub traceback: Vec<String>,
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// `execution_interrupted` data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecutionInterrupted {
    pub prompt_id: String,
    #[serde(default)]
    pub node_id: Option<String>,
    #[serde(default)]
    pub node_type: Option<String>,
    #[serde(default)]
    pub executed: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<u64>,
}

/// `feature_flags` (both directions: the client announces `supports_preview_metadata`, the
/// server answers with its own flags).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct FeatureFlags {
    #[serde(default)]
    pub supports_preview_metadata: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_upload_size: Option<u64>,
}

/// One text WebSocket message `{"type": …, "data": …}`.
#[derive(Debug, Clone, PartialEq)]
pub enum WsMessage {
    Status(StatusData),
    ExecutionStart(PromptEvent),
    ExecutionCached(ExecutionCached),
    Executing(Executing),
    Progress(Progress),
    ProgressState(ProgressState),
    Executed(Executed),
    ExecutionSuccess(PromptEvent),
    ExecutionError(ExecutionError),
    ExecutionInterrupted(ExecutionInterrupted),
    FeatureFlags(FeatureFlags),
    /// A type this client does not know (newer servers add some): kept, never an error.
    Unknown {
        kind: String,
        data: Value,
    },
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    data: Value,
}

impl WsMessage {
    /// Parses one text frame.
    pub fn parse(text: &str) -> Result<WsMessage, ProtocolError> {
        let envelope: Envelope = serde_json::from_str(text).map_err(ProtocolError::Envelope)?;
        Self::from_parts(envelope.kind, envelope.data)
    }

    /// Builds a message from its `type` and `data`.
    pub fn from_parts(kind: String, data: Value) -> Result<WsMessage, ProtocolError> {
        fn body<T: serde::de::DeserializeOwned>(
            kind: &str,
            data: Value,
        ) -> Result<T, ProtocolError> {
            serde_json::from_value(data).map_err(|source| ProtocolError::Body {
                kind: kind.to_string(),
                source,
            })
        }
        Ok(match kind.as_str() {
            "status" => WsMessage::Status(body(&kind, data)?),
            "execution_start" => WsMessage::ExecutionStart(body(&kind, data)?),
            "execution_cached" => WsMessage::ExecutionCached(body(&kind, data)?),
            "executing" => WsMessage::Executing(body(&kind, data)?),
            "progress" => WsMessage::Progress(body(&kind, data)?),
            "progress_state" => WsMessage::ProgressState(body(&kind, data)?),
            "executed" => WsMessage::Executed(body(&kind, data)?),
            "execution_success" => WsMessage::ExecutionSuccess(body(&kind, data)?),
            "execution_error" => WsMessage::ExecutionError(body(&kind, data)?),
            "execution_interrupted" => WsMessage::ExecutionInterrupted(body(&kind, data)?),
            "feature_flags" => WsMessage::FeatureFlags(body(&kind, data)?),
            _ => WsMessage::Unknown { kind, data },
        })
    }

    /// The `type` string.
    pub fn kind(&self) -> &str {
        match self {
            WsMessage::Status(_) => "status",
            WsMessage::ExecutionStart(_) => "execution_start",
            WsMessage::ExecutionCached(_) => "execution_cached",
            WsMessage::Executing(_) => "executing",
            WsMessage::Progress(_) => "progress",
            WsMessage::ProgressState(_) => "progress_state",
            WsMessage::Executed(_) => "executed",
            WsMessage::ExecutionSuccess(_) => "execution_success",
            WsMessage::ExecutionError(_) => "execution_error",
            WsMessage::ExecutionInterrupted(_) => "execution_interrupted",
            WsMessage::FeatureFlags(_) => "feature_flags",
            WsMessage::Unknown { kind, .. } => kind,
        }
    }

    /// The prompt this message is about, when it names one.
    pub fn prompt_id(&self) -> Option<&str> {
        match self {
            WsMessage::ExecutionStart(e) | WsMessage::ExecutionSuccess(e) => Some(&e.prompt_id),
            WsMessage::ExecutionCached(e) => Some(&e.prompt_id),
            WsMessage::Executing(e) => e.prompt_id.as_deref(),
            WsMessage::Progress(e) => e.prompt_id.as_deref(),
            WsMessage::ProgressState(e) => Some(&e.prompt_id),
            WsMessage::Executed(e) => Some(&e.prompt_id),
            WsMessage::ExecutionError(e) => Some(&e.prompt_id),
            WsMessage::ExecutionInterrupted(e) => Some(&e.prompt_id),
            WsMessage::Status(_) | WsMessage::FeatureFlags(_) => None,
            WsMessage::Unknown { data, .. } => data.get("prompt_id").and_then(Value::as_str),
        }
    }

    /// The `data` as JSON.
    pub fn data(&self) -> Value {
        fn v<T: Serialize>(t: &T) -> Value {
            serde_json::to_value(t).unwrap_or(Value::Null)
        }
        match self {
            WsMessage::Status(d) => v(d),
            WsMessage::ExecutionStart(d) | WsMessage::ExecutionSuccess(d) => v(d),
            WsMessage::ExecutionCached(d) => v(d),
            WsMessage::Executing(d) => v(d),
            WsMessage::Progress(d) => v(d),
            WsMessage::ProgressState(d) => v(d),
            WsMessage::Executed(d) => v(d),
            WsMessage::ExecutionError(d) => v(d),
            WsMessage::ExecutionInterrupted(d) => v(d),
            WsMessage::FeatureFlags(d) => v(d),
            WsMessage::Unknown { data, .. } => data.clone(),
        }
    }

    /// The text frame for this message.
    pub fn to_text(&self) -> String {
        let envelope = Envelope {
            kind: self.kind().to_string(),
            data: self.data(),
        };
        serde_json::to_string(&envelope).unwrap_or_default()
    }
}

/// Binary frame type 1: a preview (or `SaveImageWebsocket`) picture.
pub const BINARY_PREVIEW_IMAGE: u32 = 1;
/// Binary frame type 4: a picture with JSON metadata naming its prompt and node.
pub const BINARY_PREVIEW_IMAGE_WITH_METADATA: u32 = 4;

/// The picture format word of a type-1 frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    Jpeg,
    Png,
    Other(u32),
}

impl ImageFormat {
    fn from_word(word: u32) -> Self {
        match word {
            1 => ImageFormat::Jpeg,
            2 => ImageFormat::Png,
            other => ImageFormat::Other(other),
        }
    }

    fn word(self) -> u32 {
        match self {
            ImageFormat::Jpeg => 1,
            ImageFormat::Png => 2,
            ImageFormat::Other(w) => w,
        }
    }
}

/// The metadata of a type-4 frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct PreviewMetadata {
    #[serde(default)]
    pub node_id: Option<String>,
    #[serde(default)]
    pub prompt_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_node_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_node_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub real_node_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_type: Option<String>,
}

/// One binary WebSocket frame, borrowing its picture bytes.
#[derive(Debug, Clone, PartialEq)]
pub enum BinaryFrame<'a> {
    /// Type 1: `[u32 1][u32 format][image]`.
    PreviewImage {
        format: ImageFormat,
        image: &'a [u8],
    },
    /// Type 4: `[u32 4][u32 len][JSON metadata][image]`.
    PreviewImageWithMetadata {
        metadata: PreviewMetadata,
        image: &'a [u8],
    },
    /// Any other type (2 = unencoded preview, 3 = text, future ones): skipped.
    Other { event_type: u32, payload: &'a [u8] },
}

fn be_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let word: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
    Some(u32::from_be_bytes(word))
}

impl<'a> BinaryFrame<'a> {
    /// Parses a binary frame's header (big-endian words, as ComfyUI's `struct.pack(">I")`).
    pub fn parse(bytes: &'a [u8]) -> Result<BinaryFrame<'a>, ProtocolError> {
        let short = || ProtocolError::ShortBinary { len: bytes.len() };
        let event_type = be_u32(bytes, 0).ok_or_else(short)?;
        match event_type {
            BINARY_PREVIEW_IMAGE => Ok(BinaryFrame::PreviewImage {
                format: ImageFormat::from_word(be_u32(bytes, 4).ok_or_else(short)?),
                image: &bytes[8..],
            }),
            BINARY_PREVIEW_IMAGE_WITH_METADATA => {
                let len = be_u32(bytes, 4).ok_or_else(short)? as usize;
                let available = bytes.len() - 8;
                if len > available {
                    return Err(ProtocolError::MetadataLength {
                        announced: len,
                        available,
                    });
                }
                let metadata =
                    serde_json::from_slice(&bytes[8..8 + len]).map_err(ProtocolError::Metadata)?;
                Ok(BinaryFrame::PreviewImageWithMetadata {
                    metadata,
                    image: &bytes[8 + len..],
                })
            }
            other => Ok(BinaryFrame::Other {
                event_type: other,
                payload: &bytes[4..],
            }),
        }
    }

    /// The frame's bytes (the replaying test server sends these).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            BinaryFrame::PreviewImage { format, image } => {
                out.extend_from_slice(&BINARY_PREVIEW_IMAGE.to_be_bytes());
                out.extend_from_slice(&format.word().to_be_bytes());
                out.extend_from_slice(image);
            }
            BinaryFrame::PreviewImageWithMetadata { metadata, image } => {
                let json = serde_json::to_vec(metadata).unwrap_or_default();
                out.extend_from_slice(&BINARY_PREVIEW_IMAGE_WITH_METADATA.to_be_bytes());
                out.extend_from_slice(&(json.len() as u32).to_be_bytes());
                out.extend_from_slice(&json);
                out.extend_from_slice(image);
            }
            BinaryFrame::Other {
                event_type,
                payload,
            } => {
                out.extend_from_slice(&event_type.to_be_bytes());
                out.extend_from_slice(payload);
            }
        }
        out
    }
}

/// Where the recordings live: `$DREAMD_SHARED/comfyui/recordings`, else
/// `../shared/comfyui/recordings` beside the package.
pub fn recordings_dir() -> std::path::PathBuf {
    std::env::var_os("DREAMD_SHARED")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"))
        .join("comfyui/recordings")
}

/// One line of `ws.jsonl`: a text message, or a binary frame's header fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedWs {
    pub step: String,
    #[serde(default)]
    pub t: f64,
    pub kind: String,
    #[serde(default)]
    pub msg: Option<Value>,
    #[serde(default)]
    pub event_type: Option<u32>,
    #[serde(default)]
    pub word2: Option<u32>,
    #[serde(default)]
    pub metadata: Option<PreviewMetadata>,
    #[serde(default)]
    pub head_hex: Option<String>,
    #[serde(default)]
    pub len: Option<usize>,
}

/// One line of `http.jsonl`: an exchange (`method`, `path`, `status`, `json`, `req`), or a
/// summary line of the recorder (`*_summary`, `*_view`, `object_info_size`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedHttp {
    pub step: String,
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub status: Option<u16>,
    #[serde(default)]
    pub json: Option<Value>,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub req: Option<Value>,
    #[serde(default)]
    pub req_raw: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The non-empty lines of a recording, or none after a loud skip when the recordings are
    /// not there (a failure under `DREAMD_REQUIRE_MODELS`, as in CI).
    fn lines(name: &str) -> Option<Vec<String>> {
        let path = recordings_dir().join(name);
        let Ok(text) = std::fs::read_to_string(&path) else {
            crate::test_weights::skip(&format!(
                "the ComfyUI recording {} (or $DREAMD_SHARED/comfyui/recordings)",
                path.display()
            ));
            return None;
        };
        Some(
            text.lines()
                .filter(|l| !l.trim().is_empty())
                .map(str::to_string)
                .collect(),
        )
    }

    #[test]
    fn every_recorded_websocket_line_parses() {
        let Some(lines) = lines("ws.jsonl") else {
            return;
        };
        assert_eq!(lines.len(), 155);
        let mut kinds = std::collections::BTreeSet::new();
        let mut binaries = 0;
        for line in &lines {
            let rec: RecordedWs = serde_json::from_str(line).expect(line);
            match rec.kind.as_str() {
                "text" => {
                    let msg = rec.msg.clone().expect("text line without msg");
                    let text = serde_json::to_string(&msg).unwrap();
                    let parsed = WsMessage::parse(&text).unwrap_or_else(|e| panic!("{e}: {line}"));
                    assert!(
                        !matches!(parsed, WsMessage::Unknown { .. }),
                        "recorded type left unknown: {line}"
                    );
                    // Round trip: what the replay server sends parses to the same message.
                    assert_eq!(WsMessage::parse(&parsed.to_text()).unwrap(), parsed);
                    kinds.insert(parsed.kind().to_string());
                }
                "binary" => {
                    binaries += 1;
                    let head = rec.head_hex.as_deref().unwrap();
                    let bytes: Vec<u8> = (0..head.len() / 2)
                        .map(|i| u8::from_str_radix(&head[2 * i..2 * i + 2], 16).unwrap())
                        .collect();
                    let event_type = rec.event_type.unwrap();
                    assert_eq!(be_u32(&bytes, 0), Some(event_type));
                    assert_eq!(be_u32(&bytes, 4), rec.word2);
                    // Rebuild the whole frame from its recorded fields and parse it back.
                    let png = b"\x89PNG\r\n\x1a\nrest".as_slice();
                    let frame = match event_type {
                        1 => BinaryFrame::PreviewImage {
                            format: ImageFormat::from_word(rec.word2.unwrap()),
                            image: png,
                        },
                        4 => BinaryFrame::PreviewImageWithMetadata {
                            metadata: rec.metadata.clone().unwrap(),
                            image: png,
                        },
                        other => panic!("unexpected binary type {other}"),
                    };
                    let encoded = frame.encode();
                    assert_eq!(&encoded[..4], &bytes[..4], "type word of {line}");
                    if event_type == 1 {
                        assert_eq!(&encoded[4..8], &bytes[4..8], "format word of {line}");
                    } else {
                        // ComfyUI's metadata JSON starts right after the length word.
                        assert_eq!(&bytes[8..10], b"{\"", "metadata of {line}");
                    }
                    assert_eq!(BinaryFrame::parse(&encoded).unwrap(), frame);
                }
                other => panic!("unknown line kind {other}"),
            }
        }
        assert_eq!(binaries, 2);
        for expected in [
            "status",
            "execution_start",
            "execution_cached",
            "executing",
            "progress",
            "progress_state",
            "executed",
            "execution_success",
            "execution_error",
            "execution_interrupted",
            "feature_flags",
        ] {
            assert!(kinds.contains(expected), "no {expected} in the recordings");
        }
    }

    #[test]
    fn recorded_details_the_client_relies_on() {
        let mut no_prompt_executing = 0;
        let mut done_signals = 0;
        let Some(recorded) = lines("ws.jsonl") else {
            return;
        };
        for line in recorded {
            let rec: RecordedWs = serde_json::from_str(&line).unwrap();
            let Some(msg) = rec.msg else { continue };
            match WsMessage::parse(&msg.to_string()).unwrap() {
                WsMessage::Executing(Executing {
                    node: Some(_),
                    prompt_id: None,
                    ..
                }) => no_prompt_executing += 1,
                WsMessage::Executing(Executing {
                    node: None,
                    prompt_id: Some(_),
                    ..
                }) => done_signals += 1,
                WsMessage::ExecutionError(e) => {
                    assert_eq!(e.node_type.as_deref(), Some("SaveImage"));
                    assert!(e.exception_message.contains("outside the output folder"));
                }
                _ => {}
            }
        }
        assert_eq!(
            no_prompt_executing, 1,
            "the reconnect step's bare executing"
        );
        assert!(done_signals >= 7);
    }

    #[test]
    fn every_recorded_http_line_parses() {
        let Some(lines) = lines("http.jsonl") else {
            return;
        };
        assert_eq!(lines.len(), 50);
        let mut checked = std::collections::BTreeMap::<&str, usize>::new();
        for line in &lines {
            let rec: RecordedHttp = serde_json::from_str(line).expect(line);
            let (Some(method), Some(path), Some(status)) =
                (rec.method.as_deref(), rec.path.as_deref(), rec.status)
            else {
                continue; // a recorder summary line
            };
            // Bodies longer than the recorder's limit are stored as truncated text.
            let json = match &rec.json {
                Some(Value::String(s)) if s.ends_with("(truncated)") => None,
                other => other.clone(),
            };
            let route = path.trim_start_matches("/api");
            let parse = |what: &str, r: Result<(), serde_json::Error>| {
                r.unwrap_or_else(|e| panic!("{what}: {e}: {line}"));
            };
            match (method, route, status, json) {
                ("POST", "/prompt", 200, Some(j)) => {
                    parse(
                        "prompt reply",
                        serde_json::from_value::<PromptResponse>(j).map(drop),
                    );
                    let req = rec.req.clone().unwrap();
                    parse(
                        "prompt request",
                        serde_json::from_value::<PromptRequest>(req).map(drop),
                    );
                    *checked.entry("prompt").or_default() += 1;
                }
                ("POST", "/prompt", 400, Some(j)) => {
                    let e: PromptErrorResponse = serde_json::from_value(j).expect(line);
                    assert!(!e.summary().is_empty());
                    *checked.entry("prompt400").or_default() += 1;
                }
                ("POST", "/upload/image", 200, Some(j)) => {
                    parse("upload", serde_json::from_value::<UploadReply>(j).map(drop));
                    *checked.entry("upload").or_default() += 1;
                }
                ("GET", p, 200, Some(j)) if p.starts_with("/history") => {
                    parse("history", serde_json::from_value::<History>(j).map(drop));
                    *checked.entry("history").or_default() += 1;
                }
                ("GET", "/queue", 200, Some(j)) => {
                    parse("queue", serde_json::from_value::<QueueState>(j).map(drop));
                    *checked.entry("queue").or_default() += 1;
                }
                ("GET", "/system_stats", 200, Some(j)) => {
                    let s: SystemStats = serde_json::from_value(j).expect(line);
                    assert_eq!(s.system.comfyui_version, "0.3.59");
                    *checked.entry("system_stats").or_default() += 1;
                }
                ("GET", p, 200, Some(j)) if p.starts_with("/object_info/") => {
                    let info: ObjectInfo = serde_json::from_value(j).expect(line);
                    assert_eq!(info.len(), 1);
                    *checked.entry("object_info").or_default() += 1;
                }
                ("POST", "/interrupt", code, _) => {
                    match (&rec.req, rec.req_raw.as_deref()) {
                        (Some(req), _) => parse(
                            "interrupt",
                            serde_json::from_value::<InterruptRequest>(req.clone()).map(drop),
                        ),
                        (None, Some("null")) => assert_eq!(code, 500),
                        other => panic!("interrupt without a body: {other:?}"),
                    }
                    *checked.entry("interrupt").or_default() += 1;
                }
                ("POST", "/queue", 200, _) => {
                    parse(
                        "queue delete",
                        serde_json::from_value::<QueueDelete>(rec.req.clone().unwrap()).map(drop),
                    );
                    *checked.entry("queue_delete").or_default() += 1;
                }
                _ => {}
            }
        }
        for (what, at_least) in [
            ("prompt", 9),
            ("prompt400", 3),
            ("upload", 1),
            ("history", 7),
            ("queue", 4),
            ("system_stats", 2),
            ("object_info", 2),
            ("interrupt", 3),
            ("queue_delete", 1),
        ] {
            let n = checked.get(what).copied().unwrap_or(0);
            assert!(n >= at_least, "{what}: {n} < {at_least} ({checked:?})");
        }
    }

    #[test]
    fn history_outcomes() {
        let entry: HistoryEntry = serde_json::from_value(serde_json::json!({
            "outputs": {},
            "status": {"status_str": "error", "completed": false, "messages": [
                ["execution_start", {"prompt_id": "p"}],
                ["execution_interrupted", {"prompt_id": "p", "node_id": "2", "node_type": "ImageBlur", "executed": ["0"]}]
            ]}
        }))
        .unwrap();
        assert!(
            matches!(entry.outcome(), HistoryOutcome::Interrupted(i) if i.node_id.as_deref() == Some("2"))
        );
        let ok: HistoryEntry = serde_json::from_value(serde_json::json!({
            "outputs": {"9": {"images": [{"filename": "a.png", "subfolder": "", "type": "output"}]}},
            "status": {"status_str": "success", "completed": true, "messages": []}
        }))
        .unwrap();
        assert_eq!(ok.outcome(), HistoryOutcome::Success);
        assert_eq!(ok.outputs["9"].images[0].filename, "a.png");
    }

    #[test]
    fn combo_options_in_both_forms() {
        let info: NodeInfo = serde_json::from_value(serde_json::json!({
            "input": {"required": {
                "ckpt_name": [["a.safetensors", "b.ckpt"], {}],
                "sampler_name": ["COMBO", {"options": ["euler", "dpmpp_2m"]}],
                "steps": ["INT", {"default": 20}]
            }}
        }))
        .unwrap();
        assert_eq!(
            info.combo_options("ckpt_name").unwrap(),
            ["a.safetensors", "b.ckpt"]
        );
        assert_eq!(
            info.combo_options("sampler_name").unwrap(),
            ["euler", "dpmpp_2m"]
        );
        assert_eq!(info.combo_options("steps"), None);
        assert_eq!(info.combo_options("missing"), None);
    }

    #[test]
    fn unknown_types_and_bad_bodies() {
        let m = WsMessage::parse(r#"{"type":"crystools.monitor","data":{"cpu":3}}"#).unwrap();
        assert_eq!(m.kind(), "crystools.monitor");
        assert!(WsMessage::parse(r#"{"type":"executed","data":{"node":1}}"#).is_err());
        assert!(WsMessage::parse("not json").is_err());
        assert!(matches!(
            BinaryFrame::parse(&[0, 0, 0]),
            Err(ProtocolError::ShortBinary { len: 3 })
        ));
        let bad = [0, 0, 0, 4, 0, 0, 1, 0, b'{'];
        assert!(matches!(
            BinaryFrame::parse(&bad),
            Err(ProtocolError::MetadataLength { .. })
        ));
        assert!(matches!(
            BinaryFrame::parse(&[0, 0, 0, 3, 1, 2]),
            Ok(BinaryFrame::Other { event_type: 3, .. })
        ));
    }
}
