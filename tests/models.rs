//! `dreamd models list|verify` against the shared TAESD weights and a broken copy.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_dreamd");

fn shared_models() -> PathBuf {
    std::env::var_os("DREAMD_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/models"))
}

fn models(dir: &Path, models_dir: &Path, verb: &str) -> Output {
    std::fs::write(
        dir.join("dreamd.toml"),
        format!(
            "[generation]\nmodels_dir = {:?}\n",
            models_dir.display().to_string()
        ),
    )
    .unwrap();
    Command::new(BIN)
        .args(["models", verb, "--config", "dreamd.toml"])
        .current_dir(dir)
        .env_remove("DREAMD_MODELS")
        .output()
        .unwrap()
}

#[test]
fn list_and_verify_every_shared_model() {
    let dir = tempfile::tempdir().unwrap();
    let listed = models(dir.path(), &shared_models(), "list");
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    for family in ["taesd", "taesdxl", "taesd3", "taef1"] {
        for part in ["decoder", "encoder"] {
            assert!(
                text.contains(&format!("{family}_{part}.safetensors")),
                "{text}"
            );
        }
    }
    let verified = models(dir.path(), &shared_models(), "verify");
    let text = String::from_utf8_lossy(&verified.stdout);
    assert!(
        verified.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&verified.stderr)
    );
    assert_eq!(
        text.lines().filter(|l| l.starts_with("ok ")).count(),
        8,
        "{text}"
    );
}

#[test]
fn verify_names_a_truncated_file_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let models_dir = dir.path().join("models");
    std::fs::create_dir(&models_dir).unwrap();
    let good = shared_models().join("taesd/taesd_decoder.safetensors");
    let bytes = std::fs::read(good).unwrap();
    std::fs::write(
        models_dir.join("taesd_decoder.safetensors"),
        &bytes[..bytes.len() / 2],
    )
    .unwrap();
    let out = models(dir.path(), &models_dir, "verify");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stdout.contains("FAIL") && stdout.contains("taesd_decoder.safetensors"),
        "{stdout}"
    );
    assert!(
        stderr.contains("bad model files") && stderr.contains("taesd_decoder.safetensors"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn no_models_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = models(dir.path(), &dir.path().join("nowhere"), "list");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no TAESD model files found"));
}
