//! `status.json`: the status document and the one task that writes it.
//!
//! The document is made from the daemon's [`Shared`] context ([`document`], [`state`]; the
//! HTTP server's `/status` and `/healthz` read the same functions). The [`StatusWriter`] is the
//! only writer of the file. It writes about once a second and
//! whenever it is woken by a state change, atomically (temp file, fsync, rename), and a final
//! time with state `stopped` at shutdown. The document starts with the original Dream Window's
//! flat keys (the Rainmeter skin's keys first, in the order its regex expects), pretty-printed
//! with `"key": value` as the original wrote them, followed by dreamd's own sections.

use crate::comfyui::ComfyUiStatus;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::atomic_file::write_atomic;
use crate::daemon::Shared;
use crate::events::{BufferEvent, DisplayStatsEvent, LogEvent, StateEvent};
use crate::stats::{round, DisplayPhase, Stage};

/// How often the document is rewritten when nothing changes.
const WRITE_EVERY: Duration = Duration::from_secs(1);
/// How often a `buffer` event goes to the JSON log.
const BUFFER_EVENT_EVERY: Duration = Duration::from_secs(5);

/// The daemon's state as reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DaemonState {
    Starting,
    Buffering,
    Playing,
    Paused,
    Degraded,
    Stopping,
    Stopped,
}

impl DaemonState {
    /// The original's `status` word for this state.
    fn legacy_status(self) -> &'static str {
        match self {
            DaemonState::Starting => "initializing",
            DaemonState::Buffering => "buffering",
            DaemonState::Playing => "live",
            DaemonState::Paused => "paused",
            DaemonState::Degraded => "degraded",
            DaemonState::Stopping | DaemonState::Stopped => "stopped",
        }
    }

    fn controller_status(self) -> &'static str {
        match self {
            DaemonState::Starting => "starting",
            DaemonState::Buffering | DaemonState::Playing | DaemonState::Degraded => "generating",
            DaemonState::Paused => "paused",
            DaemonState::Stopping => "stopping",
            DaemonState::Stopped => "stopped",
        }
    }
}

/// Where the daemon is in its life, as the writer is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    Running,
    Stopping,
    Stopped,
}

/// The whole document. Field order is the key order in the file.
#[derive(Debug, Clone, Serialize)]
pub struct StatusDocument {
    // The Rainmeter skin's keys, in the order of its regex.
    pub frame_number: u64,
    pub generation_time: f64,
    pub status: &'static str,
    pub current_mode: String,
    pub current_prompt: String,
    pub cache_size: u64,
    pub uptime_hours: f64,
    pub daemon_status: &'static str,
    pub comfyui_status: &'static str,
    pub controller_status: &'static str,
    pub is_buffering: bool,
    // The original controller's other flat keys.
    pub buffer_filled: usize,
    pub buffer_target: usize,
    pub buffer_seconds: f64,
    pub buffer_percentage: f64,
    pub keyframes_generated: u64,
    pub interpolations_generated: u64,
    pub uptime_minutes: f64,
    pub vae_lock_acquisitions: u64,
    pub vae_lock_avg_wait_ms: f64,
    pub vae_lock_max_wait_ms: f64,
    pub last_update: String,
    // dreamd's schema.
    pub state: DaemonState,
    pub updated_at: String,
    pub uptime_s: f64,
    pub pid: u32,
    pub display: DisplaySection,
    pub buffer: BufferSection,
    pub generation: GenerationSection,
    pub gpu_lock: GpuLockSection,
    pub failures: FailureSection,
    pub theme: Option<String>,
    /// The ComfyUI source (absent for other sources).
    pub comfyui: Option<ComfyUiSection>,
    /// Themes, collapse, cache and injections.
    pub direction: DirectionSection,
    pub last_error: Option<ErrorSection>,
    /// The HTTP server, when it runs.
    pub server: Option<ServerSection>,
}

/// `comfyui`: the ComfyUI source's health and counts.
#[derive(Debug, Clone, Serialize)]
pub struct ComfyUiSection {
    /// `connected`, `generating` or `unreachable`.
    pub status: &'static str,
    /// Why it is unreachable, or the last keyframe error.
    pub reason: Option<String>,
    pub server_version: Option<String>,
    pub keyframes_ok: u64,
    pub keyframes_failed: u64,
    /// Keyframes the fallback source made while ComfyUI was away.
    pub keyframes_fallback: u64,
    /// Mean ComfyUI time of a keyframe, ms.
    pub mean_ms: Option<f64>,
    /// Times it became unreachable.
    pub outages: u64,
    pub last_prompt_id: Option<String>,
}

/// `direction`: themes, collapse detection, the cache and injections.
#[derive(Debug, Clone, Serialize)]
pub struct DirectionSection {
    /// What the last keyframe was: `dream`, `injection:cache`, `injection:seed`, or the
    /// source's name.
    pub mode: String,
    /// The last prompt (sources with prompts).
    pub prompt: Option<String>,
    /// `ok`, `converging` or `collapsed`.
    pub collapse: &'static str,
    pub color_similarity: f64,
    pub structure_similarity: f64,
    pub color_delta: Option<f64>,
    pub structure_delta: Option<f64>,
    /// Extra injection share from convergence, 0–1.
    pub injection_boost: f64,
    pub keyframes_analysed: u64,
    pub cache_size: usize,
    pub cache_offered: u64,
    pub cache_accepted: u64,
    pub cache_acceptance_rate: f64,
    pub cache_injections: u64,
    pub seed_injections: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServerSection {
    /// Base URL of the bound address (`http://127.0.0.1:8765`).
    pub url: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct DisplaySection {
    pub target_fps: f64,
    pub actual_fps: f64,
    pub frames_displayed: u64,
    pub current_sequence: Option<u64>,
    pub late: u64,
    pub held: u64,
    pub skipped: u64,
    pub interval_error_p99_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BufferSection {
    pub seconds: f64,
    pub target_seconds: f64,
    pub percentage: f64,
    pub frames_ready: usize,
    pub frames_registered: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct GenerationSection {
    pub keyframes: u64,
    pub interpolated_frames: u64,
    pub pairs: u64,
    /// In-betweens per pair now: `generation.frames_per_pair`, or more while pairs are
    /// lengthened for slow keyframes.
    pub frames_per_pair: u64,
    pub keyframe_ms: Option<f64>,
    pub decode_ms_per_frame: Option<f64>,
    pub frames_per_s: Option<f64>,
    pub source: String,
    pub decoder: String,
    pub device: String,
    /// The wgpu adapter, `NAME (backend, type, driver)`, when the device is wgpu (absent
    /// otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adapter: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct GpuLockSection {
    pub acquisitions: u64,
    pub avg_wait_ms: f64,
    pub max_wait_ms: f64,
    pub contention_events: u64,
    pub avg_hold_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct FailureSection {
    pub keyframe: u64,
    pub slerp: u64,
    pub decode: u64,
    pub save: u64,
    pub publish: u64,
    /// Writes of status.json itself that failed (counted, logged; this file shows the count
    /// once a write succeeds again, `/status` and `/metrics` at once).
    pub status_write: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ErrorSection {
    pub stage: &'static str,
    pub message: String,
    pub at: String,
}

/// The document as of now.
pub fn document(shared: &Shared, lifecycle: Lifecycle) -> StatusDocument {
    let t = &shared.telemetry;
    let now = SystemTime::now();
    let uptime = t.started.elapsed().as_secs_f64();
    let state = state(shared, lifecycle);
    let live = shared.live.get();
    let (target_fps, target_seconds) = (live.target_fps, live.target_seconds);
    let counts = shared.buffer.counts();
    let seconds = counts.ready as f64 / target_fps;
    let percentage = (seconds / target_seconds * 100.0).min(100.0);
    let averages = t.pipeline.averages();
    let lock = shared.engine.lock().stats();
    let timing = t.display.timing();
    let display = &t.display;
    let frames_displayed = display.frames_displayed.load(ORDER);
    let keyframes = t.pipeline.keyframes.load(ORDER);
    let interpolated = t.pipeline.interpolated_frames.load(ORDER);
    // Mode, theme and prompt of the keyframe on screen (generation runs a buffer ahead).
    let direction = shared
        .director
        .snapshot_showing(t.display.current_keyframe());
    let theme = direction.theme.clone().or_else(|| t.pipeline.theme());
    let comfyui = shared.comfyui.lock().snapshot();
    let timestamp = crate::clock::rfc3339_millis(now);
    StatusDocument {
        frame_number: frames_displayed,
        generation_time: round(averages.keyframe_ms.get().unwrap_or(0.0) / 1000.0, 3),
        status: state.legacy_status(),
        // Never empty: the Rainmeter skin's regex (`"([^"]+)"`) fails the whole bar on "".
        current_mode: non_empty(&direction.mode, &shared.source_name),
        current_prompt: non_empty(
            direction.prompt.as_deref().unwrap_or(&direction.playing),
            &shared.source_name,
        ),
        cache_size: direction.cache_size as u64,
        uptime_hours: round(uptime / 3600.0, 2),
        daemon_status: match lifecycle {
            Lifecycle::Running => "running",
            Lifecycle::Stopping => "stopping",
            Lifecycle::Stopped => "stopped",
        },
        comfyui_status: comfyui.status.as_str(),
        controller_status: state.controller_status(),
        is_buffering: matches!(state, DaemonState::Starting | DaemonState::Buffering),
        buffer_filled: counts.ready,
        buffer_target: (target_seconds * target_fps).round() as usize,
        buffer_seconds: round(seconds, 2),
        buffer_percentage: round(percentage, 1),
        keyframes_generated: keyframes,
        interpolations_generated: interpolated,
        uptime_minutes: round(uptime / 60.0, 1),
        vae_lock_acquisitions: lock.acquisitions,
        vae_lock_avg_wait_ms: round(lock.avg_wait_ms(), 3),
        vae_lock_max_wait_ms: round(lock.max_wait.as_secs_f64() * 1000.0, 3),
        last_update: timestamp.clone(),
        state,
        updated_at: timestamp,
        uptime_s: round(uptime, 3),
        pid: std::process::id(),
        display: DisplaySection {
            target_fps,
            actual_fps: round(display.actual_fps(), 3),
            frames_displayed,
            current_sequence: display.current_sequence(),
            late: display.late.load(ORDER),
            held: display.held.load(ORDER),
            skipped: display.skipped.load(ORDER),
            interval_error_p99_ms: round(
                timing.interval_error.quantile(0.99).as_secs_f64() * 1000.0,
                3,
            ),
        },
        buffer: BufferSection {
            seconds: round(seconds, 2),
            target_seconds,
            percentage: round(percentage, 1),
            frames_ready: counts.ready,
            frames_registered: counts.registered,
        },
        generation: GenerationSection {
            keyframes,
            interpolated_frames: interpolated,
            pairs: t.pipeline.pairs.load(ORDER),
            frames_per_pair: t.pipeline.frames_per_pair.load(ORDER),
            keyframe_ms: averages.keyframe_ms.get().map(|v| round(v, 3)),
            decode_ms_per_frame: averages.decode_ms_per_frame.get().map(|v| round(v, 3)),
            frames_per_s: averages.frames_per_s.get().map(|v| round(v, 2)),
            source: shared.source_name.clone(),
            decoder: shared.engine.decoder_name().to_string(),
            device: shared.engine.device().to_string(),
            adapter: shared.engine.adapter().map(|a| a.to_string()),
        },
        gpu_lock: GpuLockSection {
            acquisitions: lock.acquisitions,
            avg_wait_ms: round(lock.avg_wait_ms(), 3),
            max_wait_ms: round(lock.max_wait.as_secs_f64() * 1000.0, 3),
            contention_events: lock.contention_events,
            avg_hold_ms: round(lock.avg_hold_ms(), 3),
        },
        failures: FailureSection {
            keyframe: t.pipeline.failures(Stage::Keyframe),
            slerp: t.pipeline.failures(Stage::Slerp),
            decode: t.pipeline.failures(Stage::Decode),
            save: t.pipeline.failures(Stage::Save),
            publish: t.pipeline.failures(Stage::Publish),
            status_write: t.status_write_failures.load(ORDER),
        },
        theme,
        comfyui: (comfyui.status != ComfyUiStatus::Disabled).then(|| ComfyUiSection {
            status: comfyui.status.as_str(),
            reason: comfyui.reason.clone(),
            server_version: comfyui.server_version.clone(),
            keyframes_ok: comfyui.counters.ok,
            keyframes_failed: comfyui.counters.failed,
            keyframes_fallback: comfyui.counters.fallback,
            mean_ms: (comfyui.counters.ok > 0).then(|| {
                round(
                    comfyui.counters.latency_ms_sum as f64 / comfyui.counters.ok as f64,
                    1,
                )
            }),
            outages: comfyui.counters.outages,
            last_prompt_id: comfyui.last.as_ref().map(|l| l.prompt_id.clone()),
        }),
        direction: DirectionSection {
            mode: direction.mode.clone(),
            prompt: direction.prompt.clone(),
            collapse: direction.collapse.state.as_str(),
            color_similarity: round(f64::from(direction.collapse.color_similarity), 4),
            structure_similarity: round(f64::from(direction.collapse.structure_similarity), 4),
            color_delta: direction
                .collapse
                .color_delta
                .map(|d| round(f64::from(d), 4)),
            structure_delta: direction
                .collapse
                .structure_delta
                .map(|d| round(f64::from(d), 4)),
            injection_boost: round(f64::from(direction.collapse.severity), 3),
            keyframes_analysed: direction.analysed,
            cache_size: direction.cache_size,
            cache_offered: direction.cache.offered,
            cache_accepted: direction.cache.accepted,
            cache_acceptance_rate: round(direction.cache.acceptance_rate(), 3),
            cache_injections: direction.cache_injections,
            seed_injections: direction.seed_injections,
        },
        last_error: t.pipeline.last_error().map(|e| ErrorSection {
            stage: e.stage.as_str(),
            message: e.message,
            at: crate::clock::rfc3339_millis(e.at),
        }),
        server: shared.server_url.clone().map(|url| ServerSection { url }),
    }
}

/// `value`, or `fallback` when it is empty.
fn non_empty(value: &str, fallback: &str) -> String {
    if value.trim().is_empty() {
        fallback.to_string()
    } else {
        value.to_string()
    }
}

/// The reported state: lifecycle first, then `paused` while an operator has paused, then
/// the display's phase, `degraded` while a failure is recent.
pub fn state(shared: &Shared, lifecycle: Lifecycle) -> DaemonState {
    match lifecycle {
        Lifecycle::Stopping => return DaemonState::Stopping,
        Lifecycle::Stopped => return DaemonState::Stopped,
        Lifecycle::Running => {}
    }
    if shared.control.is_paused() {
        return DaemonState::Paused;
    }
    let recent_failure = shared
        .telemetry
        .pipeline
        .last_error()
        .is_some_and(|e| e.instant.elapsed() < shared.live.get().degraded_window);
    let comfyui_down = shared.comfyui.lock().status() == ComfyUiStatus::Unreachable;
    let recent_failure = recent_failure || comfyui_down;
    match shared.telemetry.display.phase() {
        DisplayPhase::Starting => DaemonState::Starting,
        _ if recent_failure => DaemonState::Degraded,
        DisplayPhase::Buffering => DaemonState::Buffering,
        DisplayPhase::Playing => DaemonState::Playing,
        DisplayPhase::Stopped => DaemonState::Stopping,
    }
}

const ORDER: std::sync::atomic::Ordering = std::sync::atomic::Ordering::Relaxed;

/// The only writer of `status.json`.
pub struct StatusWriter {
    path: PathBuf,
    shared: Arc<Shared>,
    wake: Arc<Notify>,
}

impl StatusWriter {
    /// A writer for `output_dir/status.json`, woken early by `wake`.
    pub fn new(output_dir: PathBuf, shared: Arc<Shared>, wake: Arc<Notify>) -> Self {
        Self {
            path: output_dir.join("status.json"),
            shared,
            wake,
        }
    }

    /// Writes the document now; errors are logged, never fatal.
    pub async fn write(&self, lifecycle: Lifecycle) -> Option<DaemonState> {
        let document = document(&self.shared, lifecycle);
        let state = document.state;
        let bytes = match serde_json::to_vec_pretty(&document) {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::error!("cannot serialise status document: {e}");
                return None;
            }
        };
        let path = self.path.clone();
        match tokio::task::spawn_blocking(move || write_atomic(&path, &bytes)).await {
            Ok(Ok(())) => Some(state),
            Ok(Err(e)) => {
                let failures = self
                    .shared
                    .telemetry
                    .status_write_failures
                    .fetch_add(1, ORDER)
                    + 1;
                // Logged the first time and then at every power of two, not every second.
                if failures.is_power_of_two() {
                    tracing::warn!(failures, "cannot write status: {e}");
                }
                None
            }
            Err(e) => {
                tracing::warn!("status write task failed: {e}");
                None
            }
        }
    }

    /// Writes every second and on wake-ups until `shutdown`, logging state changes and the
    /// periodic `buffer` and `display_stats` events (and both once more at shutdown).
    pub async fn run(&self, shutdown: CancellationToken) {
        let mut last_state = None;
        let mut ticker = tokio::time::interval(WRITE_EVERY);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut buffer_event = tokio::time::interval(BUFFER_EVENT_EVERY);
        buffer_event.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    // Final figures, so a short run's log still has a last snapshot.
                    self.log_buffer_event();
                    return;
                }
                _ = ticker.tick() => {}
                _ = self.wake.notified() => {}
                _ = buffer_event.tick() => {
                    self.log_buffer_event();
                    continue;
                }
            }
            if let Some(state) = self.write(Lifecycle::Running).await {
                if last_state != Some(state) {
                    StateEvent {
                        state: format!("{state:?}"),
                    }
                    .emit();
                    last_state = Some(state);
                }
            }
        }
    }

    fn log_buffer_event(&self) {
        let counts = self.shared.buffer.counts();
        let live = self.shared.live.get();
        BufferEvent {
            seconds: round(counts.ready as f64 / live.target_fps, 2),
            target_seconds: Some(live.target_seconds),
            frames_ready: Some(counts.ready as u64),
            frames_registered: Some(counts.registered as u64),
        }
        .emit();
        // Display figures since start, for `dreamd analyze` (achieved fps, interval error).
        let shown = &self.shared.telemetry.display;
        let timing = shown.timing();
        let error_ms = |q: f64| round(timing.interval_error.quantile(q).as_secs_f64() * 1000.0, 3);
        DisplayStatsEvent {
            target_fps: Some(live.target_fps),
            frames_displayed: shown.frames_displayed.load(ORDER),
            actual_fps: Some(round(shown.actual_fps(), 3)),
            interval_error_p50_ms: Some(error_ms(0.5)),
            interval_error_p99_ms: Some(error_ms(0.99)),
            late: shown.late.load(ORDER),
            held: shown.held.load(ORDER),
            skipped: shown.skipped.load(ORDER),
        }
        .emit();
    }
}
