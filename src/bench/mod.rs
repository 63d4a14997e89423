//! Measurements of the real daemon and its parts, reported as text or JSON: `dreamd bench`
//! ([`pacing`], [`http`], [`motion`], [`codec`], [`resolution`], [`comfyui`], [`diffusion`]) and
//! `dreamd soak` ([`soak`]).
//!
//! What the measurements of the whole daemon share lives here: the [`Scratch`] folder that
//! takes a run's output and logs, and [`InProcess`], the one way to run the daemon in this
//! process and observe it while it runs.

use std::path::{Path, PathBuf};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::daemon::{self, RunReport, Started};

pub mod codec;
pub mod comfyui;
pub mod diffusion;
pub mod http;
pub mod motion;
pub mod pacing;
pub mod renames;
pub mod resolution;
pub mod soak;

/// A temporary folder for one measured run (`dreamd bench pacing|http`, `dreamd soak`), removed
/// when dropped.
#[derive(Debug)]
pub struct Scratch {
    path: PathBuf,
}

impl Scratch {
    /// Creates `<temp>/dreamd-<kind>-<pid>`.
    pub fn new(kind: &str) -> anyhow::Result<Scratch> {
        let path = std::env::temp_dir().join(format!("dreamd-{kind}-{}", std::process::id()));
        std::fs::create_dir_all(&path)
            .map_err(|e| anyhow::anyhow!("cannot create {kind} folder {}: {e}", path.display()))?;
        Ok(Scratch { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Points `config`'s output and log folders into this folder (`output/`, `logs/`).
    pub fn redirect(&self, config: &mut Config) {
        config.paths.output_dir = self.path.join("output");
        config.paths.log_dir = self.path.join("logs");
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The daemon running in this process for a measurement, from the moment everything has
/// started until [`InProcess::stop`].
pub struct InProcess {
    /// What the running daemon offers an observer (telemetry, the server's URL).
    pub started: Started,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<RunReport>>,
    /// The task's result, once it ended on its own.
    ended: Option<Result<anyhow::Result<RunReport>, tokio::task::JoinError>>,
}

impl InProcess {
    /// Starts the daemon on `config` (no config file, so no reload) and waits until every
    /// component runs; an error says why it did not start.
    pub async fn start(config: Config) -> anyhow::Result<InProcess> {
        let shutdown = CancellationToken::new();
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(daemon::run_observed(
            config,
            None,
            shutdown.clone(),
            None,
            Some(started_tx),
        ));
        match started_rx.await {
            Ok(started) => Ok(InProcess {
                started,
                shutdown,
                task,
                ended: None,
            }),
            Err(_) => Err(match task.await {
                Ok(Err(e)) => e.context("the daemon did not start"),
                Ok(Ok(_)) => anyhow::anyhow!("the daemon stopped before it started"),
                Err(e) => anyhow::anyhow!("the daemon task failed: {e}"),
            }),
        }
    }

    /// Resolves if the daemon stops on its own (never otherwise); safe to cancel, as in a
    /// `select!`.
    pub async fn ended(&mut self) {
        if self.ended.is_some() {
            return std::future::pending().await;
        }
        self.ended = Some((&mut self.task).await);
    }

    /// Stops the daemon (in order, as at SIGTERM) and returns its report.
    pub async fn stop(self) -> anyhow::Result<RunReport> {
        self.shutdown.cancel();
        let ended = match self.ended {
            Some(ended) => ended,
            None => self.task.await,
        };
        ended
            .map_err(|e| anyhow::anyhow!("the daemon task failed: {e}"))?
            .map_err(|e| e.context("the daemon failed"))
    }
}
