//! A ComfyUI that replays the recorded protocol: the other side of [`super::client`], for the
//! tests and `dreamd bench comfyui` (never used by `dreamd run`). An axum server that answers
//! the HTTP API and the WebSocket the way ComfyUI 0.3.59 did in `shared/comfyui/recordings`,
//! using the same [`super::protocol`] types as the client.
//!
//! Each prompt is "executed" by replaying a recorded step's WebSocket messages (their order and
//! shapes), with the recorded prompt id and output node rewritten to the live ones. The picture
//! is made from the request: img2img inverts the uploaded picture (the recorded graph was
//! `LoadImage → ImageInvert → SaveImage`), txt2img paints the recorded colour. The history entry
//! is written before `executing{node: null}`, as ComfyUI does. Routes answer under `/api` too.
//!
//! Scenarios pick the recorded step and the failure: see [`Scenario`]. The server can be
//! killed (every connection dropped, the port closed) and restarted on the same port with an
//! empty queue and history, like a restarted ComfyUI. Every request is logged for assertions.
//! The recordings are read and checked once, at start ([`ReplayError`] names what is missing).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::protocol::{
    recordings_dir, BinaryFrame, ExecInfo, Executing, Graph, HistoryEntry, HistoryStatus,
    ImageFormat, ImageRef, InterruptRequest, JobCancelReply, NodeInfo, NodeOutput, ObjectInfo,
    PreviewMetadata, PromptErrorResponse, PromptRequest, PromptResponse, QueueDelete, QueueState,
    QueueStatus, RecordedHttp, RecordedWs, StatusData, SystemStats, UploadReply, WsMessage,
};
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::sync::{mpsc, Notify};
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// What the server does with a prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// `run1`: runs and saves a picture.
    Happy,
    /// `run2_cached`: every node from the cache (`execution_cached` lists them).
    Cached,
    /// `validation_error`: `POST /prompt` → 400 with node errors.
    Validation,
    /// `runtime_error`: `execution_error` from SaveImage.
    RuntimeError,
    /// `interrupt`: runs until cancelled (job cancel or `/interrupt {prompt_id}`), then
    /// `execution_interrupted`.
    Stall,
    /// `queue_delete`: another client's prompt runs forever; ours stays pending.
    BehindOther,
    /// `reconnect`: the socket is closed after `execution_start`, the run finishes while it is
    /// down, and the reconnected socket gets `executing` without a `prompt_id`.
    WsDrop,
    /// `ws_image_*`: binary frames of types 1 and 4 before and after `progress`, plus an
    /// unknown message type and a malformed one.
    Binary,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub scenario: Scenario,
    /// Whether `POST /api/jobs/{id}/cancel` exists (ComfyUI 0.38).
    pub jobs_api: bool,
    /// `/interrupt` always answers the recorded HTTP 500.
    pub interrupt_fails: bool,
    /// Checkpoints `/object_info` lists.
    pub checkpoints: Vec<String>,
    /// Pause between two replayed messages.
    pub event_delay: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            scenario: Scenario::Happy,
            jobs_api: false,
            interrupt_fails: false,
            checkpoints: vec!["v1-5-pruned-emaonly.safetensors".into()],
            event_delay: Duration::ZERO,
        }
    }
}

/// One logged request.
#[derive(Debug, Clone)]
pub struct Logged {
    pub method: String,
    pub path: String,
    pub body: String,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum JobState {
    Pending,
    Running,
}

struct Job {
    id: String,
    number: i64,
    client_id: String,
    graph: Graph,
    state: JobState,
    cancel: Arc<Notify>,
    /// Another client's job: runs until cancelled.
    foreign: bool,
}

/// Why the replaying server cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("cannot read the ComfyUI recordings {path}: {error} (set DREAMD_SHARED to the shared folder)")]
    Read {
        path: std::path::PathBuf,
        error: std::io::Error,
    },
    #[error("{path} line {line}: {error}")]
    Parse {
        path: std::path::PathBuf,
        line: usize,
        error: serde_json::Error,
    },
    #[error("the recordings lack {what}")]
    Missing { what: String },
    #[error("cannot listen on {addr}: {error}")]
    Bind {
        addr: SocketAddr,
        error: std::io::Error,
    },
}

/// The recordings, and the replies the handlers send read from them once, at start.
struct Recordings {
    ws: Vec<RecordedWs>,
    http: Vec<RecordedHttp>,
    system_stats: SystemStats,
    /// `LoadImage` and `SaveImage` as the server described them.
    object_info: ObjectInfo,
    validation_error: PromptErrorResponse,
}

/// The WebSocket steps the scenarios replay.
const STEPS: [&str; 7] = [
    "run1",
    "run2_cached",
    "runtime_error",
    "interrupt",
    "reconnect",
    "ws_image_legacy",
    "ws_image_metadata",
];

impl Recordings {
    fn load() -> Result<Recordings, ReplayError> {
        let dir = recordings_dir();
        let ws: Vec<RecordedWs> = read_lines(&dir.join("ws.jsonl"))?;
        let http: Vec<RecordedHttp> = read_lines(&dir.join("http.jsonl"))?;
        let mut object_info = ObjectInfo::new();
        for class in ["LoadImage", "SaveImage"] {
            let recorded: ObjectInfo =
                recorded_reply(&http, "probe", &format!("/object_info/{class}"), 200)?;
            object_info.extend(recorded);
        }
        let recordings = Recordings {
            system_stats: recorded_reply(&http, "probe", "/system_stats", 200)?,
            object_info,
            validation_error: recorded_reply(&http, "validation_error", "/prompt", 400)?,
            ws,
            http,
        };
        for step in STEPS {
            if recordings.step(step).is_empty() {
                return Err(ReplayError::Missing {
                    what: format!("WebSocket messages of step {step}"),
                });
            }
        }
        Ok(recordings)
    }

    fn step(&self, step: &str) -> Vec<RecordedWs> {
        self.ws.iter().filter(|r| r.step == step).cloned().collect()
    }
}

/// The recorded JSON reply to `path` with `status` in `step`, as `T`.
fn recorded_reply<T: serde::de::DeserializeOwned>(
    http: &[RecordedHttp],
    step: &str,
    path: &str,
    status: u16,
) -> Result<T, ReplayError> {
    let missing = |why: String| ReplayError::Missing {
        what: format!("a {path} reply ({status}) in step {step}{why}"),
    };
    let json = http
        .iter()
        .find(|r| r.step == step && r.path.as_deref() == Some(path) && r.status == Some(status))
        .and_then(|r| r.json.clone())
        .ok_or_else(|| missing(String::new()))?;
    serde_json::from_value(json).map_err(|e| missing(format!(" that reads: {e}")))
}

/// The non-empty lines of a JSON-lines file, each parsed as `T`.
fn read_lines<T: serde::de::DeserializeOwned>(
    path: &std::path::Path,
) -> Result<Vec<T>, ReplayError> {
    let text = std::fs::read_to_string(path).map_err(|error| ReplayError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|error| ReplayError::Parse {
                path: path.to_path_buf(),
                line: i + 1,
                error,
            })
        })
        .collect()
}

/// Live state, shared by the handlers and the worker.
pub struct Shared {
    pub options: Mutex<Options>,
    recordings: Recordings,
    pub log: Mutex<Vec<Logged>>,
    history: Mutex<HashMap<String, HistoryEntry>>,
    queue: Mutex<Vec<Job>>,
    queue_changed: Notify,
    uploads: Mutex<HashMap<String, Vec<u8>>>,
    pub outputs: Mutex<HashMap<String, Vec<u8>>>,
    sockets: Mutex<HashMap<String, mpsc::Sender<Message>>>,
    /// Clients whose next connection gets the recorded bare `executing` (after a drop).
    reconnect_greeting: Mutex<Vec<String>>,
    counter: AtomicU64,
    life: Mutex<CancellationToken>,
    /// Bare interrupts (no prompt id): a client that sends one would kill other users' jobs.
    pub bare_interrupts: AtomicU64,
    pub ws_connections: AtomicU64,
    pub feature_flags_seen: AtomicU64,
    /// Prompts that ran to an end (any outcome).
    pub finished: AtomicU64,
    /// Time spent making pictures (the server's own work), in µs.
    pub busy_us: AtomicU64,
}

/// The running server.
pub struct Replay {
    pub addr: SocketAddr,
    pub url: String,
    pub shared: Arc<Shared>,
}

impl Replay {
    /// Starts on a free loopback port.
    pub async fn start(options: Options) -> Result<Replay, ReplayError> {
        let shared = Arc::new(Shared {
            options: Mutex::new(options),
            recordings: Recordings::load()?,
            log: Mutex::new(Vec::new()),
            history: Mutex::new(HashMap::new()),
            queue: Mutex::new(Vec::new()),
            queue_changed: Notify::new(),
            uploads: Mutex::new(HashMap::new()),
            outputs: Mutex::new(HashMap::new()),
            sockets: Mutex::new(HashMap::new()),
            reconnect_greeting: Mutex::new(Vec::new()),
            counter: AtomicU64::new(0),
            life: Mutex::new(CancellationToken::new()),
            bare_interrupts: AtomicU64::new(0),
            ws_connections: AtomicU64::new(0),
            feature_flags_seen: AtomicU64::new(0),
            finished: AtomicU64::new(0),
            busy_us: AtomicU64::new(0),
        });
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let listener = bind(any).await?;
        let addr = listener
            .local_addr()
            .map_err(|error| ReplayError::Bind { addr: any, error })?;
        let replay = Replay {
            addr,
            url: format!("http://{addr}"),
            shared,
        };
        replay.serve(listener);
        Ok(replay)
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let shared = Arc::clone(&self.shared);
        let life = shared.life.lock().clone();
        if shared.options.lock().scenario == Scenario::BehindOther {
            let mut queue = shared.queue.lock();
            queue.push(Job {
                id: "b50a90bd-1dc5-488a-af85-7eb1368fb0db".into(),
                number: 0,
                client_id: "another-client".into(),
                graph: Graph::new(),
                state: JobState::Pending,
                cancel: Arc::new(Notify::new()),
                foreign: true,
            });
        }
        tokio::spawn(worker(Arc::clone(&shared), life.clone()));
        let router = router(Arc::clone(&shared));
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = life.cancelled() => break,
                    a = listener.accept() => a,
                };
                let Ok((stream, _)) = accepted else { continue };
                let service = hyper_util::service::TowerToHyperService::new(router.clone());
                let life = life.clone();
                tokio::spawn(async move {
                    let builder = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    );
                    let conn = builder.serve_connection_with_upgrades(
                        hyper_util::rt::TokioIo::new(stream),
                        service,
                    );
                    tokio::select! {
                        _ = life.cancelled() => {}
                        _ = conn => {}
                    }
                });
            }
        });
    }

    /// Kills the server: the port closes and every connection (WebSockets too) drops.
    pub fn kill(&self) {
        self.shared.life.lock().cancel();
        self.shared.sockets.lock().clear();
    }

    /// Starts again on the same port, forgetting the queue and the history.
    pub async fn restart(&self) -> Result<(), ReplayError> {
        *self.shared.life.lock() = CancellationToken::new();
        self.shared.queue.lock().clear();
        self.shared.history.lock().clear();
        let listener = bind(self.addr).await?;
        self.serve(listener);
        Ok(())
    }

    pub fn set_scenario(&self, scenario: Scenario) {
        self.shared.options.lock().scenario = scenario;
    }

    /// Requests whose method and path start with the given ones.
    pub fn requests(&self, method: &str, path: &str) -> Vec<Logged> {
        self.shared
            .log
            .lock()
            .iter()
            .filter(|l| l.method == method && l.path.starts_with(path))
            .cloned()
            .collect()
    }

    pub fn history_len(&self) -> usize {
        self.shared.history.lock().len()
    }

    /// Ids in the queue (running or pending).
    pub fn queued_ids(&self) -> Vec<String> {
        self.shared
            .queue
            .lock()
            .iter()
            .map(|j| j.id.clone())
            .collect()
    }

    /// Whether the foreign job of [`Scenario::BehindOther`] is still running.
    pub fn foreign_running(&self) -> bool {
        self.shared
            .queue
            .lock()
            .iter()
            .any(|j| j.foreign && j.state == JobState::Running)
    }

    /// Pictures the client uploaded, by name.
    pub fn upload(&self, name: &str) -> Option<Vec<u8>> {
        self.shared.uploads.lock().get(name).cloned()
    }

    /// The pictures the server produced, by file name.
    pub fn output(&self, name: &str) -> Option<Vec<u8>> {
        self.shared.outputs.lock().get(name).cloned()
    }
}

/// Listens on `addr` (reusing a port just closed by [`Replay::kill`]), retrying for 2.5 s.
async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, ReplayError> {
    let bind_error = |error| ReplayError::Bind { addr, error };
    let mut last = None;
    for _ in 0..50 {
        let socket = tokio::net::TcpSocket::new_v4().map_err(bind_error)?;
        socket.set_reuseaddr(true).map_err(bind_error)?;
        match socket.bind(addr) {
            Ok(()) => return socket.listen(128).map_err(bind_error),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(bind_error(last.unwrap_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::AddrInUse, "address in use")
    })))
}

/// A server that accepts connections and never answers (not even the WebSocket handshake).
pub async fn silent_server() -> Result<(String, tokio::task::JoinHandle<()>), ReplayError> {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let bind_error = |error| ReplayError::Bind { addr: any, error };
    let listener = tokio::net::TcpListener::bind(any)
        .await
        .map_err(bind_error)?;
    let addr = listener.local_addr().map_err(bind_error)?;
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    Ok((format!("http://{addr}"), task))
}

fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/system_stats", get(system_stats))
        .route("/object_info", get(object_info))
        .route("/object_info/{class}", get(object_info_class))
        .route("/upload/image", post(upload))
        .route("/prompt", post(prompt))
        .route("/history/{id}", get(history_one))
        .route("/history", post(history_delete))
        .route("/queue", get(queue_get).post(queue_post))
        .route("/interrupt", post(interrupt))
        .route("/view", get(view))
        .route("/ws", get(ws))
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .merge(routes())
        .nest("/api", routes())
        .route("/api/jobs/{id}/cancel", post(job_cancel))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&shared),
            log_request,
        ))
        .with_state(shared)
}

async fn log_request(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: axum::middleware::Next,
) -> Response {
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, 64 << 20)
        .await
        .unwrap_or_default();
    let text = if parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("multipart/"))
    {
        format!("<multipart {} bytes>", bytes.len())
    } else {
        String::from_utf8_lossy(&bytes).into_owned()
    };
    shared.log.lock().push(Logged {
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        body: text,
    });
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

fn json_reply<T: serde::Serialize>(status: StatusCode, body: &T) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        serde_json::to_string(body).unwrap_or_default(),
    )
        .into_response()
}

async fn system_stats(State(shared): State<Arc<Shared>>) -> Response {
    json_reply(StatusCode::OK, &shared.recordings.system_stats)
}

fn object_info_map(shared: &Shared) -> ObjectInfo {
    let mut info = shared.recordings.object_info.clone();
    // Descriptions written here, in ComfyUI's shape; one that does not parse is left out.
    let node = |v: Value| -> NodeInfo { serde_json::from_value(v).unwrap_or_default() };
    let checkpoints = shared.options.lock().checkpoints.clone();
    info.insert(
        "CheckpointLoaderSimple".into(),
        node(
            json!({"input": {"required": {"ckpt_name": [checkpoints, {}]}},
                    "output": ["MODEL", "CLIP", "VAE"], "name": "CheckpointLoaderSimple"}),
        ),
    );
    info.insert(
        "KSampler".into(),
        node(json!({"input": {"required": {
            "seed": ["INT", {"default": 0}], "steps": ["INT", {"default": 20}],
            "cfg": ["FLOAT", {"default": 8.0}],
            "sampler_name": [["euler", "euler_ancestral", "dpmpp_2m"], {}],
            "scheduler": [["normal", "karras", "simple"], {}],
            "denoise": ["FLOAT", {"default": 1.0}]}},
            "output": ["LATENT"], "name": "KSampler"})),
    );
    for class in [
        "VAEEncode",
        "VAEDecode",
        "CLIPTextEncode",
        "EmptyLatentImage",
        "ImageInvert",
        "SaveImageWebsocket",
        "PreviewImage",
        "EmptyImage",
        "ImageBlur",
    ] {
        info.insert(class.into(), node(json!({"name": class})));
    }
    info
}

async fn object_info(State(shared): State<Arc<Shared>>) -> Response {
    json_reply(StatusCode::OK, &object_info_map(&shared))
}

async fn object_info_class(
    State(shared): State<Arc<Shared>>,
    Path(class): Path<String>,
) -> Response {
    let mut info = object_info_map(&shared);
    let mut one = ObjectInfo::new();
    if let Some(n) = info.remove(&class) {
        one.insert(class, n);
    }
    json_reply(StatusCode::OK, &one)
}

/// A minimal multipart reader: the `image` part's file name and bytes.
fn multipart_image(content_type: &str, body: &[u8]) -> Option<(String, Vec<u8>)> {
    let boundary = content_type.split("boundary=").nth(1)?.trim_matches('"');
    let delimiter = format!("--{boundary}");
    let find = |hay: &[u8], needle: &[u8], from: usize| {
        hay[from..]
            .windows(needle.len())
            .position(|w| w == needle)
            .map(|p| p + from)
    };
    let mut at = 0;
    while let Some(start) = find(body, delimiter.as_bytes(), at) {
        let headers_start = start + delimiter.len() + 2;
        let headers_end = find(body, b"\r\n\r\n", headers_start)?;
        let headers = String::from_utf8_lossy(&body[headers_start..headers_end]);
        let content_start = headers_end + 4;
        let next = find(body, format!("\r\n{delimiter}").as_bytes(), content_start)?;
        if headers.contains("name=\"image\"") {
            let filename = headers
                .split("filename=\"")
                .nth(1)?
                .split('"')
                .next()?
                .to_string();
            return Some((filename, body[content_start..next].to_vec()));
        }
        at = next + 2;
    }
    None
}

async fn upload(
    State(shared): State<Arc<Shared>>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let Some((name, bytes)) = multipart_image(ct, &body) else {
        return (StatusCode::BAD_REQUEST, "no image part").into_response();
    };
    shared.uploads.lock().insert(name.clone(), bytes);
    json_reply(
        StatusCode::OK,
        &UploadReply {
            name,
            subfolder: String::new(),
            kind: "input".into(),
        },
    )
}

async fn prompt(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let scenario = shared.options.lock().scenario;
    let request: PromptRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(_) => {
            return json_reply(StatusCode::BAD_REQUEST, &shared.recordings.validation_error);
        }
    };
    if scenario == Scenario::Validation {
        return json_reply(StatusCode::BAD_REQUEST, &shared.recordings.validation_error);
    }
    let info = object_info_map(&shared);
    for (id, node) in &request.prompt {
        let class = node["class_type"].as_str().unwrap_or_default();
        if !info.contains_key(class) {
            let e = PromptErrorResponse {
                error: super::protocol::ErrorInfo {
                    kind: "invalid_prompt".into(),
                    message: format!("Cannot execute because node {class} does not exist."),
                    details: format!("Node ID '#{id}'"),
                    extra_info: json!({}),
                },
                node_errors: BTreeMap::new(),
            };
            return json_reply(StatusCode::BAD_REQUEST, &e);
        }
    }
    let id = request
        .prompt_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let number = shared.counter.fetch_add(1, Ordering::Relaxed) as i64 + 1;
    shared.queue.lock().push(Job {
        id: id.clone(),
        number,
        client_id: request.client_id.clone(),
        graph: request.prompt.clone(),
        state: JobState::Pending,
        cancel: Arc::new(Notify::new()),
        foreign: false,
    });
    shared.queue_changed.notify_one();
    let remaining = shared.queue.lock().len() as u64;
    broadcast_status(&shared, remaining);
    json_reply(
        StatusCode::OK,
        &PromptResponse {
            prompt_id: id,
            number,
            node_errors: BTreeMap::new(),
        },
    )
}

async fn history_one(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let mut out = BTreeMap::new();
    if let Some(e) = shared.history.lock().get(&id) {
        out.insert(id, e.clone());
    }
    json_reply(StatusCode::OK, &out)
}

async fn history_delete(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    if let Ok(d) = serde_json::from_slice::<QueueDelete>(&body) {
        let mut history = shared.history.lock();
        for id in d.delete {
            history.remove(&id);
        }
    }
    StatusCode::OK.into_response()
}

fn queue_item(job: &Job) -> Vec<Value> {
    vec![
        json!(job.number),
        json!(job.id),
        Value::Object(job.graph.clone()),
        json!({"client_id": job.client_id}),
        json!([]),
    ]
}

async fn queue_get(State(shared): State<Arc<Shared>>) -> Response {
    let queue = shared.queue.lock();
    let state = QueueState {
        queue_running: queue
            .iter()
            .filter(|j| j.state == JobState::Running)
            .map(queue_item)
            .collect(),
        queue_pending: queue
            .iter()
            .filter(|j| j.state == JobState::Pending)
            .map(queue_item)
            .collect(),
    };
    json_reply(StatusCode::OK, &state)
}

async fn queue_post(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if value.get("clear").is_some() {
        // Never expected from dreamd: it would drop other users' prompts.
        shared.bare_interrupts.fetch_add(1, Ordering::Relaxed);
        shared.queue.lock().retain(|j| j.state == JobState::Running);
    }
    if let Ok(d) = serde_json::from_value::<QueueDelete>(value) {
        shared
            .queue
            .lock()
            .retain(|j| !(j.state == JobState::Pending && d.delete.contains(&j.id)));
    }
    StatusCode::OK.into_response()
}

async fn interrupt(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let recorded_500 = || {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "500 Internal Server Error\n\nServer got itself in trouble",
        )
            .into_response()
    };
    if shared.options.lock().interrupt_fails {
        return recorded_500();
    }
    let value: Value = if body.is_empty() {
        json!({})
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(_) => return recorded_500(),
        }
    };
    if value.is_null() {
        // ComfyUI 0.3.59: `null` fails in the handler (HTTP 500) and interrupts nothing.
        return recorded_500();
    }
    let queue = shared.queue.lock();
    match serde_json::from_value::<InterruptRequest>(value) {
        Ok(r) => {
            if let Some(job) = queue
                .iter()
                .find(|j| j.state == JobState::Running && j.id == r.prompt_id)
            {
                job.cancel.notify_one();
            }
        }
        Err(_) => {
            // A bare interrupt stops whatever runs, whoever queued it.
            shared.bare_interrupts.fetch_add(1, Ordering::Relaxed);
            for job in queue.iter().filter(|j| j.state == JobState::Running) {
                job.cancel.notify_one();
            }
        }
    }
    StatusCode::OK.into_response()
}

async fn job_cancel(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    if !shared.options.lock().jobs_api {
        return (StatusCode::NOT_FOUND, "404: Not Found").into_response();
    }
    let mut queue = shared.queue.lock();
    let mut cancelled = false;
    if let Some(job) = queue.iter().find(|j| j.id == id) {
        cancelled = true;
        if job.state == JobState::Running {
            job.cancel.notify_one();
        }
    }
    queue.retain(|j| !(j.id == id && j.state == JobState::Pending));
    json_reply(StatusCode::OK, &JobCancelReply { cancelled })
}

#[derive(serde::Deserialize)]
struct ViewQuery {
    filename: String,
    #[serde(default)]
    subfolder: String,
    #[serde(rename = "type", default)]
    kind: String,
}

async fn view(State(shared): State<Arc<Shared>>, Query(q): Query<ViewQuery>) -> Response {
    let _ = (&q.subfolder, &q.kind);
    match shared.outputs.lock().get(&q.filename) {
        Some(bytes) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "image/png")],
            bytes.clone(),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "404: Not Found").into_response(),
    }
}

#[derive(serde::Deserialize)]
struct WsQuery {
    #[serde(rename = "clientId")]
    client_id: Option<String>,
}

async fn ws(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<WsQuery>,
    mut request: Request,
) -> Response {
    let Some(key) = request.headers().get("sec-websocket-key").cloned() else {
        return (StatusCode::BAD_REQUEST, "not a WebSocket request").into_response();
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let client_id = q
        .client_id
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let on_upgrade = hyper::upgrade::on(&mut request);
    let life = shared.life.lock().clone();
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let stream = tokio_tungstenite::WebSocketStream::from_raw_socket(
            hyper_util::rt::TokioIo::new(upgraded),
            Role::Server,
            None,
        )
        .await;
        serve_socket(shared, client_id, stream, life).await;
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header("sec-websocket-accept", accept)
        .body(Body::empty())
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

async fn serve_socket<S>(
    shared: Arc<Shared>,
    client_id: String,
    stream: tokio_tungstenite::WebSocketStream<S>,
    life: CancellationToken,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    shared.ws_connections.fetch_add(1, Ordering::Relaxed);
    let (mut sink, mut source) = stream.split();
    let (tx, mut rx) = mpsc::channel::<Message>(1024);
    // Like ComfyUI: the same clientId replaces the previous socket.
    shared.sockets.lock().insert(client_id.clone(), tx.clone());
    let remaining = shared.queue.lock().len() as u64;
    let greeting = WsMessage::Status(StatusData {
        status: Some(QueueStatus {
            exec_info: ExecInfo {
                queue_remaining: remaining,
            },
        }),
        sid: Some(client_id.clone()),
    });
    let _ = sink.send(Message::text(greeting.to_text())).await;
    let greet_reconnect = {
        let mut pending = shared.reconnect_greeting.lock();
        let found = pending.iter().position(|c| c == &client_id);
        found.map(|i| pending.remove(i)).is_some()
    };
    if greet_reconnect {
        // Recorded after the reconnect: `executing` for a node, without `prompt_id`.
        for rec in shared.recordings.step("reconnect") {
            let Some(msg) = rec.msg else { continue };
            if let Ok(WsMessage::Executing(e)) = WsMessage::parse(&msg.to_string()) {
                if e.prompt_id.is_none() {
                    let _ = sink
                        .send(Message::text(WsMessage::Executing(e).to_text()))
                        .await;
                }
            }
        }
    }
    loop {
        tokio::select! {
            _ = life.cancelled() => break,
            out = rx.recv() => match out {
                Some(Message::Close(_)) | None => {
                    let _ = sink.send(Message::Close(None)).await;
                    break;
                }
                Some(m) => {
                    if sink.send(m).await.is_err() {
                        break;
                    }
                }
            },
            incoming = source.next() => match incoming {
                Some(Ok(Message::Text(t))) => {
                    if let Ok(WsMessage::FeatureFlags(_)) = WsMessage::parse(t.as_str()) {
                        shared.feature_flags_seen.fetch_add(1, Ordering::Relaxed);
                        let flags = shared.recordings.step("ws_image_metadata").into_iter()
                            .find_map(|r| r.msg.filter(|m| m["type"] == "feature_flags"));
                        if let Some(f) = flags {
                            let _ = sink.send(Message::text(f.to_string())).await;
                        }
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
        }
    }
    let mut sockets = shared.sockets.lock();
    if sockets.get(&client_id).is_some_and(|s| s.same_channel(&tx)) {
        sockets.remove(&client_id);
    }
}

fn send_to(shared: &Shared, client_id: &str, message: Message) {
    let tx = shared.sockets.lock().get(client_id).cloned();
    if let Some(tx) = tx {
        let _ = tx.try_send(message);
    }
}

fn broadcast_status(shared: &Shared, remaining: u64) {
    let status = WsMessage::Status(StatusData {
        status: Some(QueueStatus {
            exec_info: ExecInfo {
                queue_remaining: remaining,
            },
        }),
        sid: None,
    });
    let sockets: Vec<_> = shared.sockets.lock().values().cloned().collect();
    for tx in sockets {
        let _ = tx.try_send(Message::text(status.to_text()));
    }
}

/// Runs the queue one prompt at a time, like ComfyUI's executor.
async fn worker(shared: Arc<Shared>, life: CancellationToken) {
    loop {
        let next = {
            let mut queue = shared.queue.lock();
            queue
                .iter_mut()
                .find(|j| j.state == JobState::Pending)
                .map(|j| {
                    j.state = JobState::Running;
                    (
                        j.id.clone(),
                        j.number,
                        j.client_id.clone(),
                        j.graph.clone(),
                        Arc::clone(&j.cancel),
                        j.foreign,
                    )
                })
        };
        let Some((id, number, client_id, graph, cancel, foreign)) = next else {
            tokio::select! {
                _ = life.cancelled() => return,
                _ = shared.queue_changed.notified() => continue,
                _ = tokio::time::sleep(Duration::from_millis(50)) => continue,
            }
        };
        let job = RunJob {
            id: id.clone(),
            number,
            client_id,
            graph,
            cancel,
        };
        tokio::select! {
            _ = life.cancelled() => return,
            _ = async {
                if foreign {
                    job.cancel.notified().await;
                } else {
                    run(&shared, &job).await;
                }
            } => {}
        }
        shared.queue.lock().retain(|j| j.id != id);
        shared.finished.fetch_add(1, Ordering::Relaxed);
    }
}

struct RunJob {
    id: String,
    number: i64,
    client_id: String,
    graph: Graph,
    cancel: Arc<Notify>,
}

impl RunJob {
    /// The graph's output node id, and whether it is `SaveImageWebsocket`.
    fn output_node(&self) -> (String, bool) {
        for (id, node) in &self.graph {
            match node["class_type"].as_str() {
                Some("SaveImage") | Some("PreviewImage") => return (id.clone(), false),
                Some("SaveImageWebsocket") => return (id.clone(), true),
                _ => {}
            }
        }
        ("9".into(), false)
    }
}

/// The picture for a job: the uploaded picture inverted, else the recorded colour.
fn make_picture(shared: &Shared, job: &RunJob) -> Vec<u8> {
    let mut upload = None;
    let (mut w, mut h) = (512, 256);
    for node in job.graph.values() {
        match node["class_type"].as_str() {
            Some("LoadImage") => {
                let name = node["inputs"]["image"].as_str().unwrap_or_default();
                upload = shared.uploads.lock().get(name).cloned();
            }
            Some("EmptyLatentImage") => {
                // Bounded: the size comes from the request.
                w = node["inputs"]["width"]
                    .as_u64()
                    .unwrap_or(512)
                    .clamp(1, 4096) as u32;
                h = node["inputs"]["height"]
                    .as_u64()
                    .unwrap_or(256)
                    .clamp(1, 4096) as u32;
            }
            _ => {}
        }
    }
    let picture = match upload.and_then(|b| {
        crate::keyframes::images::decode_bounded_bytes(&b, "the uploaded picture").ok()
    }) {
        Some(img) => {
            let mut rgb = img.to_rgb8();
            image::imageops::invert(&mut rgb);
            rgb
        }
        None => image::RgbImage::from_pixel(w, h, image::Rgb([54, 225, 195])),
    };
    let mut out = std::io::Cursor::new(Vec::new());
    match picture.write_to(&mut out, image::ImageFormat::Png) {
        Ok(()) => out.into_inner(),
        Err(_) => Vec::new(),
    }
}

/// How a replayed run ended: saved, or ended by an error or an interrupt.
enum Outcome {
    Success,
    Failed,
}

/// Rewrites a recorded message for the live job: prompt ids, output node, file name.
fn rewrite(
    msg: &Value,
    recorded_ids: &[String],
    job: &RunJob,
    rec_out: &str,
    file: &str,
) -> WsMessage {
    let mut text = msg.to_string();
    for rid in recorded_ids {
        text = text.replace(rid, &job.id);
    }
    let mut parsed = WsMessage::parse(&text).unwrap_or(WsMessage::Unknown {
        kind: String::new(),
        data: Value::Null,
    });
    let (out_node, _) = job.output_node();
    let fix = |n: &mut Option<String>| {
        if n.as_deref() == Some(rec_out) {
            *n = Some(out_node.clone());
        }
    };
    match &mut parsed {
        WsMessage::Executing(e) => {
            fix(&mut e.node);
            fix(&mut e.display_node);
        }
        WsMessage::Progress(p) => fix(&mut p.node),
        WsMessage::Executed(e) => {
            e.node = out_node.clone();
            e.display_node = Some(out_node.clone());
            e.output = NodeOutput {
                images: vec![ImageRef {
                    filename: file.to_string(),
                    subfolder: String::new(),
                    kind: "output".into(),
                }],
                ..Default::default()
            };
        }
        _ => {}
    }
    parsed
}

async fn run(shared: &Arc<Shared>, job: &RunJob) {
    let (scenario, delay) = {
        let o = shared.options.lock();
        (o.scenario, o.event_delay)
    };
    let step = match scenario {
        Scenario::Happy | Scenario::Validation => "run1",
        Scenario::Cached => "run2_cached",
        Scenario::RuntimeError => "runtime_error",
        Scenario::Stall | Scenario::BehindOther => "interrupt",
        Scenario::WsDrop => "reconnect",
        Scenario::Binary => "ws_image_legacy",
    };
    let recorded = shared.recordings.step(step);
    // The step's own prompt: the last one it queued (a step's recording can begin with the
    // tail of the previous step's prompt).
    let main_id = shared
        .recordings
        .http
        .iter()
        .filter(|r| r.step == step && r.path.as_deref() == Some("/prompt") && r.status == Some(200))
        .filter_map(|r| {
            r.json
                .as_ref()?
                .get("prompt_id")?
                .as_str()
                .map(str::to_string)
        })
        .next_back()
        .unwrap_or_default();
    let rec_out = recorded
        .iter()
        .filter_map(|r| r.msg.as_ref())
        .find(|m| m["type"] == "executed")
        .and_then(|m| m["data"]["node"].as_str())
        .unwrap_or("3")
        .to_string();
    let (out_node, ws_output) = job.output_node();
    let n = shared.counter.fetch_add(1, Ordering::Relaxed);
    let file = format!("dreamd_{n:05}_.png");
    let started = std::time::Instant::now();
    let picture = make_picture(shared, job);
    shared
        .busy_us
        .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
    shared.outputs.lock().insert(file.clone(), picture.clone());
    let ids = vec![main_id.clone()];
    let mut messages: Vec<(String, Value)> = Vec::new();
    let send_text = |m: &WsMessage| send_to(shared, &job.client_id, Message::text(m.to_text()));
    let send_binary = |f: BinaryFrame| {
        send_to(
            shared,
            &job.client_id,
            Message::binary(Bytes::from(f.encode())),
        )
    };
    let type4 = |picture: &[u8]| {
        BinaryFrame::PreviewImageWithMetadata {
            metadata: PreviewMetadata {
                node_id: Some(out_node.clone()),
                prompt_id: Some(job.id.clone()),
                display_node_id: Some(out_node.clone()),
                parent_node_id: None,
                real_node_id: Some(out_node.clone()),
                image_type: Some("image/png".into()),
            },
            image: picture,
        }
        .encode()
    };

    let mut outcome = Outcome::Success;
    let mut dropped = false;
    let mut executing_seen = 0;
    for rec in &recorded {
        if delay > Duration::ZERO {
            tokio::time::sleep(delay).await;
        } else {
            tokio::task::yield_now().await;
        }
        if rec.kind == "binary" {
            let frame = match rec.event_type {
                Some(4) => type4(&picture),
                _ => BinaryFrame::PreviewImage {
                    format: ImageFormat::Png,
                    image: &picture,
                }
                .encode(),
            };
            if scenario == Scenario::Binary {
                send_to(shared, &job.client_id, Message::binary(Bytes::from(frame)));
                // And a type-4 frame after `progress` as well.
                send_to(
                    shared,
                    &job.client_id,
                    Message::binary(Bytes::from(type4(&picture))),
                );
            }
            continue;
        }
        let Some(msg) = &rec.msg else { continue };
        let pid = msg["data"]["prompt_id"].as_str();
        if pid.is_some_and(|p| p != main_id) {
            continue; // another prompt of the recording
        }
        if msg["type"] == "status" && msg["data"].get("sid").is_some() {
            continue; // a connect greeting
        }
        if msg["type"] == "executing" && msg["data"]["prompt_id"].is_null() {
            continue; // the reconnect's bare executing: sent on reconnection
        }
        let m = rewrite(msg, &ids, job, &rec_out, &file);
        match &m {
            WsMessage::ExecutionStart(_) => messages.push(("execution_start".into(), m.data())),
            WsMessage::ExecutionCached(_) => messages.push(("execution_cached".into(), m.data())),
            WsMessage::ExecutionError(_) => {
                messages.push(("execution_error".into(), m.data()));
                outcome = Outcome::Failed;
            }
            WsMessage::ExecutionInterrupted(_) => {
                messages.push(("execution_interrupted".into(), m.data()));
                outcome = Outcome::Failed;
            }
            WsMessage::ExecutionSuccess(_) => messages.push(("execution_success".into(), m.data())),
            _ => {}
        }
        if let WsMessage::Executing(Executing { node: Some(_), .. }) = &m {
            executing_seen += 1;
        }
        if let WsMessage::Executing(Executing { node: None, .. }) = &m {
            // The history entry is written before the done signal.
            write_history(
                shared, job, &out_node, ws_output, &file, &outcome, &messages,
            );
        }
        if scenario == Scenario::Binary && matches!(m, WsMessage::Progress(_)) {
            // Both kinds before `progress`; the recording has a type-1 after it.
            send_binary(BinaryFrame::PreviewImage {
                format: ImageFormat::Png,
                image: &picture,
            });
            send_to(
                shared,
                &job.client_id,
                Message::binary(Bytes::from(type4(&picture))),
            );
            send_to(
                shared,
                &job.client_id,
                Message::text(r#"{"type":"crystools.monitor","data":{"cpu_utilization":3.0}}"#),
            );
            send_to(
                shared,
                &job.client_id,
                Message::text(r#"{"type":"executing","data":7}"#),
            );
            send_to(
                shared,
                &job.client_id,
                Message::binary(Bytes::from_static(&[0, 0])),
            );
        }
        if !dropped {
            send_text(&m);
        }
        if scenario == Scenario::WsDrop && !dropped && matches!(m, WsMessage::ExecutionStart(_)) {
            // Close the client's socket; the rest of the run happens while it is away.
            dropped = true;
            shared.reconnect_greeting.lock().push(job.client_id.clone());
            send_to(shared, &job.client_id, Message::Close(None));
            shared.sockets.lock().remove(&job.client_id);
        }
        if matches!(scenario, Scenario::Stall | Scenario::BehindOther)
            && executing_seen == 2
            && matches!(m, WsMessage::Executing(Executing { node: Some(_), .. }))
        {
            // The recorded run sat here for 4 s until the interrupt: wait for a cancel.
            job.cancel.notified().await;
        }
    }
    let _ = ws_output;
}

fn write_history(
    shared: &Shared,
    job: &RunJob,
    out_node: &str,
    ws_output: bool,
    file: &str,
    outcome: &Outcome,
    messages: &[(String, Value)],
) {
    let mut outputs = BTreeMap::new();
    let (status_str, completed) = match outcome {
        Outcome::Success => {
            if !ws_output {
                outputs.insert(
                    out_node.to_string(),
                    NodeOutput {
                        images: vec![ImageRef {
                            filename: file.to_string(),
                            subfolder: String::new(),
                            kind: "output".into(),
                        }],
                        ..Default::default()
                    },
                );
            }
            ("success", true)
        }
        Outcome::Failed => ("error", false),
    };
    let entry = HistoryEntry {
        prompt: json!([job.number, job.id, job.graph, {"client_id": job.client_id}, [out_node]]),
        outputs,
        status: Some(HistoryStatus {
            status_str: status_str.into(),
            completed,
            messages: messages.to_vec(),
        }),
        meta: json!({}),
    };
    shared.history.lock().insert(job.id.clone(), entry);
}
