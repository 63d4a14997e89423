//! Finding the TAESD weight files a user already has, and saying where each was found and
//! which folders were passed over and why.
//!
//! Users rarely have dreamd's own folder: ComfyUI keeps the upstream `.pth` files in
//! `ComfyUI/models/vae_approx/`, A1111 and Forge in `models/VAE-taesd/`, and diffusers users
//! have Hugging Face folders (`config.json` + `diffusion_pytorch_model.safetensors`, one file
//! holding encoder and decoder). [`search`] walks the candidate folders in a fixed order
//! ([`candidates`]) and reports, for every family member, the first file found; later copies and
//! folders that do not exist or hold nothing are listed in [`SearchReport::skipped`] so that
//! `dreamd models list` can explain itself. The search only looks at names and folders; loading
//! (and so checking) a file is [`super::taesd::weights::WeightFile::load`]'s job.
//!
//! The order:
//!
//! 1. `generation.models_dir` (config), 2. `$DREAMD_MODELS`, 3. `./models` — each as itself and
//!    its `taesd/` subfolder (dreamd's own layout), plus diffusers folders named after a family
//!    inside them (`models/taesdxl/config.json` …);
//! 4. `comfyui_dir` (config) and 5. `$COMFYUI_PATH` — a ComfyUI install: its
//!    `models/vae_approx/` (or the folder itself when it is already `models` or `vae_approx`);
//! 6. well-known install places under the home folder: ComfyUI (`~/ComfyUI`, `~/comfy/ComfyUI`,
//!    `~/Documents/ComfyUI`), A1111 and Forge (`~/stable-diffusion-webui{,-forge}/models/
//!    VAE-taesd`), and the Hugging Face cache (`~/.cache/huggingface/hub/models--madebyollin--
//!    <family>/snapshots/*`, or under `$HF_HOME/hub`).
//!
//! In one folder, `<family>_<part>.safetensors` is preferred to `<family>_<part>.pth`.
//!
//! What is done with a found file (loading it for the engine, `dreamd models verify`) is
//! [`super::model_files`]'s job.

use std::fmt;
use std::path::{Path, PathBuf};

use super::taesd::weights::Part;
use super::taesd::Family;

/// The file of a diffusers `AutoencoderTiny` folder holding both halves.
pub const DIFFUSERS_WEIGHTS: &str = "diffusion_pytorch_model.safetensors";
/// The config file that marks a diffusers folder.
pub const DIFFUSERS_CONFIG: &str = "config.json";

/// Why a folder is a candidate: the setting or convention that named it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// `generation.models_dir` in the config.
    ModelsDir,
    /// `$DREAMD_MODELS`.
    DreamdModelsEnv,
    /// `./models` in the working folder.
    LocalModels,
    /// `comfyui_dir` (config or command line).
    ComfyuiDir,
    /// `$COMFYUI_PATH`.
    ComfyuiEnv,
    /// A well-known ComfyUI / A1111 / Forge / Hugging Face cache location.
    WellKnown,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Origin::ModelsDir => "generation.models_dir",
            Origin::DreamdModelsEnv => "$DREAMD_MODELS",
            Origin::LocalModels => "./models",
            Origin::ComfyuiDir => "comfyui_dir",
            Origin::ComfyuiEnv => "$COMFYUI_PATH",
            Origin::WellKnown => "well-known location",
        })
    }
}

/// How files are laid out in a candidate folder.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Layout {
    /// `<family>_<part>.{safetensors,pth}` side by side.
    Flat,
    /// A diffusers folder for one family: `config.json` + `diffusion_pytorch_model.safetensors`.
    Diffusers { family: Family },
}

/// One folder the search looks in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub dir: PathBuf,
    pub origin: Origin,
    pub layout: Layout,
}

/// The file format of a found file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Safetensors,
    /// A PyTorch `.pth` checkpoint (read by [`super::pth`]).
    Pth,
    /// A diffusers `diffusion_pytorch_model.safetensors` (both halves in one file).
    Diffusers,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Safetensors => "safetensors",
            Format::Pth => ".pth",
            Format::Diffusers => "diffusers",
        })
    }
}

/// A model file found: which family member, where, and through which candidate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundFile {
    pub family: Family,
    pub part: Part,
    /// The file to hand to [`super::taesd::weights::WeightFile::load`] with `part`.
    pub path: PathBuf,
    pub format: Format,
    pub origin: Origin,
    /// Size on disk.
    pub bytes: u64,
}

/// Why a candidate folder or file was not used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// The folder does not exist.
    Missing,
    /// The path exists but is not a folder.
    NotAFolder,
    /// The folder could not be listed.
    Unreadable(String),
    /// The folder holds no file the search recognises.
    NoModelFiles,
    /// A diffusers folder lacks one of its two files.
    IncompleteDiffusers { missing: &'static str },
    /// This file would serve a family member already found earlier in the order.
    Shadowed { by: PathBuf },
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::Missing => f.write_str("does not exist"),
            SkipReason::NotAFolder => f.write_str("is not a folder"),
            SkipReason::Unreadable(e) => write!(f, "cannot be read: {e}"),
            SkipReason::NoModelFiles => f.write_str("holds no TAESD model files"),
            SkipReason::IncompleteDiffusers { missing } => {
                write!(f, "diffusers folder without {missing}")
            }
            SkipReason::Shadowed { by } => write!(f, "shadowed by {}", by.display()),
        }
    }
}

/// A candidate folder or file passed over, with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub path: PathBuf,
    pub origin: Origin,
    pub reason: SkipReason,
}

/// The outcome of [`search`]: found files in [`Family::ALL`] order (decoder before encoder), the
/// candidates looked at, in order, and what was passed over.
#[derive(Debug, Clone, Default)]
pub struct SearchReport {
    pub found: Vec<FoundFile>,
    pub searched: Vec<Candidate>,
    pub skipped: Vec<Skipped>,
}

impl SearchReport {
    /// The file found for `family`'s `part`, if any.
    pub fn find(&self, family: Family, part: Part) -> Option<&FoundFile> {
        self.found
            .iter()
            .find(|f| f.family == family && f.part == part)
    }
}

/// What the search starts from: settings, environment and folders. [`SearchInputs::from_env`]
/// fills it from the process; tests build it by hand.
#[derive(Debug, Clone, Default)]
pub struct SearchInputs {
    /// `generation.models_dir`.
    pub models_dir: Option<PathBuf>,
    /// `$DREAMD_MODELS`.
    pub dreamd_models: Option<PathBuf>,
    /// The working folder (for `./models`).
    pub cwd: Option<PathBuf>,
    /// A ComfyUI install named in the config or on the command line.
    pub comfyui_dir: Option<PathBuf>,
    /// `$COMFYUI_PATH`.
    pub comfyui_env: Option<PathBuf>,
    /// The home folder, for well-known locations (None: skip them).
    pub home: Option<PathBuf>,
    /// `$HF_HOME` (default `~/.cache/huggingface`).
    pub hf_home: Option<PathBuf>,
}

impl SearchInputs {
    /// Inputs from the configured folders and this process's environment (`$DREAMD_MODELS`,
    /// `$COMFYUI_PATH`, `$HOME`, `$HF_HOME`, the working folder).
    pub fn from_env(models_dir: Option<&Path>, comfyui_dir: Option<&Path>) -> Self {
        let var = |name| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        Self {
            models_dir: models_dir.map(Path::to_path_buf),
            dreamd_models: var("DREAMD_MODELS"),
            cwd: std::env::current_dir().ok(),
            comfyui_dir: comfyui_dir.map(Path::to_path_buf),
            comfyui_env: var("COMFYUI_PATH"),
            home: var("HOME").or_else(|| var("USERPROFILE")),
            hf_home: var("HF_HOME"),
        }
    }
}

/// The candidate folders, in search order (existing or not; [`search`] reports the missing).
pub fn candidates(inputs: &SearchInputs) -> Vec<Candidate> {
    let mut out = Vec::new();
    let flat = |dir: PathBuf, origin| Candidate {
        dir,
        origin,
        layout: Layout::Flat,
    };
    let own_roots = [
        (inputs.models_dir.clone(), Origin::ModelsDir),
        (inputs.dreamd_models.clone(), Origin::DreamdModelsEnv),
        (
            inputs.cwd.as_ref().map(|c| c.join("models")),
            Origin::LocalModels,
        ),
    ];
    for (root, origin) in own_roots {
        let Some(root) = root else { continue };
        // A root that is itself a diffusers folder named after its family.
        if let Some(family) = family_of_dir(&root) {
            if root.join(DIFFUSERS_CONFIG).is_file() {
                out.push(Candidate {
                    dir: root.clone(),
                    origin,
                    layout: Layout::Diffusers { family },
                });
            }
        }
        out.push(flat(root.clone(), origin));
        out.push(flat(root.join("taesd"), origin));
        for family in Family::ALL {
            let name = family.name();
            for dir in [root.join(name), root.join("taesd").join(name)] {
                if dir.join(DIFFUSERS_CONFIG).is_file() || dir.join(DIFFUSERS_WEIGHTS).is_file() {
                    out.push(Candidate {
                        dir,
                        origin,
                        layout: Layout::Diffusers { family },
                    });
                }
            }
        }
    }
    for (dir, origin) in [
        (inputs.comfyui_dir.clone(), Origin::ComfyuiDir),
        (inputs.comfyui_env.clone(), Origin::ComfyuiEnv),
    ] {
        if let Some(dir) = dir {
            out.push(flat(comfyui_vae_approx(&dir), origin));
        }
    }
    if let Some(home) = &inputs.home {
        for install in ["ComfyUI", "comfy/ComfyUI", "Documents/ComfyUI"] {
            out.push(flat(
                home.join(install).join("models/vae_approx"),
                Origin::WellKnown,
            ));
        }
        for install in ["stable-diffusion-webui", "stable-diffusion-webui-forge"] {
            out.push(flat(
                home.join(install).join("models/VAE-taesd"),
                Origin::WellKnown,
            ));
        }
    }
    let hf_hub = inputs
        .hf_home
        .clone()
        .or_else(|| inputs.home.as_ref().map(|h| h.join(".cache/huggingface")))
        .map(|h| h.join("hub"));
    if let Some(hub) = hf_hub {
        for family in Family::ALL {
            let snapshots = hub
                .join(format!("models--madebyollin--{}", family.name()))
                .join("snapshots");
            let mut revisions: Vec<PathBuf> = std::fs::read_dir(&snapshots)
                .map(|entries| {
                    entries
                        .filter_map(Result::ok)
                        .map(|e| e.path())
                        .filter(|p| p.is_dir())
                        .collect()
                })
                .unwrap_or_default();
            revisions.sort();
            for dir in revisions {
                out.push(Candidate {
                    dir,
                    origin: Origin::WellKnown,
                    layout: Layout::Diffusers { family },
                });
            }
        }
    }
    // The same folder named twice (e.g. models_dir = ./models) is searched once.
    let mut seen = std::collections::HashSet::new();
    out.retain(|c| seen.insert((c.dir.clone(), c.layout.clone())));
    out
}

/// A ComfyUI path's `vae_approx` folder: `<root>/models/vae_approx`, or `<dir>/vae_approx`
/// when given the `models` folder, or the folder itself when it is `vae_approx`.
fn comfyui_vae_approx(dir: &Path) -> PathBuf {
    match dir.file_name().and_then(|n| n.to_str()) {
        Some("vae_approx") => dir.to_path_buf(),
        Some("models") => dir.join("vae_approx"),
        _ => dir.join("models/vae_approx"),
    }
}

/// The family a folder is named after (`taesdxl`, `TAESDXL`, `madebyollin--taesdxl`).
fn family_of_dir(dir: &Path) -> Option<Family> {
    let name = dir.file_name()?.to_str()?.to_ascii_lowercase();
    Family::from_name(name.rsplit("--").next().unwrap_or(&name))
}

/// Searches every candidate of `inputs` in order: the first file for each family member wins.
pub fn search(inputs: &SearchInputs) -> SearchReport {
    let mut report = SearchReport {
        searched: candidates(inputs),
        ..SearchReport::default()
    };
    for candidate in report.searched.clone() {
        let skip = |reason| Skipped {
            path: candidate.dir.clone(),
            origin: candidate.origin,
            reason,
        };
        match std::fs::metadata(&candidate.dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                report.skipped.push(skip(SkipReason::Missing));
                continue;
            }
            Err(e) => {
                report
                    .skipped
                    .push(skip(SkipReason::Unreadable(e.to_string())));
                continue;
            }
            Ok(meta) if !meta.is_dir() => {
                report.skipped.push(skip(SkipReason::NotAFolder));
                continue;
            }
            Ok(_) => {}
        }
        let files = match files_in(&candidate) {
            Ok(files) => files,
            Err(reason) => {
                report.skipped.push(skip(reason));
                continue;
            }
        };
        if files.is_empty() {
            report.skipped.push(skip(SkipReason::NoModelFiles));
        }
        for (family, part, path, format) in files {
            if let Some(earlier) = report.find(family, part) {
                report.skipped.push(Skipped {
                    reason: SkipReason::Shadowed {
                        by: earlier.path.clone(),
                    },
                    path,
                    origin: candidate.origin,
                });
                continue;
            }
            let bytes = std::fs::metadata(&path).map_or(0, |m| m.len());
            report.found.push(FoundFile {
                family,
                part,
                path,
                format,
                origin: candidate.origin,
                bytes,
            });
        }
    }
    let rank = |f: &FoundFile| {
        let family = Family::ALL.iter().position(|n| *n == f.family);
        (family, f.part == Part::Encoder)
    };
    report.found.sort_by_key(rank);
    report
}

type Files = Vec<(Family, Part, PathBuf, Format)>;

/// The recognised files of one candidate.
fn files_in(candidate: &Candidate) -> Result<Files, SkipReason> {
    let mut out = Vec::new();
    match candidate.layout {
        Layout::Diffusers { family } => {
            let weights = candidate.dir.join(DIFFUSERS_WEIGHTS);
            for (file, name) in [
                (&weights, DIFFUSERS_WEIGHTS),
                (&candidate.dir.join(DIFFUSERS_CONFIG), DIFFUSERS_CONFIG),
            ] {
                if !file.is_file() {
                    return Err(SkipReason::IncompleteDiffusers { missing: name });
                }
            }
            for part in [Part::Decoder, Part::Encoder] {
                out.push((family, part, weights.clone(), Format::Diffusers));
            }
        }
        Layout::Flat => {
            std::fs::read_dir(&candidate.dir).map_err(|e| SkipReason::Unreadable(e.to_string()))?;
            for family in Family::ALL {
                for part in [Part::Decoder, Part::Encoder] {
                    let stem = family.file_stem(part);
                    let found = [("safetensors", Format::Safetensors), ("pth", Format::Pth)]
                        .into_iter()
                        .map(|(ext, format)| (candidate.dir.join(format!("{stem}.{ext}")), format))
                        .find(|(path, _)| path.is_file());
                    if let Some((path, format)) = found {
                        out.push((family, part, path, format));
                    }
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"x").unwrap();
    }

    fn only(inputs: SearchInputs) -> SearchReport {
        search(&inputs)
    }

    #[test]
    fn order_is_models_dir_env_local_then_comfyui_then_well_known() {
        let t = tempfile::tempdir().unwrap();
        let p = |s: &str| t.path().join(s);
        let inputs = SearchInputs {
            models_dir: Some(p("conf")),
            dreamd_models: Some(p("env")),
            cwd: Some(p("cwd")),
            comfyui_dir: Some(p("Comfy")),
            comfyui_env: Some(p("ComfyEnv/models")),
            home: Some(p("home")),
            hf_home: None,
        };
        let dirs: Vec<(PathBuf, Origin)> = candidates(&inputs)
            .into_iter()
            .map(|c| (c.dir, c.origin))
            .collect();
        let expected = [
            (p("conf"), Origin::ModelsDir),
            (p("conf/taesd"), Origin::ModelsDir),
            (p("env"), Origin::DreamdModelsEnv),
            (p("env/taesd"), Origin::DreamdModelsEnv),
            (p("cwd/models"), Origin::LocalModels),
            (p("cwd/models/taesd"), Origin::LocalModels),
            (p("Comfy/models/vae_approx"), Origin::ComfyuiDir),
            (p("ComfyEnv/models/vae_approx"), Origin::ComfyuiEnv),
            (p("home/ComfyUI/models/vae_approx"), Origin::WellKnown),
            (p("home/comfy/ComfyUI/models/vae_approx"), Origin::WellKnown),
            (
                p("home/Documents/ComfyUI/models/vae_approx"),
                Origin::WellKnown,
            ),
            (
                p("home/stable-diffusion-webui/models/VAE-taesd"),
                Origin::WellKnown,
            ),
            (
                p("home/stable-diffusion-webui-forge/models/VAE-taesd"),
                Origin::WellKnown,
            ),
        ];
        assert_eq!(dirs, expected);
    }

    #[test]
    fn first_file_wins_and_later_copies_are_reported_as_shadowed() {
        let t = tempfile::tempdir().unwrap();
        let p = |s: &str| t.path().join(s);
        touch(&p("mine/taesd_decoder.safetensors"));
        touch(&p("mine/taesd_decoder.pth"));
        touch(&p("ComfyUI/models/vae_approx/taesd_decoder.pth"));
        touch(&p("ComfyUI/models/vae_approx/taesd_encoder.pth"));
        touch(&p("ComfyUI/models/vae_approx/taef1_decoder.pth"));
        let report = only(SearchInputs {
            models_dir: Some(p("mine")),
            comfyui_dir: Some(p("ComfyUI")),
            ..SearchInputs::default()
        });
        let found: Vec<(Family, Part, PathBuf, Format, Origin)> = report
            .found
            .iter()
            .map(|f| (f.family, f.part, f.path.clone(), f.format, f.origin))
            .collect();
        assert_eq!(
            found,
            [
                (
                    Family::Taesd,
                    Part::Decoder,
                    p("mine/taesd_decoder.safetensors"),
                    Format::Safetensors,
                    Origin::ModelsDir
                ),
                (
                    Family::Taesd,
                    Part::Encoder,
                    p("ComfyUI/models/vae_approx/taesd_encoder.pth"),
                    Format::Pth,
                    Origin::ComfyuiDir
                ),
                (
                    Family::Taef1,
                    Part::Decoder,
                    p("ComfyUI/models/vae_approx/taef1_decoder.pth"),
                    Format::Pth,
                    Origin::ComfyuiDir
                ),
            ]
        );
        assert!(report.skipped.contains(&Skipped {
            path: p("ComfyUI/models/vae_approx/taesd_decoder.pth"),
            origin: Origin::ComfyuiDir,
            reason: SkipReason::Shadowed {
                by: p("mine/taesd_decoder.safetensors")
            },
        }));
        assert!(report.skipped.contains(&Skipped {
            path: p("mine/taesd"),
            origin: Origin::ModelsDir,
            reason: SkipReason::Missing,
        }));
        assert_eq!(report.find(Family::Taef1, Part::Encoder), None);
    }

    #[test]
    fn a1111_forge_and_home_comfyui_folders_are_found() {
        let t = tempfile::tempdir().unwrap();
        let home = t.path().join("home");
        touch(&home.join("stable-diffusion-webui-forge/models/VAE-taesd/taesdxl_decoder.pth"));
        touch(&home.join("comfy/ComfyUI/models/vae_approx/taesd3_encoder.pth"));
        std::fs::create_dir_all(home.join("ComfyUI/models/vae_approx")).unwrap();
        std::fs::write(home.join("stable-diffusion-webui"), b"a file").unwrap();
        let report = only(SearchInputs {
            home: Some(home.clone()),
            ..SearchInputs::default()
        });
        assert_eq!(
            report
                .find(Family::Taesdxl, Part::Decoder)
                .map(|f| f.origin),
            Some(Origin::WellKnown)
        );
        assert!(report.find(Family::Taesd3, Part::Encoder).is_some());
        let reason = |path: PathBuf| {
            report
                .skipped
                .iter()
                .find(|s| s.path == path)
                .map(|s| s.reason.to_string())
        };
        assert_eq!(
            reason(home.join("ComfyUI/models/vae_approx")).as_deref(),
            Some("holds no TAESD model files")
        );
        let under_a_file = reason(home.join("stable-diffusion-webui/models/VAE-taesd"));
        assert!(
            under_a_file
                .as_deref()
                .is_some_and(|r| r.starts_with("cannot be read")),
            "{under_a_file:?}"
        );
    }

    #[test]
    fn diffusers_folders_serve_both_halves() {
        let t = tempfile::tempdir().unwrap();
        let p = |s: &str| t.path().join(s);
        touch(&p("models/taesdxl/config.json"));
        touch(&p("models/taesdxl/diffusion_pytorch_model.safetensors"));
        touch(&p("models/taef1/config.json"));
        let hf = p("hf/hub/models--madebyollin--taesd3/snapshots/abc123");
        touch(&hf.join("config.json"));
        touch(&hf.join("diffusion_pytorch_model.safetensors"));
        let report = only(SearchInputs {
            cwd: Some(t.path().to_path_buf()),
            hf_home: Some(p("hf")),
            ..SearchInputs::default()
        });
        for part in [Part::Decoder, Part::Encoder] {
            let found = report.find(Family::Taesdxl, part).unwrap();
            assert_eq!(found.format, Format::Diffusers);
            assert_eq!(
                found.path,
                p("models/taesdxl/diffusion_pytorch_model.safetensors")
            );
            assert_eq!(
                report.find(Family::Taesd3, part).map(|f| f.path.clone()),
                Some(hf.join("diffusion_pytorch_model.safetensors"))
            );
        }
        assert!(report.skipped.contains(&Skipped {
            path: p("models/taef1"),
            origin: Origin::LocalModels,
            reason: SkipReason::IncompleteDiffusers {
                missing: DIFFUSERS_WEIGHTS
            },
        }));
        // A models_dir that is itself a diffusers folder.
        let report = only(SearchInputs {
            models_dir: Some(p("models/taesdxl")),
            ..SearchInputs::default()
        });
        assert_eq!(
            report
                .find(Family::Taesdxl, Part::Encoder)
                .map(|f| f.origin),
            Some(Origin::ModelsDir)
        );
    }

    #[test]
    fn comfyui_paths_may_name_the_root_models_or_vae_approx() {
        let root = Path::new("/x/ComfyUI");
        let want = root.join("models/vae_approx");
        assert_eq!(comfyui_vae_approx(root), want);
        assert_eq!(comfyui_vae_approx(&root.join("models")), want);
        assert_eq!(comfyui_vae_approx(&want), want);
    }
}
