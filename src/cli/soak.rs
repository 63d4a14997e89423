//! `dreamd soak`: a long run of the real daemon on a simulated clock, judged at the end.

use std::path::PathBuf;
use std::time::Duration;

use dreamd::bench::soak;
use dreamd::config::locate;
use dreamd::logging;

/// Arguments of `dreamd soak`.
#[derive(clap::Args)]
pub struct SoakArgs {
    /// Config file to start from (decoder, size, retention, logs, output and server are
    /// overridden; display.target_fps is the simulated rate).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Simulated hours to run.
    #[arg(long, default_value_t = 24.0)]
    hours: f64,
    /// Simulated seconds per wall-clock second (display at target_fps x speed).
    #[arg(long, conflicts_with = "fps")]
    speed: Option<f64>,
    /// Display rate in wall-clock frames per second (instead of --speed).
    #[arg(long)]
    fps: Option<f64>,
    /// Largest allowed memory growth, in percent, from after warm-up to the end.
    #[arg(long, default_value_t = 5.0, value_name = "PCT")]
    max_rss_growth: f64,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

impl SoakArgs {
    /// Plans the run, sends its logs into the soak's folder, runs it, prints the report and
    /// fails naming the checks that failed.
    pub fn run(self) -> anyhow::Result<()> {
        let config = locate::load(self.config.as_deref())?.config;
        let rate = match self.fps {
            Some(fps) => soak::Rate::Fps(fps),
            None => soak::Rate::Speed(self.speed.unwrap_or(soak::DEFAULT_SPEED)),
        };
        let options = soak::SoakOptions {
            hours: self.hours,
            rate,
            sample_every: Duration::from_secs(1),
            rss_growth: self.max_rss_growth / 100.0,
        };
        // Declared before the log guards, so the folder goes after the logs are flushed.
        let plan = soak::plan(config, &options)?;
        let logs = logging::init(&plan.config.logging, &plan.config.paths.log_dir)?;
        let report =
            super::runtime()?.block_on_with_signals(|interrupt| soak::run(&plan, interrupt))?;
        drop(logs);
        super::print_report(self.json, &report, report.to_text())?;
        anyhow::ensure!(report.passed, "soak failed: {}", report.failed.join(", "));
        Ok(())
    }
}
