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

/// A PNG of `width × height` that is only a header and a token of data: what a hostile file
/// needs to claim a size.
fn png_header_only(width: u32, height: u32) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut crc = flate2::Crc::new();
        crc.update(kind);
        crc.update(data);
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        out.extend_from_slice(&crc.sum().to_be_bytes());
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = width.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    let mut idat = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut idat, &[0; 64]).unwrap();
    chunk(&mut out, b"IDAT", &idat.finish().unwrap());
    chunk(&mut out, b"IEND", &[]);
    out
}

fn mkfifo(path: &Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
}

/// Peak resident memory of process `pid` (VmHWM), in MB.
fn peak_rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb / 1024.0
}

/// Issue 18 (1, 6): a few-KB 65535×1 PNG used to be scaled to hundreds of gigabytes before the
/// crop (abort), a 20000×20000 one to be decoded at gigabytes, and a picture replaced by a FIFO
/// to block a thread for ever. Now the wide one is cropped first, the huge one is refused from
/// its header, the FIFO is refused at open, and peak memory stays within the README's bound.
#[test]
fn hostile_pictures_are_skipped_and_memory_stays_bounded() {
    let (Some(images), Some(models)) = (
        support::shared_file("../images"),
        weights_dir(Family::Taesd),
    ) else {
        return;
    };
    let pictures = tempfile::tempdir().unwrap();
    let dir = pictures.path();
    std::fs::write(dir.join("a_huge.png"), png_header_only(20_000, 20_000)).unwrap();
    image::RgbImage::from_pixel(65535, 1, image::Rgb([200, 40, 40]))
        .save(dir.join("b_wide.png"))
        .unwrap();
    assert!(std::fs::metadata(dir.join("b_wide.png")).unwrap().len() < 8 * 1024);
    let real = std::fs::read_dir(&images)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "png"))
        .unwrap();
    std::fs::copy(&real, dir.join("c_real.png")).unwrap();
    std::fs::copy(&real, dir.join("d_fifo.png")).unwrap();
    let models = models.display().to_string();
    // Keys before the first header land in the test config's [generation] section.
    let daemon = Daemon::start_with_env(
        &format!(
            "width = 256\nheight = 128\n[keyframes]\nsource = \"images\"\nimages_dir = {:?}\n",
            dir.display().to_string()
        ),
        &[("DREAMD_MODELS", models.as_str())],
    );
    // Replaced by a FIFO after the folder was listed: visited within the cycle of four.
    std::fs::remove_file(dir.join("d_fifo.png")).unwrap();
    mkfifo(&dir.join("d_fifo.png"));
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let keyframes = daemon
            .status()
            .map_or(0, |s| s["keyframes_generated"].as_u64().unwrap_or(0));
        let log = daemon.log();
        if keyframes >= 6 && log.contains("d_fifo.png") {
            break;
        }
        assert!(Instant::now() < until, "{keyframes} keyframes, log:\n{log}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = daemon.log();
    assert!(
        log.contains("a_huge.png") && log.contains("20000x20000") && log.contains("budget"),
        "the huge picture is not named\n{log}"
    );
    assert!(log.contains("FIFO"), "the FIFO is not named\n{log}");
    assert!(
        !log.contains("panicked") && !log.contains("memory allocation"),
        "{log}"
    );
    let peak = peak_rss_mb(daemon.child.id());
    eprintln!("peak RSS {peak:.0} MB");
    assert!(peak < 1024.0, "peak RSS {peak:.0} MB");
    let mut daemon = daemon;
    let (status, _) = daemon.terminate();
    assert!(status.success());
}

/// Issue 18 (6): a config file that is a FIFO stops start-up at once, naming it.
#[test]
fn a_fifo_as_config_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    mkfifo(&dir.path().join("dreamd.toml"));
    let started = Instant::now();
    let output = std::process::Command::new(BIN)
        .args(["run", "--config", "dreamd.toml", "--duration", "5"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_start_error(&output, &["dreamd.toml", "FIFO"]);
}

/// Issue 18 (8): settings whose buffer cannot fit in memory are refused with the figures.
#[test]
fn a_buffer_that_cannot_fit_in_memory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let output = run_with(
        dir.path(),
        "[display]\ntarget_fps = 120.0\nstart_gate_seconds = 1.0\n[buffer]\ntarget_seconds = 3600.0\n",
    );
    assert_start_error(
        &output,
        &["432000 frames", "GB of memory", "buffer.target_seconds"],
    );
}

/// Issue 18 (8): a deleted `output/frames/` or `logs/` is made again, and failed writes of
/// status.json are counted (in /status and /metrics) instead of only logged.
#[test]
fn deleted_folders_come_back_and_status_write_failures_are_counted() {
    let daemon = Daemon::start("");
    daemon.wait_for_first_frame();
    // The daemon may write into them while they are removed: try again until they are gone.
    for dir in ["output/frames", "logs"] {
        let mut tries = 0;
        while let Err(e) = std::fs::remove_dir_all(daemon.path(dir)) {
            if e.kind() == std::io::ErrorKind::NotFound {
                break;
            }
            tries += 1;
            assert!(tries < 50, "cannot remove {dir}: {e}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let frames = std::fs::read_dir(daemon.path("output/frames")).map_or(0, |d| d.count());
        let logs: Vec<String> = std::fs::read_dir(daemon.path("logs"))
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        let text_log = logs
            .iter()
            .any(|n| n.starts_with("dreamd.") && n.ends_with(".log"));
        if frames > 0 && text_log && logs.iter().any(|n| n == "dreamd.jsonl") {
            break;
        }
        assert!(Instant::now() < until, "frames {frames}, logs {logs:?}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // status.json replaced by a non-empty folder: every rename over it fails.
    std::fs::remove_file(daemon.path("output/status.json")).unwrap();
    std::fs::create_dir_all(daemon.path("output/status.json/blocker")).unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    let status = support::get(&daemon.url, "/status");
    let document: serde_json::Value = serde_json::from_slice(&status.body).unwrap();
    let failures = field(&document, "failures/status_write").as_u64().unwrap();
    assert!(failures >= 2, "{document}");
    let metrics = support::get(&daemon.url, "/metrics").text();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("dreamd_status_write_failures_total ") && !l.ends_with(" 0")),
        "{metrics}"
    );
    assert!(
        daemon.log().contains("cannot write status"),
        "{}",
        daemon.log()
    );
    std::fs::remove_dir_all(daemon.path("output/status.json")).unwrap();
    let until = Instant::now() + Duration::from_secs(5);
    while daemon.status().is_none() {
        assert!(Instant::now() < until, "status.json not written again");
        std::thread::sleep(Duration::from_millis(100));
    }
}
