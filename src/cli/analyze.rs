//! `dreamd analyze`: the timing and contention report from logs.

use std::path::PathBuf;

/// Arguments of `dreamd analyze`.
#[derive(clap::Args)]
pub struct AnalyzeArgs {
    /// Log files or folders (default: logs/); a folder gives dreamd.jsonl and its rotated
    /// and gzipped siblings.
    #[arg(conflicts_with = "compare")]
    logs: Vec<PathBuf>,
    /// Print JSON (schema in the README) instead of text.
    #[arg(long)]
    json: bool,
    /// Also write a self-contained HTML report with plots to this file.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
    /// Only records at or after this RFC 3339 time.
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// Only records at or before this RFC 3339 time.
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
    /// Compare two runs (files or folders) side by side.
    #[arg(long, num_args = 2, value_names = ["A", "B"])]
    compare: Option<Vec<PathBuf>>,
}

impl AnalyzeArgs {
    pub fn run(self) -> anyhow::Result<()> {
        let options = dreamd::analyze::Options {
            paths: self.logs,
            compare: self
                .compare
                .and_then(|c| <[PathBuf; 2]>::try_from(c).ok())
                .map(|[a, b]| (a, b)),
            since: self.since,
            until: self.until,
            json: self.json,
            html: self.html,
        };
        dreamd::analyze::run(&options, &mut std::io::stdout().lock())?;
        Ok(())
    }
}
