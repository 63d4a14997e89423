//! `dreamd models pull`: downloads model files named by a manifest and keeps only those that
//! verify against their pin.
//!
//! The TAESD family is published upstream (github.com/madebyollin/taesd) only as PyTorch `.pth`
//! files, and on Hugging Face as diffusers folders (`diffusion_pytorch_model.safetensors` +
//! `config.json`). The manifest (`assets/models.toml`, embedded; or `--manifest FILE`) names
//! sources (`github`, the default, at a pinned commit; `hf`) and files, each pinned by one of:
//!
//! - `git_blob`: the git blob id, `sha1("blob <len>\0" + bytes)` (what `git hash-object`
//!   prints and what the upstream tree lists), so a raw download at a pinned commit verifies
//!   without a sha256 published in advance;
//! - `sha256`: the file's sha256;
//! - neither: the file must parse as what it claims to be (a diffusers `AutoencoderTiny`
//!   safetensors whose encoder and decoder load, or its `config.json`), and match `bytes` when
//!   given.
//!
//! A download is read into memory (the files are a few MB; a size limit guards against a
//! misbehaving server), hashed, and written with [`write_atomic`] only when it verifies — so a
//! failed, truncated or tampered download leaves nothing behind, and a file already present and
//! valid is not fetched again.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::atomic_file::write_atomic;

/// The embedded manifest of official files.
pub const OFFICIAL_MANIFEST: &str = include_str!("../assets/models.toml");
/// Environment variable that overrides the selected source's `base_url` (a mirror).
pub const BASE_URL_ENV: &str = "DREAMD_MODELS_URL";
/// The source used when none is named.
pub const DEFAULT_SOURCE: &str = "github";
/// Largest download accepted for a file whose size is not pinned.
pub const UNPINNED_MAX_BYTES: u64 = 256 << 20;

/// Connect timeout for one download.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest a download may stall between reads.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// What can go wrong reading a manifest or pulling a file.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("manifest {origin}: {reason}")]
    Manifest { origin: String, reason: String },
    #[error("{url}: {reason}")]
    Download { url: String, reason: String },
    #[error(
        "{name}: {kind} mismatch (expected {expected}, got {actual}); the download was discarded"
    )]
    Mismatch {
        name: String,
        kind: &'static str,
        expected: String,
        actual: String,
    },
    #[error("{name}: the download does not load ({reason}); it was discarded")]
    Invalid { name: String, reason: String },
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
}

/// Where a source's files come from.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// Base for relative file URLs.
    pub base_url: String,
    /// One line for `models pull` output and docs.
    #[serde(default)]
    pub description: String,
}

/// One pinned file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ManifestFile {
    /// File name on disk.
    pub name: String,
    /// Subfolder of the destination (a diffusers folder such as `taesd`), if any.
    #[serde(default)]
    pub dir: Option<String>,
    /// Family it belongs to (`taesd`, `taef1`, …), used to select files.
    pub family: String,
    /// The source it is fetched from (a key of `[source]`; default `github`).
    #[serde(default = "default_source")]
    pub source: String,
    /// Expected size in bytes, when known.
    #[serde(default)]
    pub bytes: Option<u64>,
    /// Expected git blob id (40 lowercase hex digits), when known.
    #[serde(default)]
    pub git_blob: Option<String>,
    /// Expected sha256 (64 lowercase hex digits), when known.
    #[serde(default)]
    pub sha256: Option<String>,
    /// Where to fetch it: absolute, or relative to the source's `base_url` (default: `name`).
    #[serde(default)]
    pub url: Option<String>,
}

fn default_source() -> String {
    DEFAULT_SOURCE.to_string()
}

impl ManifestFile {
    /// The path under the destination folder (`dir/name` or `name`).
    pub fn relative_path(&self) -> PathBuf {
        match &self.dir {
            Some(dir) => Path::new(dir).join(&self.name),
            None => PathBuf::from(&self.name),
        }
    }

    /// `dir/name` or `name`, for messages.
    pub fn display_name(&self) -> String {
        match &self.dir {
            Some(dir) => format!("{dir}/{}", self.name),
            None => self.name.clone(),
        }
    }

    /// How a download of this file is verified, for messages.
    pub fn pin_kind(&self) -> &'static str {
        match (&self.git_blob, &self.sha256) {
            (Some(_), _) => "git blob id",
            (None, Some(_)) => "sha256",
            (None, None) => "load check",
        }
    }

    /// Whether `bytes` match every pin (git blob id, sha256, size); Err names the first that
    /// does not, with expected and actual values.
    pub fn check(&self, bytes: &[u8]) -> Result<(), PullError> {
        let mismatch = |kind, expected: &str, actual: String| PullError::Mismatch {
            name: self.display_name(),
            kind,
            expected: expected.to_string(),
            actual,
        };
        if let Some(expected) = &self.git_blob {
            let actual = git_blob_hex(bytes);
            if &actual != expected {
                return Err(mismatch("git blob id", expected, actual));
            }
        }
        if let Some(expected) = &self.sha256 {
            let actual = sha256_hex(bytes);
            if &actual != expected {
                return Err(mismatch("sha256", expected, actual));
            }
        }
        if let Some(expected) = self.bytes {
            if expected != bytes.len() as u64 {
                return Err(mismatch(
                    "size",
                    &expected.to_string(),
                    bytes.len().to_string(),
                ));
            }
        }
        if self.git_blob.is_none() && self.sha256.is_none() {
            verify_unpinned(&self.name, bytes).map_err(|reason| PullError::Invalid {
                name: self.display_name(),
                reason,
            })?;
        }
        Ok(())
    }
}

/// A list of sources and pinned files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Sources by name (`github`, `hf`, …).
    pub source: std::collections::BTreeMap<String, Source>,
    #[serde(rename = "file")]
    pub files: Vec<ManifestFile>,
}

fn is_hex(text: &str, len: usize) -> bool {
    text.len() == len
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && !name.starts_with('.') && !name.contains(['/', '\\'])
}

impl Manifest {
    /// Parses and checks a manifest; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, PullError> {
        let fail = |reason: String| PullError::Manifest {
            origin: origin.to_string(),
            reason,
        };
        let manifest: Manifest = toml::from_str(text).map_err(|e| fail(e.to_string()))?;
        for file in &manifest.files {
            if !is_plain_name(&file.name) || !file.dir.as_deref().is_none_or(is_plain_name) {
                return Err(fail(format!(
                    "file name {:?} is not a plain file name",
                    file.display_name()
                )));
            }
            if let Some(hash) = file.sha256.as_deref().filter(|h| !is_hex(h, 64)) {
                return Err(fail(format!(
                    "{}: sha256 must be 64 lowercase hex digits (got {hash:?})",
                    file.name
                )));
            }
            if let Some(hash) = file.git_blob.as_deref().filter(|h| !is_hex(h, 40)) {
                return Err(fail(format!(
                    "{}: git_blob must be 40 lowercase hex digits (got {hash:?})",
                    file.name
                )));
            }
            if !manifest.source.contains_key(&file.source) {
                return Err(fail(format!(
                    "{}: unknown source {:?} (known: {})",
                    file.name,
                    file.source,
                    manifest.source_names().join(", ")
                )));
            }
        }
        Ok(manifest)
    }

    /// The embedded manifest of official files.
    pub fn official() -> Self {
        // A test parses the embedded manifest, so this cannot fail at run time.
        Self::parse(OFFICIAL_MANIFEST, "assets/models.toml (embedded)")
            .unwrap_or_else(|e| unreachable!("{e}"))
    }

    /// Loads a manifest file.
    pub fn load(path: &Path) -> Result<Self, PullError> {
        let text = std::fs::read_to_string(path).map_err(|error| PullError::Io {
            path: path.to_path_buf(),
            error,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// The source names.
    pub fn source_names(&self) -> Vec<&str> {
        self.source.keys().map(String::as_str).collect()
    }

    /// The named source, or an error listing the known ones.
    pub fn source(&self, name: &str) -> Result<&Source, PullError> {
        self.source.get(name).ok_or_else(|| PullError::Manifest {
            origin: "selection".to_string(),
            reason: format!(
                "unknown source {name:?} (known: {})",
                self.source_names().join(", ")
            ),
        })
    }

    /// The families this manifest knows, in manifest order.
    pub fn families(&self) -> Vec<&str> {
        let mut families: Vec<&str> = Vec::new();
        for file in &self.files {
            if !families.contains(&file.family.as_str()) {
                families.push(&file.family);
            }
        }
        families
    }

    /// The files of the named families (all files when `families` is empty) from `source`; an
    /// unknown family or source, or a family the source does not carry, is an error naming
    /// what is known.
    pub fn select(
        &self,
        families: &[String],
        source: &str,
    ) -> Result<Vec<&ManifestFile>, PullError> {
        self.source(source)?;
        let known = self.families();
        let fail = |reason| PullError::Manifest {
            origin: "selection".to_string(),
            reason,
        };
        if let Some(unknown) = families.iter().find(|f| !known.contains(&f.as_str())) {
            return Err(fail(format!(
                "unknown family {unknown:?} (known: {})",
                known.join(", ")
            )));
        }
        let from_source = |family: &str| {
            self.files
                .iter()
                .any(|f| f.family == family && f.source == source)
        };
        if let Some(missing) = families.iter().find(|f| !from_source(f)) {
            let carried: Vec<&str> = known.iter().copied().filter(|f| from_source(f)).collect();
            return Err(fail(format!(
                "source {source:?} has no {missing} files (it has: {})",
                carried.join(", ")
            )));
        }
        Ok(self
            .files
            .iter()
            .filter(|f| f.source == source)
            .filter(|f| families.is_empty() || families.contains(&f.family))
            .collect())
    }

    /// The URL of `file`, with `base_url` (ending in `/`) in front of a relative one.
    pub fn url_of(&self, file: &ManifestFile, base_url: &str) -> String {
        let relative = file.url.as_deref().unwrap_or(&file.name);
        if relative.contains("://") {
            relative.to_string()
        } else {
            format!("{}/{relative}", base_url.trim_end_matches('/'))
        }
    }
}

/// What happened to one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pulled {
    /// Already present and valid; not fetched.
    AlreadyPresent,
    /// Downloaded and verified (`replaced`: an invalid file was there before).
    Downloaded { replaced: bool, bytes: u64 },
}

impl Pulled {
    /// The line `models pull` prints for `file`.
    pub fn summary(&self, file: &ManifestFile) -> String {
        let pin = file.pin_kind();
        match self {
            Pulled::AlreadyPresent => format!("already present, {pin} matches"),
            Pulled::Downloaded { replaced, bytes } => format!(
                "downloaded {:.2} MB, {pin} verified{}",
                *bytes as f64 / 1e6,
                if *replaced {
                    " (replaced a file that did not verify)"
                } else {
                    ""
                }
            ),
        }
    }
}

/// Lowercase hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// The git blob id of `bytes`: lowercase hex SHA-1 of `"blob <len>\0"` followed by the bytes,
/// as `git hash-object` prints it.
pub fn git_blob_hex(bytes: &[u8]) -> String {
    let mut sha1 = Sha1::default();
    sha1.update(format!("blob {}\0", bytes.len()).as_bytes());
    sha1.update(bytes);
    hex(&sha1.finish())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-1 (FIPS 180-4), only for git blob ids: git names objects by SHA-1, and the pins are the
/// upstream tree's entries. Integrity rests on the pinned commit's ids, as with `git clone`.
#[derive(Clone)]
struct Sha1 {
    state: [u32; 5],
    block: Vec<u8>,
    length: u64,
}

impl Default for Sha1 {
    fn default() -> Self {
        Self {
            state: [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0],
            block: Vec::with_capacity(64),
            length: 0,
        }
    }
}

impl Sha1 {
    fn update(&mut self, mut data: &[u8]) {
        self.length = self.length.wrapping_add(data.len() as u64);
        while !data.is_empty() {
            let take = (64 - self.block.len()).min(data.len());
            self.block.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.block.len() == 64 {
                let block: [u8; 64] = std::mem::take(&mut self.block)
                    .try_into()
                    .unwrap_or([0; 64]);
                self.compress(&block);
            }
        }
    }

    fn finish(mut self) -> [u8; 20] {
        let bits = self.length.wrapping_mul(8);
        self.update(&[0x80]);
        while self.block.len() != 56 {
            self.update(&[0]);
        }
        self.update(&bits.to_be_bytes());
        let mut out = [0u8; 20];
        for (chunk, word) in out.chunks_exact_mut(4).zip(self.state) {
            chunk.copy_from_slice(&word.to_be_bytes());
        }
        out
    }

    fn compress(&mut self, block: &[u8; 64]) {
        let mut w = [0u32; 80];
        for (i, word) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = self.state;
        for (i, &wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A827999),
                20..=39 => (b ^ c ^ d, 0x6ED9EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1BBCDC),
                _ => (b ^ c ^ d, 0xCA62C1D6),
            };
            let t = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(wi);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = t;
        }
        for (s, v) in self.state.iter_mut().zip([a, b, c, d, e]) {
            *s = s.wrapping_add(v);
        }
    }
}

/// The check for a file pinned by neither hash: a diffusers `AutoencoderTiny` safetensors must
/// hold an encoder and a decoder that load (with matching latent channels); its `config.json`
/// must be a JSON object naming `AutoencoderTiny`; a `.pth` must load as weights.
fn verify_unpinned(name: &str, bytes: &[u8]) -> Result<(), String> {
    use crate::engine::taesd::weights::{Part, WeightFile};
    if name.ends_with(".json") {
        let config: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
        let class = config.get("_class_name").and_then(|c| c.as_str());
        return match class {
            Some("AutoencoderTiny") => Ok(()),
            other => Err(format!(
                "_class_name is {other:?}, expected \"AutoencoderTiny\""
            )),
        };
    }
    // WeightFile reads from a path: check a private temporary copy.
    let dir = std::env::temp_dir().join(format!("dreamd-verify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let tmp = dir.join(name);
    std::fs::write(&tmp, bytes).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let parts: &[Part] = if name.contains("decoder") {
        &[Part::Decoder]
    } else if name.contains("encoder") {
        &[Part::Encoder]
    } else {
        &[Part::Decoder, Part::Encoder]
    };
    let result = parts
        .iter()
        .map(|&part| {
            WeightFile::load(&tmp, part)
                .and_then(|w| w.taesd_latent_channels(part))
                .map_err(|e| e.to_string())
        })
        .collect::<Result<Vec<usize>, String>>()
        .and_then(|channels| match channels[..] {
            [d, e] if d != e => Err(format!(
                "the decoder takes {d}-channel latents but the encoder makes {e}"
            )),
            _ => Ok(()),
        });
    let _ = std::fs::remove_file(&tmp);
    result
}

/// Downloads and installs model files.
pub struct Puller {
    agent: ureq::Agent,
    base_url: String,
    dest: PathBuf,
    force: bool,
    progress: bool,
}

impl Puller {
    /// A puller writing into `dest`, fetching relative URLs from `base_url` (the selected
    /// source's, or a mirror). `force` downloads even files already present and valid;
    /// `progress` draws a progress bar on a terminal.
    pub fn new(dest: PathBuf, base_url: String, force: bool, progress: bool) -> Self {
        let agent = ureq::Agent::config_builder()
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_recv_body(Some(READ_TIMEOUT))
            .timeout_recv_response(Some(READ_TIMEOUT))
            .http_status_as_error(false)
            .user_agent(concat!("dreamd/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Self {
            agent,
            base_url,
            dest,
            force,
            progress,
        }
    }

    /// Makes sure `file` is in the destination folder and verifies against its pins.
    pub fn pull(&self, manifest: &Manifest, file: &ManifestFile) -> Result<Pulled, PullError> {
        let path = self.dest.join(file.relative_path());
        let existing = match std::fs::read(&path) {
            Ok(bytes) => Some(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(error) => return Err(PullError::Io { path, error }),
        };
        if let Some(bytes) = &existing {
            if !self.force && file.check(bytes).is_ok() {
                return Ok(Pulled::AlreadyPresent);
            }
        }
        let url = manifest.url_of(file, &self.base_url);
        let bytes = self.download(&url, file)?;
        file.check(&bytes)?;
        let folder = path.parent().unwrap_or(&self.dest).to_path_buf();
        std::fs::create_dir_all(&folder).map_err(|error| PullError::Io {
            path: folder,
            error,
        })?;
        write_atomic(&path, &bytes).map_err(|error| PullError::Io {
            path: path.clone(),
            error,
        })?;
        Ok(Pulled::Downloaded {
            replaced: existing.is_some(),
            bytes: bytes.len() as u64,
        })
    }

    fn download(&self, url: &str, file: &ManifestFile) -> Result<Vec<u8>, PullError> {
        let fail = |reason: String| PullError::Download {
            url: url.to_string(),
            reason,
        };
        let mut response = self
            .agent
            .get(url)
            .call()
            .map_err(|e| fail(e.to_string()))?;
        let status = response.status();
        if !status.is_success() {
            return Err(fail(format!("HTTP {status}")));
        }
        let limit = file
            .bytes
            .map_or(UNPINNED_MAX_BYTES, |b| b.saturating_mul(2).max(1 << 20));
        let length = response
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if let Some(length) = length.filter(|&l| l > limit) {
            return Err(fail(format!(
                "server offers {length} bytes; {} is limited to {limit} bytes",
                file.display_name()
            )));
        }
        let expected = length.or(file.bytes);
        let bar = self.bar(&file.display_name(), expected.unwrap_or(0));
        let mut reader = response.body_mut().with_config().limit(limit).reader();
        let mut bytes = Vec::with_capacity(expected.unwrap_or(0).min(limit) as usize);
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let n = reader.read(&mut chunk).map_err(|e| {
                fail(format!(
                    "download interrupted after {} of {} bytes: {e}",
                    bytes.len(),
                    length.map_or("?".to_string(), |l| l.to_string())
                ))
            })?;
            if n == 0 {
                break;
            }
            bytes.extend_from_slice(&chunk[..n]);
            bar.inc(n as u64);
        }
        bar.finish_and_clear();
        if let Some(length) = length.filter(|&l| l != bytes.len() as u64) {
            return Err(fail(format!(
                "download truncated: got {} of {length} bytes",
                bytes.len()
            )));
        }
        Ok(bytes)
    }

    fn bar(&self, name: &str, total: u64) -> ProgressBar {
        if !self.progress {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(
            "{msg:32} [{bar:30}] {bytes:>10}/{total_bytes:10} {bytes_per_sec:>12} {eta}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(name.to_string());
        bar
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAMILIES: [&str; 5] = ["taesd", "taesdxl", "taesd3", "taef1", "taef2"];

    #[test]
    fn the_official_manifest_pins_every_upstream_pth_by_git_blob() {
        let manifest = Manifest::official();
        assert_eq!(manifest.families(), FAMILIES);
        let github = manifest.select(&[], "github").unwrap();
        assert_eq!(github.len(), 10);
        for family in FAMILIES {
            for part in ["decoder", "encoder"] {
                let name = format!("{family}_{part}.pth");
                let file = github.iter().find(|f| f.name == name);
                let file = file.unwrap_or_else(|| panic!("{name} is not in the manifest"));
                assert_eq!(file.family, family);
                assert!(file.git_blob.is_some(), "{name}");
                assert_eq!(file.pin_kind(), "git blob id");
            }
        }
        let base = &manifest.source("github").unwrap().base_url;
        assert!(
            base.contains("raw.githubusercontent.com/madebyollin/taesd/5cccb12dc72074a4be35680c3b108548a7c69978"),
            "{base}"
        );
        let decoder = github
            .iter()
            .find(|f| f.name == "taesd_decoder.pth")
            .unwrap();
        assert_eq!(
            decoder.git_blob.as_deref(),
            Some("5915a429fc08eba4adf62bf74f96705b8b0d5c1f")
        );
    }

    #[test]
    fn hugging_face_files_are_diffusers_folders() {
        let manifest = Manifest::official();
        let taesd = manifest.select(&["taesd".to_string()], "hf").unwrap();
        let paths: Vec<_> = taesd.iter().map(|f| f.display_name()).collect();
        assert_eq!(
            paths,
            [
                "taesd/diffusion_pytorch_model.safetensors",
                "taesd/config.json"
            ]
        );
        assert_eq!(
            manifest.url_of(taesd[0], &manifest.source("hf").unwrap().base_url),
            "https://huggingface.co/madebyollin/taesd/resolve/main/diffusion_pytorch_model.safetensors"
        );
        let err = manifest
            .select(&["taef2".to_string()], "hf")
            .unwrap_err()
            .to_string();
        assert!(err.contains("source \"hf\" has no taef2 files"), "{err}");
        let err = manifest.select(&[], "gitlab").unwrap_err().to_string();
        assert!(err.contains("unknown source \"gitlab\""), "{err}");
    }

    #[test]
    fn selection_by_family_and_unknown_names() {
        let manifest = Manifest::official();
        let taesd = manifest.select(&["taesd".to_string()], "github").unwrap();
        let names: Vec<_> = taesd.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["taesd_decoder.pth", "taesd_encoder.pth"]);
        let err = manifest
            .select(&["sdxl".to_string()], "github")
            .unwrap_err();
        assert!(err.to_string().contains("unknown family \"sdxl\""), "{err}");
        assert!(err.to_string().contains("taef1"), "{err}");
    }

    #[test]
    fn urls_resolve_against_the_base() {
        let mut manifest = Manifest::official();
        let file = manifest.files[0].clone();
        assert_eq!(
            manifest.url_of(&file, "http://127.0.0.1:9/m/"),
            format!("http://127.0.0.1:9/m/{}", file.name)
        );
        manifest.files[0].url = Some("https://example.org/x.pth".into());
        let file = manifest.files[0].clone();
        assert_eq!(
            manifest.url_of(&file, "http://ignored"),
            "https://example.org/x.pth"
        );
    }

    #[test]
    fn bad_manifests_are_rejected_with_the_reason() {
        let head = "[source.github]\nbase_url = \"http://x\"\n";
        let bad_hash = format!("{head}[[file]]\nname = \"a\"\nfamily = \"f\"\nsha256 = \"ABC\"\n");
        let err = Manifest::parse(&bad_hash, "m.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("m.toml") && err.contains("64 lowercase hex"),
            "{err}"
        );
        let bad_blob = bad_hash.replace("sha256 = \"ABC\"", "git_blob = \"123\"");
        let err = Manifest::parse(&bad_blob, "m.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("40 lowercase hex"), "{err}");
        let traversal = bad_hash
            .replace("\"a\"", "\"../evil\"")
            .replace("\"ABC\"", &format!("\"{}\"", "0".repeat(64)));
        let err = Manifest::parse(&traversal, "m.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a plain file name"), "{err}");
        let bad_dir = bad_hash
            .replace("name = \"a\"", "name = \"a\"\ndir = \"..\"")
            .replace("\"ABC\"", &format!("\"{}\"", "0".repeat(64)));
        let err = Manifest::parse(&bad_dir, "m.toml").unwrap_err().to_string();
        assert!(err.contains("not a plain file name"), "{err}");
        let bad_source = bad_hash
            .replace("family = \"f\"", "family = \"f\"\nsource = \"hf\"")
            .replace("\"ABC\"", &format!("\"{}\"", "0".repeat(64)));
        let err = Manifest::parse(&bad_source, "m.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown source \"hf\""), "{err}");
        let err = Manifest::parse("base_url = 3", "m.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("m.toml"), "{err}");
    }

    #[test]
    fn hashes_of_known_input() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        // `printf '' | git hash-object --stdin`, `echo hello | git hash-object --stdin`.
        assert_eq!(
            git_blob_hex(b""),
            "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"
        );
        assert_eq!(
            git_blob_hex(b"hello\n"),
            "ce013625030ba8dba906f756967f9e9ca394464a"
        );
        // SHA-1 across block boundaries: 1000 bytes through several updates.
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let mut a = Sha1::default();
        a.update(&data);
        let mut b = Sha1::default();
        for chunk in data.chunks(37) {
            b.update(chunk);
        }
        assert_eq!(a.finish(), b.finish());
        let mut abc = Sha1::default();
        abc.update(b"abc");
        assert_eq!(
            hex(&abc.finish()),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
    }

    #[test]
    fn the_shared_upstream_pth_matches_its_pinned_blob_id() {
        let Some(path) = crate::test_weights::shared_file("taesd-pth/taef2_decoder.pth") else {
            return;
        };
        let bytes = std::fs::read(&path).unwrap();
        let manifest = Manifest::official();
        let file = manifest
            .files
            .iter()
            .find(|f| f.name == "taef2_decoder.pth")
            .unwrap();
        file.check(&bytes).unwrap();
        let mut tampered = bytes.clone();
        tampered[1000] ^= 1;
        let err = file.check(&tampered).unwrap_err().to_string();
        assert!(err.contains("git blob id mismatch"), "{err}");
    }

    #[test]
    fn unpinned_files_must_load() {
        let config = br#"{"_class_name": "AutoencoderTiny", "latent_channels": 4}"#;
        verify_unpinned("config.json", config).unwrap();
        let err =
            verify_unpinned("config.json", br#"{"_class_name": "AutoencoderKL"}"#).unwrap_err();
        assert!(err.contains("AutoencoderKL"), "{err}");
        let err = verify_unpinned("diffusion_pytorch_model.safetensors", b"junk").unwrap_err();
        assert!(err.contains("not a valid safetensors file"), "{err}");
    }
}
