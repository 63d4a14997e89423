//! The `dreamd` command line: `run`, `init`, `bench`, `analyze`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use dreamd::config::DEFAULT_CONFIG_TOML;
use dreamd::{bench, daemon, logging};

#[derive(Parser)]
#[command(
    name = "dreamd",
    version,
    about = "Realtime frame-generation daemon: an endless, smoothly morphing stream of images"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (on built-in defaults when no config file is found).
    Run {
        /// Config file (default: ./dreamd.toml if it exists, else built-in defaults).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Output folder (overrides paths.output_dir).
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Stop gracefully after this many seconds.
        #[arg(long)]
        duration: Option<f64>,
    },
    /// Write a commented default config file.
    Init {
        /// Where to write it.
        #[arg(default_value = "dreamd.toml")]
        path: PathBuf,
        /// Replace an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Timing and contention report from dreamd's logs (or the original Python controller's).
    Analyze {
        /// Log files or folders (default: logs/); a folder gives dreamd.jsonl and its rotated
        /// and gzipped siblings.
        #[arg(conflicts_with = "compare")]
        logs: Vec<PathBuf>,
        /// Print JSON (schema in the README) instead of text.
        #[arg(long)]
        json: bool,
        /// Also write a self-contained HTML report with plots to this file.
        #[arg(long, value_name = "FILE")]
        html: Option<PathBuf>,
        /// Only records at or after this RFC 3339 time.
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// Only records at or before this RFC 3339 time.
        #[arg(long, value_name = "TIME")]
        until: Option<String>,
        /// Compare two runs (files or folders) side by side.
        #[arg(long, num_args = 2, value_names = ["A", "B"])]
        compare: Option<Vec<PathBuf>>,
    },
    /// List or verify model files (TAESD family).
    Models {
        #[command(subcommand)]
        what: ModelsCommand,
    },
    /// Measure the daemon.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
}

#[derive(Subcommand)]
enum ModelsCommand {
    /// Show which model files are found, and where dreamd looked.
    List {
        /// Config file (for generation.models_dir).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Load every model file found, check its tensors and run it once; exit 1 naming bad files.
    Verify {
        /// Config file (for generation.models_dir).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Run the real daemon on the embedded default and report display pacing, lock and memory.
    Pacing {
        /// Config file to start from (gate, output and log folders are overridden).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// How long to run.
        #[arg(long, default_value_t = 60.0)]
        seconds: f64,
        /// Target fps (overrides display.target_fps).
        #[arg(long)]
        fps: Option<f64>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Time one batched decode call (warm-up, then the median of several runs).
    Decode {
        /// Config file to start from (for models_dir and the like).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Decoder: auto, preview, taesd, taesdxl, taesd3, taef1.
        #[arg(long, default_value = "auto")]
        decoder: String,
        /// Latents per call.
        #[arg(long, default_value_t = 10)]
        batch: usize,
        /// Latent shape CxHxW (output is 8H x 8W).
        #[arg(long, default_value = "4x32x64")]
        latent: String,
        /// Device: auto, cpu, cuda, cuda:N.
        #[arg(long, default_value = "auto")]
        device: String,
        /// CPU arithmetic: fast or exact (default: generation.precision of the config).
        #[arg(long)]
        precision: Option<String>,
        /// Timed runs after two warm-up runs.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Time one batched encode call (pictures to latents; warm-up, then the median of several runs).
    Encode {
        /// Config file to start from (for models_dir and the like).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Model family: taesd, taesdxl, taesd3, taef1.
        #[arg(long, default_value = "taesd")]
        decoder: String,
        /// Pictures per call.
        #[arg(long, default_value_t = 10)]
        batch: usize,
        /// Picture shape 3xHxW (sides multiples of 8).
        #[arg(long, default_value = "3x256x512")]
        size: String,
        /// Device: auto, cpu, cuda, cuda:N.
        #[arg(long, default_value = "auto")]
        device: String,
        /// CPU arithmetic: fast or exact (default: generation.precision of the config).
        #[arg(long)]
        precision: Option<String>,
        /// Timed runs after two warm-up runs.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dreamd: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Init { path, force } => init(&path, force),
        Command::Models { what } => models(what),
        Command::Run {
            config,
            output,
            duration,
        } => {
            let (mut config, origin) = daemon::load_config(config.as_deref())?;
            if let Some(output) = output {
                config.paths.output_dir = output;
            }
            let duration = duration.map(seconds).transpose()?;
            let _logs = logging::init(&config.logging, &config.paths.log_dir)?;
            tracing::info!("{origin}");
            runtime()?.block_on_with_signals(|shutdown| daemon::run(config, shutdown, duration))?;
            Ok(())
        }
        Command::Analyze {
            logs,
            json,
            html,
            since,
            until,
            compare,
        } => {
            let options = dreamd::analyze::Options {
                paths: logs,
                compare: compare
                    .and_then(|c| <[PathBuf; 2]>::try_from(c).ok())
                    .map(|[a, b]| (a, b)),
                since,
                until,
                json,
                html,
            };
            dreamd::analyze::run(&options, &mut std::io::stdout().lock())?;
            Ok(())
        }
        Command::Bench {
            what:
                BenchCommand::Pacing {
                    config,
                    seconds: secs,
                    fps,
                    json,
                },
        } => {
            let (mut config, _) = daemon::load_config(config.as_deref())?;
            if let Some(fps) = fps {
                config.display.target_fps = fps;
            }
            config.logging.level = "warn".to_string();
            config.validate()?;
            seconds(secs)?;
            let _logs = logging::init(
                &config.logging,
                &std::env::temp_dir().join("dreamd-bench-logs"),
            )?;
            let options = bench::PacingOptions {
                seconds: secs,
                warmup_seconds: (secs * 0.1).min(10.0),
            };
            let report = runtime()?.block_on_with_signals(|_| bench::pacing(config, options))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.to_text());
            }
            Ok(())
        }
        Command::Bench {
            what:
                BenchCommand::Decode {
                    config,
                    decoder,
                    batch,
                    latent,
                    device,
                    precision,
                    runs,
                    json,
                },
        } => {
            let target = BenchTarget {
                decoder: &decoder,
                device: &device,
                precision: precision.as_deref(),
            };
            let report = bench_decode(config, target, batch, &latent, runs)?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print!("{}", report.to_text());
            }
            Ok(())
        }
        Command::Bench {
            what:
                BenchCommand::Encode {
                    config,
                    decoder,
                    batch,
                    size,
                    device,
                    precision,
                    runs,
                    json,
                },
        } => {
            let target = BenchTarget {
                decoder: &decoder,
                device: &device,
                precision: precision.as_deref(),
            };
            let report = bench_encode(config, target, batch, &size, runs)?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print!("{}", report.to_text());
            }
            Ok(())
        }
    }
}

/// What `dreamd bench decode|encode` runs on.
struct BenchTarget<'a> {
    decoder: &'a str,
    device: &'a str,
    precision: Option<&'a str>,
}

/// Parses `CxHxW` with positive numbers.
fn parse_dims(text: &str, flag: &str) -> anyhow::Result<[usize; 3]> {
    let dims: Vec<usize> = text
        .split('x')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()
        .filter(|d: &Vec<usize>| d.len() == 3 && d.iter().all(|&v| v > 0))
        .with_context(|| format!("{flag} must be CxHxW with positive numbers (got {text:?})"))?;
    Ok([dims[0], dims[1], dims[2]])
}

/// Builds the engine `target` names for `width × height` frames, decoding at full size.
fn bench_engine(
    config: Option<PathBuf>,
    target: BenchTarget,
    width: usize,
    height: usize,
) -> anyhow::Result<dreamd::engine::Engine> {
    let (mut config, _) = daemon::load_config(config.as_deref())?;
    let BenchTarget {
        decoder,
        device,
        precision,
    } = target;
    let precision = precision.map_or(config.generation.precision.to_string(), str::to_string);
    let overrides = format!(
        "[generation]\ndecoder = {decoder:?}\ndevice = {device:?}\nprecision = {precision:?}\n\
         width = {width}\nheight = {height}\ndecode_divisor = 1",
    );
    let parsed = dreamd::config::Config::parse(&overrides, "command line")?;
    config.generation = dreamd::config::GenerationConfig {
        models_dir: config.generation.models_dir.clone(),
        ..parsed.generation
    };
    config.validate()?;
    Ok(dreamd::engine::Engine::from_config(&config)?)
}

/// `dreamd bench encode`: builds the engine (with its encoder) for pictures of `size`.
fn bench_encode(
    config: Option<PathBuf>,
    target: BenchTarget,
    batch: usize,
    size: &str,
    runs: usize,
) -> anyhow::Result<bench::DecodeReport> {
    let [channels, height, width] = parse_dims(size, "--size")?;
    anyhow::ensure!(
        channels == 3,
        "--size must be 3xHxW (RGB pictures), got {size:?}"
    );
    anyhow::ensure!(
        batch > 0 && runs > 0,
        "--batch and --runs must be at least 1"
    );
    let engine = bench_engine(config, target, width, height)?;
    bench::encode(
        &engine,
        &bench::DecodeOptions {
            batch,
            latent: engine.latent_shape(),
            warmup: 2,
            runs,
        },
    )
}

/// `dreamd bench decode`: builds the engine for the requested decoder at the latent's size.
fn bench_decode(
    config: Option<PathBuf>,
    target: BenchTarget,
    batch: usize,
    latent: &str,
    runs: usize,
) -> anyhow::Result<bench::DecodeReport> {
    let dims = parse_dims(latent, "--latent")?;
    anyhow::ensure!(
        batch > 0 && runs > 0,
        "--batch and --runs must be at least 1"
    );
    let engine = bench_engine(config, target, dims[2] * 8, dims[1] * 8)?;
    let shape = engine.latent_shape();
    anyhow::ensure!(
        shape.channels == dims[0],
        "decoder {} takes {}-channel latents, --latent asks for {}",
        engine.decoder_name(),
        shape.channels,
        dims[0]
    );
    bench::decode(
        &engine,
        &bench::DecodeOptions {
            batch,
            latent: shape,
            warmup: 2,
            runs,
        },
    )
}

/// `dreamd models list|verify`.
fn models(what: ModelsCommand) -> anyhow::Result<()> {
    use dreamd::engine::models;
    let (ModelsCommand::List { config } | ModelsCommand::Verify { config }) = &what;
    let (config, _) = daemon::load_config(config.as_deref())?;
    let dirs = models::search_dirs(config.generation.models_dir.as_deref());
    let found = models::list(&dirs);
    println!(
        "searched: {}",
        if dirs.is_empty() {
            "(no model folder exists)".to_string()
        } else {
            dirs.iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    anyhow::ensure!(
        !found.is_empty(),
        "no TAESD model files found (see models/README.md for how to get them)"
    );
    let mut bad = Vec::new();
    for model in &found {
        let name = model.family.file_name(model.part);
        match what {
            ModelsCommand::List { .. } => println!(
                "{name:32} {:>8.2} MB  {}",
                model.bytes as f64 / 1e6,
                model.path.display()
            ),
            ModelsCommand::Verify { .. } => match models::verify(model) {
                Ok(summary) => println!("ok    {name:32} {summary}"),
                Err(e) => {
                    println!("FAIL  {name:32} {e}");
                    bad.push(model.path.display().to_string());
                }
            },
        }
    }
    anyhow::ensure!(bad.is_empty(), "bad model files: {}", bad.join(", "));
    Ok(())
}

fn seconds(value: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(value)
        .ok()
        .filter(|d| !d.is_zero())
        .with_context(|| format!("a duration must be a positive number of seconds (got {value})"))
}

fn init(path: &std::path::Path, force: bool) -> anyhow::Result<()> {
    if path.exists() && !force {
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

async fn cancel_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with the duration or kill");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    shutdown.cancel();
}
