//! `dreamd bench http`: display pacing with and without HTTP load, in one run of the real
//! daemon.
//!
//! The daemon runs in this process ([`InProcess`]) on the embedded default (start gate 0, server
//! on a free loopback port, output in a [`Scratch`] folder). After a warm-up, the display's interval error
//! is measured in alternating phases: with no clients (idle), then while a load generator on its
//! own runtime keeps many live-event clients connected (some of them stalled: they never read)
//! and polls `/frame/current`; several rounds of both, so that noise from other work on the
//! machine falls on both sides alike. All phases come from the same daemon's histogram, so the
//! difference is the cost of serving.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::{InProcess, Scratch};
use crate::config::Config;
use crate::daemon;
use crate::stats::{millis, Histogram, Telemetry};

/// Options of `dreamd bench http`.
#[derive(Debug, Clone)]
pub struct HttpLoadOptions {
    /// Live-event clients that read their stream.
    pub clients: usize,
    /// Live-event clients that connect and never read.
    pub stalled: usize,
    /// Tasks polling `/frame/current`.
    pub pollers: usize,
    /// Pause between one poller's requests.
    pub poll_every: Duration,
    /// Total length of the idle phases, and of the loaded phases.
    pub seconds: f64,
    /// Idle/loaded rounds the time is split into.
    pub rounds: usize,
    pub warmup_seconds: f64,
}

/// Display figures over one phase.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseFigures {
    pub intervals: u64,
    pub interval_error_p50_ms: f64,
    pub interval_error_p99_ms: f64,
    pub late: u64,
    pub held: u64,
    pub skipped: u64,
}

/// Results of `dreamd bench http`.
#[derive(Debug, Clone, Serialize)]
pub struct HttpLoadReport {
    pub target_fps: f64,
    pub seconds_per_phase: f64,
    pub rounds: usize,
    pub clients: usize,
    pub stalled_clients: usize,
    pub pollers: usize,
    pub idle: PhaseFigures,
    pub loaded: PhaseFigures,
    /// Loaded p99 minus idle p99.
    pub p99_difference_ms: f64,
    pub sse_connected: u64,
    pub sse_refused: u64,
    /// Frame events received by the reading clients, all together.
    pub sse_frame_events: u64,
    pub polls_ok: u64,
    pub polls_failed: u64,
    pub poll_p50_ms: f64,
    pub poll_p99_ms: f64,
}

impl HttpLoadReport {
    pub fn to_text(&self) -> String {
        let phase = |name: &str, p: &PhaseFigures| {
            format!(
                "{name:7} {:>6} intervals   error p50 {:>6.3} ms   p99 {:>6.3} ms   late {} held {} skipped {}\n",
                p.intervals, p.interval_error_p50_ms, p.interval_error_p99_ms, p.late, p.held, p.skipped
            )
        };
        format!(
            "display at {} fps, {} s idle and {} s loaded in {} alternating rounds; load: {} SSE clients ({} stalled) + {} pollers of /frame/current\n{}{}\
             p99 difference {:+.3} ms\n\
             SSE: {} connected, {} refused, {} frame events received\n\
             polls: {} ok, {} failed, latency p50 {:.3} ms p99 {:.3} ms\n",
            self.target_fps,
            self.seconds_per_phase,
            self.seconds_per_phase,
            self.rounds,
            self.clients + self.stalled_clients,
            self.stalled_clients,
            self.pollers,
            phase("idle", &self.idle),
            phase("loaded", &self.loaded),
            self.p99_difference_ms,
            self.sse_connected,
            self.sse_refused,
            self.sse_frame_events,
            self.polls_ok,
            self.polls_failed,
            self.poll_p50_ms,
            self.poll_p99_ms,
        )
    }
}

/// The display's counters at one moment.
struct Snapshot {
    errors: Histogram,
    late: u64,
    held: u64,
    skipped: u64,
}

impl Snapshot {
    fn take(telemetry: &Telemetry) -> Snapshot {
        let d = &telemetry.display;
        Snapshot {
            errors: d.timing().interval_error,
            late: d.late.load(Ordering::Relaxed),
            held: d.held.load(Ordering::Relaxed),
            skipped: d.skipped.load(Ordering::Relaxed),
        }
    }

    fn since(&self, earlier: &Snapshot) -> Snapshot {
        Snapshot {
            errors: self.errors.since(&earlier.errors),
            late: self.late - earlier.late,
            held: self.held - earlier.held,
            skipped: self.skipped - earlier.skipped,
        }
    }

    fn add(&mut self, other: &Snapshot) {
        self.errors.merge(&other.errors);
        self.late += other.late;
        self.held += other.held;
        self.skipped += other.skipped;
    }

    fn empty() -> Snapshot {
        Snapshot {
            errors: Histogram::default(),
            late: 0,
            held: 0,
            skipped: 0,
        }
    }

    fn figures(&self) -> PhaseFigures {
        PhaseFigures {
            intervals: self.errors.count(),
            interval_error_p50_ms: millis(self.errors.quantile(0.5)),
            interval_error_p99_ms: millis(self.errors.quantile(0.99)),
            late: self.late,
            held: self.held,
            skipped: self.skipped,
        }
    }
}

/// Runs the measurement; see the module docs.
pub async fn run(mut config: Config, options: HttpLoadOptions) -> anyhow::Result<HttpLoadReport> {
    let scratch = Scratch::new("bench-http")?;
    scratch.redirect(&mut config);
    config.display.start_gate_seconds = 0.0;
    config.server.enabled = true;
    config.server.bind = "127.0.0.1:0".to_string();
    config.server.max_sse_clients = config
        .server
        .max_sse_clients
        .max(options.clients + options.stalled + 8);
    config.validate()?;
    let target_fps = config.display.target_fps;

    let daemon = InProcess::start(config).await?;
    let result = measure(&daemon.started, &options).await;
    let _ = daemon.stop().await;
    drop(scratch);
    let (idle, loaded, load) = result?;
    let latency = load.poll_latency.lock().clone();
    Ok(HttpLoadReport {
        target_fps,
        seconds_per_phase: options.seconds,
        rounds: options.rounds,
        clients: options.clients,
        stalled_clients: options.stalled,
        pollers: options.pollers,
        p99_difference_ms: crate::stats::round(
            loaded.interval_error_p99_ms - idle.interval_error_p99_ms,
            3,
        ),
        idle,
        loaded,
        sse_connected: load.connected.load(Ordering::Relaxed),
        sse_refused: load.refused.load(Ordering::Relaxed),
        sse_frame_events: load.frame_events.load(Ordering::Relaxed),
        polls_ok: load.polls_ok.load(Ordering::Relaxed),
        polls_failed: load.polls_failed.load(Ordering::Relaxed),
        poll_p50_ms: millis(latency.quantile(0.5)),
        poll_p99_ms: millis(latency.quantile(0.99)),
    })
}

async fn measure(
    started: &daemon::Started,
    options: &HttpLoadOptions,
) -> anyhow::Result<(PhaseFigures, PhaseFigures, Arc<LoadCounters>)> {
    let url = started
        .server_url
        .as_deref()
        .context("the daemon started without its HTTP server")?;
    let addr: SocketAddr = url
        .trim_start_matches("http://")
        .parse()
        .with_context(|| format!("bad server url {url}"))?;
    let rounds = options.rounds.max(1);
    let phase = Duration::from_secs_f64(options.seconds / rounds as f64);
    let telemetry = &started.telemetry;
    tokio::time::sleep(Duration::from_secs_f64(options.warmup_seconds)).await;
    let counters = Arc::new(LoadCounters::default());
    let (mut idle, mut loaded) = (Snapshot::empty(), Snapshot::empty());
    for _ in 0..rounds {
        let start = Snapshot::take(telemetry);
        tokio::time::sleep(phase).await;
        idle.add(&Snapshot::take(telemetry).since(&start));
        loaded.add(&loaded_phase(addr, options, &counters, telemetry, phase).await?);
    }
    Ok((idle.figures(), loaded.figures(), counters))
}

/// One loaded phase: clients connect, then `phase` is measured, then they leave.
async fn loaded_phase(
    addr: SocketAddr,
    options: &HttpLoadOptions,
    counters: &Arc<LoadCounters>,
    telemetry: &Telemetry,
    phase: Duration,
) -> anyhow::Result<Snapshot> {
    let before =
        counters.connected.load(Ordering::Relaxed) + counters.refused.load(Ordering::Relaxed);
    let stop = CancellationToken::new();
    let generator = {
        let (counters, stop, options) = (Arc::clone(counters), stop.clone(), options.clone());
        std::thread::Builder::new()
            .name("bench-load".into())
            .spawn(move || generate_load(addr, options, counters, stop))
            .context("cannot start the load generator")?
    };
    // Let every client connect before measuring.
    let wanted = before + (options.clients + options.stalled) as u64;
    let give_up = Instant::now() + Duration::from_secs(10);
    while counters.connected.load(Ordering::Relaxed) + counters.refused.load(Ordering::Relaxed)
        < wanted
        && Instant::now() < give_up
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let start = Snapshot::take(telemetry);
    tokio::time::sleep(phase).await;
    let end = Snapshot::take(telemetry);
    stop.cancel();
    let _ = tokio::task::spawn_blocking(move || generator.join()).await;
    Ok(end.since(&start))
}

/// What the load generator saw.
#[derive(Default)]
struct LoadCounters {
    connected: AtomicU64,
    refused: AtomicU64,
    frame_events: AtomicU64,
    polls_ok: AtomicU64,
    polls_failed: AtomicU64,
    poll_latency: Mutex<Histogram>,
}

/// Runs the clients on their own two-thread runtime until `stop`.
fn generate_load(
    addr: SocketAddr,
    options: HttpLoadOptions,
    counters: Arc<LoadCounters>,
    stop: CancellationToken,
) {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!("cannot start the load generator's runtime: {e}");
            return;
        }
    };
    runtime.block_on(async move {
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..options.clients + options.stalled {
            let reads = i < options.clients;
            let (counters, stop) = (Arc::clone(&counters), stop.clone());
            tasks.spawn(async move {
                let _ = sse_client(addr, reads, &counters, &stop).await;
            });
        }
        for _ in 0..options.pollers {
            let (counters, stop, every) = (Arc::clone(&counters), stop.clone(), options.poll_every);
            tasks.spawn(async move { poller(addr, every, &counters, &stop).await });
        }
        while tasks.join_next().await.is_some() {}
    });
}

async fn sse_client(
    addr: SocketAddr,
    reads: bool,
    counters: &LoadCounters,
    stop: &CancellationToken,
) -> std::io::Result<()> {
    let mut stream = TcpStream::connect(addr).await?;
    stream
        .write_all(b"GET /events HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n")
        .await?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).await?;
    if &head == b"HTTP/1.1 200" {
        counters.connected.fetch_add(1, Ordering::Relaxed);
    } else {
        counters.refused.fetch_add(1, Ordering::Relaxed);
        return Ok(());
    }
    if !reads {
        // A stalled client: connected, never reading.
        stop.cancelled().await;
        return Ok(());
    }
    let needle = b"event: frame";
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            n = stream.read(&mut buf) => n?,
        };
        if n == 0 {
            return Ok(());
        }
        let found = buf[..n]
            .windows(needle.len())
            .filter(|w| w == needle)
            .count();
        counters
            .frame_events
            .fetch_add(found as u64, Ordering::Relaxed);
    }
}

async fn poller(
    addr: SocketAddr,
    every: Duration,
    counters: &LoadCounters,
    stop: &CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let started = Instant::now();
        match poll_once(addr).await {
            Ok(true) => {
                counters.polls_ok.fetch_add(1, Ordering::Relaxed);
                counters.poll_latency.lock().record(started.elapsed());
            }
            _ => {
                counters.polls_failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// One `GET /frame/current`, read to the end; true on a 200.
async fn poll_once(addr: SocketAddr) -> std::io::Result<bool> {
    let mut stream = TcpStream::connect(addr).await?;
    stream
        .write_all(b"GET /frame/current HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .await?;
    let mut response = Vec::with_capacity(256 * 1024);
    stream.read_to_end(&mut response).await?;
    Ok(response.starts_with(b"HTTP/1.1 200"))
}
