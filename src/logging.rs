//! Logs: a human console, a daily-rotated `dreamd.log`, and `dreamd.jsonl` for machines.
//!
//! Structured events (one per pair, one per keyframe, display late/held/skipped, buffer level)
//! are ordinary tracing events with target [`EVENT`] and an `event` field naming their kind;
//! the JSON-lines layer keeps only those and flattens their fields into one object per line,
//! which is what `dreamd analyze` reads. Writers are non-blocking: logging never stalls a stage.

use std::path::Path;

use tracing::Level;
use tracing_appender::non_blocking::WorkerGuard;
use tracing_appender::rolling::{RollingFileAppender, Rotation};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

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
    let json_file = RollingFileAppender::builder()
        .rotation(Rotation::NEVER)
        .filename_prefix("dreamd")
        .filename_suffix("jsonl")
        .build(log_dir)
        .map_err(|e| error(e.to_string()))?;
    let (text_writer, text_guard) = tracing_appender::non_blocking(text_file);
    let (json_writer, json_guard) = tracing_appender::non_blocking(json_file);

    let console = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(filter(&config.level));
    let text = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .with_writer(text_writer)
        .with_filter(filter(&config.level));
    let json = tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_writer(json_writer)
        .with_filter(Targets::new().with_target(EVENT, Level::TRACE));
    // Only the first subscriber of a process wins; later calls keep logging where it was.
    let _ = tracing_subscriber::registry()
        .with(console)
        .with(text)
        .with(json)
        .try_init();
    Ok(LogGuards {
        _guards: vec![text_guard, json_guard],
    })
}
