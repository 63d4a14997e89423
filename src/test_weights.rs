//! Weights and shared data for tests, so that `cargo test` passes on a fresh clone.
//!
//! dreamd's tests compare against real TAESD weights and golden vectors. Developers have them in
//! `../shared/models` beside the repository (or wherever `$DREAMD_MODELS` points); a fresh clone
//! does not. [`weights`] finds a weight file there, else in a cache under the target folder,
//! else pulls the upstream `.pth` into that cache with the same verified pull as
//! `dreamd models pull` (git blob ids), and otherwise skips the test with one loud line
//! ([`skip`]) — which `DREAMD_REQUIRE_MODELS=1` or `DREAMD_REQUIRE_TOOLS=1` (what CI sets) turns
//! into a failure, so CI never skips silently. [`shared_file`] does the same for data that only
//! the shared folder has (golden vectors, pictures).
//!
//! Public (not `cfg(test)`) so that the integration tests in `tests/` can use it through
//! `tests/support`.

use std::path::{Path, PathBuf};

use crate::engine::taesd::weights::Part;
use crate::engine::taesd::Family;

/// Set to `1` (in CI) to make a test that cannot find its weights fail instead of skipping.
pub const REQUIRE_MODELS_ENV: &str = "DREAMD_REQUIRE_MODELS";
/// The existing CI switch for external tools; it also makes missing weights a failure.
pub const REQUIRE_TOOLS_ENV: &str = "DREAMD_REQUIRE_TOOLS";
/// Set to `0` to keep tests from trying to download weights.
pub const TEST_PULL_ENV: &str = "DREAMD_TEST_PULL";

fn env_is_set(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// The shared test model folder: `$DREAMD_MODELS`, else `../shared/models` beside the
/// repository, if it exists.
pub fn shared_models_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("DREAMD_MODELS")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/models"));
    dir.is_dir().then_some(dir)
}

/// Skips a test for want of `what`: one loud line on stderr, or a panic when
/// `DREAMD_REQUIRE_MODELS` or `DREAMD_REQUIRE_TOOLS` is set (CI never skips silently).
///
/// The line is written to the stderr stream directly, not through `eprintln!`, so the test
/// harness does not capture it: a green run still lists what it skipped. A test (a thread) that
/// misses several things prints only its first line.
pub fn skip(what: &str) {
    use std::cell::Cell;
    use std::io::Write;
    thread_local!(static SKIPPED: Cell<bool> = const { Cell::new(false) });
    // libtest names each test's thread after the test.
    let test = std::thread::current()
        .name()
        .filter(|n| *n != "main")
        .map(|n| format!(" {n}"))
        .unwrap_or_default();
    let message = format!(
        "*** SKIPPED{test}: {what} not found (set DREAMD_MODELS to the shared model folder; \
         weights are pulled into {} when the network allows; {REQUIRE_MODELS_ENV}=1 makes \
         this a failure) ***",
        cache_dir().display()
    );
    if env_is_set(REQUIRE_MODELS_ENV) || env_is_set(REQUIRE_TOOLS_ENV) {
        panic!("{message}");
    }
    if !SKIPPED.with(|skipped| skipped.replace(true)) {
        let _ = writeln!(std::io::stderr(), "{message}");
    }
}

/// `relative` (e.g. `golden/taesd_dec_in_4x8x8_f32le.bin`, or `../images` for the shared
/// pictures) under [`shared_models_dir`], or None after [`skip`].
pub fn shared_file(relative: &str) -> Option<PathBuf> {
    let path = shared_models_dir().map(|d| d.join(relative));
    match path {
        Some(path) if path.exists() => Some(path),
        _ => {
            skip(relative);
            None
        }
    }
}

/// The cache tests pull weights into: `<target dir>/dreamd-test-models`.
pub fn cache_dir() -> PathBuf {
    let target = option_env!("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("dreamd-test-models")
}

/// A weight file for `family`'s `part` (safetensors or `.pth`), in order from the shared folder
/// (`taesd/<family>_<part>.safetensors`, then `taesd-pth/<family>_<part>.pth`), the pull cache
/// ([`cache_dir`]), or a verified pull of the upstream `.pth` into that cache (not when
/// `DREAMD_TEST_PULL=0`). None after [`skip`] when all fail.
pub fn weights(family: Family, part: Part) -> Option<PathBuf> {
    let stem = family.file_stem(part);
    let shared = shared_models_dir().and_then(|dir| {
        [
            dir.join("taesd").join(format!("{stem}.safetensors")),
            dir.join("taesd-pth").join(format!("{stem}.pth")),
        ]
        .into_iter()
        .find(|p| p.is_file())
    });
    shared.or_else(|| cached_or_pulled(family, part))
}

/// Like [`weights`], but always an upstream-format `.pth` (the shared `taesd-pth/` copy, else
/// the pull cache), for tests about `.pth` files as users have them.
pub fn pth_weights(family: Family, part: Part) -> Option<PathBuf> {
    let stem = family.file_stem(part);
    let shared = shared_models_dir()
        .map(|dir| dir.join("taesd-pth").join(format!("{stem}.pth")))
        .filter(|p| p.is_file());
    shared.or_else(|| cached_or_pulled(family, part))
}

/// A folder holding both halves of `family` (for a config's `generation.models_dir`), or None
/// after [`skip`].
pub fn models_dir(family: Family) -> Option<PathBuf> {
    let decoder = weights(family, Part::Decoder)?;
    let encoder = weights(family, Part::Encoder)?;
    match (decoder.parent(), encoder.parent()) {
        (Some(d), Some(e)) if d == e => Some(d.to_path_buf()),
        _ => {
            skip(&format!("one folder with both {family} halves"));
            None
        }
    }
}

/// The cached `.pth` for `family`'s `part`, pulling the family into [`cache_dir`] first when it
/// is missing (unless `DREAMD_TEST_PULL=0`); None after [`skip`] when that fails.
fn cached_or_pulled(family: Family, part: Part) -> Option<PathBuf> {
    let stem = family.file_stem(part);
    let cached = cache_dir().join(format!("{stem}.pth"));
    let pull_allowed = std::env::var(TEST_PULL_ENV).map_or(true, |v| v != "0");
    if !cached.is_file() && pull_allowed {
        pull_for_tests(family);
    }
    if cached.is_file() {
        return Some(cached);
    }
    skip(&format!("{stem} weights"));
    None
}

/// Pulls `family` from the official manifest's default source into [`cache_dir`]; false
/// when it cannot. Pulls are serialised, and after a download failure (no network) none is
/// tried again in this process.
fn pull_for_tests(family: Family) -> bool {
    use crate::pull::{Manifest, Puller, DEFAULT_SOURCE};
    use std::sync::Mutex;
    static STATE: Mutex<bool> = Mutex::new(true); // "pulling may work"
    let mut may_work = STATE.lock().unwrap_or_else(|e| e.into_inner());
    if !*may_work {
        return false;
    }
    let manifest = Manifest::official();
    let Ok(files) = manifest.select(&[family.name().to_string()], DEFAULT_SOURCE) else {
        return false;
    };
    let Ok(source) = manifest.source(DEFAULT_SOURCE) else {
        return false;
    };
    let base_url = std::env::var(crate::pull::BASE_URL_ENV)
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| source.base_url.clone());
    let puller = Puller::new(cache_dir(), base_url, false, false);
    for file in files {
        if let Err(e) = puller.pull(&manifest, file) {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "test weights: could not pull {}: {e}",
                file.display_name()
            );
            // No network (or no such host): do not try again in this process.
            if matches!(e, crate::pull::PullError::Download { .. }) {
                *may_work = false;
            }
            return false;
        }
    }
    true
}

/// Reads a little-endian f32 file (the golden vectors).
#[cfg(test)]
pub fn read_f32_file(path: &Path) -> Vec<f32> {
    std::fs::read(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// The largest absolute difference between `a` and `b` (same length), for tests that compare
/// outputs with references.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// PSNR in dB of `b` against `a`, both ≈[0, 1] and clamped to it as pictures are.
pub fn psnr_unit(a: &[f32], b: &[f32]) -> f64 {
    let mse = a
        .iter()
        .zip(b)
        .map(|(x, y)| (f64::from(x.clamp(0.0, 1.0)) - f64::from(y.clamp(0.0, 1.0))).powi(2))
        .sum::<f64>()
        / a.len() as f64;
    10.0 * (1.0 / mse.max(1e-20)).log10()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_prefer_the_shared_folder() {
        // Without the shared folder this skips loudly (or pulls, when the network allows).
        if let (Some(dir), Some(path)) =
            (shared_models_dir(), weights(Family::Taesd, Part::Decoder))
        {
            assert_eq!(path, dir.join("taesd/taesd_decoder.safetensors"));
        }
        if let (Some(dir), Some(path)) =
            (shared_models_dir(), weights(Family::Taef2, Part::Encoder))
        {
            assert_eq!(path, dir.join("taesd-pth/taef2_encoder.pth"));
        }
    }
}
