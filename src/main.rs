//! The `dreamd` command line: `run`, `ctl`, `init`, `models`, `bench`, `soak`, `analyze`.

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
        /// Check the config, models and keyframe source, then exit (0 when all is well).
        #[arg(long)]
        check: bool,
        /// HTTP address and port (overrides server.bind), e.g. 0.0.0.0:8765; port 0 picks one.
        #[arg(long, value_name = "IP:PORT")]
        bind: Option<String>,
    },
    /// Talk to a running daemon over HTTP: status, pause, resume, skip, next-theme.
    Ctl {
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
        action: CtlAction,
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
    /// List, verify or download model files (TAESD family).
    Models {
        #[command(subcommand)]
        what: ModelsCommand,
    },
    /// Run the real daemon on a simulated clock (preview decoder, 128x64, fast display) for
    /// hours of simulated time and check memory, retention, stalls and log rotation; exit 1
    /// naming the checks that failed.
    Soak {
        /// Config file to start from (decoder, size, retention, logs, output and server are
        /// overridden; display.target_fps is the simulated rate).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Simulated hours to run.
        #[arg(long, default_value_t = 24.0)]
        hours: f64,
        /// Simulated seconds per wall-clock second (display at target_fps x speed).
        #[arg(long, conflicts_with = "fps")]
        speed: Option<f64>,
        /// Display rate in wall-clock frames per second (instead of --speed).
        #[arg(long)]
        fps: Option<f64>,
        /// Largest allowed memory growth, in percent, from after warm-up to the end.
        #[arg(long, default_value_t = 5.0, value_name = "PCT")]
        max_rss_growth: f64,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Measure the daemon.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
}

/// What `dreamd ctl` does. Control needs the token (DREAMD_TOKEN, else server.token) when the
/// daemon has one.
#[derive(Subcommand, Clone, Copy)]
enum CtlAction {
    /// Print the daemon's state, display, buffer and generation figures.
    Status,
    /// Stop generating and hold the display on the current frame.
    Pause,
    /// Continue after a pause.
    Resume,
    /// Jump to the next keyframe.
    Skip,
    /// Move the keyframe source to its next theme.
    NextTheme,
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
    /// Download model files, keeping only those whose sha256 matches the manifest's pin.
    Pull(PullArgs),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Frames/s and encode→decode PSNR for each decode_divisor, on real pictures.
    Resolution {
        /// Config file to start from (decoder, device, output size, models_dir).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Decoder (overrides generation.decoder): taesd, taesdxl, taesd3, taef1.
        #[arg(long, default_value = "taesd")]
        decoder: String,
        /// Folder of pictures (default: keyframes.images_dir).
        #[arg(long)]
        images: Option<PathBuf>,
        /// Divisors to compare, comma-separated.
        #[arg(long, default_value = "1,2,4", value_delimiter = ',')]
        divisors: Vec<u32>,
        /// Latents per timed decode call.
        #[arg(long, default_value_t = 10)]
        batch: usize,
        /// Timed runs per divisor (the median is reported).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Print JSON instead of a Markdown table.
        #[arg(long)]
        json: bool,
    },
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
    /// Display pacing idle and under HTTP load (SSE clients, stalled clients, /frame/current
    /// polling), in one run of the real daemon.
    Http {
        /// Config file to start from (gate, output, log folders and bind are overridden).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Live-event clients that read their stream.
        #[arg(long, default_value_t = 200)]
        clients: usize,
        /// Extra live-event clients that connect and never read.
        #[arg(long, default_value_t = 20)]
        stalled: usize,
        /// Tasks polling /frame/current.
        #[arg(long, default_value_t = 10)]
        pollers: usize,
        /// Milliseconds between one poller's requests.
        #[arg(long, default_value_t = 100)]
        poll_ms: u64,
        /// Seconds measured idle, and again loaded.
        #[arg(long, default_value_t = 30.0)]
        seconds: f64,
        /// Alternating idle/loaded rounds the seconds are split into.
        #[arg(long, default_value_t = 6)]
        rounds: usize,
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
            config: config_path,
            output,
            duration,
            check,
            bind,
        } => {
            let (mut config, origin) = daemon::load_config(config_path.as_deref())?;
            if let Some(output) = output {
                config.paths.output_dir = output;
            }
            if let Some(bind) = bind {
                config.server.bind = bind;
                config.validate().context("--bind")?;
            }
            if check {
                println!("{origin}");
                println!("{}", daemon::check(&config)?);
                return Ok(());
            }
            let duration = duration.map(seconds).transpose()?;
            let _logs = logging::init(&config.logging, &config.paths.log_dir)?;
            tracing::info!("{origin}");
            let path = dreamd::reload::config_file(config_path.as_deref());
            runtime()?
                .block_on_with_signals(|shutdown| daemon::run(config, path, shutdown, duration))?;
            Ok(())
        }
        Command::Soak {
            config,
            hours,
            speed,
            fps,
            max_rss_growth,
            json,
        } => soak(config, hours, speed, fps, max_rss_growth, json),
        Command::Ctl {
            url,
            config,
            json,
            action,
        } => {
            let (config, _) = daemon::load_config(config.as_deref())?;
            let url = match url {
                Some(url) => url,
                None => dreamd::ctl::url_from_config(&config.server)?,
            };
            let token = dreamd::server::auth::resolve_token(
                config.server.token.as_deref(),
                std::env::var("DREAMD_TOKEN").ok().as_deref(),
            );
            let action = match action {
                CtlAction::Status => dreamd::ctl::Action::Status,
                CtlAction::Pause => dreamd::ctl::Action::Pause,
                CtlAction::Resume => dreamd::ctl::Action::Resume,
                CtlAction::Skip => dreamd::ctl::Action::Skip,
                CtlAction::NextTheme => dreamd::ctl::Action::NextTheme,
            };
            print!(
                "{}",
                dreamd::ctl::run(&url, token.as_deref(), action, json)?
            );
            Ok(())
        }
        Command::Bench {
            what:
                BenchCommand::Http {
                    config,
                    clients,
                    stalled,
                    pollers,
                    poll_ms,
                    seconds: secs,
                    rounds,
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
            anyhow::ensure!(poll_ms > 0, "--poll-ms must be at least 1");
            let _logs = logging::init(
                &config.logging,
                &std::env::temp_dir().join("dreamd-bench-logs"),
            )?;
            let options = dreamd::bench_http::HttpLoadOptions {
                clients,
                stalled,
                pollers,
                poll_every: Duration::from_millis(poll_ms),
                seconds: secs,
                rounds,
                warmup_seconds: 3.0,
            };
            let report =
                runtime()?.block_on_with_signals(|_| dreamd::bench_http::run(config, options))?;
            print_report(json, &report, report.to_text())
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
            print_report(json, &report, report.to_text())
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
            print_report(json, &report, report.to_text())
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
            print_report(json, &report, report.to_text())
        }
        Command::Bench {
            what:
                BenchCommand::Resolution {
                    config,
                    decoder,
                    images,
                    divisors,
                    batch,
                    runs,
                    json,
                },
        } => {
            let (mut config, _) = daemon::load_config(config.as_deref())?;
            config.generation.decoder = dreamd::config::Config::parse(
                &format!("[generation]\ndecoder = {decoder:?}"),
                "--decoder",
            )?
            .generation
            .decoder;
            let options = bench::resolution::ResolutionOptions {
                images: images.unwrap_or_else(|| config.keyframes.images_dir.clone()),
                divisors,
                batch,
                runs,
            };
            let report = bench::resolution::resolution(&config, &options)?;
            print_report(json, &report, report.to_text())
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

/// `dreamd models list|verify|pull`.
fn models(what: ModelsCommand) -> anyhow::Result<()> {
    use dreamd::engine::models;
    let (config, verify) = match what {
        ModelsCommand::List { config } => (config, false),
        ModelsCommand::Verify { config } => (config, true),
        ModelsCommand::Pull(args) => return pull(args),
    };
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
        if !verify {
            println!(
                "{name:32} {:>8.2} MB  {}",
                model.bytes as f64 / 1e6,
                model.path.display()
            );
            continue;
        }
        match models::verify(model) {
            Ok(summary) => println!("ok    {name:32} {summary}"),
            Err(e) => {
                println!("FAIL  {name:32} {e}");
                bad.push(model.path.display().to_string());
            }
        }
    }
    anyhow::ensure!(bad.is_empty(), "bad model files: {}", bad.join(", "));
    Ok(())
}

#[derive(clap::Args)]
struct PullArgs {
    /// Families to fetch (taesd, taesdxl, taesd3, taef1, taef2; default taesd).
    families: Vec<String>,
    /// Where to fetch from: `github` (upstream .pth files, verified by git blob id) or `hf`
    /// (Hugging Face diffusers folders).
    #[arg(long, value_name = "SOURCE", default_value = dreamd::pull::DEFAULT_SOURCE)]
    from: String,
    /// Fetch every family in the manifest.
    #[arg(long, conflicts_with = "families")]
    all: bool,
    /// Folder to write into (default: generation.models_dir, else ./models).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Config file (for generation.models_dir).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Fetch relative URLs from this base (a mirror); default: $DREAMD_MODELS_URL, else the
    /// manifest's base_url.
    #[arg(long, value_name = "URL")]
    base_url: Option<String>,
    /// Pins to use instead of the embedded official manifest.
    #[arg(long, value_name = "FILE")]
    manifest: Option<PathBuf>,
    /// Download even files already present with the right hash.
    #[arg(long)]
    force: bool,
}

/// `dreamd models pull`.
fn pull(args: PullArgs) -> anyhow::Result<()> {
    use dreamd::pull::{Manifest, Puller, BASE_URL_ENV};
    use std::io::IsTerminal;
    let manifest = match &args.manifest {
        Some(path) => Manifest::load(path)?,
        None => Manifest::official(),
    };
    let families = match (args.all, args.families.is_empty()) {
        (true, _) => Vec::new(),
        (false, true) => vec!["taesd".to_string()],
        (false, false) => args.families,
    };
    let files = manifest.select(&families, &args.from)?;
    let dest = match args.dir {
        Some(dir) => dir,
        None => {
            let (config, _) = daemon::load_config(args.config.as_deref())?;
            config
                .generation
                .models_dir
                .unwrap_or_else(|| PathBuf::from("models"))
        }
    };
    let source_base = manifest.source(&args.from)?.base_url.clone();
    let base_url = args
        .base_url
        .or_else(|| std::env::var(BASE_URL_ENV).ok().filter(|u| !u.is_empty()))
        .unwrap_or(source_base);
    println!(
        "pulling {} files from {base_url} into {}",
        files.len(),
        dest.display()
    );
    let puller = Puller::new(dest, base_url, args.force, std::io::stderr().is_terminal());
    let mut failed = Vec::new();
    for file in files {
        match puller.pull(&manifest, file) {
            Ok(pulled) => println!("ok    {:32} {}", file.display_name(), pulled.summary(file)),
            Err(e) => {
                println!("FAIL  {:32} {e}", file.display_name());
                failed.push(file.display_name());
            }
        }
    }
    anyhow::ensure!(failed.is_empty(), "could not pull: {}", failed.join(", "));
    Ok(())
}

/// `dreamd soak`: plans the run, sends its logs into the soak's folder, runs it, prints the
/// report and fails naming the checks that failed.
fn soak(
    config: Option<PathBuf>,
    hours: f64,
    speed: Option<f64>,
    fps: Option<f64>,
    max_rss_growth: f64,
    json: bool,
) -> anyhow::Result<()> {
    use bench::soak;
    let (config, _) = daemon::load_config(config.as_deref())?;
    let rate = match fps {
        Some(fps) => soak::Rate::Fps(fps),
        None => soak::Rate::Speed(speed.unwrap_or(soak::DEFAULT_SPEED)),
    };
    let options = soak::SoakOptions {
        hours,
        rate,
        sample_every: Duration::from_secs(1),
        rss_growth: max_rss_growth / 100.0,
    };
    // Declared before the log guards, so the folder goes after the logs are flushed.
    let plan = soak::plan(config, &options)?;
    let logs = logging::init(&plan.config.logging, &plan.config.paths.log_dir)?;
    let report = runtime()?.block_on_with_signals(|interrupt| soak::run(&plan, interrupt))?;
    drop(logs);
    print_report(json, &report, report.to_text())?;
    anyhow::ensure!(report.passed, "soak failed: {}", report.failed.join(", "));
    Ok(())
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
