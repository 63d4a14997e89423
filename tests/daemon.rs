//! End-to-end tests: the real `dreamd` binary on its embedded default (procedural keyframes,
//! preview decoder), with a short start gate from a config file.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Daemon, BIN, LEGACY_KEYS};

/// Starts the binary in `dir` (the shared harness, without extra environment).
fn spawn(dir: &Path, args: &[&str]) -> Child {
    support::spawn(dir, args, &[])
}

fn frame_seqs(dir: &Path) -> BTreeSet<u64> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| {
                    let name = e.ok()?.file_name().into_string().ok()?;
                    name.strip_suffix(".png")?.parse().ok()
                })
                .collect()
        })
        .unwrap_or_default()
}

fn json_events(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l}: {e}")))
        .collect()
}

#[test]
fn plays_frames_in_order_with_valid_files_and_stops_on_sigterm() {
    let mut daemon = Daemon::start("[output]\nkeep_frames = 10000");
    let (current, status_path) = (
        daemon.path("output/current_frame.png"),
        daemon.path("output/status.json"),
    );
    let mut last_sequence: Option<u64> = None;
    let mut frames_checked = 0;
    let mut statuses_checked = 0;
    let mut states = BTreeSet::new();
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        if let Ok(bytes) = std::fs::read(&current) {
            let image = image::load_from_memory(&bytes)
                .unwrap_or_else(|e| panic!("current_frame.png does not decode: {e}"));
            assert_eq!((image.width(), image.height()), (512, 256));
            frames_checked += 1;
        }
        if let Ok(text) = std::fs::read_to_string(&status_path) {
            let status: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("status.json does not parse: {e}\n{text}"));
            for key in LEGACY_KEYS {
                assert!(status.get(key).is_some(), "status.json lacks {key}: {text}");
            }
            states.insert(status["state"].as_str().unwrap().to_string());
            if let Some(seq) = status["display"]["current_sequence"].as_u64() {
                assert!(
                    last_sequence <= Some(seq),
                    "display went back: {last_sequence:?} -> {seq}"
                );
                last_sequence = Some(seq);
            }
            statuses_checked += 1;
        }
        std::thread::sleep(Duration::from_millis(15));
    }
    assert!(frames_checked > 50, "only {frames_checked} frame reads");
    assert!(
        statuses_checked > 50,
        "only {statuses_checked} status reads"
    );
    assert!(
        states.contains("playing"),
        "never playing: {states:?}\n{}",
        daemon.log()
    );
    assert!(
        last_sequence.unwrap() >= 20,
        "display only reached {last_sequence:?}"
    );

    let (exit, took) = daemon.terminate();
    assert!(exit.success(), "exit {exit:?}\n{}", daemon.log());
    assert!(took < Duration::from_secs(2), "shutdown took {took:?}");

    let status: Value =
        serde_json::from_str(&std::fs::read_to_string(&status_path).unwrap()).unwrap();
    assert_eq!(status["state"], "stopped");
    assert_eq!(status["status"], "stopped");
    assert_eq!(status["daemon_status"], "stopped");

    // Every sequence number from 0 was generated: no holes, in order.
    let seqs = frame_seqs(&daemon.path("output/frames"));
    let max = *seqs.last().unwrap();
    assert_eq!(seqs, (0..=max).collect(), "holes in the frame sequence");
    // The Rainmeter keys come first, in the order its regex expects.
    let text = std::fs::read_to_string(&status_path).unwrap();
    let positions: Vec<usize> = LEGACY_KEYS[..11]
        .iter()
        .map(|k| text.find(&format!("\"{k}\": ")).unwrap())
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "Rainmeter key order broken"
    );
    // The operator tool reads the same schema.
    if let Ok(out) = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tools/status.py"))
        .arg(daemon.path("output"))
        .output()
    {
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "tools/status.py failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.starts_with("state      stopped"), "{text}");
    }
    assert!(!daemon.path("output").read_dir().unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .ends_with(".tmp")));
}

#[test]
fn json_log_has_one_lock_acquisition_per_pair_and_keyframe_events() {
    let mut daemon = Daemon::start("");
    std::thread::sleep(Duration::from_secs(3));
    let (exit, _) = daemon.terminate();
    assert!(exit.success());
    let events = json_events(&daemon.path("logs/dreamd.jsonl"));
    let pairs: Vec<&Value> = events.iter().filter(|e| e["event"] == "pair").collect();
    assert!(pairs.len() >= 3, "only {} pair events", pairs.len());
    for pair in &pairs {
        assert_eq!(pair["outcome"], "ok", "{pair}");
        assert_eq!(pair["lock_acquisitions"], 1, "{pair}");
        for field in [
            "slerp_ms",
            "decode_ms",
            "save_ms",
            "lock_wait_ms",
            "lock_hold_ms",
            "batch_size",
        ] {
            assert!(pair[field].is_number(), "pair event lacks {field}: {pair}");
        }
    }
    // A full pair decodes N in-betweens plus the keyframe in one batch.
    assert!(
        pairs.iter().any(|p| p["batch_size"] == 5),
        "no full batch of 5"
    );
    let keyframes = events.iter().filter(|e| e["event"] == "keyframe").count();
    assert!(keyframes >= pairs.len());
    assert!(events.iter().all(|e| e["target"] == "dreamd::event"));
}

#[test]
fn runs_on_built_in_defaults_without_a_config_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    // A free port, so the test never meets another daemon on the default 8765.
    let mut child = spawn(
        dir.path(),
        &["run", "--duration", "2", "--bind", "127.0.0.1:0"],
    );
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "--duration 2 did not stop"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap();
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("running on built-in defaults"), "{stderr}");
    // The default start gate is 10 s, so it never played, but it generated frames.
    let status: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("output/status.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(status["state"], "stopped");
    assert_eq!(status["display"]["target_fps"], 4.0);
    assert!(!frame_seqs(&dir.path().join("output/frames")).is_empty());
    let log_files: Vec<String> = std::fs::read_dir(dir.path().join("logs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        log_files
            .iter()
            .any(|f| f.starts_with("dreamd.") && f.ends_with(".log")),
        "{log_files:?}"
    );
    assert!(
        log_files.contains(&"dreamd.jsonl".to_string()),
        "{log_files:?}"
    );
}

#[test]
fn restart_continues_the_sequence_instead_of_overwriting_frames() {
    let mut first = Daemon::start("");
    std::thread::sleep(Duration::from_millis(1500));
    first.terminate();
    let before = frame_seqs(&first.path("output/frames"));
    let last_before = *before.last().unwrap();
    let bytes_before =
        std::fs::read(first.path(&format!("output/frames/{last_before:08}.png"))).unwrap();

    let mut second = spawn(first.dir.path(), &["run", "--config", "dreamd.toml"]);
    std::thread::sleep(Duration::from_millis(1500));
    let _ = Command::new("kill")
        .args(["-TERM", &second.id().to_string()])
        .status();
    assert!(second.wait().unwrap().success());
    let after = frame_seqs(&first.path("output/frames"));
    assert!(*after.last().unwrap() > last_before);
    let bytes_after = std::fs::read(first.path(&format!("output/frames/{last_before:08}.png")));
    // The old frame is either still the same picture or pruned, never replaced.
    if let Ok(bytes_after) = bytes_after {
        assert_eq!(bytes_before, bytes_after);
    }
}

#[test]
fn bad_config_fails_at_start_naming_the_key() {
    for (config, expected) in [
        (
            "[display]\ntarget_fps = 0",
            "display.target_fps must be > 0",
        ),
        ("[display]\nfps = 4", "unknown field `fps`"),
        ("[generation]\ndecoder = \"magic\"", "generation.decoder"),
        ("[display\n", "dreamd.toml"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("dreamd.toml"), config).unwrap();
        let output = Command::new(BIN)
            .args(["run", "--config", "dreamd.toml"])
            .current_dir(dir.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{config} was accepted");
        assert!(stderr.contains(expected), "{config}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn missing_config_file_is_a_clear_error() {
    let output = Command::new(BIN)
        .args(["run", "--config", "/nonexistent/dreamd.toml"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("/nonexistent/dreamd.toml"), "{stderr}");
}

#[test]
fn init_writes_the_commented_default_and_never_overwrites_silently() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    assert!(run(&["init"]).status.success());
    let written = std::fs::read_to_string(dir.path().join("dreamd.toml")).unwrap();
    assert!(written.contains("target_fps = 4.0"));
    std::fs::write(dir.path().join("dreamd.toml"), "# mine\n").unwrap();
    let refused = run(&["init"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--force"));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("dreamd.toml")).unwrap(),
        "# mine\n"
    );
    assert!(run(&["init", "--force"]).status.success());
    assert_eq!(
        std::fs::read_to_string(dir.path().join("dreamd.toml")).unwrap(),
        written
    );
}

#[test]
fn version_is_printed() {
    let output = Command::new(BIN).arg("--version").output().unwrap();
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains(env!("CARGO_PKG_VERSION")));
}

/// Issue 18 (4): a second daemon on the same output folder exits 1 naming the first one's PID,
/// and leaves the first one's files alone (no lock file appears in output/ either).
#[test]
fn a_second_daemon_on_the_same_output_folder_exits_naming_the_holder() {
    let first = Daemon::start("");
    first.wait_for_first_frame();
    let started = Instant::now();
    let second = Command::new(BIN)
        .args(["run", "--config", "dreamd.toml"])
        .current_dir(first.dir.path())
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{stderr}");
    let pid = first.child.id();
    assert!(
        stderr.contains("in use by another dreamd") && stderr.contains(&format!("pid {pid}")),
        "{stderr}"
    );
    let status = first.status().unwrap();
    assert_eq!(status["pid"], pid);
    let mut names: Vec<String> = std::fs::read_dir(first.path("output"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".tmp"))
        .collect();
    names.sort();
    assert_eq!(names, ["current_frame.png", "frames", "status.json"]);
}

/// `dreamd run --check`'s one-line report in a fresh folder with `config` as its config file.
fn check_with(config: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("dreamd.toml"), config).unwrap();
    let output = support::isolate_models(&mut Command::new(BIN), dir.path())
        .args(["run", "--config", "dreamd.toml", "--check"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// With `generation.decode_divisor` unset, TAESD on the CPU decodes at the largest size whose
/// timed frame fits the display rate: full size where a frame may take seconds, smaller where
/// it may take 6 ms (no CPU decodes a 256×128 frame that fast); a divisor the config sets is
/// kept, and the preview decoder is never timed.
#[test]
fn decode_size_fits_the_display_rate_unless_the_config_sets_it() {
    let Some(models) = support::weights_dir(support::Family::Taesd) else {
        return;
    };
    let config = |fps: f64, extra: &str| {
        format!(
            "[generation]\nwidth = 256\nheight = 128\ndecoder = \"taesd\"\ndevice = \"cpu\"\n\
             models_dir = {:?}\n{extra}\n[display]\ntarget_fps = {fps}\n",
            models.display().to_string()
        )
    };
    let decoded_at = |report: &str| -> u32 {
        let (_, rest) = report
            .split_once("decoded at 1/")
            .unwrap_or_else(|| panic!("no decode size in {report:?}"));
        rest.split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|d| d.parse().ok())
            .unwrap_or_else(|| panic!("no divisor in {report:?}"))
    };

    let slow = check_with(&config(0.1, ""));
    assert_eq!(decoded_at(&slow), 1, "{slow}");
    let fast = check_with(&config(120.0, ""));
    assert!(decoded_at(&fast) > 1, "{fast}");
    assert!(
        fast.contains("chosen at start: a full-size frame decodes in ≈"),
        "{fast}"
    );
    let set = check_with(&config(120.0, "decode_divisor = 1"));
    assert_eq!(decoded_at(&set), 1, "{set}");
    assert!(!set.contains("chosen at start"), "{set}");
    let preview = check_with(
        "[generation]\nwidth = 256\nheight = 128\ndecoder = \"preview\"\n\
         [display]\ntarget_fps = 120\n",
    );
    assert_eq!(decoded_at(&preview), 1, "{preview}");
}
