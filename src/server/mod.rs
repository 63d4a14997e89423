//! The HTTP server: kiosk page, frames, live events, status, metrics, health and control.
//!
//! It runs on the daemon's tokio runtime and only ever reads what the other components already
//! publish, through the daemon's [`Shared`] context: the current frame through a `watch`
//! channel fed by the display's publisher thread, saved frames from `output/frames/`, and
//! figures from [`Telemetry`] and the GPU lock. Nothing
//! here can block or slow the display: the watch never waits for readers, and every live-event
//! client only ever sees the newest frame number (a slow client skips numbers, it never queues
//! them).
//!
//! | route | module |
//! | --- | --- |
//! | `/` | [`kiosk`] |
//! | `/frame/current`, `/frames/{seq}` | [`frames`] |
//! | `/events` | [`events`] |
//! | `/status`, `/healthz` | [`health`] |
//! | `/metrics` | [`metrics`] |
//! | `POST /control/{pause,resume,skip,next-theme}` | [`control`], guarded by [`auth`] |
//!
//! [`Telemetry`]: crate::stats::Telemetry

pub mod auth;
pub mod control;
pub mod events;
pub mod frames;
pub mod health;
pub mod kiosk;
pub mod metrics;

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

use crate::config::ServerConfig;
use crate::daemon::Shared;
use crate::display::CurrentFrame;

/// Largest request body accepted (control requests carry none).
const BODY_LIMIT: usize = 4 * 1024;
/// Interval of the keep-alive comments on the event stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Why the server cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The address could not be bound (in use, not local, no permission).
    #[error("cannot listen on {addr} (server.bind): {error}")]
    Bind {
        addr: SocketAddr,
        error: std::io::Error,
    },
    /// A non-loopback address without a control token.
    #[error(
        "server.bind {addr} is not a loopback address, so the control endpoints need a token: \
         set server.token in the config or DREAMD_TOKEN in the environment"
    )]
    TokenRequired { addr: SocketAddr },
    /// A bad `server` setting.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

/// A bound listener, ready to serve; binding first lets start-up fail before anything runs.
pub struct BoundServer {
    listener: TcpListener,
    addr: SocketAddr,
    token: Option<String>,
}

impl BoundServer {
    /// Checks the bind address against the token rule and binds it. The token is
    /// `DREAMD_TOKEN` when set, else `server.token`.
    pub async fn bind(config: &ServerConfig) -> Result<BoundServer, ServerError> {
        let addr = config.bind_addr()?;
        let token = auth::resolve_token(
            config.token.as_deref(),
            std::env::var("DREAMD_TOKEN").ok().as_deref(),
        );
        if !addr.ip().is_loopback() && token.is_none() {
            return Err(ServerError::TokenRequired { addr });
        }
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|error| ServerError::Bind { addr, error })?;
        let addr = listener
            .local_addr()
            .map_err(|error| ServerError::Bind { addr, error })?;
        Ok(BoundServer {
            listener,
            addr,
            token,
        })
    }

    /// The address actually bound (port 0 resolved).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://IP:port` of the bound address.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// State shared by every handler.
pub struct AppState {
    /// The daemon's shared context: control, engine, live settings, archive, telemetry.
    pub shared: Arc<Shared>,
    /// The display's most recently published frame.
    pub current: CurrentFrame,
    pub token: Option<String>,
    pub health: watch::Receiver<health::Health>,
    pub sse_slots: Arc<Semaphore>,
    pub max_sse_clients: usize,
    pub sse_rejected: AtomicU64,
    pub unhealthy_after: Duration,
    pub shutdown: CancellationToken,
}

/// Shared handler state.
pub type App = Arc<AppState>;

/// The server's routes and layers around `state`.
pub fn router(state: App, request_timeout: Duration) -> Router {
    let timed = Router::new()
        .route("/", get(kiosk::page))
        .route("/frame/current", get(frames::current))
        .route("/frames/{seq}", get(frames::by_seq))
        .route("/status", get(health::status))
        .route("/healthz", get(health::healthz))
        .route("/metrics", get(metrics::metrics))
        .merge(control::routes(Arc::clone(&state)))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            request_timeout,
        ));
    // The event stream lives as long as its client, so it is outside the request timeout.
    Router::new()
        .route("/events", get(events::events))
        .merge(timed)
        .layer(RequestBodyLimitLayer::new(BODY_LIMIT))
        .with_state(state)
}

/// Serves until `shutdown`, then stops accepting, ends every event stream and lets requests in
/// flight finish.
pub fn spawn(
    bound: BoundServer,
    shared: Arc<Shared>,
    current: CurrentFrame,
    config: &ServerConfig,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let health = health::spawn_tracker(
        Arc::clone(&shared),
        config.unhealthy_after(),
        shutdown.clone(),
    );
    let state = Arc::new(AppState {
        shared,
        current,
        token: bound.token,
        health,
        sse_slots: Arc::new(Semaphore::new(config.max_sse_clients)),
        max_sse_clients: config.max_sse_clients,
        sse_rejected: AtomicU64::new(0),
        unhealthy_after: config.unhealthy_after(),
        shutdown: shutdown.clone(),
    });
    let app = router(state, config.request_timeout());
    let addr = bound.addr;
    tracing::info!(url = %format!("http://{addr}"), "http server listening on http://{addr}");
    tokio::spawn(async move {
        let served = axum::serve(bound.listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::error!("http server on {addr} failed: {e}");
        }
    })
}
