//! `dreamd init`: writes the commented default config file.

use std::path::PathBuf;

use anyhow::Context;

use dreamd::config::DEFAULT_CONFIG_TOML;

/// Arguments of `dreamd init`.
#[derive(clap::Args)]
pub struct InitArgs {
    /// Where to write it.
    #[arg(default_value = "dreamd.toml")]
    path: PathBuf,
    /// Replace an existing file.
    #[arg(long)]
    force: bool,
}

impl InitArgs {
    pub fn run(self) -> anyhow::Result<()> {
        let path = &self.path;
        if path.exists() && !self.force {
            anyhow::bail!(
                "{} already exists; use --force to replace it",
                path.display()
            );
        }
        std::fs::write(path, DEFAULT_CONFIG_TOML)
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!("wrote {}", path.display());
        Ok(())
    }
}
