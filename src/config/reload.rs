//! Hot reload: the config file is watched (notify, debounced); safe keys apply at once, the rest
//! are named as needing a restart, and a bad edit is rejected with the parse error while the
//! running config stays.
//!
//! Which keys are which is [`RELOAD_KEYS`], the one table of them (the README shows it): the
//! reloader compares the running and the new config row by row and hands each changed live key
//! to what takes it ([`Effect`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::live::{Effect, LiveSettings, RELOAD_KEYS};
use super::Config;
use crate::buffer::archive::FrameArchive;
use crate::engine::Engine;
use crate::events::{ConfigReloadEvent, LogEvent};
use crate::faults::{Faults, FaultySource};
use crate::keyframes::{self, KeyframeSource};
use crate::logging;

/// Quiet time after the last file event before the file is read (editors write in steps).
const DEBOUNCE: Duration = Duration::from_millis(300);

/// What a reload changes, besides the config it keeps.
pub struct Reloader {
    pub path: PathBuf,
    pub running: Config,
    pub live: Arc<LiveSettings>,
    pub archive: Arc<FrameArchive>,
    pub faults: Arc<Faults>,
    pub engine: Arc<Engine>,
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
    /// on without reload.
    pub async fn watch(mut self, stop: CancellationToken) {
        let (tx, mut events) = mpsc::channel::<()>(1);
        let name = self.path.file_name().map(|n| n.to_os_string());
        let mut watcher =
            match notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let ours = event.is_ok_and(|e| {
                    e.paths
                        .iter()
                        .any(|p| p.file_name().map(|n| n.to_os_string()) == name)
                });
                if ours {
                    let _ = tx.try_send(());
                }
            }) {
                Ok(watcher) => watcher,
                Err(e) => {
                    tracing::warn!("config reload is off: cannot watch files: {e}");
                    return;
                }
            };
        // Watch the folder: editors and `mv` replace the file rather than write into it.
        let dir = match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if let Err(e) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
            tracing::warn!("config reload is off: cannot watch {}: {e}", dir.display());
            return;
        }
        tracing::info!("watching {} for changes", self.path.display());
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                event = events.recv() => if event.is_none() { return },
            }
            // Debounce: wait until the file has been quiet for a moment.
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(DEBOUNCE) => break,
                    _ = events.recv() => {}
                }
            }
            self.reload_from_disk().await;
        }
    }

    /// Reads the file and applies it, or logs why not.
    pub async fn reload_from_disk(&mut self) {
        let path = self.path.clone();
        let loaded = tokio::task::spawn_blocking(move || Config::load(&path)).await;
        match loaded {
            Ok(Ok(new)) if new == self.running => {}
            Ok(Ok(new)) => {
                let outcome = self.apply(new);
                ConfigReloadEvent::Applied {
                    file: self.path.display().to_string(),
                    applied: outcome.applied.join(", "),
                    needs_restart: outcome.needs_restart.join(", "),
                }
                .emit();
            }
            Ok(Err(e)) => ConfigReloadEvent::Rejected {
                error: e.to_string(),
            }
            .emit(),
            Err(e) => tracing::error!("config reload failed: {e}"),
        }
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
            Ok(source) => {
                let source = FaultySource::wrap(source, Arc::clone(&self.faults));
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
