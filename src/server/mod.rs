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
//! | `POST /control/{pause,resume,skip,next-theme}` | [`control`], guarded by [`guard`] and [`auth`] |
//!
//! Every request passes [`guard::host_guard`] (DNS rebinding). Connections are served by this
//! module's own accept loop over hyper rather than `axum::serve`, because it needs what that
//! does not offer: a cap on open connections that never eats into the descriptors the daemon
//! keeps for its own files ([`crate::limits`]), a deadline for a request's headers, and an idle
//! timeout, so idle sockets cannot exhaust the process's descriptors.
//!
//! [`Telemetry`]: crate::stats::Telemetry

pub mod auth;
pub mod control;
pub mod events;
pub mod frames;
pub mod guard;
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

/// Largest request body accepted (control requests carry none, or `{}`).
pub const BODY_LIMIT: usize = 4 * 1024;
/// How often a connection's idle time is looked at.
const IDLE_CHECK: Duration = Duration::from_millis(500);
/// Pause after an accept error (out of descriptors, say) before accepting again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Answer to a connection over the cap, written without waiting, then the socket is closed.
const TOO_MANY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n\
Content-Type: text/plain\r\nRetry-After: 5\r\nContent-Length: 21\r\n\r\ntoo many connections\n";
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
    /// Accepted `Host` values.
    pub hosts: guard::HostPolicy,
    /// Connections open at once at most (see [`crate::limits::http_connection_cap`]).
    pub connection_cap: usize,
    /// Connections closed at once because `connection_cap` were open.
    pub connections_refused: AtomicU64,
    /// Connections closed for sending no headers in time or for idling.
    pub connections_timed_out: AtomicU64,
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
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            guard::host_guard,
        ))
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
    let soft = crate::limits::nofile().map_or(1024, |l| l.soft);
    let connection_cap = crate::limits::http_connection_cap(config.max_connections, soft);
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
        hosts: guard::HostPolicy::new(&config.allowed_hosts),
        connection_cap,
        connections_refused: AtomicU64::new(0),
        connections_timed_out: AtomicU64::new(0),
    });
    let app = router(Arc::clone(&state), config.request_timeout());
    let addr = bound.addr;
    tracing::info!(
        url = %format!("http://{addr}"),
        max_connections = connection_cap,
        open_file_limit = soft,
        "http server listening on http://{addr}"
    );
    let timeouts = (config.header_timeout(), config.idle_timeout());
    tokio::spawn(serve(bound.listener, app, state, timeouts, shutdown))
}

/// The accept loop: one task per connection, at most `state.connection_cap` at once (a
/// connection over the cap is answered 503 and closed at once); accept errors (out of
/// descriptors) back off instead of spinning. At `shutdown` it stops accepting, asks every
/// connection to finish, and returns once they have.
async fn serve(
    listener: TcpListener,
    app: Router,
    state: App,
    (header_timeout, idle_timeout): (Duration, Duration),
    shutdown: CancellationToken,
) {
    use std::sync::atomic::Ordering;
    let cap = state.connection_cap;
    let slots = Arc::new(Semaphore::new(cap));
    let mut accept_errors = 0u64;
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_errors += 1;
                    if accept_errors.is_power_of_two() {
                        tracing::warn!(count = accept_errors, "http: cannot accept a connection: {e}");
                    }
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            let refused = state.connections_refused.fetch_add(1, Ordering::Relaxed) + 1;
            if refused.is_power_of_two() {
                tracing::warn!(
                    refused,
                    "http: {cap} connections open (server.max_connections and the open-file \
                     limit); refusing more"
                );
            }
            let _ = stream.try_write(TOO_MANY);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (app, state, stop) = (app.clone(), Arc::clone(&state), shutdown.clone());
        tokio::spawn(async move {
            serve_connection(
                stream,
                peer,
                app,
                &state,
                header_timeout,
                idle_timeout,
                stop,
            )
            .await;
            drop(slot);
        });
    }
    // Every slot back means every connection has ended.
    let _ = slots.acquire_many(cap as u32).await;
}

/// Serves one connection until it ends, idles past `idle_timeout`, or shutdown has let its
/// request in flight finish.
async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    app: Router,
    state: &AppState,
    header_timeout: Duration,
    idle_timeout: Duration,
    shutdown: CancellationToken,
) {
    use std::sync::atomic::Ordering;
    let activity = Arc::new(activity::Activity::new());
    let io = hyper_util::rt::TokioIo::new(activity::Tracked::new(stream, Arc::clone(&activity)));
    let service = hyper::service::service_fn(
        move |mut request: axum::extract::Request<hyper::body::Incoming>| {
            request
                .extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            let mut app = app.clone();
            async move { tower_service::Service::call(&mut app, request).await }
        },
    );
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(io, service);
    tokio::pin!(connection);
    let mut stopping = false;
    loop {
        tokio::select! {
            _ = connection.as_mut() => return,
            _ = shutdown.cancelled(), if !stopping => {
                connection.as_mut().graceful_shutdown();
                stopping = true;
            }
            _ = tokio::time::sleep(IDLE_CHECK) => {
                if activity.idle() >= idle_timeout {
                    state.connections_timed_out.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
    }
}

/// Byte-level activity of a connection, for the idle timeout.
mod activity {
    use std::io;
    use std::pin::Pin;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::task::{Context, Poll};
    use std::time::{Duration, Instant};

    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

    /// When a byte last moved, as milliseconds since the connection opened.
    pub struct Activity {
        opened: Instant,
        last_ms: AtomicU64,
    }

    impl Activity {
        pub fn new() -> Activity {
            Activity {
                opened: Instant::now(),
                last_ms: AtomicU64::new(0),
            }
        }

        fn touch(&self) {
            let now = self.opened.elapsed().as_millis() as u64;
            self.last_ms.store(now, Ordering::Relaxed);
        }

        /// How long since a byte was read or written.
        pub fn idle(&self) -> Duration {
            let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            self.opened.elapsed().saturating_sub(last)
        }
    }

    /// A stream that records its activity.
    pub struct Tracked<S> {
        inner: S,
        activity: std::sync::Arc<Activity>,
    }

    impl<S> Tracked<S> {
        pub fn new(inner: S, activity: std::sync::Arc<Activity>) -> Self {
            Tracked { inner, activity }
        }
    }

    impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let before = buf.filled().len();
            let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
            if buf.filled().len() > before {
                self.activity.touch();
            }
            polled
        }
    }

    impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
            if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
                self.activity.touch();
            }
            polled
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
            if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
                self.activity.touch();
            }
            polled
        }

        fn is_write_vectored(&self) -> bool {
            self.inner.is_write_vectored()
        }
    }
}
