//! `dreamd init`: writes the commented default config file, or converts the original Dream
//! Window's `config.yaml`.

use std::path::PathBuf;

use anyhow::Context;

use dreamd::config::{dream_window, Config, DEFAULT_CONFIG_TOML};

/// Arguments of `dreamd init`.
#[derive(clap::Args)]
pub struct InitArgs {
    /// Where to write it.
    #[arg(default_value = "dreamd.toml")]
    path: PathBuf,
    /// Replace an existing file.
    #[arg(long)]
    force: bool,
    /// Convert Dream Window's backend/config.yaml instead of writing the defaults; every key it
    /// drops is listed with the reason.
    #[arg(long, value_name = "CONFIG_YAML")]
    from_dream_window: Option<PathBuf>,
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
        let text = match &self.from_dream_window {
            None => DEFAULT_CONFIG_TOML.to_string(),
            Some(yaml_path) => {
                let yaml = std::fs::read_to_string(yaml_path)
                    .with_context(|| format!("cannot read {}", yaml_path.display()))?;
                let converted = dream_window::convert(&yaml)
                    .with_context(|| format!("cannot convert {}", yaml_path.display()))?;
                Config::parse(&converted.toml, &path.display().to_string()).with_context(|| {
                    format!(
                        "the conversion of {} is not a valid dreamd config",
                        yaml_path.display()
                    )
                })?;
                println!(
                    "converted {} keys of {}",
                    converted.carried.len(),
                    yaml_path.display()
                );
                for (key, why) in &converted.dropped {
                    println!("  dropped {key}: {why}");
                }
                converted.toml
            }
        };
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
        println!("wrote {}", path.display());
        Ok(())
    }
}
