//! `POST /control/{pause,resume,skip,next-theme}`: operator control, answered in JSON.
//!
//! Each route accepts POST only (other methods get 405 with `Allow: POST`). Every control
//! request must be same-site, say `Content-Type: application/json` (or carry an
//! `X-Dreamd-Control` header) and have a short body ([`super::guard`]); when a token is in force
//! it must carry it too ([`super::auth`]).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::json;

use super::{auth, guard, App};
use crate::status::{self, Lifecycle};

/// The control routes, behind the token check.
pub fn routes(state: App) -> Router<App> {
    Router::new()
        .route("/control/pause", post(pause))
        .route("/control/resume", post(resume))
        .route("/control/skip", post(skip))
        .route("/control/next-theme", post(next_theme))
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            auth::require_token,
        ))
        // Outermost, so it runs first: framing, cross-site and content-type checks.
        .route_layer(axum::middleware::from_fn(guard::control_guard))
}

fn done(app: &App, action: &str, changed: bool) -> Response {
    let state = status::state(&app.shared, Lifecycle::Running);
    tracing::info!(action, changed, "control: {action}");
    Json(json!({ "ok": true, "action": action, "changed": changed, "state": state }))
        .into_response()
}

async fn pause(State(app): State<App>) -> Response {
    let changed = app.shared.control.pause();
    done(&app, "pause", changed)
}

async fn resume(State(app): State<App>) -> Response {
    let changed = app.shared.control.resume();
    done(&app, "resume", changed)
}

async fn skip(State(app): State<App>) -> Response {
    app.shared.control.request_skip();
    done(&app, "skip", true)
}

async fn next_theme(State(app): State<App>) -> Response {
    match app.shared.control.request_next_theme() {
        Ok(()) => done(&app, "next-theme", true),
        Err(e) => (
            StatusCode::CONFLICT,
            Json(json!({ "ok": false, "action": "next-theme", "error": e.to_string() })),
        )
            .into_response(),
    }
}
