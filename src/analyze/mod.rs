//! `dreamd analyze`: timing and contention report from dreamd's `dreamd.jsonl` (and rotated or
//! gzipped siblings) or the original Python controller log.
//!
//! Input is streamed a line at a time ([`input`]); each file's format is detected from its first
//! line and read by [`jsonl`] or [`legacy`] into [`record::Record`]s, which the
//! [`aggregate::Aggregator`] folds into a [`model::Report`] in bounded memory (quantile sketches
//! and downsampled series from [`sketch`]). [`bottleneck`] judges it against documented
//! thresholds; [`dream`] sums up the creative direction (themes, collapse, injections, cache);
//! [`report`] prints text or JSON, [`html`] a self-contained HTML page with SVG
//! plots, and [`compare`] puts two runs side by side.

pub mod aggregate;
pub mod bottleneck;
pub mod compare;
pub mod dream;
pub mod html;
pub mod input;
pub mod jsonl;
pub mod legacy;
pub mod model;
pub mod record;
pub mod report;
pub mod sketch;

use std::io::Write;
use std::path::{Path, PathBuf};

pub use model::Report;

/// Why an analysis could not be made.
#[derive(Debug, thiserror::Error)]
pub enum AnalyzeError {
    #[error("cannot open {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("no dreamd.jsonl (or rotated sibling, or dream_controller.log) in {dir}")]
    NoLogs { dir: String },
    #[error("--{flag} {value:?} is not an RFC 3339 time (e.g. 2024-05-01T12:00:00Z)")]
    BadTime { flag: &'static str, value: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write the report: {0}")]
    Output(#[from] std::io::Error),
    #[error("cannot serialise the report: {0}")]
    Json(#[from] serde_json::Error),
    #[error("cannot draw the {plot} plot: {message}")]
    Plot { plot: &'static str, message: String },
}

/// What to analyse and how to print it (the command line's `analyze` arguments).
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Files or folders; none means `logs/`.
    pub paths: Vec<PathBuf>,
    /// Two runs (files or folders) to compare instead of `paths`.
    pub compare: Option<(PathBuf, PathBuf)>,
    /// RFC 3339 lower bound on record time.
    pub since: Option<String>,
    /// RFC 3339 upper bound on record time.
    pub until: Option<String>,
    /// Print JSON instead of text.
    pub json: bool,
    /// Also write a self-contained HTML report here.
    pub html: Option<PathBuf>,
}

fn parse_bound(flag: &'static str, value: Option<&str>) -> Result<Option<f64>, AnalyzeError> {
    value
        .map(|v| {
            record::parse_timestamp(v).ok_or_else(|| AnalyzeError::BadTime {
                flag,
                value: v.to_string(),
            })
        })
        .transpose()
}

/// Analyses the logs at `paths` (files or folders; none = `logs/`), keeping records between
/// `since` and `until` (seconds since the epoch).
pub fn analyze(
    paths: &[PathBuf],
    since: Option<f64>,
    until: Option<f64>,
) -> Result<Report, AnalyzeError> {
    let files = input::resolve(paths)?;
    let mut aggregator = aggregate::Aggregator::new(since, until);
    let mut inputs = Vec::with_capacity(files.len());
    for file in &files {
        inputs.push(input::read_file(file, &mut |record| {
            aggregator.add(record)
        })?);
    }
    Ok(aggregator.finish(inputs))
}

fn write_file(path: &Path, text: &str) -> Result<(), AnalyzeError> {
    std::fs::write(path, text).map_err(|source| AnalyzeError::Write {
        path: path.display().to_string(),
        source,
    })
}

/// Runs `dreamd analyze` with `options`, printing the report to `out`.
pub fn run(options: &Options, out: &mut dyn Write) -> Result<(), AnalyzeError> {
    let since = parse_bound("since", options.since.as_deref())?;
    let until = parse_bound("until", options.until.as_deref())?;
    if let Some((a, b)) = &options.compare {
        let a_report = analyze(std::slice::from_ref(a), since, until)?;
        let b_report = analyze(std::slice::from_ref(b), since, until)?;
        let comparison = compare::Comparison::new(
            &a.display().to_string(),
            a_report,
            &b.display().to_string(),
            b_report,
        );
        if let Some(path) = &options.html {
            write_file(path, &html::comparison_page(&comparison)?)?;
        }
        if options.json {
            writeln!(out, "{}", serde_json::to_string_pretty(&comparison)?)?;
        } else {
            write!(out, "{}", comparison.to_text())?;
        }
        return Ok(());
    }
    let report = analyze(&options.paths, since, until)?;
    if let Some(path) = &options.html {
        write_file(path, &html::page(&report)?)?;
    }
    if options.json {
        writeln!(out, "{}", report::to_json(&report)?)?;
    } else {
        write!(out, "{}", report::to_text(&report))?;
    }
    Ok(())
}
