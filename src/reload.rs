//! Hot reload: the config file is watched (notify, debounced); safe keys apply at once, the rest
//! are named as needing a restart, and a bad edit is rejected with the parse error while the
//! running config stays.
//!
//! Applied live: `display.target_fps` and `start_gate_seconds`, `buffer.target_seconds`,
//! `timeouts.*`, `health.*`, `output.keep_frames`, `logging.level`, `[keyframes]` (a new source
//! takes over at the next keyframe) and `[faults]`. Everything else (`[paths]`, `[generation]`,
//! the output format, log file settings) needs a restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::buffer::archive::FrameArchive;
use crate::config::Config;
use crate::engine::Engine;
use crate::faults::{Faults, FaultySource};
use crate::keyframes::{self, KeyframeSource};
use crate::live::LiveSettings;
use crate::logging::{self, EVENT};

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
                tracing::info!(
                    target: EVENT,
                    event = "config_reload",
                    outcome = "applied",
                    applied = outcome.applied.join(", "),
                    needs_restart = outcome.needs_restart.join(", "),
                    "config {} reloaded: applied [{}]{}",
                    self.path.display(),
                    outcome.applied.join(", "),
                    if outcome.needs_restart.is_empty() {
                        String::new()
                    } else {
                        format!(
                            "; changed but needs a restart to apply: [{}]",
                            outcome.needs_restart.join(", ")
                        )
                    }
                );
            }
            Ok(Err(e)) => {
                tracing::error!(
                    target: EVENT,
                    event = "config_reload",
                    outcome = "rejected",
                    error = %e,
                    "config reload rejected, the running config stays: {e}"
                );
            }
            Err(e) => tracing::error!("config reload failed: {e}"),
        }
    }

    /// Applies what can change live and keeps `new` as the running config (so a key that needs
    /// a restart is reported once, not at every later reload).
    pub fn apply(&mut self, new: Config) -> ReloadOutcome {
        let old = &self.running;
        let mut outcome = ReloadOutcome::default();
        let live_changes = [
            (
                "display.target_fps",
                old.display.target_fps != new.display.target_fps,
            ),
            (
                "display.start_gate_seconds",
                old.display.start_gate_seconds != new.display.start_gate_seconds,
            ),
            (
                "buffer.target_seconds",
                old.buffer.target_seconds != new.buffer.target_seconds,
            ),
            ("timeouts", old.timeouts != new.timeouts),
            ("health", old.health != new.health),
        ];
        for (key, changed) in live_changes {
            if changed {
                outcome.applied.push(key);
            }
        }
        self.live.set(&new);
        if old.keep_frames() != new.keep_frames() {
            self.archive.set_keep(new.keep_frames());
            outcome.applied.push("output.keep_frames");
        }
        if old.logging.level != new.logging.level {
            match logging::set_level(&new.logging.level) {
                Ok(()) => outcome.applied.push("logging.level"),
                Err(e) => tracing::warn!("logging.level not applied: {e}"),
            }
        }
        if old.faults != new.faults {
            self.faults.update(new.faults.clone());
            outcome.applied.push("faults");
        }
        if old.keyframes != new.keyframes {
            match keyframes::from_config(&new, &self.engine) {
                Ok(source) => {
                    let source = FaultySource::wrap(source, Arc::clone(&self.faults));
                    if self.sources.try_send(source).is_ok() {
                        outcome.applied.push("keyframes");
                    } else {
                        tracing::warn!("keyframes not applied: the pipeline is not taking sources");
                    }
                }
                Err(e) => tracing::error!("keyframes not applied, the running source stays: {e}"),
            }
        }
        let restart_changes = [
            ("paths", old.paths != new.paths),
            ("server", old.server != new.server),
            ("generation", old.generation != new.generation),
            ("output.format", old.output.format != new.output.format),
            (
                "output.jpeg_quality",
                old.output.jpeg_quality != new.output.jpeg_quality,
            ),
            (
                "logging (files)",
                (
                    old.logging.keep_days,
                    old.logging.jsonl_max_mb,
                    old.logging.jsonl_keep,
                ) != (
                    new.logging.keep_days,
                    new.logging.jsonl_max_mb,
                    new.logging.jsonl_keep,
                ),
            ),
        ];
        for (key, changed) in restart_changes {
            if changed {
                outcome.needs_restart.push(key);
            }
        }
        self.running = new;
        outcome
    }
}

/// The file `dreamd run` reads for `arg`: `--config`, else `./dreamd.toml` if present.
pub fn config_file(arg: Option<&Path>) -> Option<PathBuf> {
    match arg {
        Some(path) => Some(path.to_path_buf()),
        None => Some(PathBuf::from("dreamd.toml")).filter(|p| p.is_file()),
    }
}
