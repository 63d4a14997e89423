//! `/events`: server-sent events with the displayed frame's sequence number and the daemon's
//! state.
//!
//! ```text
//! event: state
//! data: {"state":"playing","reason":null,"interval_ms":250.0}
//!
//! event: frame
//! id: 1234
//! data: {"seq":1234,"keyframe":false}
//! ```
//!
//! Each client follows two `watch` channels, so it always gets the newest value and never a
//! queue: a client that cannot keep up skips frame numbers, and the display never waits for
//! it. Clients are bounded by `server.max_sse_clients` (more get 503), and every stream ends
//! when the daemon shuts down.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header::RETRY_AFTER;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio_util::sync::CancellationToken;

use super::health::Health;
use super::{App, KEEP_ALIVE};
use crate::display::CurrentFrame;
use crate::frame::FrameKind;

/// How long a browser waits before reconnecting.
const RETRY: std::time::Duration = std::time::Duration::from_secs(2);

/// One client's stream.
struct Follower {
    frames: CurrentFrame,
    /// Themes and prompts, for keyframe events.
    director: Arc<crate::direction::director::Director>,
    health: watch::Receiver<Health>,
    shutdown: CancellationToken,
    interval_ms: f64,
    first: bool,
    /// Held for the life of the stream: one of `server.max_sse_clients` slots.
    _slot: OwnedSemaphorePermit,
}

/// Opens an event stream, or answers 503 when every slot is taken.
pub async fn events(State(app): State<App>) -> Response {
    let Ok(slot) = Arc::clone(&app.sse_slots).try_acquire_owned() else {
        app.sse_rejected.fetch_add(1, Ordering::Relaxed);
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(RETRY_AFTER, "5")],
            format!(
                "too many live-event clients (server.max_sse_clients = {})\n",
                app.max_sse_clients
            ),
        )
            .into_response();
    };
    let mut frames = app.current.clone();
    let mut health = app.health.clone();
    // Both current values go out at once.
    frames.mark_changed();
    health.mark_changed();
    let follower = Follower {
        frames,
        director: Arc::clone(&app.shared.director),
        health,
        shutdown: app.shutdown.clone(),
        interval_ms: app.shared.live.get().frame_interval.as_secs_f64() * 1000.0,
        first: true,
        _slot: slot,
    };
    let stream = futures_util::stream::unfold(follower, |mut f| async move {
        let event = f.next().await?;
        Some((Ok::<_, Infallible>(event), f))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response()
}

impl Follower {
    /// The next event; None ends the stream (shutdown).
    async fn next(&mut self) -> Option<Event> {
        loop {
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return None,
                changed = self.health.changed() => {
                    changed.ok()?;
                    let health = self.health.borrow_and_update().clone();
                    let mut event = Event::default().event("state").json_data(json!({
                        "state": health.state,
                        "reason": health.reason,
                        "interval_ms": self.interval_ms,
                    })).ok()?;
                    if std::mem::take(&mut self.first) {
                        event = event.retry(RETRY);
                    }
                    return Some(event);
                }
                changed = self.frames.changed() => {
                    changed.ok()?;
                    let frame = self.frames.borrow_and_update().clone();
                    // None only before the first frame; wait for one.
                    if let Some(frame) = frame {
                        let keyframe = matches!(frame.kind, FrameKind::Keyframe { .. });
                        let mut data = json!({ "seq": frame.seq, "keyframe": keyframe });
                        if keyframe {
                            // What this keyframe was made as (not what is being made now).
                            let d = self.director.snapshot_showing(Some(frame.kind.keyframe()));
                            data["mode"] = json!(d.mode);
                            data["theme"] = json!(d.theme);
                            data["prompt"] = json!(d.prompt.unwrap_or(d.playing));
                        }
                        return Event::default()
                            .event("frame")
                            .id(frame.seq.to_string())
                            .json_data(data)
                            .ok();
                    }
                }
            }
        }
    }
}
