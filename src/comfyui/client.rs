//! The ComfyUI client: one persistent WebSocket and a pooled HTTP client, built to fix every
//! race the original had (`shared/reference/original-system.md` §2.2, §9.2).
//!
//! - The WebSocket (`/ws?clientId=<UUID>`) is opened when the client is made, before the first
//!   prompt, and kept: a background task reconnects it with backoff (250 ms doubling to 10 s)
//!   and pings it so a dead peer is noticed.
//! - Each keyframe gets a UUID `prompt_id` chosen by us and registered *before* `POST /prompt`,
//!   so no event can arrive unclaimed. Completion is `executing{node: null, prompt_id: ours}`
//!   (the history entry is written before it); `execution_error` / `execution_interrupted` end
//!   the keyframe with the server's message. Events of other prompts, binary frames and unknown
//!   message types never disturb the wait.
//! - When events may have been lost (a reconnect, an `executing` without `prompt_id`, the
//!   socket down), the keyframe reconciles through `GET /history/{id}` and `GET /queue`; a
//!   prompt the server no longer knows (it restarted) fails at once instead of at the deadline.
//! - Every HTTP call and the WebSocket handshake have a timeout; each keyframe has a deadline.
//!   On the deadline, on shutdown, or when the caller drops the future, only *our* prompt is
//!   cancelled: `POST /queue {"delete": [id]}`, then `POST /api/jobs/{id}/cancel` where the
//!   server has it, else `POST /interrupt {"prompt_id": id}`. Never a bare interrupt, never a
//!   queue clear.
//! - After fetching the picture (`/view`), our history entry is deleted.
//!
//! Uploads reuse a ring of [`UPLOAD_SLOTS`] names per client (`dreamd-<client>-<slot>.png`,
//! overwritten): unique against other clients and against any prompt of ours still in flight,
//! while ComfyUI's `input/` folder does not grow by one picture per keyframe.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::health::ComfyUiHealth;
use super::protocol::{
    BinaryFrame, Graph, History, HistoryEntry, HistoryOutcome, ImageRef, InterruptRequest,
    JobCancelReply, NodeOutput, ObjectInfo, PromptErrorResponse, PromptRequest, PromptResponse,
    QueueDelete, QueueState, SystemStats, UploadReply, WsMessage,
};
use super::workflow::{Values, Workflow, WorkflowError};

/// How long a failed prompt's done signal is awaited after its error event.
const ERROR_GRACE: Duration = Duration::from_secs(1);

/// Upload names per client: more than the prompts one client ever has in flight.
pub const UPLOAD_SLOTS: u64 = 8;

/// Why a ComfyUI call or keyframe failed. Each names the URL or prompt at fault.
#[derive(Debug, thiserror::Error)]
pub enum ComfyError {
    #[error("ComfyUI at {url} is unreachable: {message}")]
    Unreachable { url: String, message: String },
    #[error("ComfyUI {what} at {url} timed out after {after:?}")]
    Timeout {
        url: String,
        what: String,
        after: Duration,
    },
    #[error("ComfyUI {what} at {url} answered HTTP {status}: {body}")]
    Status {
        url: String,
        what: String,
        status: u16,
        body: String,
    },
    #[error("ComfyUI {what} at {url} sent an unreadable reply: {message}")]
    BadReply {
        url: String,
        what: String,
        message: String,
    },
    #[error("ComfyUI refused prompt {prompt_id}: {message}")]
    Rejected { prompt_id: String, message: String },
    #[error("ComfyUI prompt {prompt_id} failed in node {node} ({node_type}): {exception_type}: {message}")]
    Execution {
        prompt_id: String,
        node: String,
        node_type: String,
        exception_type: String,
        message: String,
    },
    #[error("ComfyUI prompt {prompt_id} was interrupted in node {node} ({node_type})")]
    Interrupted {
        prompt_id: String,
        node: String,
        node_type: String,
    },
    #[error("ComfyUI prompt {prompt_id} did not finish within {after:?}; it was cancelled")]
    Deadline { prompt_id: String, after: Duration },
    #[error("ComfyUI no longer knows prompt {prompt_id} (the server restarted?)")]
    Lost { prompt_id: String },
    #[error("ComfyUI prompt {prompt_id} finished without a picture")]
    NoImage { prompt_id: String },
    #[error(transparent)]
    Workflow(Box<WorkflowError>),
    #[error("the ComfyUI client is shutting down")]
    Shutdown,
}

impl From<WorkflowError> for ComfyError {
    fn from(e: WorkflowError) -> Self {
        ComfyError::Workflow(Box::new(e))
    }
}

impl ComfyError {
    /// Whether the server could not be reached at all (the fallback source should play).
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            ComfyError::Unreachable { .. } | ComfyError::Timeout { .. } | ComfyError::Lost { .. }
        )
    }
}

/// The server's base URL, split for HTTP and WebSocket use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrl {
    authority: String,
    prefix: String,
}

impl BaseUrl {
    /// Parses `http://host[:port][/prefix]`.
    pub fn parse(url: &str) -> Result<BaseUrl, String> {
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("is not a URL: {e} (got {url:?})"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(format!(
                    "must be plain http:// (https is not supported; reach ComfyUI on a trusted \
                     network or loopback) (got {url:?})"
                ))
            }
            _ => return Err(format!("must start with http:// (got {url:?})")),
        }
        let authority = uri
            .authority()
            .ok_or_else(|| format!("has no host (got {url:?})"))?
            .to_string();
        if uri.query().is_some() {
            return Err(format!("must not have a query (got {url:?})"));
        }
        let prefix = uri.path().trim_end_matches('/').to_string();
        Ok(BaseUrl { authority, prefix })
    }

    /// `http://host:port/prefix/path`.
    pub fn http(&self, path_and_query: &str) -> String {
        format!("http://{}{}{}", self.authority, self.prefix, path_and_query)
    }

    /// `ws://host:port/prefix/ws?clientId=…`.
    pub fn ws(&self, client_id: &str) -> String {
        format!(
            "ws://{}{}/ws?clientId={}",
            self.authority, self.prefix, client_id
        )
    }
}

impl fmt::Display for BaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "http://{}{}", self.authority, self.prefix)
    }
}

/// Timeouts and limits of the client.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// One HTTP call, headers and body.
    pub http_timeout: Duration,
    /// `GET /object_info` (hundreds of KB to MB on servers with many custom nodes).
    pub object_info_timeout: Duration,
    /// TCP connect and WebSocket handshake.
    pub connect_timeout: Duration,
    /// How long a keyframe waits for the WebSocket before going on by polling the history.
    pub ws_wait: Duration,
    /// How often the history is polled while events may be lost.
    pub reconcile_interval: Duration,
    /// How often the history is checked even with the socket up (a safety net).
    pub safety_poll: Duration,
    /// WebSocket ping period; no frame for three periods means the socket is dead.
    pub ping_interval: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// The largest reply body accepted (pictures, `object_info`).
    pub max_body_bytes: usize,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            http_timeout: Duration::from_secs(10),
            object_info_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(3),
            ws_wait: Duration::from_secs(2),
            reconcile_interval: Duration::from_millis(500),
            safety_poll: Duration::from_secs(10),
            ping_interval: Duration::from_secs(15),
            backoff_min: Duration::from_millis(250),
            backoff_max: Duration::from_secs(10),
            max_body_bytes: 64 << 20,
        }
    }
}

/// One keyframe to make.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub workflow: Workflow,
    /// Placeholder values; `image` is replaced by the uploaded name when `input_png` is set.
    pub values: Values,
    /// The picture to upload for `{{image}}` (PNG bytes).
    pub input_png: Option<Vec<u8>>,
    /// The longest this keyframe may take.
    pub deadline: Duration,
}

/// Where the time of one keyframe went.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timings {
    pub upload: Duration,
    pub queue: Duration,
    /// From `POST /prompt`'s reply to the done signal (the server's own time, plus delivery).
    pub wait: Duration,
    /// History and `/view`.
    pub fetch: Duration,
    pub total: Duration,
}

/// A finished keyframe.
#[derive(Clone)]
pub struct Generated {
    pub prompt_id: String,
    /// The picture's encoded bytes (PNG or JPEG, as the server saved it).
    pub image: Bytes,
    /// Where it came from: a file name, or `websocket:<node>`.
    pub source: String,
    /// Whether every node came from the server's cache.
    pub cached: bool,
    pub timings: Timings,
}

impl fmt::Debug for Generated {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.debug_struct("Generated")
            .field("prompt_id", &self.prompt_id)
            .field("image_bytes", &self.image.len())
            .field("source", &self.source)
            .field("cached", &self.cached)
            .field("timings", &self.timings)
            .finish()
    }
}

#[derive(Debug)]
enum Event {
    Ws(WsMessage),
    Image {
        node: Option<String>,
        bytes: Bytes,
    },
    /// The socket (re)connected: events may have been lost.
    Reconnected,
    Disconnected,
    /// `executing` without a prompt id (after a reconnect): maybe ours finished.
    Ambiguous,
}

struct Waiter {
    tx: mpsc::Sender<Event>,
    wants_images: bool,
    overflowed: Arc<std::sync::atomic::AtomicBool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct WsState {
    connected: bool,
    epoch: u64,
}

const JOBS_UNKNOWN: u8 = 0;
const JOBS_YES: u8 = 1;
const JOBS_NO: u8 = 2;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

struct Inner {
    base: BaseUrl,
    client_id: String,
    http: HttpClient,
    options: ClientOptions,
    waiters: Mutex<HashMap<String, Waiter>>,
    /// The prompt and node the server last said it is executing (attributes type-1 frames).
    running: Mutex<(Option<String>, Option<String>)>,
    ws: watch::Sender<WsState>,
    jobs_api: AtomicU8,
    upload_counter: AtomicU64,
    health: ComfyUiHealth,
    shutdown: CancellationToken,
    /// Text frames that did not parse (counted, never fatal).
    bad_frames: AtomicU64,
}

/// The client; see the module docs. Dropping it stops the WebSocket task.
pub struct ComfyClient {
    inner: Arc<Inner>,
}

impl Drop for ComfyClient {
    fn drop(&mut self) {
        self.inner.shutdown.cancel();
    }
}

impl ComfyClient {
    /// Makes the client and starts its WebSocket task (needs a tokio runtime). It does not
    /// wait for the server: [`ComfyClient::wait_connected`] and [`ComfyClient::system_stats`]
    /// tell whether it is there.
    pub fn new(
        url: &str,
        options: ClientOptions,
        health: ComfyUiHealth,
    ) -> Result<ComfyClient, ComfyError> {
        let base = BaseUrl::parse(url).map_err(|message| ComfyError::Unreachable {
            url: url.to_string(),
            message: format!("comfyui.url {message}"),
        })?;
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| ComfyError::Unreachable {
                url: url.to_string(),
                message: "the ComfyUI client needs a tokio runtime".into(),
            })?;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(options.connect_timeout));
        connector.set_nodelay(true);
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(4)
            .build(connector);
        let (ws, _) = watch::channel(WsState {
            connected: false,
            epoch: 0,
        });
        let inner = Arc::new(Inner {
            base,
            client_id: uuid::Uuid::new_v4().to_string(),
            http,
            options,
            waiters: Mutex::new(HashMap::new()),
            running: Mutex::new((None, None)),
            ws,
            jobs_api: AtomicU8::new(JOBS_UNKNOWN),
            upload_counter: AtomicU64::new(0),
            health,
            shutdown: CancellationToken::new(),
            bad_frames: AtomicU64::new(0),
        });
        runtime.spawn(ws_task(Arc::clone(&inner)));
        Ok(ComfyClient { inner })
    }

    /// The UUID this client uses as `clientId`.
    pub fn client_id(&self) -> &str {
        &self.inner.client_id
    }

    /// The server's base URL.
    pub fn url(&self) -> String {
        self.inner.base.to_string()
    }

    /// The shared health handle.
    pub fn health(&self) -> &ComfyUiHealth {
        &self.inner.health
    }

    /// Whether the WebSocket is up now.
    pub fn ws_connected(&self) -> bool {
        self.inner.ws.borrow().connected
    }

    /// How many times the WebSocket has connected.
    pub fn ws_connections(&self) -> u64 {
        self.inner.ws.borrow().epoch
    }

    /// Text frames that could not be parsed and were skipped.
    pub fn skipped_frames(&self) -> u64 {
        self.inner.bad_frames.load(Ordering::Relaxed)
    }

    /// Prompts of ours being waited for now (0 between keyframes).
    pub fn in_flight(&self) -> usize {
        self.inner.waiters.lock().len()
    }

    /// Waits up to `timeout` for the WebSocket; true when it is up.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        wait_ws(&self.inner, timeout).await
    }

    /// Stops the WebSocket task; keyframes in flight are cancelled (only ours).
    pub fn shutdown(&self) {
        self.inner.shutdown.cancel();
    }

    /// `GET /system_stats`: the cheap reachability probe.
    pub async fn system_stats(&self) -> Result<SystemStats, ComfyError> {
        let stats: SystemStats = self
            .inner
            .get_json(
                "/system_stats",
                "system_stats",
                self.inner.options.http_timeout,
            )
            .await?;
        self.inner.health.mark_connected();
        self.inner
            .health
            .set_server_version(&stats.system.comfyui_version);
        Ok(stats)
    }

    /// `GET /object_info`: every node class and its inputs.
    pub async fn object_info(&self) -> Result<ObjectInfo, ComfyError> {
        self.inner
            .get_json(
                "/object_info",
                "object_info",
                self.inner.options.object_info_timeout,
            )
            .await
    }

    /// `GET /history/{id}`: the entry, or `None` while the server has none.
    pub async fn history(&self, prompt_id: &str) -> Result<Option<HistoryEntry>, ComfyError> {
        self.inner.history(prompt_id).await
    }

    /// `GET /queue`.
    pub async fn queue(&self) -> Result<QueueState, ComfyError> {
        self.inner
            .get_json("/queue", "queue", self.inner.options.http_timeout)
            .await
    }

    /// Cancels one prompt of ours: queue delete, then job cancel or a prompt-scoped interrupt.
    pub async fn cancel(&self, prompt_id: &str) {
        self.inner.cancel(prompt_id).await
    }

    /// Makes one keyframe: upload, queue, wait, fetch; see the module docs.
    pub async fn generate(&self, request: GenerateRequest) -> Result<Generated, ComfyError> {
        let inner = &self.inner;
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + request.deadline;
        let prompt_id = uuid::Uuid::new_v4().to_string();
        if inner.shutdown.is_cancelled() {
            return Err(ComfyError::Shutdown);
        }
        // The socket first, so every event of the prompt reaches us; if it does not come up
        // in time the keyframe goes on and learns the outcome from the history.
        let ws_wait = inner.options.ws_wait.min(request.deadline);
        let connected = wait_ws(inner, ws_wait).await;

        let mut values = request.values.clone();
        let mut timings = Timings::default();
        if let Some(png) = request.input_png {
            let t = Instant::now();
            let slot = inner.upload_counter.fetch_add(1, Ordering::Relaxed) % UPLOAD_SLOTS;
            let short = &inner.client_id[..8];
            let name = format!("dreamd-{short}-{slot}.png");
            let reply = with_deadline(deadline, &prompt_id, request.deadline, async {
                inner.upload(&name, png).await
            })
            .await?;
            values.image = if reply.subfolder.is_empty() {
                reply.name
            } else {
                format!("{}/{}", reply.subfolder, reply.name)
            };
            timings.upload = t.elapsed();
        }
        let graph = request.workflow.fill(&values)?;
        let ws_nodes = Workflow::websocket_outputs(&graph);

        let (tx, mut rx) = mpsc::channel(256);
        let overflowed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut registration = Registration::new(
            inner,
            prompt_id.clone(),
            Waiter {
                tx,
                wants_images: !ws_nodes.is_empty(),
                overflowed: Arc::clone(&overflowed),
            },
        );

        // Armed before the request: if this future is dropped while `POST /prompt` is in
        // flight, the prompt may still be queued, and it must not run unclaimed.
        let mut guard = CancelGuard {
            inner: Arc::clone(inner),
            prompt_id: prompt_id.clone(),
            armed: true,
        };
        let t = Instant::now();
        let queued = match with_deadline(deadline, &prompt_id, request.deadline, async {
            inner.queue_prompt(&graph, &prompt_id).await
        })
        .await
        {
            Ok(queued) => queued,
            Err(e) => {
                // Refused outright: nothing to cancel. Otherwise the guard cancels in the
                // background, in case the request reached the server.
                if matches!(
                    e,
                    ComfyError::Rejected { .. }
                        | ComfyError::Status { .. }
                        | ComfyError::Unreachable { .. }
                ) {
                    guard.armed = false;
                }
                return Err(e);
            }
        };
        timings.queue = t.elapsed();
        inner.health.mark_generating();
        let mut need_reconcile = !connected;
        if queued.prompt_id != prompt_id {
            // An old server (< 0.3.44) chose its own id: follow it, and check the history in
            // case events went out before we re-registered.
            tracing::debug!(ours = %prompt_id, theirs = %queued.prompt_id, "server chose the prompt id");
            registration.rekey(queued.prompt_id.clone());
            guard.prompt_id = queued.prompt_id.clone();
            need_reconcile = true;
        }
        let prompt_id = queued.prompt_id;

        let t = Instant::now();
        let outcome = self
            .wait(
                &prompt_id,
                &mut rx,
                &overflowed,
                need_reconcile,
                deadline,
                request.deadline,
            )
            .await;
        timings.wait = t.elapsed();
        let (entry, executed, ws_images, cached) = match outcome {
            Ok(done) => done,
            Err(e) => {
                if matches!(e, ComfyError::Deadline { .. } | ComfyError::Shutdown) {
                    guard.armed = false;
                    inner.cancel(&prompt_id).await;
                } else if !e.is_unreachable() {
                    guard.armed = false;
                    spawn_forget(inner, &prompt_id);
                }
                inner.health.mark_idle();
                return Err(e);
            }
        };
        guard.armed = false;
        drop(registration);

        let t = Instant::now();
        let fetched = with_deadline(deadline, &prompt_id, request.deadline, async {
            let entry = match entry {
                Some(entry) => Some(entry),
                None => inner.history(&prompt_id).await?,
            };
            pick_picture(inner, &prompt_id, &graph, entry, executed, ws_images).await
        })
        .await;
        spawn_forget(inner, &prompt_id);
        inner.health.mark_idle();
        let (image, source) = fetched?;
        timings.fetch = t.elapsed();
        timings.total = started.elapsed();
        Ok(Generated {
            prompt_id,
            image,
            source,
            cached,
            timings,
        })
    }

    /// Waits for our prompt's end. Returns the history entry when reconciling fetched it, the
    /// outputs the `executed` events named, pictures from binary frames, and whether it was
    /// served from the cache.
    #[allow(clippy::type_complexity)]
    async fn wait(
        &self,
        prompt_id: &str,
        rx: &mut mpsc::Receiver<Event>,
        overflowed: &std::sync::atomic::AtomicBool,
        need_reconcile: bool,
        deadline: tokio::time::Instant,
        budget: Duration,
    ) -> Result<
        (
            Option<HistoryEntry>,
            BTreeMap<String, NodeOutput>,
            Vec<(String, Bytes)>,
            bool,
        ),
        ComfyError,
    > {
        let inner = &self.inner;
        let options = &inner.options;
        let mut executed = BTreeMap::new();
        let mut ws_images: Vec<(String, Bytes)> = Vec::new();
        let mut cached_nodes = 0usize;
        let mut ran_nodes = 0usize;
        let mut next_check = tokio::time::Instant::now()
            + if need_reconcile {
                options.reconcile_interval
            } else {
                options.safety_poll
            };
        let cached = |cached_nodes: usize, ran_nodes: usize| cached_nodes > 0 && ran_nodes == 0;
        // An error event comes before the history entry is written: wait briefly for the
        // done signal so the entry can be deleted, then report the error.
        let mut failure: Option<ComfyError> = None;
        let mut grace = deadline;
        loop {
            if overflowed.swap(false, Ordering::Relaxed) {
                next_check = tokio::time::Instant::now();
            }
            tokio::select! {
                _ = tokio::time::sleep_until(grace), if failure.is_some() => {
                    return Err(failure.take().unwrap_or(ComfyError::Shutdown));
                }
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(failure.take().unwrap_or(ComfyError::Deadline { prompt_id: prompt_id.to_string(), after: budget }));
                }
                _ = inner.shutdown.cancelled() => return Err(ComfyError::Shutdown),
                event = rx.recv() => {
                    let Some(event) = event else { return Err(ComfyError::Shutdown) };
                    match event {
                        Event::Ws(WsMessage::Executing(e)) => {
                            match (e.node, failure.take()) {
                                (None, Some(failure)) => return Err(failure),
                                (None, None) => return Ok((None, executed, ws_images, cached(cached_nodes, ran_nodes))),
                                (Some(_), f) => {
                                    failure = f;
                                    ran_nodes += 1;
                                }
                            }
                        }
                        Event::Ws(WsMessage::ExecutionCached(e)) => cached_nodes += e.nodes.len(),
                        Event::Ws(WsMessage::Executed(e)) => {
                            executed.insert(e.node, e.output);
                        }
                        Event::Ws(WsMessage::ExecutionError(e)) => {
                            failure = Some(execution_error(prompt_id, &e));
                            grace = deadline.min(tokio::time::Instant::now() + ERROR_GRACE);
                        }
                        Event::Ws(WsMessage::ExecutionInterrupted(e)) => {
                            failure = Some(ComfyError::Interrupted {
                                prompt_id: prompt_id.to_string(),
                                node: e.node_id.unwrap_or_default(),
                                node_type: e.node_type.unwrap_or_default(),
                            });
                            grace = deadline.min(tokio::time::Instant::now() + ERROR_GRACE);
                        }
                        Event::Ws(_) => {}
                        Event::Image { node, bytes } => {
                            ws_images.push((node.unwrap_or_default(), bytes));
                            // Bounded: only the latest few matter.
                            if ws_images.len() > 4 {
                                ws_images.remove(0);
                            }
                        }
                        Event::Reconnected | Event::Ambiguous => {
                            next_check = tokio::time::Instant::now();
                        }
                        Event::Disconnected => {
                            next_check = next_check.min(tokio::time::Instant::now() + options.reconcile_interval);
                        }
                    }
                }
                _ = tokio::time::sleep_until(next_check) => {
                    let connected = inner.ws.borrow().connected;
                    let poll_soon = match self.reconcile(prompt_id, deadline).await {
                        Ok(Some(entry)) => {
                            tracing::debug!(prompt_id, "finished prompt found by reconciling");
                            return match entry.outcome() {
                                HistoryOutcome::Success => Ok((Some(entry), executed, ws_images, cached(cached_nodes, ran_nodes))),
                                HistoryOutcome::Error(e) => Err(execution_error(prompt_id, &e)),
                                HistoryOutcome::Interrupted(e) => Err(ComfyError::Interrupted {
                                    prompt_id: prompt_id.to_string(),
                                    node: e.node_id.unwrap_or_default(),
                                    node_type: e.node_type.unwrap_or_default(),
                                }),
                                HistoryOutcome::Failed(message) => Err(ComfyError::Execution {
                                    prompt_id: prompt_id.to_string(),
                                    node: String::new(),
                                    node_type: String::new(),
                                    exception_type: "error".into(),
                                    message,
                                }),
                            };
                        }
                        // Still queued or running: events will tell, once the socket is up.
                        Ok(None) => !connected,
                        Err(e @ ComfyError::Lost { .. }) => return Err(e),
                        Err(e) => {
                            tracing::debug!(prompt_id, error = %e, "reconcile failed; retrying");
                            true
                        }
                    };
                    next_check = tokio::time::Instant::now()
                        + if poll_soon { options.reconcile_interval } else { options.safety_poll };
                }
            }
        }
    }

    /// The history entry when the prompt is finished; `None` while it is queued or running;
    /// [`ComfyError::Lost`] when the server knows it nowhere.
    async fn reconcile(
        &self,
        prompt_id: &str,
        deadline: tokio::time::Instant,
    ) -> Result<Option<HistoryEntry>, ComfyError> {
        let inner = &self.inner;
        let bounded = |f| tokio::time::timeout_at(deadline, f);
        let timeout = || ComfyError::Timeout {
            url: inner.base.to_string(),
            what: "reconcile".into(),
            after: inner.options.http_timeout,
        };
        if let Some(entry) = bounded(inner.history(prompt_id))
            .await
            .map_err(|_| timeout())??
        {
            if entry
                .status
                .as_ref()
                .is_none_or(|s| s.completed || !s.status_str.is_empty())
            {
                return Ok(Some(entry));
            }
        }
        let queue: QueueState = tokio::time::timeout_at(
            deadline,
            inner.get_json("/queue", "queue", inner.options.http_timeout),
        )
        .await
        .map_err(|_| timeout())??;
        if queue.contains(prompt_id) {
            return Ok(None);
        }
        // It may have finished between the two calls: the history is written first.
        match tokio::time::timeout_at(deadline, inner.history(prompt_id))
            .await
            .map_err(|_| timeout())??
        {
            Some(entry) => Ok(Some(entry)),
            None => Err(ComfyError::Lost {
                prompt_id: prompt_id.to_string(),
            }),
        }
    }
}

fn execution_error(prompt_id: &str, e: &super::protocol::ExecutionError) -> ComfyError {
    ComfyError::Execution {
        prompt_id: prompt_id.to_string(),
        node: e.node_id.clone().unwrap_or_default(),
        node_type: e.node_type.clone().unwrap_or_default(),
        exception_type: e.exception_type.clone(),
        message: e.exception_message.trim().to_string(),
    }
}

async fn with_deadline<T>(
    deadline: tokio::time::Instant,
    prompt_id: &str,
    budget: Duration,
    f: impl std::future::Future<Output = Result<T, ComfyError>>,
) -> Result<T, ComfyError> {
    tokio::time::timeout_at(deadline, f)
        .await
        .map_err(|_| ComfyError::Deadline {
            prompt_id: prompt_id.to_string(),
            after: budget,
        })?
}

async fn wait_ws(inner: &Inner, timeout: Duration) -> bool {
    let mut rx = inner.ws.subscribe();
    let connected = tokio::time::timeout(timeout, rx.wait_for(|s| s.connected)).await;
    matches!(connected, Ok(Ok(_)))
}

/// Picks the output picture: the history's first image of an output node in graph order,
/// else the `executed` events' images, else a `SaveImageWebsocket` frame.
async fn pick_picture(
    inner: &Inner,
    prompt_id: &str,
    graph: &Graph,
    entry: Option<HistoryEntry>,
    executed: BTreeMap<String, NodeOutput>,
    mut ws_images: Vec<(String, Bytes)>,
) -> Result<(Bytes, String), ComfyError> {
    let mut outputs = entry.map(|e| e.outputs).unwrap_or_default();
    for (node, output) in executed {
        outputs.entry(node).or_insert(output);
    }
    let order = |node: &str| -> (u8, u64, String) {
        let class = graph
            .get(node)
            .and_then(|n| n.get("class_type"))
            .and_then(|c| c.as_str())
            .unwrap_or_default();
        let rank = match class {
            "SaveImage" => 0,
            "PreviewImage" => 2,
            _ => 1,
        };
        (rank, node.parse().unwrap_or(u64::MAX), node.to_string())
    };
    let mut candidates: Vec<(&String, &ImageRef)> = outputs
        .iter()
        .flat_map(|(node, o)| o.images.iter().map(move |i| (node, i)))
        .collect();
    candidates.sort_by_key(|(node, _)| order(node));
    if let Some((_, image)) = candidates.first() {
        let bytes = inner.view(image).await?;
        return Ok((bytes, image.filename.clone()));
    }
    if let Some((node, bytes)) = ws_images.pop() {
        return Ok((bytes, format!("websocket:{node}")));
    }
    Err(ComfyError::NoImage {
        prompt_id: prompt_id.to_string(),
    })
}

/// Forgets our history entry in the background (best effort, bounded by the HTTP timeout).
fn spawn_forget(inner: &Arc<Inner>, prompt_id: &str) {
    let (inner, id) = (Arc::clone(inner), prompt_id.to_string());
    tokio::spawn(async move { inner.delete_history(&id).await });
}

/// Removes a waiter from the routing table when the keyframe ends or is dropped.
struct Registration<'a> {
    inner: &'a Inner,
    prompt_id: String,
}

impl<'a> Registration<'a> {
    fn new(inner: &'a Inner, prompt_id: String, waiter: Waiter) -> Self {
        inner.waiters.lock().insert(prompt_id.clone(), waiter);
        Self { inner, prompt_id }
    }

    fn rekey(&mut self, prompt_id: String) {
        let mut waiters = self.inner.waiters.lock();
        if let Some(w) = waiters.remove(&self.prompt_id) {
            waiters.insert(prompt_id.clone(), w);
        }
        self.prompt_id = prompt_id;
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.inner.waiters.lock().remove(&self.prompt_id);
    }
}

/// Cancels our queued prompt when the keyframe future is dropped before it ends (the
/// coordinator's own timeout, shutdown).
struct CancelGuard {
    inner: Arc<Inner>,
    prompt_id: String,
    armed: bool,
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        self.inner.health.mark_idle();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (inner, id) = (Arc::clone(&self.inner), self.prompt_id.clone());
            tracing::debug!(prompt_id = %id, "keyframe dropped; cancelling its prompt");
            runtime.spawn(async move { inner.cancel(&id).await });
        }
    }
}

/// Percent-encodes a query value.
fn encode_query(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Inner {
    /// One HTTP call with a timeout over headers and body. Returns the status and body.
    async fn call(
        &self,
        method: Method,
        path: &str,
        what: &str,
        content_type: Option<String>,
        body: Bytes,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), ComfyError> {
        let url = self.base.http(path);
        let mut builder = Request::builder().method(method).uri(&url);
        if let Some(ct) = content_type {
            builder = builder.header(http::header::CONTENT_TYPE, ct);
        }
        let request = builder
            .body(Full::new(body))
            .map_err(|e| ComfyError::BadReply {
                url: url.clone(),
                what: what.into(),
                message: format!("cannot build the request: {e}"),
            })?;
        let limit = self.options.max_body_bytes;
        let exchange = async {
            let response = self.http.request(request).await.map_err(|e| {
                let message = error_chain(&e);
                if e.is_connect() {
                    ComfyError::Unreachable {
                        url: url.clone(),
                        message,
                    }
                } else {
                    ComfyError::Unreachable {
                        url: url.clone(),
                        message: format!("{what}: {message}"),
                    }
                }
            })?;
            let status = response.status();
            let body = Limited::new(response.into_body(), limit)
                .collect()
                .await
                .map_err(|e| ComfyError::BadReply {
                    url: url.clone(),
                    what: what.into(),
                    message: format!("body: {e}"),
                })?
                .to_bytes();
            Ok((status, body))
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(ComfyError::Timeout {
                url,
                what: what.into(),
                after: timeout,
            }),
        }
    }

    fn status_error(&self, path: &str, what: &str, status: StatusCode, body: &[u8]) -> ComfyError {
        let text = String::from_utf8_lossy(body);
        ComfyError::Status {
            url: self.base.http(path),
            what: what.into(),
            status: status.as_u16(),
            body: text
                .chars()
                .take(300)
                .collect::<String>()
                .trim()
                .to_string(),
        }
    }

    fn parse<T: DeserializeOwned>(
        &self,
        path: &str,
        what: &str,
        body: &[u8],
    ) -> Result<T, ComfyError> {
        serde_json::from_slice(body).map_err(|e| ComfyError::BadReply {
            url: self.base.http(path),
            what: what.into(),
            message: e.to_string(),
        })
    }

    async fn get_json<T: DeserializeOwned>(
        &self,
        path: &str,
        what: &str,
        timeout: Duration,
    ) -> Result<T, ComfyError> {
        let (status, body) = self
            .call(Method::GET, path, what, None, Bytes::new(), timeout)
            .await?;
        if !status.is_success() {
            return Err(self.status_error(path, what, status, &body));
        }
        self.parse(path, what, &body)
    }

    async fn post_json<B: Serialize>(
        &self,
        path: &str,
        what: &str,
        body: &B,
    ) -> Result<(StatusCode, Bytes), ComfyError> {
        let json = serde_json::to_vec(body).map_err(|e| ComfyError::BadReply {
            url: self.base.http(path),
            what: what.into(),
            message: format!("cannot encode the request: {e}"),
        })?;
        self.call(
            Method::POST,
            path,
            what,
            Some("application/json".into()),
            Bytes::from(json),
            self.options.http_timeout,
        )
        .await
    }

    async fn history(&self, prompt_id: &str) -> Result<Option<HistoryEntry>, ComfyError> {
        let path = format!("/history/{prompt_id}");
        let mut history: History = self
            .get_json(&path, "history", self.options.http_timeout)
            .await?;
        Ok(history.remove(prompt_id))
    }

    async fn upload(&self, name: &str, png: Vec<u8>) -> Result<UploadReply, ComfyError> {
        let boundary = format!("dreamd-{}", uuid::Uuid::new_v4().simple());
        let mut body = Vec::with_capacity(png.len() + 512);
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; \
                 filename=\"{name}\"\r\nContent-Type: image/png\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(&png);
        for (field, value) in [("type", "input"), ("overwrite", "true"), ("subfolder", "")] {
            body.extend_from_slice(
                format!(
                    "\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"\r\n\r\n{value}"
                )
                .as_bytes(),
            );
        }
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let path = "/upload/image";
        let (status, reply) = self
            .call(
                Method::POST,
                path,
                "upload",
                Some(format!("multipart/form-data; boundary={boundary}")),
                Bytes::from(body),
                self.options.http_timeout,
            )
            .await?;
        if !status.is_success() {
            return Err(self.status_error(path, "upload", status, &reply));
        }
        self.parse(path, "upload", &reply)
    }

    async fn queue_prompt(
        &self,
        graph: &Graph,
        prompt_id: &str,
    ) -> Result<PromptResponse, ComfyError> {
        let request = PromptRequest {
            prompt: graph.clone(),
            client_id: self.client_id.clone(),
            prompt_id: Some(prompt_id.to_string()),
        };
        let path = "/prompt";
        let (status, body) = self.post_json(path, "prompt", &request).await?;
        if status == StatusCode::BAD_REQUEST {
            let message = match serde_json::from_slice::<PromptErrorResponse>(&body) {
                Ok(e) => e.summary(),
                Err(_) => String::from_utf8_lossy(&body).chars().take(300).collect(),
            };
            return Err(ComfyError::Rejected {
                prompt_id: prompt_id.to_string(),
                message,
            });
        }
        if !status.is_success() {
            return Err(self.status_error(path, "prompt", status, &body));
        }
        self.parse(path, "prompt", &body)
    }

    async fn view(&self, image: &ImageRef) -> Result<Bytes, ComfyError> {
        let path = format!(
            "/view?filename={}&subfolder={}&type={}",
            encode_query(&image.filename),
            encode_query(&image.subfolder),
            encode_query(&image.kind)
        );
        let (status, body) = self
            .call(
                Method::GET,
                &path,
                "view",
                None,
                Bytes::new(),
                self.options.http_timeout,
            )
            .await?;
        if !status.is_success() {
            return Err(self.status_error(&path, "view", status, &body));
        }
        Ok(body)
    }

    async fn delete_history(&self, prompt_id: &str) {
        let body = QueueDelete {
            delete: vec![prompt_id.to_string()],
        };
        match self.post_json("/history", "history delete", &body).await {
            Ok((status, _)) if status.is_success() => {}
            Ok((status, _)) => tracing::debug!(prompt_id, %status, "history delete refused"),
            Err(e) => tracing::debug!(prompt_id, error = %e, "history delete failed"),
        }
    }

    /// Cancels only `prompt_id`; see the module docs. Errors are logged, never raised.
    async fn cancel(&self, prompt_id: &str) {
        tracing::info!(prompt_id, url = %self.base, "cancelling our ComfyUI prompt");
        let delete = QueueDelete {
            delete: vec![prompt_id.to_string()],
        };
        if let Err(e) = self.post_json("/queue", "queue delete", &delete).await {
            tracing::warn!(prompt_id, error = %e, "queue delete failed");
        }
        if self.jobs_api.load(Ordering::Relaxed) != JOBS_NO {
            let path = format!("/api/jobs/{prompt_id}/cancel");
            match self
                .post_json(&path, "job cancel", &serde_json::json!({}))
                .await
            {
                Ok((status, body)) if status.is_success() => {
                    self.jobs_api.store(JOBS_YES, Ordering::Relaxed);
                    let cancelled = serde_json::from_slice::<JobCancelReply>(&body)
                        .map(|r| r.cancelled)
                        .unwrap_or(false);
                    tracing::debug!(prompt_id, cancelled, "job cancel");
                    self.forget_later(prompt_id);
                    return;
                }
                Ok((status, _))
                    if status == StatusCode::NOT_FOUND
                        || status == StatusCode::METHOD_NOT_ALLOWED =>
                {
                    self.jobs_api.store(JOBS_NO, Ordering::Relaxed);
                }
                Ok((status, body)) => {
                    tracing::warn!(prompt_id, %status, body = %String::from_utf8_lossy(&body), "job cancel refused");
                }
                Err(e) => {
                    tracing::warn!(prompt_id, error = %e, "job cancel failed");
                    self.forget_later(prompt_id);
                    return;
                }
            }
        }
        let interrupt = InterruptRequest {
            prompt_id: prompt_id.to_string(),
        };
        match self.post_json("/interrupt", "interrupt", &interrupt).await {
            Ok((status, _)) if status.is_success() => {}
            Ok((status, body)) => tracing::warn!(
                prompt_id, %status, body = %String::from_utf8_lossy(&body), "interrupt refused"
            ),
            Err(e) => tracing::warn!(prompt_id, error = %e, "interrupt failed"),
        }
        self.forget_later(prompt_id);
    }

    /// Deletes the history entry now and once more shortly after: an interrupted prompt's
    /// entry is written when the interrupt lands.
    fn forget_later(&self, prompt_id: &str) {
        let Some(runtime) = tokio::runtime::Handle::try_current().ok() else {
            return;
        };
        // `Inner` is reached through the waiters' owner; a fresh request set is cheap, so the
        // task keeps its own clone of the HTTP client and base.
        let (http, base, timeout, id) = (
            self.http.clone(),
            self.base.clone(),
            self.options.http_timeout,
            prompt_id.to_string(),
        );
        runtime.spawn(async move {
            for wait in [Duration::ZERO, Duration::from_secs(2)] {
                tokio::time::sleep(wait).await;
                let body = serde_json::json!({"delete": [id]}).to_string();
                let request = Request::post(base.http("/history"))
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .body(Full::new(Bytes::from(body)));
                if let Ok(request) = request {
                    let _ = tokio::time::timeout(timeout, http.request(request)).await;
                }
            }
        });
    }

    /// Routes one text frame to the waiter of its prompt.
    fn route_text(&self, text: &str) {
        let message = match WsMessage::parse(text) {
            Ok(m) => m,
            Err(e) => {
                self.bad_frames.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %e, "skipping a WebSocket message");
                return;
            }
        };
        if let WsMessage::Executing(e) = &message {
            let mut running = self.running.lock();
            match (&e.prompt_id, &e.node) {
                (Some(p), node) => *running = (Some(p.clone()), node.clone()),
                (None, node) => running.1 = node.clone(),
            }
        }
        let relevant = matches!(
            message,
            WsMessage::ExecutionStart(_)
                | WsMessage::ExecutionCached(_)
                | WsMessage::Executing(_)
                | WsMessage::Executed(_)
                | WsMessage::ExecutionSuccess(_)
                | WsMessage::ExecutionError(_)
                | WsMessage::ExecutionInterrupted(_)
        );
        if !relevant {
            return;
        }
        match message.prompt_id().map(str::to_string) {
            Some(id) => {
                let waiters = self.waiters.lock();
                if let Some(w) = waiters.get(&id) {
                    send(w, Event::Ws(message));
                }
            }
            None => {
                if matches!(message, WsMessage::Executing(_)) {
                    for w in self.waiters.lock().values() {
                        send(w, Event::Ambiguous);
                    }
                }
            }
        }
    }

    /// Routes one binary frame: a picture for a waiter that has `SaveImageWebsocket` nodes.
    fn route_binary(&self, data: Bytes) {
        let (prompt, node, offset) = match BinaryFrame::parse(&data) {
            Ok(BinaryFrame::PreviewImage { image, .. }) => {
                let running = self.running.lock().clone();
                (running.0, running.1, data.len() - image.len())
            }
            Ok(BinaryFrame::PreviewImageWithMetadata { metadata, image }) => (
                metadata.prompt_id,
                metadata.node_id,
                data.len() - image.len(),
            ),
            Ok(BinaryFrame::Other { .. }) => return,
            Err(e) => {
                self.bad_frames.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %e, "skipping a binary WebSocket frame");
                return;
            }
        };
        let Some(prompt) = prompt else { return };
        let waiters = self.waiters.lock();
        if let Some(w) = waiters.get(&prompt).filter(|w| w.wants_images) {
            send(
                w,
                Event::Image {
                    node,
                    bytes: data.slice(offset..),
                },
            );
        }
    }

    fn broadcast(&self, make: impl Fn() -> Event) {
        for w in self.waiters.lock().values() {
            send(w, make());
        }
    }
}

fn send(waiter: &Waiter, event: Event) {
    if waiter.tx.try_send(event).is_err() {
        // Full (or the keyframe ended): the waiter reconciles through the history.
        waiter.overflowed.store(true, Ordering::Relaxed);
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// Keeps the WebSocket up until shutdown; see the module docs.
async fn ws_task(inner: Arc<Inner>) {
    let url = inner.base.ws(&inner.client_id);
    let options = inner.options.clone();
    let mut backoff = options.backoff_min;
    loop {
        if inner.shutdown.is_cancelled() {
            break;
        }
        let attempt = tokio::select! {
            _ = inner.shutdown.cancelled() => break,
            r = tokio::time::timeout(options.connect_timeout, tokio_tungstenite::connect_async(url.as_str())) => r,
        };
        match attempt {
            Ok(Ok((stream, _))) => {
                backoff = options.backoff_min;
                let (mut sink, mut source) = stream.split();
                let flags = WsMessage::FeatureFlags(super::protocol::FeatureFlags {
                    supports_preview_metadata: true,
                    max_upload_size: None,
                });
                let hello = tokio::time::timeout(
                    options.connect_timeout,
                    sink.send(Message::text(flags.to_text())),
                )
                .await;
                if !matches!(hello, Ok(Ok(()))) {
                    tracing::debug!(url, "WebSocket closed during the greeting");
                } else {
                    inner.ws.send_modify(|s| {
                        s.connected = true;
                        s.epoch += 1;
                    });
                    inner.health.mark_connected();
                    inner.broadcast(|| Event::Reconnected);
                    tracing::debug!(url, "WebSocket connected");
                    let mut ping = tokio::time::interval(options.ping_interval);
                    ping.tick().await;
                    let idle_limit = options.ping_interval * 3;
                    let mut last_frame = tokio::time::Instant::now();
                    loop {
                        tokio::select! {
                            _ = inner.shutdown.cancelled() => {
                                let _ = tokio::time::timeout(Duration::from_millis(200), sink.send(Message::Close(None))).await;
                                break;
                            }
                            _ = ping.tick() => {
                                if last_frame.elapsed() > idle_limit {
                                    tracing::warn!(url, "WebSocket silent for {idle_limit:?}; reconnecting");
                                    break;
                                }
                                let sent = tokio::time::timeout(options.connect_timeout, sink.send(Message::Ping(Bytes::new()))).await;
                                if !matches!(sent, Ok(Ok(()))) {
                                    break;
                                }
                            }
                            frame = source.next() => {
                                last_frame = tokio::time::Instant::now();
                                match frame {
                                    Some(Ok(Message::Text(text))) => inner.route_text(text.as_str()),
                                    Some(Ok(Message::Binary(data))) => inner.route_binary(data),
                                    Some(Ok(Message::Close(_))) | None => break,
                                    Some(Ok(_)) => {}
                                    Some(Err(e)) => {
                                        tracing::debug!(url, error = %e, "WebSocket error");
                                        break;
                                    }
                                }
                            }
                        }
                    }
                    inner.ws.send_modify(|s| s.connected = false);
                    inner.broadcast(|| Event::Disconnected);
                    tracing::info!(url, "ComfyUI WebSocket closed; reconnecting");
                }
            }
            Ok(Err(e)) => {
                inner
                    .health
                    .mark_unreachable(format!("WebSocket {url}: {}", error_chain(&e)));
            }
            Err(_) => {
                inner.health.mark_unreachable(format!(
                    "WebSocket {url}: no handshake within {:?}",
                    options.connect_timeout
                ));
            }
        }
        tokio::select! {
            _ = inner.shutdown.cancelled() => break,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(options.backoff_max);
    }
    inner.ws.send_modify(|s| s.connected = false);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_forms() {
        let b = BaseUrl::parse("http://127.0.0.1:8188").unwrap();
        assert_eq!(b.http("/prompt"), "http://127.0.0.1:8188/prompt");
        assert_eq!(b.ws("abc"), "ws://127.0.0.1:8188/ws?clientId=abc");
        let b = BaseUrl::parse("http://gpu.local/comfy/").unwrap();
        assert_eq!(b.http("/view?x=1"), "http://gpu.local/comfy/view?x=1");
        assert_eq!(b.to_string(), "http://gpu.local/comfy");
        assert!(BaseUrl::parse("https://x").unwrap_err().contains("https"));
        assert!(BaseUrl::parse("localhost:8188").is_err());
        assert!(BaseUrl::parse("not a url").is_err());
    }

    #[test]
    fn query_encoding() {
        assert_eq!(encode_query("dreamd (1).png"), "dreamd%20%281%29.png");
        assert_eq!(encode_query("a/b&c=d"), "a%2Fb%26c%3Dd");
    }

    #[test]
    fn unreachable_kinds() {
        assert!(ComfyError::Lost {
            prompt_id: "p".into()
        }
        .is_unreachable());
        assert!(!ComfyError::NoImage {
            prompt_id: "p".into()
        }
        .is_unreachable());
    }
}
