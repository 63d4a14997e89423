//! The control token: where it comes from and how a request proves it has it.
//!
//! Control requests carry `Authorization: Bearer <token>`. The comparison is constant-time
//! ([`subtle`]), so response timing does not reveal how much of a guess was right (only whether
//! its length was).

use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::App;

/// The token in force: `DREAMD_TOKEN` when set and not blank, else the config's.
pub fn resolve_token(config: Option<&str>, env: Option<&str>) -> Option<String> {
    env.filter(|t| !t.trim().is_empty())
        .or(config.filter(|t| !t.trim().is_empty()))
        .map(|t| t.trim().to_string())
}

/// Whether an `Authorization` header value presents `token` as a bearer token.
pub fn bearer_matches(header: Option<&str>, token: &str) -> bool {
    let Some(presented) = header.and_then(|h| {
        let (scheme, value) = h.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then_some(value.trim())
    }) else {
        return false;
    };
    presented.as_bytes().ct_eq(token.as_bytes()).into()
}

/// Middleware: with a token configured, a request without it is answered 401.
pub async fn require_token(State(app): State<App>, request: Request, next: Next) -> Response {
    if let Some(token) = &app.token {
        let header = request
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if !bearer_matches(header, token) {
            let reason = if header.is_none() {
                "control needs Authorization: Bearer <token>"
            } else {
                "wrong token"
            };
            return (
                StatusCode::UNAUTHORIZED,
                [(WWW_AUTHENTICATE, "Bearer")],
                axum::Json(serde_json::json!({ "ok": false, "error": reason })),
            )
                .into_response();
        }
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_wins_and_blank_tokens_do_not_count() {
        assert_eq!(resolve_token(Some("a"), Some("b")).as_deref(), Some("b"));
        assert_eq!(resolve_token(Some("a"), Some(" ")).as_deref(), Some("a"));
        assert_eq!(resolve_token(None, None), None);
        assert_eq!(resolve_token(Some(""), None), None);
    }

    #[test]
    fn only_the_exact_bearer_token_matches() {
        assert!(bearer_matches(Some("Bearer s3cret"), "s3cret"));
        assert!(bearer_matches(Some("bearer s3cret"), "s3cret"));
        assert!(!bearer_matches(Some("Bearer s3cre"), "s3cret"));
        assert!(!bearer_matches(Some("Bearer s3cret2"), "s3cret"));
        assert!(!bearer_matches(Some("Basic s3cret"), "s3cret"));
        assert!(!bearer_matches(Some("s3cret"), "s3cret"));
        assert!(!bearer_matches(None, "s3cret"));
    }
}
