//! `dreamd bench motion` on the picture source, through the real binary: keyframes come through
//! the same decoder as their neighbours, so they no longer pop (seam ratio, sharpness), while
//! `keyframe_image = "picture"` (the old behaviour) still does.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The shared models folder: `$DREAMD_MODELS`, else `../shared/models`.
fn shared_models() -> PathBuf {
    std::env::var_os("DREAMD_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/models"))
}

/// True when `dir` (or its `taesd/` subfolder) holds the TAESD decoder and encoder.
fn has_taesd(dir: &Path) -> bool {
    [dir.to_path_buf(), dir.join("taesd")].iter().any(|d| {
        d.join("taesd_decoder.safetensors").is_file()
            && d.join("taesd_encoder.safetensors").is_file()
    })
}

/// Runs `dreamd bench motion --json` on the shared pictures, small and fast, and returns its
/// report.
fn bench_motion(models: &Path, images: &Path, extra: &[&str]) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let (models, images) = (models.display().to_string(), images.display().to_string());
    let mut args = vec![
        "bench",
        "motion",
        "--json",
        "--pairs",
        "4",
        "--source",
        "images",
        "--images",
        &images,
        "--models-dir",
        &models,
        "--decoder",
        "taesd",
        "--width",
        "256",
        "--height",
        "128",
        "--decode-divisor",
        "2",
        "--frames-per-pair",
        "6",
        "--max-seconds",
        "240",
    ];
    args.extend_from_slice(extra);
    let mut child = support::spawn(dir.path(), &args, &[]);
    let give_up = Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > give_up {
            let _ = child.kill();
            panic!("dreamd bench motion did not finish in 300 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = std::fs::read_to_string(dir.path().join("stdout.log")).unwrap();
    let stderr = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap();
    assert!(status.success(), "{stdout}{stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn number(report: &serde_json::Value, key: &str) -> f64 {
    report[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing: {report}"))
}

#[test]
fn picture_keyframes_do_not_pop() {
    let models = shared_models();
    let images = models.join("../images");
    if !has_taesd(&models) || !images.is_dir() {
        eprintln!(
            "SKIPPED picture_keyframes_do_not_pop: no TAESD decoder and encoder in {} \
             (set DREAMD_MODELS) or no pictures in {}",
            models.display(),
            images.display()
        );
        return;
    }
    let report = bench_motion(&models, &images, &[]);
    assert_eq!(report["keyframe_image"], "decoded", "{report}");
    assert!(number(&report, "pairs_measured") >= 3.0, "{report}");
    let seam = number(&report, "seam_ratio");
    assert!(seam <= 1.5, "seam ratio {seam}: {report}");
    let sharpness = number(&report, "keyframe_sharpness_ratio");
    assert!(
        (1.0 / 1.3..=1.3).contains(&sharpness),
        "sharpness ratio {sharpness}: {report}"
    );

    // The old behaviour, showing the fitted picture itself, pops: the measure sees it.
    let old = bench_motion(
        &models,
        &images,
        &["--keyframe-image", "picture", "--path", "slerp"],
    );
    let seam = number(&old, "seam_ratio");
    assert!(
        seam > 1.5,
        "the picture keyframes should pop: seam ratio {seam}: {old}"
    );
}
