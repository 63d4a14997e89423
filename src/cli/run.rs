//! `dreamd run`: the daemon itself, or `--check` of what start-up would build.

use std::path::PathBuf;

use anyhow::Context;

use dreamd::config::locate;
use dreamd::{daemon, logging};

/// Arguments of `dreamd run`.
#[derive(clap::Args)]
pub struct RunArgs {
    /// Config file (default: ./dreamd.toml if it exists, else built-in defaults).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Output folder (overrides paths.output_dir).
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// Stop gracefully after this many seconds.
    #[arg(long)]
    duration: Option<f64>,
    /// Check the config, models and keyframe source, then exit (0 when all is well).
    #[arg(long)]
    check: bool,
    /// HTTP address and port (overrides server.bind), e.g. 0.0.0.0:8765; port 0 picks one.
    #[arg(long, value_name = "IP:PORT")]
    bind: Option<String>,
}

impl RunArgs {
    pub fn run(self) -> anyhow::Result<()> {
        let locate::Loaded {
            mut config,
            file,
            origin,
        } = locate::load(self.config.as_deref())?;
        if let Some(output) = self.output {
            config.paths.output_dir = output;
        }
        if let Some(bind) = self.bind {
            config.server.bind = bind;
            config.validate().context("--bind")?;
        }
        if self.check {
            println!("{origin}");
            println!("{}", daemon::check(&config)?);
            return Ok(());
        }
        let duration = self.duration.map(super::seconds).transpose()?;
        let _logs = logging::init(&config.logging, &config.paths.log_dir)?;
        tracing::info!("{origin}");
        match dreamd::limits::raise_nofile() {
            Ok(limit) => tracing::info!(
                soft = limit.soft,
                hard = limit.hard,
                "open-file limit {} (soft raised to the hard limit)",
                limit.soft
            ),
            Err(e) => tracing::warn!("cannot raise the open-file limit: {e}"),
        }
        super::runtime()?
            .block_on_with_signals(|shutdown| daemon::run(config, file, shutdown, duration))?;
        Ok(())
    }
}
