//! `dreamd models pull`: downloads model files named by a manifest and keeps only those whose
//! sha256 matches the pin.
//!
//! The manifest (`assets/models.toml`, embedded; or `--manifest FILE`) lists each file's name,
//! family, size and sha256. A download is read into memory (the files are a few MB; a limit of
//! twice the pinned size guards against a misbehaving server), hashed as it arrives, and written
//! with [`write_atomic`] only when the hash matches — so a failed, truncated or tampered download
//! leaves nothing behind, and a file already present with the right hash is not fetched again.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::atomic_file::write_atomic;

/// The embedded manifest of official files.
pub const OFFICIAL_MANIFEST: &str = include_str!("../assets/models.toml");
/// Environment variable that overrides the manifest's `base_url` (a mirror).
pub const BASE_URL_ENV: &str = "DREAMD_MODELS_URL";

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
        "{name}: sha256 mismatch (expected {expected}, got {actual}); the download was discarded"
    )]
    Mismatch {
        name: String,
        expected: String,
        actual: String,
    },
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
}

/// One pinned file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ManifestFile {
    /// File name on disk.
    pub name: String,
    /// Family it belongs to (`taesd`, `taef1`, …), used to select files.
    pub family: String,
    /// Expected size in bytes.
    pub bytes: u64,
    /// Expected sha256, lowercase hex.
    pub sha256: String,
    /// Where to fetch it: absolute, or relative to `base_url` (default: `name`).
    #[serde(default)]
    pub url: Option<String>,
}

/// A list of pinned files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Base for relative file URLs.
    pub base_url: String,
    #[serde(rename = "file")]
    pub files: Vec<ManifestFile>,
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
            let valid_name = !file.name.is_empty()
                && !file.name.starts_with('.')
                && !file.name.contains(['/', '\\']);
            if !valid_name {
                return Err(fail(format!(
                    "file name {:?} is not a plain file name",
                    file.name
                )));
            }
            let valid_hash = file.sha256.len() == 64
                && file
                    .sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            if !valid_hash {
                return Err(fail(format!(
                    "{}: sha256 must be 64 lowercase hex digits (got {:?})",
                    file.name, file.sha256
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

    /// The files of the named families (all files when `families` is empty); an unknown family
    /// is an error listing the known ones.
    pub fn select(&self, families: &[String]) -> Result<Vec<&ManifestFile>, PullError> {
        let known = self.families();
        if let Some(unknown) = families.iter().find(|f| !known.contains(&f.as_str())) {
            return Err(PullError::Manifest {
                origin: "selection".to_string(),
                reason: format!("unknown family {unknown:?} (known: {})", known.join(", ")),
            });
        }
        Ok(self
            .files
            .iter()
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
    /// Already present with the right hash; not fetched.
    AlreadyPresent,
    /// Downloaded and verified (`replaced`: a file with another hash was there before).
    Downloaded { replaced: bool },
}

/// Lowercase hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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
    /// A puller writing into `dest`, fetching relative URLs from `base_url`. `force` downloads
    /// even files already present and valid; `progress` draws a progress bar on a terminal.
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

    /// Makes sure `file` is in the destination folder with the pinned hash.
    pub fn pull(&self, manifest: &Manifest, file: &ManifestFile) -> Result<Pulled, PullError> {
        let path = self.dest.join(&file.name);
        let existing = match std::fs::read(&path) {
            Ok(bytes) => Some(sha256_hex(&bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(error) => return Err(PullError::Io { path, error }),
        };
        if existing.as_deref() == Some(file.sha256.as_str()) && !self.force {
            return Ok(Pulled::AlreadyPresent);
        }
        let url = manifest.url_of(file, &self.base_url);
        let bytes = self.download(&url, file)?;
        let actual = sha256_hex(&bytes);
        if actual != file.sha256 {
            return Err(PullError::Mismatch {
                name: file.name.clone(),
                expected: file.sha256.clone(),
                actual,
            });
        }
        std::fs::create_dir_all(&self.dest).map_err(|error| PullError::Io {
            path: self.dest.clone(),
            error,
        })?;
        write_atomic(&path, &bytes).map_err(|error| PullError::Io {
            path: path.clone(),
            error,
        })?;
        Ok(Pulled::Downloaded {
            replaced: existing.is_some(),
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
        let limit = file.bytes.saturating_mul(2).max(1 << 20);
        let length = response
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if let Some(length) = length.filter(|&l| l > limit) {
            return Err(fail(format!(
                "server offers {length} bytes; {} should be {} bytes",
                file.name, file.bytes
            )));
        }
        let bar = self.bar(&file.name, length.unwrap_or(file.bytes));
        let mut reader = response.body_mut().with_config().limit(limit).reader();
        let mut bytes = Vec::with_capacity(file.bytes as usize);
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
    use crate::engine::taesd::weights::Part;
    use crate::engine::taesd::Family;

    #[test]
    fn the_official_manifest_pins_every_family_member() {
        let manifest = Manifest::official();
        for family in Family::ALL {
            for part in [Part::Decoder, Part::Encoder] {
                let name = family.file_name(part);
                let file = manifest.files.iter().find(|f| f.name == name);
                let file = file.unwrap_or_else(|| panic!("{name} is not in the manifest"));
                assert_eq!(file.family, family.name());
                assert!(file.bytes > 1_000_000, "{name}: {} bytes", file.bytes);
            }
        }
        assert_eq!(manifest.families(), ["taesd", "taesdxl", "taesd3", "taef1"]);
    }

    #[test]
    fn selection_by_family_and_unknown_names() {
        let manifest = Manifest::official();
        let taesd = manifest.select(&["taesd".to_string()]).unwrap();
        let names: Vec<_> = taesd.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            ["taesd_decoder.safetensors", "taesd_encoder.safetensors"]
        );
        assert_eq!(manifest.select(&[]).unwrap().len(), 8);
        let err = manifest.select(&["sdxl".to_string()]).unwrap_err();
        assert!(err.to_string().contains("unknown family \"sdxl\""), "{err}");
        assert!(err.to_string().contains("taef1"), "{err}");
    }

    #[test]
    fn urls_resolve_against_the_base() {
        let mut manifest = Manifest::official();
        let file = manifest.files[0].clone();
        assert_eq!(
            manifest.url_of(&file, "http://127.0.0.1:9/m/"),
            "http://127.0.0.1:9/m/taesd_decoder.safetensors"
        );
        manifest.files[0].url = Some("https://example.org/x.safetensors".into());
        let file = manifest.files[0].clone();
        assert_eq!(
            manifest.url_of(&file, "http://ignored"),
            "https://example.org/x.safetensors"
        );
    }

    #[test]
    fn bad_manifests_are_rejected_with_the_reason() {
        let bad_hash = "base_url = \"http://x\"\n[[file]]\nname = \"a\"\nfamily = \"f\"\nbytes = 1\nsha256 = \"ABC\"\n";
        let err = Manifest::parse(bad_hash, "m.toml").unwrap_err().to_string();
        assert!(
            err.contains("m.toml") && err.contains("64 lowercase hex"),
            "{err}"
        );
        let traversal = bad_hash
            .replace("\"a\"", "\"../evil\"")
            .replace("\"ABC\"", &format!("\"{}\"", "0".repeat(64)));
        let err = Manifest::parse(&traversal, "m.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a plain file name"), "{err}");
        let err = Manifest::parse("base_url = 3", "m.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("m.toml"), "{err}");
    }

    #[test]
    fn sha256_of_known_input() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
