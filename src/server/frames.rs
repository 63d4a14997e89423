//! `/frame/current` (what is on screen now, never cached) and `/frames/{seq}` (a made frame,
//! from memory while it is on screen or in the buffer, else from `output/frames/`: immutable,
//! strong ETag, cacheable for a year, 304 on a matching `If-None-Match`).
//!
//! `{seq}` must be a decimal number; the file name is rebuilt from the number by the archive, so
//! no request can name anything outside `output/frames/`.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::App;

/// Cache policy of a saved frame: it never changes.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// The frame on screen now.
pub async fn current(State(app): State<App>) -> Response {
    let frame = app.current.borrow().clone();
    match frame {
        Some(frame) => (
            [
                (
                    CONTENT_TYPE,
                    HeaderValue::from_static(frame.format.content_type()),
                ),
                (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
                (
                    axum::http::HeaderName::from_static("x-frame-seq"),
                    HeaderValue::from(frame.seq),
                ),
            ],
            // No copy: the body shares the frame's bytes.
            Body::from(axum::body::Bytes::from_owner(std::sync::Arc::clone(
                &frame.bytes,
            ))),
        )
            .into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            [
                (RETRY_AFTER, HeaderValue::from_static("1")),
                (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            ],
            "no frame shown yet\n",
        )
            .into_response(),
    }
}

/// A made frame by sequence number.
pub async fn by_seq(
    State(app): State<App>,
    Path(seq): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(seq) = parse_seq(&seq) else {
        return (
            StatusCode::BAD_REQUEST,
            "a frame is named by its sequence number, e.g. /frames/42\n",
        )
            .into_response();
    };
    let format = app.shared.format;
    let bytes = match in_memory(&app, seq) {
        // No copy: the body shares the frame's bytes.
        Some(bytes) => axum::body::Bytes::from_owner(bytes),
        None => match from_disk(&app, seq).await {
            Ok(bytes) => axum::body::Bytes::from(bytes),
            Err(response) => return response,
        },
    };
    let etag = format!("\"{seq}-{:016x}\"", fnv1a(&bytes));
    let cache = [(ETAG, etag.clone()), (CACHE_CONTROL, IMMUTABLE.to_string())];
    let matched = headers
        .get(IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| etag_matches(v, &etag));
    if matched {
        return (StatusCode::NOT_MODIFIED, cache).into_response();
    }
    (
        cache,
        [(CONTENT_TYPE, format.content_type())],
        Body::from(bytes),
    )
        .into_response()
}

/// Frame `seq` from `output/frames/`, or the answer saying why not (404 when it is not there).
async fn from_disk(app: &App, seq: u64) -> Result<Vec<u8>, Response> {
    let path = app.shared.archive.path_of(seq, app.shared.format);
    match tokio::task::spawn_blocking(move || std::fs::read(path)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => Err((
            StatusCode::NOT_FOUND,
            format!("frame {seq} is not on disk (not made yet, or pruned)\n"),
        )
            .into_response()),
        Ok(Err(e)) => {
            tracing::warn!(seq, "cannot read frame {seq}: {e}");
            Err((StatusCode::INTERNAL_SERVER_ERROR, "cannot read frame\n").into_response())
        }
        Err(e) => {
            tracing::warn!(seq, "frame read task failed: {e}");
            Err((StatusCode::INTERNAL_SERVER_ERROR, "cannot read frame\n").into_response())
        }
    }
}

/// Frame `seq` when it is still in memory: on screen now, or made and waiting in the buffer.
/// The file is the same bytes, but it may not be written yet (the buffer gets a frame before
/// the archive does) or already pruned (`output.keep_frames` smaller than the buffer), and a
/// viewer asking for the frame it was just told about must get it either way.
fn in_memory(app: &App, seq: u64) -> Option<std::sync::Arc<[u8]>> {
    if let Some(frame) = app.current.borrow().as_ref().filter(|f| f.seq == seq) {
        return Some(std::sync::Arc::clone(&frame.bytes));
    }
    match app.shared.buffer.slot(seq) {
        Some(crate::buffer::Slot::Ready(frame)) => Some(std::sync::Arc::clone(&frame.bytes)),
        _ => None,
    }
}

/// A sequence number: 1–20 ASCII digits (no sign, no dots, no slashes).
pub fn parse_seq(text: &str) -> Option<u64> {
    if text.is_empty() || text.len() > 20 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Whether an `If-None-Match` value names `etag` (weak comparison, as RFC 9110 asks for).
fn etag_matches(header: &str, etag: &str) -> bool {
    header.split(',').map(str::trim).any(|candidate| {
        candidate == "*" || candidate.strip_prefix("W/").unwrap_or(candidate) == etag
    })
}

/// 64-bit FNV-1a: a content hash for the ETag (not a security measure).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_numbers_name_frames() {
        assert_eq!(parse_seq("42"), Some(42));
        assert_eq!(parse_seq("00000042"), Some(42));
        for bad in [
            "",
            "+4",
            "-1",
            "4.0",
            "../status.json",
            "1/2",
            "99999999999999999999",
        ] {
            assert_eq!(parse_seq(bad), None, "{bad}");
        }
    }

    #[test]
    fn if_none_match_lists_and_weak_tags_match() {
        assert!(etag_matches("\"1-ab\"", "\"1-ab\""));
        assert!(etag_matches("\"x\", W/\"1-ab\"", "\"1-ab\""));
        assert!(etag_matches("*", "\"1-ab\""));
        assert!(!etag_matches("\"1-ac\"", "\"1-ab\""));
    }

    #[test]
    fn content_hash_differs_for_different_bytes() {
        assert_ne!(fnv1a(b"frame a"), fnv1a(b"frame b"));
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
    }
}
