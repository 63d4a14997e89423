//! What keeps web pages the operator happens to visit from reaching the daemon.
//!
//! A browser lets any page send a "simple" cross-origin POST (no preflight), and a DNS-rebinding
//! page can even read answers from a loopback server under its own name. So:
//!
//! - every request's `Host` must be an IP address, `localhost` (or `*.localhost`), or a name in
//!   `server.allowed_hosts` ([`HostPolicy`]); rebinding needs a DNS name, so it is refused with
//!   421;
//! - control requests ([`control_guard`]) are refused with 403 when the browser says they come
//!   from another site (`Sec-Fetch-Site` other than `same-origin`/`none`, or an `Origin` that is
//!   not this server), and need `Content-Type: application/json` or an `X-Dreamd-Control`
//!   header, which no page can send cross-origin without a preflight that the server never
//!   grants (415 otherwise);
//! - a control request's body must come with a `Content-Length` of at most 4 KiB: a chunked
//!   body (411) or a larger one (413) is refused before anything reads it, and the connection is
//!   closed rather than drained;
//! - `/status` and `/healthz` replace absolute paths in error texts by their file names for
//!   callers that are neither on this machine nor holding the token ([`redact_paths`]).

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::{
    CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HOST, ORIGIN, TRANSFER_ENCODING,
};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{auth, App, BODY_LIMIT};

/// The custom header that marks a control request as not coming from a web page.
pub const CONTROL_HEADER: &str = "x-dreamd-control";

/// Which `Host` values are accepted.
#[derive(Debug, Clone, Default)]
pub struct HostPolicy {
    /// Lower-case names from `server.allowed_hosts` (`*` accepts any).
    allowed: Vec<String>,
}

impl HostPolicy {
    pub fn new(allowed: &[String]) -> HostPolicy {
        HostPolicy {
            allowed: allowed
                .iter()
                .map(|h| h.trim().trim_end_matches('.').to_ascii_lowercase())
                .collect(),
        }
    }

    /// Whether a request with this `Host` header may be served (no header: a non-browser
    /// HTTP/1.0 client, allowed).
    pub fn allows(&self, host: Option<&str>) -> bool {
        let Some(host) = host else { return true };
        let name = host_name(host).to_ascii_lowercase();
        let name = name.trim_end_matches('.');
        name.parse::<IpAddr>().is_ok()
            || name == "localhost"
            || name.ends_with(".localhost")
            || self.allowed.iter().any(|a| a == "*" || a == name)
    }
}

/// The name part of a `Host` header value (`[::1]:8765` → `::1`, `a.b:80` → `a.b`).
fn host_name(host: &str) -> &str {
    let host = host.trim();
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

fn refuse(code: StatusCode, message: String, close: bool) -> Response {
    let body = axum::Json(json!({ "ok": false, "error": message }));
    if close {
        (code, [(CONNECTION, "close")], body).into_response()
    } else {
        (code, body).into_response()
    }
}

/// Middleware on every route: refuses a `Host` that [`HostPolicy`] does not accept (421).
pub async fn host_guard(State(app): State<App>, request: Request, next: Next) -> Response {
    let host = request
        .headers()
        .get(HOST)
        .map(|v| v.to_str().unwrap_or("\u{fffd}"));
    if !app.hosts.allows(host) {
        let host = host.unwrap_or_default().to_string();
        tracing::warn!(
            host,
            "refused a request for host {host:?} (server.allowed_hosts)"
        );
        return (
            StatusCode::MISDIRECTED_REQUEST,
            format!(
                "host {host:?} is not served here; add it to server.allowed_hosts to allow it\n"
            ),
        )
            .into_response();
    }
    next.run(request).await
}

/// Why a control request is refused, if it is: body framing first, then cross-site signals,
/// then the content type.
pub fn control_refusal(headers: &HeaderMap) -> Option<(StatusCode, String, bool)> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if headers.contains_key(TRANSFER_ENCODING) {
        return Some((
            StatusCode::LENGTH_REQUIRED,
            format!("control requests need a Content-Length (at most {BODY_LIMIT} bytes), not a chunked body"),
            true,
        ));
    }
    if let Some(length) = text(CONTENT_LENGTH.as_str()) {
        if length
            .trim()
            .parse::<u64>()
            .map_or(true, |n| n > BODY_LIMIT as u64)
        {
            return Some((
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("control request bodies are limited to {BODY_LIMIT} bytes"),
                true,
            ));
        }
    }
    if let Some(site) = text("sec-fetch-site") {
        if !matches!(site, "same-origin" | "none") {
            return Some((
                StatusCode::FORBIDDEN,
                format!("cross-site control request refused (Sec-Fetch-Site: {site})"),
                false,
            ));
        }
    }
    if let Some(origin) = headers.get(ORIGIN) {
        let origin = origin.to_str().unwrap_or("?");
        let same = text(HOST.as_str())
            .is_some_and(|host| origin.eq_ignore_ascii_case(&format!("http://{host}")));
        if !same {
            return Some((
                StatusCode::FORBIDDEN,
                format!("cross-origin control request refused (Origin: {origin})"),
                false,
            ));
        }
    }
    let json = text(CONTENT_TYPE.as_str()).is_some_and(|t| {
        t.split(';')
            .next()
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
    });
    if !json && !headers.contains_key(CONTROL_HEADER) {
        return Some((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "control requests need Content-Type: application/json or an X-Dreamd-Control header"
                .to_string(),
            false,
        ));
    }
    None
}

/// Middleware on the control routes: [`control_refusal`], answered in JSON.
pub async fn control_guard(request: Request, next: Next) -> Response {
    // Other methods are answered 405 by the router.
    if request.method() != axum::http::Method::POST {
        return next.run(request).await;
    }
    if let Some((code, message, close)) = control_refusal(request.headers()) {
        tracing::warn!("control request refused: {message}");
        return refuse(code, message, close);
    }
    next.run(request).await
}

/// Whether `request` may see absolute paths in error texts: it comes from this machine, or
/// carries the control token.
pub fn trusted(app: &App, request: &Request) -> bool {
    let local = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .is_none_or(|ConnectInfo(peer)| peer.ip().is_loopback());
    local
        || app.token.as_deref().is_some_and(|token| {
            auth::bearer_matches(
                request
                    .headers()
                    .get(axum::http::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok()),
                token,
            )
        })
}

/// `text` with every absolute path replaced by `…/` and its last component
/// (`writing /srv/dreamd/output/frames/00000012.png: …` → `writing …/00000012.png: …`).
pub fn redact_paths(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('/') {
        let starts_word = rest[..start]
            .chars()
            .next_back()
            .is_none_or(|c| c.is_whitespace() || "\"'(=[".contains(c));
        if !starts_word {
            out.push_str(&rest[..=start]);
            rest = &rest[start + 1..];
            continue;
        }
        out.push_str(&rest[..start]);
        let path_len = rest[start..]
            .find(|c: char| c.is_whitespace() || "\"')],".contains(c))
            .unwrap_or(rest.len() - start);
        let path = &rest[start..start + path_len];
        let (path, tail) = match path.strip_suffix(':') {
            Some(p) => (p, ":"),
            None => (path, ""),
        };
        let last = path.rsplit('/').find(|c| !c.is_empty()).unwrap_or("");
        out.push_str("…/");
        out.push_str(last);
        out.push_str(tail);
        rest = &rest[start + path_len..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn hosts_are_ip_addresses_localhost_or_allowed_names() {
        let policy = HostPolicy::new(&["Kiosk.lan".to_string()]);
        for ok in [
            "127.0.0.1:8765",
            "localhost:8765",
            "LOCALHOST",
            "[::1]:8765",
            "192.168.1.20",
            "app.localhost:1",
            "kiosk.lan:8765",
        ] {
            assert!(policy.allows(Some(ok)), "{ok}");
        }
        assert!(policy.allows(None));
        for bad in [
            "evil.example:8765",
            "localhost.evil.example",
            "127.0.0.1.nip.io",
        ] {
            assert!(!policy.allows(Some(bad)), "{bad}");
        }
        assert!(HostPolicy::new(&["*".to_string()]).allows(Some("evil.example")));
    }

    #[test]
    fn control_needs_same_site_json_and_a_short_body() {
        let ok = headers(&[
            ("host", "127.0.0.1:8765"),
            ("content-type", "application/json"),
        ]);
        assert!(control_refusal(&ok).is_none());
        let custom = headers(&[(CONTROL_HEADER, "1"), ("content-length", "0")]);
        assert!(control_refusal(&custom).is_none());
        let same_origin = headers(&[
            ("host", "127.0.0.1:8765"),
            ("origin", "http://127.0.0.1:8765"),
            ("sec-fetch-site", "same-origin"),
            ("content-type", "application/json; charset=utf-8"),
        ]);
        assert!(control_refusal(&same_origin).is_none());
        let code = |h: &HeaderMap| control_refusal(h).map(|(c, _, _)| c);
        assert_eq!(
            code(&headers(&[("content-type", "text/plain")])),
            Some(StatusCode::UNSUPPORTED_MEDIA_TYPE)
        );
        assert_eq!(
            code(&headers(&[
                ("content-type", "application/json"),
                ("sec-fetch-site", "cross-site")
            ])),
            Some(StatusCode::FORBIDDEN)
        );
        assert_eq!(
            code(&headers(&[
                ("host", "127.0.0.1:8765"),
                ("content-type", "application/json"),
                ("origin", "http://evil.example")
            ])),
            Some(StatusCode::FORBIDDEN)
        );
        assert_eq!(
            code(&headers(&[
                (CONTROL_HEADER, "1"),
                ("transfer-encoding", "chunked")
            ])),
            Some(StatusCode::LENGTH_REQUIRED)
        );
        assert_eq!(
            code(&headers(&[
                (CONTROL_HEADER, "1"),
                ("content-length", "4097")
            ])),
            Some(StatusCode::PAYLOAD_TOO_LARGE)
        );
    }

    #[test]
    fn absolute_paths_are_reduced_to_file_names() {
        assert_eq!(
            redact_paths("writing /srv/dreamd/output/frames/00000012.png: No space left"),
            "writing …/00000012.png: No space left"
        );
        assert_eq!(
            redact_paths("cannot read picture \"/home/me/pics/a.png\" (x)"),
            "cannot read picture \"…/a.png\" (x)"
        );
        assert_eq!(
            redact_paths("decode: 3/4 frames failed"),
            "decode: 3/4 frames failed"
        );
    }
}
