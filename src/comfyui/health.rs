//! ComfyUI health as the rest of the daemon sees it: one shared, cheap-to-read handle that the
//! client, the source and the fallback write, and that `status.json` (`comfyui_status`),
//! `/metrics` and the `keyframe` events read.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use parking_lot::Mutex;
use serde::Serialize;

/// `comfyui_status` in `status.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ComfyUiStatus {
    /// The server answers and nothing of ours runs.
    Connected,
    /// One of our prompts is queued or running.
    Generating,
    /// The server cannot be reached; the source probes it with backoff.
    Unreachable,
    /// `keyframes.source` is not `comfyui`.
    Disabled,
}

impl ComfyUiStatus {
    /// The string `status.json` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            ComfyUiStatus::Connected => "connected",
            ComfyUiStatus::Generating => "generating",
            ComfyUiStatus::Unreachable => "unreachable",
            ComfyUiStatus::Disabled => "disabled",
        }
    }
}

/// Where a keyframe came from, for `/metrics` (`source` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyframeOrigin {
    ComfyUi,
    Fallback,
}

/// The last keyframe ComfyUI made: what a `keyframe` event carries.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KeyframeReport {
    pub index: u64,
    pub prompt_id: String,
    pub seed: u64,
    pub denoise: f64,
    /// From the request to the decoded picture (server time included).
    pub ms: u64,
    /// Whether the server answered from its cache.
    pub cached: bool,
    pub prompt: String,
}

/// Counters for `/metrics` (monotonic).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct ComfyUiCounters {
    /// Keyframes ComfyUI made.
    pub ok: u64,
    /// Keyframes ComfyUI failed (each failure, whatever then played).
    pub failed: u64,
    /// Keyframes the fallback source made.
    pub fallback: u64,
    /// Sum and count of ComfyUI latencies of successful keyframes, in ms.
    pub latency_ms_sum: u64,
    /// Transitions to `unreachable`.
    pub outages: u64,
}

/// A copy of the health state at one moment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthSnapshot {
    pub status: ComfyUiStatus,
    /// Why it is `unreachable` (or the last keyframe error), for `degraded` states.
    pub reason: Option<String>,
    pub server_version: Option<String>,
    pub last: Option<KeyframeReport>,
    pub counters: ComfyUiCounters,
    /// Seconds since the status last changed.
    pub since_seconds: f64,
    /// Unix time of the last successful keyframe.
    pub last_success_unix: Option<u64>,
}

#[derive(Debug)]
struct State {
    status: ComfyUiStatus,
    reason: Option<String>,
    server_version: Option<String>,
    last: Option<KeyframeReport>,
    counters: ComfyUiCounters,
    since: Instant,
    last_success_unix: Option<u64>,
}

/// The shared handle; clones see the same state.
#[derive(Debug, Clone)]
pub struct ComfyUiHealth(Arc<Mutex<State>>);

impl ComfyUiHealth {
    /// A handle in `status` (the client starts `unreachable` until it first reaches the server).
    pub fn new(status: ComfyUiStatus) -> Self {
        Self(Arc::new(Mutex::new(State {
            status,
            reason: None,
            server_version: None,
            last: None,
            counters: ComfyUiCounters::default(),
            since: Instant::now(),
            last_success_unix: None,
        })))
    }

    /// For a daemon whose source is not ComfyUI.
    pub fn disabled() -> Self {
        Self::new(ComfyUiStatus::Disabled)
    }

    pub fn status(&self) -> ComfyUiStatus {
        self.0.lock().status
    }

    pub fn reason(&self) -> Option<String> {
        self.0.lock().reason.clone()
    }

    pub fn snapshot(&self) -> HealthSnapshot {
        let s = self.0.lock();
        HealthSnapshot {
            status: s.status,
            reason: s.reason.clone(),
            server_version: s.server_version.clone(),
            last: s.last.clone(),
            counters: s.counters,
            since_seconds: s.since.elapsed().as_secs_f64(),
            last_success_unix: s.last_success_unix,
        }
    }

    fn set(&self, status: ComfyUiStatus, reason: Option<String>) {
        let mut s = self.0.lock();
        if s.status == ComfyUiStatus::Disabled {
            return;
        }
        if s.status != status {
            if status == ComfyUiStatus::Unreachable {
                s.counters.outages += 1;
                tracing::warn!(
                    reason = reason.as_deref().unwrap_or(""),
                    "ComfyUI unreachable"
                );
            } else if s.status == ComfyUiStatus::Unreachable {
                tracing::info!("ComfyUI reachable again");
            }
            s.status = status;
            s.since = Instant::now();
        }
        if reason.is_some() || status != ComfyUiStatus::Unreachable {
            s.reason = reason;
        }
    }

    /// The server answered (keeps `generating` while one of our prompts runs).
    pub fn mark_connected(&self) {
        let generating = self.status() == ComfyUiStatus::Generating;
        if !generating {
            self.set(ComfyUiStatus::Connected, None);
        }
    }

    /// One of our prompts is queued.
    pub fn mark_generating(&self) {
        self.set(ComfyUiStatus::Generating, None);
    }

    /// Our prompt ended (whatever the outcome) and the server is still there.
    pub fn mark_idle(&self) {
        if self.status() == ComfyUiStatus::Generating {
            self.set(ComfyUiStatus::Connected, None);
        }
    }

    /// The server cannot be reached, for `reason`.
    pub fn mark_unreachable(&self, reason: impl Into<String>) {
        self.set(ComfyUiStatus::Unreachable, Some(reason.into()));
    }

    pub fn set_server_version(&self, version: &str) {
        self.0.lock().server_version = Some(version.to_string());
    }

    /// A keyframe ComfyUI made.
    pub fn record_success(&self, report: KeyframeReport) {
        let mut s = self.0.lock();
        s.counters.ok += 1;
        s.counters.latency_ms_sum += report.ms;
        s.last = Some(report);
        s.last_success_unix = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .ok()
            .map(|d| d.as_secs());
    }

    /// A keyframe ComfyUI failed to make.
    pub fn record_failure(&self, reason: &str) {
        let mut s = self.0.lock();
        s.counters.failed += 1;
        if s.status != ComfyUiStatus::Unreachable {
            s.reason = Some(reason.to_string());
        }
    }

    /// A keyframe the fallback made.
    pub fn record_fallback(&self) {
        self.0.lock().counters.fallback += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions_and_counters() {
        let h = ComfyUiHealth::new(ComfyUiStatus::Unreachable);
        h.mark_connected();
        assert_eq!(h.status(), ComfyUiStatus::Connected);
        h.mark_generating();
        h.mark_connected();
        assert_eq!(
            h.status(),
            ComfyUiStatus::Generating,
            "a WS reconnect keeps generating"
        );
        h.mark_idle();
        assert_eq!(h.status().as_str(), "connected");
        h.mark_unreachable("connection refused");
        h.mark_unreachable("still refused");
        let s = h.snapshot();
        assert_eq!(s.status, ComfyUiStatus::Unreachable);
        assert_eq!(s.reason.as_deref(), Some("still refused"));
        assert_eq!(s.counters.outages, 1);
        assert_eq!(serde_json::to_value(s.status).unwrap(), "unreachable");
        let d = ComfyUiHealth::disabled();
        d.mark_connected();
        assert_eq!(d.status(), ComfyUiStatus::Disabled);
    }
}
