//! Logs: a human console, a daily-rotated `dreamd.log`, and `dreamd.jsonl` for machines,
//! rotated by size (`dreamd.jsonl.1` … `.N`), so neither grows without bound.
//!
//! Structured events (one per pair, one per keyframe, display late/held/skipped, buffer level)
//! are ordinary tracing events with target [`EVENT`] and an `event` field naming their kind;
//! the JSON-lines layer keeps only those and flattens their fields into one object per line,
//! which is what `dreamd analyze` reads. Writers are non-blocking: logging never stalls a stage.

use std::path::Path;
use std::sync::OnceLock;

use file_rotate::compression::Compression;
use file_rotate::suffix::AppendCount;
use file_rotate::{ContentLimit, FileRotate};
use tracing::Level;
use tracing_appender::non_blocking::WorkerGuard;
use tracing_appender::rolling::{RollingFileAppender, Rotation};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Layer};

use crate::config::LoggingConfig;

/// Target of the structured events that go to `dreamd.jsonl`.
pub const EVENT: &str = "dreamd::event";

/// Keeps the background log writers alive; dropping it flushes them.
pub struct LogGuards {
    _guards: Vec<WorkerGuard>,
}

/// Why logging could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot open log folder {dir}: {message}")]
pub struct LogInitError {
    pub dir: String,
    pub message: String,
}

fn filter(level: &str) -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level))
}

/// Replaces one layer's filter in the installed subscriber.
type SetFilter = Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>;
/// The console's and `dreamd.log`'s filter setters.
static LEVEL_HANDLES: OnceLock<[SetFilter; 2]> = OnceLock::new();

/// Changes the log filter of the console and `dreamd.log` (a config reload). `RUST_LOG`, when
/// set, keeps precedence. Errors name the bad directive.
pub fn set_level(level: &str) -> Result<(), String> {
    if std::env::var_os("RUST_LOG").is_some() {
        return Err("RUST_LOG is set and takes precedence over logging.level".to_string());
    }
    EnvFilter::builder()
        .parse(level)
        .map_err(|e| format!("logging.level {level:?}: {e}"))?;
    let handles = LEVEL_HANDLES
        .get()
        .ok_or("logging is not initialised in this process")?;
    for set in handles {
        set(EnvFilter::new(level))?;
    }
    Ok(())
}

/// Installs the global subscriber: console (stderr), `log_dir/dreamd.<date>.log` and
/// `log_dir/dreamd.jsonl`. A second call in one process (tests, benches) is a no-op.
pub fn init(config: &LoggingConfig, log_dir: &Path) -> Result<LogGuards, LogInitError> {
    let error = |message: String| LogInitError {
        dir: log_dir.display().to_string(),
        message,
    };
    std::fs::create_dir_all(log_dir).map_err(|e| error(e.to_string()))?;
    let text_file = RollingFileAppender::builder()
        .rotation(Rotation::DAILY)
        .filename_prefix("dreamd")
        .filename_suffix("log")
        .max_log_files(config.keep_days)
        .build(log_dir)
        .map_err(|e| error(e.to_string()))?;
    let json_file = FileRotate::new(
        log_dir.join("dreamd.jsonl"),
        AppendCount::new(config.jsonl_keep),
        ContentLimit::BytesSurpassed(config.jsonl_max_mb.max(1) * 1024 * 1024),
        Compression::None,
        None,
    );
    let (text_writer, text_guard) = tracing_appender::non_blocking(text_file);
    // The console too goes through a lossy queue: when nobody reads stderr (an unread pipe), lines
    // are dropped instead of blocking the thread that logs (the original's stall, §9.2 item 4).
    let (console_writer, console_guard) = tracing_appender::non_blocking(std::io::stderr());
    let (json_writer, json_guard) = tracing_appender::non_blocking(json_file);

    let (console_filter, console_handle) = reload::Layer::new(filter(&config.level));
    let (text_filter, text_handle) = reload::Layer::new(filter(&config.level));
    let console = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(console_writer)
        .with_filter(console_filter);
    let text = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .with_writer(text_writer)
        .with_filter(text_filter);
    let json = tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_writer(json_writer)
        .with_filter(Targets::new().with_target(EVENT, Level::TRACE));
    // Only the first subscriber of a process wins; later calls keep logging where it was.
    if tracing_subscriber::registry()
        .with(console)
        .with(text)
        .with(json)
        .try_init()
        .is_ok()
    {
        let _ = LEVEL_HANDLES.set([
            Box::new(move |f| console_handle.reload(f).map_err(|e| e.to_string())),
            Box::new(move |f| text_handle.reload(f).map_err(|e| e.to_string())),
        ]);
    }
    Ok(LogGuards {
        _guards: vec![console_guard, text_guard, json_guard],
    })
}
