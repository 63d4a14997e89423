//! `/status` (the status.json document, built fresh) and `/healthz`, plus the small task that
//! follows the daemon's state for `/healthz` and the live events.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{guard, App};
use crate::daemon::Shared;
use crate::status::{self, DaemonState, Lifecycle};

/// How often the state is looked at.
const STATE_POLL: Duration = Duration::from_millis(100);

/// The daemon's state as the server last saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    pub state: DaemonState,
    /// When the state last became `degraded` (None while it is not).
    pub degraded_since: Option<Instant>,
    /// The last failure, `stage: message`, while degraded.
    pub reason: Option<String>,
}

impl Health {
    /// Whether `/healthz` should fail: degraded for at least `after` without a break.
    pub fn unhealthy(&self, after: Duration) -> bool {
        self.degraded_since
            .is_some_and(|since| since.elapsed() >= after)
    }
}

/// Follows the state every [`STATE_POLL`] until `shutdown`; the receiver sees each change.
pub fn spawn_tracker(
    shared: Arc<Shared>,
    unhealthy_after: Duration,
    shutdown: CancellationToken,
) -> watch::Receiver<Health> {
    let (tx, rx) = watch::channel(observe(&shared, None));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(STATE_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reported_unhealthy = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    tx.send_replace(Health { state: DaemonState::Stopping, degraded_since: None, reason: None });
                    return;
                }
                _ = tick.tick() => {}
            }
            let previous = tx.borrow().degraded_since;
            let health = observe(&shared, previous);
            let unhealthy = health.unhealthy(unhealthy_after);
            if unhealthy != reported_unhealthy {
                tracing::warn!(unhealthy, reason = ?health.reason, "health: {}", if unhealthy { "unhealthy" } else { "healthy again" });
                reported_unhealthy = unhealthy;
            }
            // Only a new state or reason wakes the event streams.
            tx.send_if_modified(|current| {
                let changed = current.state != health.state || current.reason != health.reason;
                *current = health;
                changed
            });
        }
    });
    rx
}

fn observe(shared: &Shared, degraded_since: Option<Instant>) -> Health {
    let state = status::state(shared, Lifecycle::Running);
    if state == DaemonState::Degraded {
        let reason = shared
            .telemetry
            .pipeline
            .last_error()
            .map(|e| format!("{}: {}", e.stage, e.message));
        Health {
            state,
            degraded_since: Some(degraded_since.unwrap_or_else(Instant::now)),
            reason,
        }
    } else {
        Health {
            state,
            degraded_since: None,
            reason: None,
        }
    }
}

/// The same document as status.json, built now (error texts without absolute paths for a
/// caller that is neither local nor holding the token: [`guard::redact_paths`]).
pub async fn status(State(app): State<App>, request: Request) -> Response {
    let mut document = status::document(&app.shared, Lifecycle::Running);
    if !guard::trusted(&app, &request) {
        if let Some(error) = document.last_error.as_mut() {
            error.message = guard::redact_paths(&error.message);
        }
    }
    match serde_json::to_vec_pretty(&document) {
        Ok(bytes) => (
            [
                (CONTENT_TYPE, "application/json"),
                (CACHE_CONTROL, "no-cache"),
            ],
            bytes,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// 200 while playing, buffering, paused or starting; 503 when degraded for longer than
/// `server.unhealthy_after_seconds` (the body names the last failure), or stopping.
pub async fn healthz(State(app): State<App>, request: Request) -> Response {
    let mut health = app.health.borrow().clone();
    if !guard::trusted(&app, &request) {
        health.reason = health.reason.map(|r| guard::redact_paths(&r));
    }
    let after = app.unhealthy_after;
    let state = serde_json::to_value(health.state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let (code, body) = match (health.state, health.degraded_since) {
        (DaemonState::Degraded, Some(since)) => {
            let secs = since.elapsed().as_secs_f64();
            let reason = health.reason.as_deref().unwrap_or("unknown failure");
            if health.unhealthy(after) {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("unhealthy: degraded for {secs:.0} s: {reason}\n"),
                )
            } else {
                (
                    StatusCode::OK,
                    format!(
                        "ok: degraded for {secs:.0} s (unhealthy after {:.0} s): {reason}\n",
                        after.as_secs_f64()
                    ),
                )
            }
        }
        (DaemonState::Stopping | DaemonState::Stopped, _) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy: {state}\n"),
        ),
        _ => (StatusCode::OK, format!("ok: {state}\n")),
    };
    (code, [(CACHE_CONTROL, "no-cache")], body).into_response()
}
