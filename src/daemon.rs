//! One running daemon: builds every component from the config, runs them, and shuts them down
//! in order (HTTP server, generation, display, final status) when asked.
//!
//! What several components read (telemetry, the frame buffer and archive, the engine, operator
//! control, the live settings) is gathered once in [`Shared`], which the status writer and the
//! HTTP server are handed.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::atomic_file::remove_stale_temps;
use crate::buffer::archive::FrameArchive;
use crate::buffer::FrameBuffer;
use crate::comfyui::ComfyUiHealth;
use crate::config::live::LiveSettings;
use crate::config::reload::Reloader;
use crate::config::{Config, FaultsConfig, FrameFormat};
use crate::control::Control;
use crate::direction::director::{DirectionSettings, Director};
use crate::display::{Display, DisplaySettings};
use crate::engine::{Engine, LockStats};
use crate::faults::{Faults, FaultyDecoder, FaultySource};
use crate::keyframes;
use crate::pipeline::{Pipeline, PipelineSettings};
use crate::server::BoundServer;
use crate::service;
use crate::stats::Telemetry;
use crate::status::{Lifecycle, StatusWriter};

/// How long generation gets to wind down at shutdown before it is abandoned.
const GENERATION_GRACE: Duration = Duration::from_millis(1000);
/// How long requests in flight get at shutdown before the server is abandoned.
const SERVER_GRACE: Duration = Duration::from_millis(1000);

/// What a finished run leaves behind, for `dreamd bench` and tests.
pub struct RunReport {
    pub telemetry: Arc<Telemetry>,
    pub lock: LockStats,
    /// The decoder that ran (`auto` resolved).
    pub decoder: String,
}

/// What a running daemon offers an observer in the same process (`dreamd bench http`).
pub struct Started {
    pub telemetry: Arc<Telemetry>,
    /// Base URL of the HTTP server, when it runs.
    pub server_url: Option<String>,
}

/// The context the running components share: the status writer and the HTTP server read the
/// daemon through it, and nothing in it can block the display.
pub struct Shared {
    pub telemetry: Arc<Telemetry>,
    pub buffer: Arc<FrameBuffer>,
    /// Frames on disk (`output/frames/`).
    pub archive: Arc<FrameArchive>,
    /// Their encoding.
    pub format: FrameFormat,
    pub engine: Arc<Engine>,
    pub control: Arc<Control>,
    /// Themes, collapse, cache and injections.
    pub director: Arc<Director>,
    /// The ComfyUI source's health (`disabled` for other sources); a reload that replaces the
    /// source replaces the handle.
    pub comfyui: Arc<parking_lot::Mutex<ComfyUiHealth>>,
    /// The keyframe source's name.
    pub source_name: String,
    /// Target fps, buffer target and the degraded window (they may change on reload).
    pub live: Arc<LiveSettings>,
    /// Base URL of the HTTP server, when it runs.
    pub server_url: Option<String>,
}

/// Components that exist before the first frame (and may fail to start).
struct Prepared {
    engine: Arc<Engine>,
    source: Box<dyn keyframes::KeyframeSource>,
    director: Arc<Director>,
    comfyui: ComfyUiHealth,
    archive: Arc<FrameArchive>,
    first_seq: u64,
    faults: Arc<Faults>,
}

fn prepare(config: &Config) -> anyhow::Result<Prepared> {
    let output = &config.paths.output_dir;
    std::fs::create_dir_all(output)
        .with_context(|| format!("cannot create output folder {}", output.display()))?;
    let stale = remove_stale_temps(output)
        .with_context(|| format!("cannot clean output folder {}", output.display()))?;
    if stale > 0 {
        tracing::info!(
            "removed {stale} stale temporary files from {}",
            output.display()
        );
    }
    let faults = Faults::new(config.faults.clone());
    if config.faults != FaultsConfig::default() {
        tracing::warn!(
            "fault injection is configured ([faults]): this daemon will fail on purpose"
        );
    }
    let (archive, first_seq) = FrameArchive::open(&output.join("frames"), config.keep_frames())?;
    let archive = archive.with_faults(Arc::clone(&faults));
    archive.set_keep_bytes(config.keep_bytes());
    let engine = Engine::from_config(config)?.fit_divisor(config);
    let engine = Arc::new(engine.wrap_decoder(|d| FaultyDecoder::wrap(d, Arc::clone(&faults))));
    let keyframes::BuiltSource { source, comfyui } = keyframes::from_config(config, &engine)?;
    let director = Director::new(
        Arc::clone(&engine),
        DirectionSettings::from_config(config),
        config.timeouts.decode(),
    )?;
    let source = director.wrap(FaultySource::wrap(source, Arc::clone(&faults)));
    Ok(Prepared {
        engine,
        source,
        director,
        comfyui,
        archive: Arc::new(archive),
        first_seq,
        faults,
    })
}

/// Runs the daemon until `shutdown` is cancelled or `duration` passes.
pub async fn run(
    config: Config,
    config_path: Option<PathBuf>,
    shutdown: CancellationToken,
    duration: Option<Duration>,
) -> anyhow::Result<RunReport> {
    run_observed(config, config_path, shutdown, duration, None).await
}

/// [`run`], telling `started` (when given) what is running once everything has started.
pub async fn run_observed(
    config: Config,
    config_path: Option<PathBuf>,
    shutdown: CancellationToken,
    duration: Option<Duration>,
    started: Option<tokio::sync::oneshot::Sender<Started>>,
) -> anyhow::Result<RunReport> {
    // One daemon per output folder, before anything is written there (or a port is taken).
    let output = &config.paths.output_dir;
    std::fs::create_dir_all(output)
        .with_context(|| format!("cannot create output folder {}", output.display()))?;
    let _output_lock = crate::output_lock::lock(output)?;
    // Bind first: a bad address, a port in use or a missing token stops start-up at once.
    let bound = match config.server.enabled {
        true => Some(BoundServer::bind(&config.server).await?),
        false => None,
    };
    let Prepared {
        engine,
        source,
        director,
        comfyui,
        archive,
        first_seq,
        faults,
    } = {
        // Model loading and the decode-size timing block for seconds: off the runtime.
        let config = config.clone();
        tokio::task::spawn_blocking(move || prepare(&config))
            .await
            .context("start-up was cut short")??
    };
    let output = config.paths.output_dir.clone();
    tracing::info!(
        decoder = engine.decoder_name(),
        device = %engine.device(),
        source = source.name(),
        output = %output.display(),
        fps = config.display.target_fps,
        frames_per_pair = config.generation.frames_per_pair,
        size = %format!("{}x{}", config.generation.width, config.generation.height),
        first_seq,
        "dreamd {} starting",
        env!("CARGO_PKG_VERSION")
    );

    let telemetry = Arc::new(Telemetry::default());
    let live = Arc::new(LiveSettings::new(&config));
    let buffer = Arc::new(FrameBuffer::new(first_seq));
    let control = Arc::new(Control::new(source.name(), source.has_themes()));
    let status_wake = Arc::new(Notify::new());
    let server_url = bound.as_ref().map(BoundServer::url);
    let shared = Arc::new(Shared {
        telemetry: Arc::clone(&telemetry),
        buffer: Arc::clone(&buffer),
        archive: Arc::clone(&archive),
        format: config.output.format,
        engine: Arc::clone(&engine),
        control: Arc::clone(&control),
        director: Arc::clone(&director),
        comfyui: Arc::new(parking_lot::Mutex::new(comfyui)),
        source_name: source.name().to_string(),
        live: Arc::clone(&live),
        server_url: server_url.clone(),
    });
    let writer = Arc::new(StatusWriter::new(
        output.clone(),
        Arc::clone(&shared),
        Arc::clone(&status_wake),
    ));
    writer.write(Lifecycle::Running).await;

    let display = Display::spawn(
        DisplaySettings {
            live: Arc::clone(&live),
            output_dir: output.clone(),
            faults: Arc::clone(&faults),
        },
        Arc::clone(&buffer),
        Arc::clone(&telemetry),
        status_wake,
        Arc::clone(&control),
    )
    .context("cannot start the display threads")?;

    let server_stop = CancellationToken::new();
    let server = bound.map(|bound| {
        crate::server::spawn(
            bound,
            Arc::clone(&shared),
            display.current_frame(),
            &config.server,
            server_stop.clone(),
        )
    });

    let generation = shutdown.child_token();
    let pipeline = Pipeline {
        engine: Arc::clone(&engine),
        buffer,
        archive: Arc::clone(&archive),
        telemetry: Arc::clone(&telemetry),
        control: Arc::clone(&control),
        settings: PipelineSettings::from_config(&config, first_seq, Arc::clone(&live)),
        decoded_keyframes: Some(director.decoded_keyframes()),
    };
    let (replace_source, replacements) = tokio::sync::mpsc::channel(1);
    let pipeline = tokio::spawn(pipeline.run(source, replacements, generation.clone()));
    let status_stop = CancellationToken::new();
    let status = {
        let (writer, stop) = (Arc::clone(&writer), status_stop.clone());
        tokio::spawn(async move { writer.run(stop).await })
    };
    service::ready(&format!(
        "decoder {} on {}, {} fps",
        engine.decoder_name(),
        engine.device(),
        config.display.target_fps
    ));
    if let Some(path) = config_path {
        let reloader = Reloader {
            path,
            running: config.clone(),
            live: Arc::clone(&live),
            archive,
            faults: Arc::clone(&faults),
            engine: Arc::clone(&engine),
            director: Arc::clone(&director),
            comfyui: Arc::clone(&shared.comfyui),
            sources: replace_source,
        };
        tokio::spawn(reloader.watch(status_stop.clone()));
    }
    if let Some(interval) = service::watchdog_interval() {
        tokio::spawn(service::watchdog(
            interval,
            Arc::clone(&telemetry),
            Arc::clone(&control),
            status_stop.clone(),
        ));
    }
    if let Some(started) = started {
        let _ = started.send(Started {
            telemetry: Arc::clone(&telemetry),
            server_url,
        });
    }

    match duration {
        Some(duration) => {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep(duration) => {}
            }
        }
        None => shutdown.cancelled().await,
    }

    tracing::info!("stopping");
    service::stopping();
    server_stop.cancel();
    if let Some(server) = server {
        if tokio::time::timeout(SERVER_GRACE, server).await.is_err() {
            tracing::warn!("http server did not stop within {SERVER_GRACE:?}; abandoning it");
        }
    }
    status_stop.cancel();
    let _ = status.await;
    writer.write(Lifecycle::Stopping).await;
    generation.cancel();
    if tokio::time::timeout(GENERATION_GRACE, pipeline)
        .await
        .is_err()
    {
        tracing::warn!("generation did not stop within {GENERATION_GRACE:?}; abandoning it");
    }
    if let Err(e) = tokio::task::spawn_blocking(move || display.stop()).await {
        tracing::error!("display shutdown failed: {e}");
    }
    writer.write(Lifecycle::Stopped).await;
    // A save abandoned at the grace deadline may have left its temporary file behind.
    for dir in [output.clone(), output.join("frames")] {
        if let Err(e) = remove_stale_temps(&dir) {
            tracing::warn!("cannot clean {}: {e}", dir.display());
        }
    }
    tracing::info!(
        frames_displayed = telemetry
            .display
            .frames_displayed
            .load(std::sync::atomic::Ordering::Relaxed),
        "stopped"
    );
    Ok(RunReport {
        lock: engine.lock().stats(),
        decoder: engine.decoder_name().to_string(),
        telemetry,
    })
}

/// Builds what start-up builds from `config` (decoder, encoder, keyframe source) without
/// writing anything, and says what it found: `dreamd run --check`.
pub fn check(config: &Config) -> anyhow::Result<String> {
    let engine = Arc::new(Engine::from_config(config)?.fit_divisor(config));
    let source = keyframes::from_config(config, &engine)?.source;
    let adapter = engine
        .adapter()
        .map(|a| format!(" ({a})"))
        .unwrap_or_default();
    let fitted = engine
        .fitted_to()
        .map(|full| {
            format!(
                ", chosen at start: a full-size frame decodes in ≈{:.0} ms of the {:.0} ms it is shown",
                full.as_secs_f64() * 1000.0,
                1000.0 / config.display.target_fps
            )
        })
        .unwrap_or_default();
    Ok(format!(
        "ok: decoder {} on {}{adapter} (latents {}, decoded at 1/{}{fitted}), keyframes from {}, \
         output {}",
        engine.decoder_name(),
        engine.device(),
        engine.latent_shape(),
        engine.divisor(),
        source.name(),
        config.paths.output_dir.display()
    ))
}
