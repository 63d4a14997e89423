//! `dreamd ctl`: status and control of a running daemon over HTTP.

use std::path::PathBuf;

use dreamd::config::locate;
use dreamd::ctl::{self, Action};

/// Arguments of `dreamd ctl`.
#[derive(clap::Args)]
pub struct CtlArgs {
    /// Daemon URL (default: from the config's server.bind, e.g. http://127.0.0.1:8765).
    #[arg(long)]
    url: Option<String>,
    /// Config file (for server.bind and server.token).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Print the daemon's JSON answer.
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    action: Action,
}

impl CtlArgs {
    pub fn run(self) -> anyhow::Result<()> {
        let config = locate::load(self.config.as_deref())?.config;
        let url = match self.url {
            Some(url) => url,
            None => ctl::url_from_config(&config.server)?,
        };
        let token = dreamd::server::auth::resolve_token(
            config.server.token.as_deref(),
            std::env::var("DREAMD_TOKEN").ok().as_deref(),
        );
        print!(
            "{}",
            ctl::run(&url, token.as_deref(), self.action, self.json)?
        );
        Ok(())
    }
}
