//! Bad input: each kind gives one clear error naming the thing at fault — a non-zero exit at
//! start-up, or a `degraded` state at run time — never a panic. (A port in use and a bad bind
//! address are in http.rs; a corrupt weight file under `models verify` in models.rs.)

mod support;

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use support::{field, isolate_models, weights, weights_dir, Daemon, Family, Part, BIN};

/// `dreamd run --duration 5` with `text` as its config file.
fn run_with(dir: &Path, text: &str) -> Output {
    let text = if text.contains("[server]") {
        text.to_string()
    } else {
        format!("{text}\n[server]\nbind = \"127.0.0.1:0\"\n")
    };
    std::fs::write(dir.join("dreamd.toml"), text).unwrap();
    isolate_models(&mut std::process::Command::new(BIN), dir)
        .args(["run", "--config", "dreamd.toml", "--duration", "5"])
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

/// The run failed at start-up with one `dreamd: error:` line containing every `needle`.
fn assert_start_error(output: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.starts_with("dreamd: error:"))
        .unwrap_or_else(|| panic!("no error line in {stderr}"));
    for needle in needles {
        assert!(line.contains(needle), "{needle:?} not in {line:?}");
    }
}

#[test]
fn malformed_config_values_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &[&str]); 9] = [
        ("[display]\ntarget_fps = -1", &["display.target_fps", "-1"]),
        (
            "[generation]\nwidth = 100",
            &["generation.width", "multiple of 8"],
        ),
        (
            "[generation]\ndecode_divisor = 3",
            &["generation.decode_divisor"],
        ),
        (
            "[generation]\ndevice = \"tpu\"",
            &["generation.device", "tpu"],
        ),
        ("[logging]\nlevel = \"loud[\"", &["logging.level"]),
        ("[server]\nbind = \"nowhere\"", &["server.bind", "nowhere"]),
        (
            "[faults]\ndecoder_error = { after_seconds = -2 }",
            &["faults.decoder_error", "after_seconds >= 0"],
        ),
        (
            "[display]\ntarget_fps = \"fast\"",
            &["display.target_fps", "dreamd.toml"],
        ),
        ("[display]\nspeed = 2", &["display", "speed", "dreamd.toml"]),
    ];
    for (text, needles) in cases {
        let output = run_with(dir.path(), text);
        assert_start_error(&output, needles);
    }
}

#[test]
fn broken_toml_names_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let output = run_with(dir.path(), "[display\ntarget_fps = 4\n");
    assert_start_error(&output, &["dreamd.toml", "TOML parse error", "line 1"]);
}

#[test]
fn truncated_weights_stop_start_up_naming_the_file() {
    // taesd_decoder.safetensors from the shared folder, or the pulled upstream .pth.
    let Some(good) = weights(Family::Taesd, Part::Decoder) else {
        return;
    };
    let name = good.file_name().unwrap().to_string_lossy().into_owned();
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("broken-models");
    std::fs::create_dir_all(&models).unwrap();
    let good = std::fs::read(good).unwrap();
    std::fs::write(models.join(&name), &good[..good.len() / 3]).unwrap();
    let text = format!(
        "[generation]\ndecoder = \"taesd\"\nmodels_dir = {:?}\n",
        models.display().to_string()
    );
    let output = run_with(dir.path(), &text);
    assert_start_error(&output, &[&name]);
    // `run --check` says the same without starting anything.
    let fresh = tempfile::tempdir().unwrap();
    std::fs::write(fresh.path().join("dreamd.toml"), &text).unwrap();
    let check = isolate_models(&mut std::process::Command::new(BIN), fresh.path())
        .args(["run", "--config", "dreamd.toml", "--check"])
        .current_dir(fresh.path())
        .output()
        .unwrap();
    assert_start_error(&check, &[&name]);
    assert!(
        !fresh.path().join("output").exists(),
        "--check wrote output"
    );
}

#[test]
fn a_missing_decoder_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("no-models");
    std::fs::create_dir_all(&empty).unwrap();
    let text = format!(
        "[generation]\ndecoder = \"taef1\"\nmodels_dir = {:?}\n",
        empty.display().to_string()
    );
    let output = run_with(dir.path(), &text);
    assert_start_error(&output, &["taef1_decoder.safetensors", "not found"]);
}

#[test]
fn an_unwritable_output_folder_is_named() {
    let dir = tempfile::tempdir().unwrap();
    // A file where a folder must go: no permission trick needed (tests may run as root).
    std::fs::write(dir.path().join("blocker"), b"a file").unwrap();
    let output = run_with(dir.path(), "[paths]\noutput_dir = \"blocker/output\"\n");
    assert_start_error(&output, &["blocker/output"]);
}

#[test]
fn an_empty_image_folder_is_a_start_up_error() {
    let Some(models) = weights_dir(Family::Taesd) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("pictures")).unwrap();
    let text = format!(
        "[generation]\ndecoder = \"taesd\"\nmodels_dir = {:?}\n\
         [keyframes]\nsource = \"images\"\nimages_dir = \"pictures\"\n",
        models.display().to_string()
    );
    let output = run_with(dir.path(), &text);
    assert_start_error(&output, &["pictures", "no PNG, JPEG or WebP"]);
}

#[test]
fn corrupt_images_degrade_at_run_time_naming_the_file() {
    let pictures = tempfile::tempdir().unwrap();
    std::fs::write(pictures.path().join("broken.png"), b"not a png at all").unwrap();
    std::fs::write(
        pictures.path().join("cut.jpg"),
        [0xff, 0xd8, 0xff, 0xe0, 0, 16],
    )
    .unwrap();
    // decoder "auto" finds TAESD (and its encoder) through $DREAMD_MODELS.
    let Some(models) = weights_dir(Family::Taesd) else {
        return;
    };
    let models = models.display().to_string();
    let daemon = Daemon::start_with_env(
        &format!(
            "[keyframes]\nsource = \"images\"\nimages_dir = {:?}\n",
            pictures.path().display().to_string()
        ),
        &[("DREAMD_MODELS", models.as_str())],
    );
    let until = Instant::now() + Duration::from_secs(10);
    let status = loop {
        let status = daemon.status();
        if let Some(status) = status.filter(|s| s["state"] == "degraded") {
            break status;
        }
        assert!(Instant::now() < until, "never degraded\n{}", daemon.log());
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(field(&status, "last_error/stage"), "keyframe");
    let log = daemon.log();
    assert!(
        log.contains("broken.png") && log.contains("cut.jpg"),
        "the files are not named\n{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
}
