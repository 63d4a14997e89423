//! Logs: a human console, a daily-rotated `dreamd.log`, and `dreamd.jsonl` for machines,
//! rotated by size (`dreamd.jsonl.1` … `.N`), so neither grows without bound.
//!
//! Structured events (one per pair, one per keyframe, display late/held/skipped, buffer level:
//! the typed records of [`crate::events`]) are tracing events with target [`events::TARGET`]
//! that carry their JSON record; the JSON-lines layer keeps only those and writes each record
//! as one line, which is what `dreamd analyze` reads, while the console and `dreamd.log` show
//! the message followed by the record's fields as `key=value`. Writers are non-blocking: logging never stalls a stage.

use std::fmt;
use std::io::Write;
use std::path::Path;
use std::sync::OnceLock;
use std::time::SystemTime;

use file_rotate::compression::Compression;
use file_rotate::suffix::AppendCount;
use file_rotate::{ContentLimit, FileRotate};
use tracing::field::{Field, Visit};
use tracing::{Level, Subscriber};
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::field::{MakeVisitor, VisitFmt, VisitOutput};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::format::{DefaultFields, DefaultVisitor, Writer};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Layer};

use crate::config::LoggingConfig;
use crate::events::{self, RECORD_FIELD};
use crate::log_files::{DailyLog, Reopening};

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
    // Both files are made again if their folder is deleted, and never panic on a wrong clock
    // (crate::log_files).
    let text_file = DailyLog::new(log_dir, config.keep_days).map_err(|e| error(e.to_string()))?;
    let json_path = log_dir.join("dreamd.jsonl");
    let (keep, max_bytes) = (config.jsonl_keep, config.jsonl_max_mb.max(1) * 1024 * 1024);
    let json_file = Reopening::new(json_path.clone(), move || {
        FileRotate::new(
            json_path.clone(),
            AppendCount::new(keep),
            ContentLimit::BytesSurpassed(max_bytes),
            Compression::None,
            None,
        )
    });
    let (text_writer, text_guard) = tracing_appender::non_blocking(text_file);
    // The console too goes through a lossy queue: when nobody reads stderr (an unread pipe), lines
    // are dropped instead of blocking the thread that logs (the original's stall, §9.2 item 4).
    let (console_writer, console_guard) = tracing_appender::non_blocking(std::io::stderr());
    let (json_writer, json_guard) = tracing_appender::non_blocking(json_file);

    let (console_filter, console_handle) = reload::Layer::new(filter(&config.level));
    let (text_filter, text_handle) = reload::Layer::new(filter(&config.level));
    let console = tracing_subscriber::fmt::layer()
        .fmt_fields(HumanFields)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(console_writer)
        .with_filter(console_filter);
    let text = tracing_subscriber::fmt::layer()
        .fmt_fields(HumanFields)
        .with_ansi(false)
        .with_writer(text_writer)
        .with_filter(text_filter);
    let json = json_lines(json_writer);
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

/// The `dreamd.jsonl` layer writing to `writer`: one line per event record
/// ([`crate::events`]), as `{"timestamp", "level", <the record's fields>, "message", "target"}`,
/// for events with target [`events::TARGET`] only.
pub fn json_lines<S, W>(writer: W) -> impl Layer<S>
where
    S: Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + 'static,
{
    JsonLines { writer }.with_filter(Targets::new().with_target(events::TARGET, Level::TRACE))
}

/// See [`json_lines`].
struct JsonLines<W> {
    writer: W,
}

impl<S: Subscriber, W: for<'w> MakeWriter<'w> + 'static> Layer<S> for JsonLines<W> {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let mut fields = EventFields::default();
        event.record(&mut fields);
        let meta = event.metadata();
        let line = json_line(
            SystemTime::now(),
            meta.level(),
            meta.target(),
            &fields.message,
            fields.record.as_deref(),
        );
        // A full queue drops the line rather than blocking the logging thread.
        let _ = self.writer.make_writer().write_all(line.as_bytes());
    }
}

/// An event's message and JSON record.
#[derive(Default)]
struct EventFields {
    message: String,
    record: Option<String>,
}

impl Visit for EventFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            RECORD_FIELD => self.record = Some(value.to_string()),
            "message" => self.message = value.to_string(),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        }
    }
}

/// One `dreamd.jsonl` line: the record's fields (a JSON object's text) spliced between the
/// timestamp and level and the message and target.
fn json_line(
    at: SystemTime,
    level: &Level,
    target: &str,
    message: &str,
    record: Option<&str>,
) -> String {
    let quote = |text: &str| serde_json::Value::from(text).to_string();
    let fields = record
        .and_then(|r| r.trim().strip_prefix('{')?.strip_suffix('}'))
        .filter(|f| !f.trim().is_empty());
    let mut line = format!(
        "{{\"timestamp\":{},\"level\":{}",
        quote(&crate::clock::rfc3339_micros(at)),
        quote(level.as_str())
    );
    if let Some(fields) = fields {
        line.push(',');
        line.push_str(fields);
    }
    line.push_str(&format!(
        ",\"message\":{},\"target\":{}}}\n",
        quote(message),
        quote(target)
    ));
    line
}

/// Field formatting of the console and `dreamd.log`: tracing's default, with an event's JSON
/// record shown as `key=value` fields after its message, as plain tracing fields would be.
struct HumanFields;

impl<'w> MakeVisitor<Writer<'w>> for HumanFields {
    type Visitor = RecordAsFields<DefaultVisitor<'w>>;

    fn make_visitor(&self, target: Writer<'w>) -> Self::Visitor {
        RecordAsFields(DefaultFields::new().make_visitor(target))
    }
}

/// A field visitor that passes every field on to `V`, except [`RECORD_FIELD`], whose JSON
/// members it writes as ` key=value` (strings quoted).
struct RecordAsFields<V>(V);

impl<V: VisitFmt> RecordAsFields<V> {
    fn write_record(&mut self, json: &str) {
        let Ok(Members(members)) = serde_json::from_str::<Members>(json) else {
            return;
        };
        let out = self.0.writer();
        for (key, value) in members {
            let _ = match value {
                serde_json::Value::String(text) => write!(out, " {key}={text:?}"),
                other => write!(out, " {key}={other}"),
            };
        }
    }
}

impl<V: VisitFmt> Visit for RecordAsFields<V> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.record_debug(field, value);
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == RECORD_FIELD {
            self.write_record(value);
        } else {
            self.0.record_str(field, value);
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.record_error(field, value);
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.record_f64(field, value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.record_i64(field, value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.record_u64(field, value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.record_bool(field, value);
    }
}

/// A JSON object's members, in their order.
struct Members(Vec<(String, serde_json::Value)>);

impl<'de> serde::Deserialize<'de> for Members {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct InOrder;
        impl<'de> serde::de::Visitor<'de> for InOrder {
            type Value = Members;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Members, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry()? {
                    members.push(member);
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(InOrder)
    }
}

impl<V: VisitOutput<fmt::Result> + VisitFmt> VisitOutput<fmt::Result> for RecordAsFields<V> {
    fn finish(self) -> fmt::Result {
        self.0.finish()
    }
}

impl<V: VisitFmt> VisitFmt for RecordAsFields<V> {
    fn writer(&mut self) -> &mut dyn fmt::Write {
        self.0.writer()
    }
}
