//! `dreamd soak`: a short soak of the real binary passes every check and cleans up after itself;
//! bad rates are refused before anything runs.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::BIN;

/// Runs `dreamd soak ARGS --json` in an empty folder (no ./dreamd.toml) with TMPDIR inside it.
fn soak(args: &[&str]) -> (std::process::Output, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let output = Command::new(BIN)
        .arg("soak")
        .args(args)
        .arg("--json")
        .current_dir(dir.path())
        .env("TMPDIR", &tmp)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    (output, dir)
}

#[test]
fn three_simulated_minutes_soak_in_seconds_and_passes_every_check() {
    let started = Instant::now();
    // 0.05 h at 4 fps = 720 frames, at 40 fps: about 18 s, slow enough for the unoptimised test
    // build on a busy 2-core machine (400 and 100 fps were not, beside a concurrent build). Memory in so short a run follows
    // the buffer's fill more than any leak, so the growth limit is loose here (keeping every
    // frame, ≈ 60 MB, would still fail it); `--hours 24` is where 5 % is measured.
    let (output, dir) = soak(&["--hours", "0.05", "--speed", "10", "--max-rss-growth", "50"]);
    let elapsed = started.elapsed();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "soak failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["passed"], true, "{stdout}");
    let checks = report["checks"].as_array().unwrap();
    let names: Vec<&str> = checks.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "completed",
            "rss_growth",
            "frame_files",
            "no_stall",
            "no_buffering",
            "no_failures",
            "logs_bounded"
        ]
    );
    assert!(checks.iter().all(|c| c["passed"] == true), "{stdout}");
    assert!(report["frames_displayed"].as_u64().unwrap() >= 720);
    assert!(report["simulated_hours"].as_f64().unwrap() >= 0.05);
    assert_eq!(report["decoder"], "preview");
    assert_eq!(report["display_fps"], 40.0);
    assert_eq!(report["limits"]["rss_growth"], 0.5);
    assert!(report["rss_warm_mb"].as_f64().unwrap() > 0.0, "{stdout}");
    let keep = report["keep_frames"].as_u64().unwrap();
    assert!(
        report["frame_files_max"].as_u64().unwrap()
            <= report["limits"]["frame_files"].as_u64().unwrap()
    );
    assert!(
        report["frame_files_max"].as_u64().unwrap() >= keep,
        "retention was never reached: {stdout}"
    );
    assert!(
        report["jsonl_bytes_max"].as_u64().unwrap() > 0,
        "no structured log: {stdout}"
    );
    assert!(report["samples"].as_u64().unwrap() >= 5, "{stdout}");
    // The soak's folder (output, logs) is removed afterwards.
    let left: Vec<_> = std::fs::read_dir(dir.path().join("tmp")).unwrap().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    assert!(elapsed < Duration::from_secs(60), "took {elapsed:?}");
}

#[test]
fn rates_past_the_limit_and_bad_hours_are_refused() {
    let (output, dir) = soak(&["--hours", "1", "--fps", "5000"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("<= 1000 fps"), "{stderr}");
    let (output, _) = soak(&["--hours", "0"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--hours"));
    assert!(std::fs::read_dir(dir.path().join("tmp"))
        .unwrap()
        .next()
        .is_none());
}
