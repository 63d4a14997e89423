//! The command line: one file per subcommand, each with its clap arguments and the code that
//! runs it, and here what they share (the runtime with signal handling, report printing).
//!
//! Commands turn their flags into typed values on the [`Config`](dreamd::config::Config) struct
//! (never into TOML text) and then call into the library; errors stay `anyhow` at this edge.

mod analyze;
mod bench;
mod ctl;
mod init;
mod models;
mod run;
mod soak;

use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

/// The parsed command line.
#[derive(Parser)]
#[command(
    name = "dreamd",
    version,
    about = "Realtime frame-generation daemon: an endless, smoothly morphing stream of images"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (on built-in defaults when no config file is found).
    Run(run::RunArgs),
    /// Talk to a running daemon over HTTP: status, pause, resume, skip, next-theme.
    Ctl(ctl::CtlArgs),
    /// Write a commented default config file.
    Init(init::InitArgs),
    /// Timing and contention report from dreamd's logs (or the original Python controller's).
    Analyze(analyze::AnalyzeArgs),
    /// List, verify or download model files (TAESD family).
    Models {
        #[command(subcommand)]
        what: models::ModelsCommand,
    },
    /// Run the real daemon on a simulated clock (preview decoder, 128x64, fast display) for
    /// hours of simulated time and check memory, retention, stalls and log rotation; exit 1
    /// naming the checks that failed.
    Soak(soak::SoakArgs),
    /// Measure the daemon.
    Bench {
        #[command(subcommand)]
        what: bench::BenchCommand,
    },
}

impl Cli {
    /// Runs the command.
    pub fn run(self) -> anyhow::Result<()> {
        dreamd::engine::kernels::isa::Isa::check_env()?;
        match self.command {
            Command::Run(args) => args.run(),
            Command::Ctl(args) => args.run(),
            Command::Init(args) => args.run(),
            Command::Analyze(args) => args.run(),
            Command::Models { what } => what.run(),
            Command::Soak(args) => args.run(),
            Command::Bench { what } => what.run(),
        }
    }
}

/// Prints a bench or soak report as JSON (`--json`) or as its text form.
fn print_report(json: bool, report: &impl serde::Serialize, text: String) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        print!("{text}");
    }
    Ok(())
}

/// A positive number of seconds as a duration.
fn seconds(value: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(value)
        .ok()
        .filter(|d| !d.is_zero())
        .with_context(|| format!("a duration must be a positive number of seconds (got {value})"))
}

/// The multi-threaded runtime every command runs on.
struct Runtime(tokio::runtime::Runtime);

fn runtime() -> anyhow::Result<Runtime> {
    Ok(Runtime(
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("dreamd-rt")
            .on_thread_start(dreamd::priority::lower_current_thread)
            .build()
            .context("cannot start the async runtime")?,
    ))
}

impl Runtime {
    /// Runs `main` with a token that SIGINT or SIGTERM cancels; afterwards gives blocking work
    /// still running (a hung decode, say) a short grace and exits without waiting for it.
    fn block_on_with_signals<F, Fut, T>(self, main: F) -> anyhow::Result<T>
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<T>>,
    {
        let shutdown = CancellationToken::new();
        let result = self.0.block_on(async {
            let signals = tokio::spawn(cancel_on_signal(shutdown.clone()));
            let result = main(shutdown.clone()).await;
            signals.abort();
            result
        });
        self.0.shutdown_timeout(Duration::from_millis(200));
        result
    }
}

/// What a signal does: SIGTERM, SIGINT and SIGQUIT stop gracefully; SIGHUP reloads the config
/// file; SIGUSR1, SIGUSR2 and SIGALRM are logged and ignored (their default action would kill
/// the daemon at once, leaving status.json at `playing`).
async fn cancel_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    #[derive(Clone, Copy)]
    enum Action {
        Stop,
        Reload,
        Ignore,
    }
    let handled = [
        (SignalKind::terminate(), "SIGTERM", Action::Stop),
        (SignalKind::interrupt(), "SIGINT", Action::Stop),
        (SignalKind::quit(), "SIGQUIT", Action::Stop),
        (SignalKind::hangup(), "SIGHUP", Action::Reload),
        (SignalKind::user_defined1(), "SIGUSR1", Action::Ignore),
        (SignalKind::user_defined2(), "SIGUSR2", Action::Ignore),
        (SignalKind::alarm(), "SIGALRM", Action::Ignore),
    ];
    let (tx, mut received) = tokio::sync::mpsc::channel(8);
    for (kind, name, action) in handled {
        let mut stream = match signal(kind) {
            Ok(stream) => stream,
            Err(e) => {
                tracing::error!("cannot handle {name}: {e}");
                continue;
            }
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                if tx.send((name, action)).await.is_err() {
                    return;
                }
            }
        });
    }
    drop(tx);
    while let Some((name, action)) = received.recv().await {
        match action {
            Action::Stop => {
                tracing::info!("{name} received: stopping");
                shutdown.cancel();
                return;
            }
            Action::Reload => {
                if !dreamd::config::reload::request_reload() {
                    tracing::info!("{name} received: no config file is watched, nothing to reload");
                }
            }
            Action::Ignore => tracing::info!("{name} received: ignored"),
        }
    }
}
