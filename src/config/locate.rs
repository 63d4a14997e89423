//! Which config file a command reads: `--config` when given, else `./dreamd.toml` when present,
//! else none (built-in defaults). The one place that rule is written; `dreamd run` also hands
//! the file it found to the hot reloader.

use std::path::{Path, PathBuf};

use super::{Config, ConfigError};

/// The file read when no `--config` is given, if it exists.
const LOCAL_FILE: &str = "dreamd.toml";

/// A loaded configuration and where it came from.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    /// The file it was read from (None: built-in defaults); the file a reload watches.
    pub file: Option<PathBuf>,
    /// A sentence saying where the config came from, for the log and `run --check`.
    pub origin: String,
}

/// Finds and loads the config for `arg` (`--config`): that file, else `./dreamd.toml` if it
/// exists, else the defaults.
pub fn load(arg: Option<&Path>) -> Result<Loaded, ConfigError> {
    let (file, origin) = match arg {
        Some(path) => (path.to_path_buf(), format!("config {}", path.display())),
        None => {
            let local = PathBuf::from(LOCAL_FILE);
            if !local.is_file() {
                return Ok(Loaded {
                    config: Config::default(),
                    file: None,
                    origin: "no config file (no --config, no ./dreamd.toml): running on \
                             built-in defaults"
                        .to_string(),
                });
            }
            (local, format!("config ./{LOCAL_FILE}"))
        }
    };
    Ok(Loaded {
        config: Config::load(&file)?,
        file: Some(file),
        origin,
    })
}
