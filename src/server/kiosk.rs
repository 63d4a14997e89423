//! `/`: the kiosk page (`assets/kiosk.html`, embedded in the binary).
//!
//! The page opens on `/frame/current` (an `<img>` in the document, so its first paint shows a
//! picture rather than waiting for an event), then follows `/events`, loads each new frame from
//! `/frames/{seq}` (cacheable) and crossfades it over the previous one at the daemon's frame
//! interval; it reconnects by itself and shows a discreet state line only while buffering,
//! paused, degraded or disconnected.

use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};

/// The page.
pub const KIOSK_HTML: &str = include_str!("../../assets/kiosk.html");

pub async fn page() -> Response {
    (
        [
            (CONTENT_TYPE, "text/html; charset=utf-8"),
            (CACHE_CONTROL, "no-cache"),
        ],
        KIOSK_HTML,
    )
        .into_response()
}
