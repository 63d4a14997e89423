//! `dreamd models list|verify|pull`: model files on disk and their download.

use std::io::IsTerminal;
use std::path::PathBuf;

use dreamd::config::locate;
use dreamd::engine::model_files;
use dreamd::pull::{Manifest, Puller, BASE_URL_ENV};

/// The `dreamd models` subcommands.
#[derive(clap::Subcommand)]
pub enum ModelsCommand {
    /// Show which model files are found, where and through which setting, and which folders
    /// and files were skipped and why.
    List {
        /// Config file (for generation.models_dir and generation.comfyui_dir).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Load every model file found, check its tensors and run it once; exit 1 naming bad files.
    Verify {
        /// Config file (for generation.models_dir and generation.comfyui_dir).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Download model files (upstream .pth from GitHub by default, verified by git blob id; or
    /// Hugging Face diffusers folders with --from hf), keeping only verified files.
    Pull(PullArgs),
}

impl ModelsCommand {
    pub fn run(self) -> anyhow::Result<()> {
        match self {
            ModelsCommand::List { config } => list(config, false),
            ModelsCommand::Verify { config } => list(config, true),
            ModelsCommand::Pull(args) => args.run(),
        }
    }
}

/// `dreamd models list` (and `verify`, which also loads and runs every file found): where each
/// file was found, through which setting, and the folders and files passed over with the reason.
fn list(config: Option<PathBuf>, verify: bool) -> anyhow::Result<()> {
    let config = locate::load(config.as_deref())?.config;
    let diffusion = diffusion_model(&config, verify);
    let report = model_files::search_for(&config.generation);
    if !verify {
        if !report.skipped.is_empty() {
            println!("skipped:");
            for skipped in &report.skipped {
                println!(
                    "  {} ({}): {}",
                    skipped.path.display(),
                    skipped.origin,
                    skipped.reason
                );
            }
        }
        if !report.found.is_empty() {
            println!("found:");
        }
        for file in &report.found {
            println!(
                "  {:40} {:>8.2} MB  {:11}  {} (via {})",
                model_files::label(file),
                file.bytes as f64 / 1e6,
                file.format.to_string(),
                file.path.display(),
                file.origin
            );
        }
    }
    anyhow::ensure!(
        !report.found.is_empty(),
        "no TAESD model files found (`dreamd models list` shows where dreamd looked; \
         `dreamd models pull` downloads them; see models/README.md)"
    );
    if !verify {
        return diffusion.map_err(|e| anyhow::anyhow!("bad model files: {e}"));
    }
    println!(
        "verifying {} model files (`dreamd models list` shows where each was found)",
        report.found.len()
    );
    let mut bad = Vec::new();
    for file in &report.found {
        let name = model_files::label(file);
        match model_files::verify(file) {
            Ok(summary) => println!("ok    {name:32} {summary}  ({})", file.path.display()),
            Err(e) => {
                println!("FAIL  {name:32} {e}");
                bad.push(file.path.display().to_string());
            }
        }
    }
    if let Err(e) = &diffusion {
        bad.push(e.to_string());
    }
    anyhow::ensure!(bad.is_empty(), "bad model files: {}", bad.join(", "));
    Ok(())
}

/// The in-process diffusion model (`[diffusion] model_dir`), when the config dreams with it or
/// the folder exists: its files, and with `verify` a load and one UNet step. Prints what it
/// finds; the error names the folder or file at fault.
fn diffusion_model(config: &dreamd::config::Config, verify: bool) -> Result<(), String> {
    use dreamd::engine::diffusion::inventory;
    let d = &config.diffusion;
    let used = config.keyframes.source == dreamd::config::SourceKind::Diffusion;
    if !used && !d.model_dir.is_dir() {
        return Ok(());
    }
    let dir = d.model_dir.display();
    let found = match inventory::inventory(&d.model_dir, d.model) {
        Ok(found) => found,
        Err(e) => {
            println!("diffusion model (diffusion.model_dir {dir}): {e}");
            return Err(format!("diffusion model {dir}"));
        }
    };
    println!(
        "diffusion model (diffusion.model_dir {dir}): {}",
        found.kind.name()
    );
    for file in &found.files {
        println!(
            "  {:16} {:>10.2} MB  {}",
            file.component,
            file.bytes as f64 / 1e6,
            file.path.display()
        );
    }
    if verify {
        match inventory::verify(&d.model_dir, d.model) {
            Ok(summary) => println!("ok    diffusion model: {summary}"),
            Err(e) => {
                println!("FAIL  diffusion model: {e}");
                return Err(format!("diffusion model {dir}"));
            }
        }
    }
    Ok(())
}

/// Arguments of `dreamd models pull`.
#[derive(clap::Args)]
pub struct PullArgs {
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

impl PullArgs {
    fn run(self) -> anyhow::Result<()> {
        let manifest = match &self.manifest {
            Some(path) => Manifest::load(path)?,
            None => Manifest::official(),
        };
        let families = match (self.all, self.families.is_empty()) {
            (true, _) => Vec::new(),
            (false, true) => vec!["taesd".to_string()],
            (false, false) => self.families,
        };
        let files = manifest.select(&families, &self.from)?;
        let dest = match self.dir {
            Some(dir) => dir,
            None => locate::load(self.config.as_deref())?
                .config
                .generation
                .models_dir
                .unwrap_or_else(|| PathBuf::from("models")),
        };
        let source_base = manifest.source(&self.from)?.base_url.clone();
        let base_url = self
            .base_url
            .or_else(|| std::env::var(BASE_URL_ENV).ok().filter(|u| !u.is_empty()))
            .unwrap_or(source_base);
        println!(
            "pulling {} files from {base_url} into {}",
            files.len(),
            dest.display()
        );
        let puller = Puller::new(dest, base_url, self.force, std::io::stderr().is_terminal());
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
}
