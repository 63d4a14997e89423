//! Hot reload: the config file is watched (notify, debounced); safe keys apply at once, the rest
//! are named as needing a restart, and a bad edit is rejected with the parse error while the
//! running config stays.
//!
//! Which keys are which is [`RELOAD_KEYS`], the one table of them (the README shows it): the
//! reloader compares the running and the new config row by row and hands each changed live key
//! to what takes it ([`Effect`]).
//!
//! Only real changes count: reading the file makes the kernel report an access, which used to
//! trigger the next read (a loop), so access events are ignored and a file whose bytes are
//! those last read is not parsed again; a rejected edit is logged once until the file changes.
//! The file is read as a regular file only, at most [`MAX_CONFIG_BYTES`], under a deadline, so
//! a FIFO or a huge file cannot hang or burn the reloader. SIGHUP ([`request_reload`]) reads the
//! file at once.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use super::live::{Effect, LiveSettings, RELOAD_KEYS};
use super::{Config, ConfigError, MAX_CONFIG_BYTES};
use crate::buffer::archive::FrameArchive;
use crate::engine::Engine;
use crate::events::{ConfigReloadEvent, LogEvent};
use crate::faults::{Faults, FaultySource};
use crate::keyframes::{self, KeyframeSource};
use crate::logging;

/// Quiet time after the last file event before the file is read (editors write in steps).
const DEBOUNCE: Duration = Duration::from_millis(300);
/// Longest a read of the config file may take.
const READ_DEADLINE: Duration = Duration::from_secs(5);

/// Woken by SIGHUP ([`request_reload`]).
static HANGUP: LazyLock<Notify> = LazyLock::new(Notify::new);
/// Whether a reloader is watching a file.
static WATCHING: AtomicBool = AtomicBool::new(false);

/// Asks the running reloader to read its file now (SIGHUP); false when none runs (no config
/// file, or reload is off).
pub fn request_reload() -> bool {
    HANGUP.notify_one();
    WATCHING.load(Ordering::Relaxed)
}

/// What the reloader last read, so that only real changes are applied or reported.
#[derive(Debug, Default)]
struct Seen {
    /// The bytes last read (at most [`MAX_CONFIG_BYTES`]).
    bytes: Option<Vec<u8>>,
    /// The last error logged, so an unchanged broken file is reported once.
    error: Option<String>,
}

/// What a reload changes, besides the config it keeps.
pub struct Reloader {
    pub path: PathBuf,
    pub running: Config,
    pub live: Arc<LiveSettings>,
    pub archive: Arc<FrameArchive>,
    pub faults: Arc<Faults>,
    pub engine: Arc<Engine>,
    /// Themes, collapse, cache and injections: reconfigured in place, and wrapped around new
    /// sources.
    pub director: Arc<crate::direction::director::Director>,
    /// Where status reads the ComfyUI health; a new source brings a new handle.
    pub comfyui: Arc<parking_lot::Mutex<crate::comfyui::ComfyUiHealth>>,
    /// New keyframe sources go to the pipeline's producer here.
    pub sources: mpsc::Sender<Box<dyn KeyframeSource>>,
}

/// What one reload did.
#[derive(Debug, Default, PartialEq)]
pub struct ReloadOutcome {
    /// Keys (or sections) applied live.
    pub applied: Vec<&'static str>,
    /// Keys (or sections) that changed but need a restart.
    pub needs_restart: Vec<&'static str>,
}

impl Reloader {
    /// Watches the file until `stop`. Errors setting up the watch are logged; the daemon runs
    /// on without reload (SIGHUP still reads the file).
    pub async fn watch(mut self, stop: CancellationToken) {
        WATCHING.store(true, Ordering::Relaxed);
        let (tx, mut events) = mpsc::channel::<()>(1);
        let name = self.path.file_name().map(|n| n.to_os_string());
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            // Reads (ours included) are not changes.
            let ours = event.is_ok_and(|e| {
                !matches!(e.kind, EventKind::Access(_))
                    && e.paths
                        .iter()
                        .any(|p| p.file_name().map(|n| n.to_os_string()) == name)
            });
            if ours {
                let _ = tx.try_send(());
            }
        });
        // Watch the folder: editors and `mv` replace the file rather than write into it.
        let dir = match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let _watcher = match watcher {
            Ok(mut watcher) => match watcher.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    tracing::info!("watching {} for changes", self.path.display());
                    Some(watcher)
                }
                Err(e) => {
                    tracing::warn!("config reload is off: cannot watch {}: {e}", dir.display());
                    None
                }
            },
            Err(e) => {
                tracing::warn!("config reload is off: cannot watch files: {e}");
                None
            }
        };
        let mut seen = Seen::default();
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = HANGUP.notified() => {
                    tracing::info!("SIGHUP: reading {}", self.path.display());
                    seen.error = None;
                    self.reload_seen(&mut seen, true).await;
                    continue;
                }
                event = events.recv() => if event.is_none() { break },
            }
            // Debounce: wait until the file has been quiet for a moment.
            loop {
                tokio::select! {
                    _ = stop.cancelled() => {
                        WATCHING.store(false, Ordering::Relaxed);
                        return;
                    }
                    _ = tokio::time::sleep(DEBOUNCE) => break,
                    _ = events.recv() => {}
                }
            }
            self.reload_seen(&mut seen, false).await;
        }
        WATCHING.store(false, Ordering::Relaxed);
    }

    /// Reads the file and applies it, or logs why not.
    pub async fn reload_from_disk(&mut self) {
        self.reload_seen(&mut Seen::default(), true).await;
    }

    /// Reads the file (a regular file, bounded, under [`READ_DEADLINE`]); unless `forced`,
    /// bytes equal to the last read are not parsed again, and an error equal to the last one
    /// logged is not logged again.
    async fn reload_seen(&mut self, seen: &mut Seen, forced: bool) {
        let path = self.path.clone();
        let read = tokio::task::spawn_blocking(move || {
            crate::regular_file::read_bounded(&path, MAX_CONFIG_BYTES)
        });
        let bytes = match tokio::time::timeout(READ_DEADLINE, read).await {
            Ok(Ok(Ok(bytes))) => Ok(bytes),
            Ok(Ok(Err(error))) => Err(ConfigError::Read {
                path: self.path.clone(),
                error,
            }
            .to_string()),
            Ok(Err(e)) => Err(format!("config reload failed: {e}")),
            Err(_) => Err(format!(
                "cannot read config file {}: no answer within {READ_DEADLINE:?}",
                self.path.display()
            )),
        };
        let bytes = match bytes {
            Ok(bytes) => bytes,
            Err(error) => {
                seen.bytes = None;
                self.reject(seen, error);
                return;
            }
        };
        if !forced && seen.bytes.as_deref() == Some(&bytes[..]) {
            return;
        }
        seen.bytes = Some(bytes.clone());
        let path = self.path.clone();
        let parsed = String::from_utf8(bytes)
            .map_err(|e| {
                ConfigError::Read {
                    path: path.clone(),
                    error: std::io::Error::new(std::io::ErrorKind::InvalidData, e.utf8_error()),
                }
                .to_string()
            })
            .and_then(|text| {
                Config::parse(&text, &path.display().to_string()).map_err(|e| e.to_string())
            });
        match parsed {
            Ok(new) => {
                seen.error = None;
                if new == self.running {
                    return;
                }
                let outcome = self.apply(new);
                ConfigReloadEvent::Applied {
                    file: self.path.display().to_string(),
                    applied: outcome.applied.join(", "),
                    needs_restart: outcome.needs_restart.join(", "),
                }
                .emit();
            }
            Err(error) => self.reject(seen, error),
        }
    }

    /// Logs a rejected reload, unless it is the error last logged.
    fn reject(&self, seen: &mut Seen, error: String) {
        if seen.error.as_deref() == Some(error.as_str()) {
            tracing::debug!("config still rejected: {error}");
            return;
        }
        seen.error = Some(error.clone());
        ConfigReloadEvent::Rejected { error }.emit();
    }

    /// Applies what can change live and keeps `new` as the running config (so a key that needs
    /// a restart is reported once, not at every later reload).
    pub fn apply(&mut self, new: Config) -> ReloadOutcome {
        let mut outcome = ReloadOutcome::default();
        self.live.set(&new);
        for key in RELOAD_KEYS {
            if !(key.changed)(&self.running, &new) {
                continue;
            }
            let applied = match key.effect {
                Effect::Settings => true,
                Effect::Retention => {
                    self.archive.set_keep(new.keep_frames());
                    self.archive.set_keep_bytes(new.keep_bytes());
                    true
                }
                Effect::LogLevel => match logging::set_level(&new.logging.level) {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::warn!("logging.level not applied: {e}");
                        false
                    }
                },
                Effect::Faults => {
                    self.faults.update(new.faults.clone());
                    true
                }
                Effect::Keyframes => self.replace_source(&new),
                Effect::Direction => {
                    self.director.reconfigure(
                        crate::direction::director::DirectionSettings::from_config(&new),
                    );
                    true
                }
                Effect::Restart => {
                    outcome.needs_restart.push(key.name);
                    false
                }
            };
            if applied {
                outcome.applied.push(key.name);
            }
        }
        self.running = new;
        outcome
    }

    /// Builds `new`'s keyframe source and hands it to the pipeline; false (logged) when it
    /// cannot be built or taken.
    fn replace_source(&self, new: &Config) -> bool {
        match keyframes::from_config(new, &self.engine) {
            Ok(keyframes::BuiltSource { source, comfyui }) => {
                *self.comfyui.lock() = comfyui;
                let source = self
                    .director
                    .wrap(FaultySource::wrap(source, Arc::clone(&self.faults)));
                let taken = self.sources.try_send(source).is_ok();
                if !taken {
                    tracing::warn!("keyframes not applied: the pipeline is not taking sources");
                }
                taken
            }
            Err(e) => {
                tracing::error!("keyframes not applied, the running source stays: {e}");
                false
            }
        }
    }
}
