//! The original Dream Window's bugs (../shared/reference/original-system.md §9.2), one test per
//! item that applies to dreamd, each named after its item and showing dreamd does not have it.
//! (Items 8, 11–15 and 17–22 concern ComfyUI, the Python cache, prompts and Windows; they have no
//! counterpart here. Crash safety of the "atomic" writes, item 6, is also tested in crash.rs.)

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{config, field, get, post, Daemon, BIN, LEGACY_KEYS};

/// Status samples every 100 ms for `how_long`.
fn watch(daemon: &Daemon, how_long: Duration) -> Vec<(Duration, Value)> {
    let start = Instant::now();
    let mut samples = Vec::new();
    while start.elapsed() < how_long {
        if let Some(status) = daemon.status() {
            samples.push((start.elapsed(), status));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    samples
}

fn number(status: &Value, path: &str) -> u64 {
    field(status, path).as_u64().unwrap_or(0)
}

/// Frames shown per second between the first sample with playback and the last.
fn display_rate(samples: &[(Duration, Value)]) -> f64 {
    let first = samples
        .iter()
        .find(|(_, s)| number(s, "display/frames_displayed") > 0)
        .expect("playback started");
    let last = &samples[samples.len() - 1];
    (number(&last.1, "display/frames_displayed") - number(&first.1, "display/frames_displayed"))
        as f64
        / (last.0 - first.0).as_secs_f64()
}

#[test]
fn bug_01_a_failed_keyframe_does_not_stall_generation() {
    let daemon = Daemon::start(
        "[timeouts]\nkeyframe_seconds = 1.0\n[health]\ndegraded_seconds = 1.0\n\
         [faults]\nkeyframe_error = { after_seconds = 1.0, for_seconds = 2.0 }\n",
    );
    let samples = watch(&daemon, Duration::from_secs(6));
    let last = &samples[samples.len() - 1].1;
    assert!(number(last, "failures/keyframe") > 0, "{last}");
    let at_4s = &samples
        .iter()
        .find(|(t, _)| t.as_secs_f64() >= 4.0)
        .unwrap()
        .1;
    assert!(
        number(last, "generation/keyframes") > number(at_4s, "generation/keyframes"),
        "keyframes stopped after the failures\n{}",
        daemon.log()
    );
    assert_eq!(last["state"], "playing", "{last}");
}

#[test]
fn bug_02_a_failed_frame_never_freezes_the_display() {
    let daemon = Daemon::start(
        "[timeouts]\ndecode_seconds = 1.0\n\
         [faults]\ndecoder_error = { after_seconds = 1.0, for_seconds = 2.0 }\n",
    );
    // The failed slots reach the front of the 4 s buffer a few seconds later.
    let samples = watch(&daemon, Duration::from_secs(9));
    let last = &samples[samples.len() - 1].1;
    assert!(number(last, "failures/decode") > 0, "{last}");
    assert!(
        number(last, "display/skipped") > 0,
        "failed slots are skipped: {last}"
    );
    let rate = display_rate(&samples);
    assert!(
        rate > 8.0 * 0.85,
        "display at {rate:.2} fps\n{}",
        daemon.log()
    );
}

#[test]
fn bug_03_buffer_and_memory_stay_bounded() {
    // 8 fps, a 4 s buffer: at most 32 frames ahead (plus the pair in flight).
    let daemon = Daemon::start("[output]\nkeep_frames = 30\n");
    let samples = watch(&daemon, Duration::from_secs(6));
    for (_, status) in &samples {
        let ready = number(status, "buffer/frames_ready");
        assert!(ready <= 32 + 5, "{ready} frames buffered: {status}");
    }
    let frames = std::fs::read_dir(daemon.path("output/frames"))
        .unwrap()
        .count();
    assert!(frames <= 31, "{frames} frame files kept");
}

#[test]
fn bug_04_unread_output_pipes_never_block_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let text = config("[logging]\nlevel = \"debug\"\n[server]\nbind = \"127.0.0.1:0\"\n");
    std::fs::write(dir.path().join("dreamd.toml"), text).unwrap();
    // Pipes nobody reads: once their buffers fill, a blocking writer would stall.
    let mut child = Command::new(BIN)
        .args(["run", "--config", "dreamd.toml"])
        .current_dir(dir.path())
        .env_remove("RUST_LOG")
        .env_remove("DREAMD_MODELS")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = |dir: &std::path::Path| -> Option<Value> {
        serde_json::from_str(&std::fs::read_to_string(dir.join("output/status.json")).ok()?).ok()
    };
    std::thread::sleep(Duration::from_secs(3));
    let before = status(dir.path()).expect("status.json");
    std::thread::sleep(Duration::from_secs(3));
    let after = status(dir.path()).expect("status.json");
    let _ = child.kill();
    let _ = child.wait();
    let shown =
        number(&after, "display/frames_displayed") - number(&before, "display/frames_displayed");
    assert!(shown >= 20, "only {shown} frames in 3 s with unread pipes");
    assert_ne!(before["updated_at"], after["updated_at"]);
}

#[test]
fn bug_05_one_writer_and_the_rainmeter_regex_matches() {
    let daemon = Daemon::start("");
    let samples = watch(&daemon, Duration::from_secs(3));
    let text = std::fs::read_to_string(daemon.path("output/status.json")).unwrap();
    // The skin's ungreedy regex: its 11 keys (the first of LEGACY_KEYS), in order, as `"key": value`.
    let mut at = 0;
    for key in &LEGACY_KEYS[..11] {
        let found = text[at..]
            .find(&format!("\"{key}\": "))
            .unwrap_or_else(|| panic!("{key} missing or out of order:\n{text}"));
        at += found + key.len();
    }
    // is_buffering means "in the start gate", so it stays false during playback.
    let playing: Vec<_> = samples
        .iter()
        .filter(|(_, s)| s["state"] == "playing")
        .collect();
    assert!(!playing.is_empty());
    assert!(playing.iter().all(|(_, s)| s["is_buffering"] == false));
    // One writer: nothing but status.json, current_frame.png and frames/ in output/.
    let mut names: Vec<String> = std::fs::read_dir(daemon.path("output"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".tmp"))
        .collect();
    names.sort();
    assert_eq!(names, ["current_frame.png", "frames", "status.json"]);
}

#[test]
fn bug_06_current_frame_write_errors_are_counted_not_swallowed() {
    let daemon =
        Daemon::start("[faults]\nwrite_error = { after_seconds = 1.0, for_seconds = 1.5 }\n");
    let samples = watch(&daemon, Duration::from_secs(4));
    let last = &samples[samples.len() - 1].1;
    assert!(number(last, "failures/publish") > 0, "{last}");
    assert!(
        daemon.log().contains("cannot publish current frame"),
        "{}",
        daemon.log()
    );
}

#[test]
fn bug_07_pause_resume_and_output_cleanup_work() {
    let daemon = Daemon::start("[output]\nkeep_frames = 20\n");
    daemon.wait_for_first_frame();
    assert_eq!(post(&daemon.url, "/control/pause").status, 200);
    let paused = watch(&daemon, Duration::from_millis(1500));
    let (_, last) = &paused[paused.len() - 1];
    assert_eq!(last["state"], "paused");
    assert_eq!(last["status"], "paused");
    assert_eq!(post(&daemon.url, "/control/resume").status, 200);
    let resumed = watch(&daemon, Duration::from_millis(2000));
    assert_eq!(resumed[resumed.len() - 1].1["state"], "playing");
    let frames = std::fs::read_dir(daemon.path("output/frames"))
        .unwrap()
        .count();
    assert!(
        frames <= 21,
        "{frames} frame files kept with keep_frames = 20"
    );
}

#[test]
fn bug_09_disk_use_is_bounded() {
    let daemon = Daemon::start("[output]\nkeep_frames = 25\n");
    std::thread::sleep(Duration::from_secs(5));
    let frames = std::fs::read_dir(daemon.path("output/frames"))
        .unwrap()
        .count();
    assert!(frames <= 26, "{frames} frame files");
    // Logs: the JSON events rotate by size and the text log by day, both with a file limit
    // (the sizes are exercised by `dreamd soak`); nothing else grows.
    let mut logs: Vec<String> = std::fs::read_dir(daemon.path("logs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    logs.sort();
    assert_eq!(logs.len(), 2, "{logs:?}");
    assert_eq!(logs[1], "dreamd.jsonl");
    assert!(
        logs[0].starts_with("dreamd.") && logs[0].ends_with(".log"),
        "{logs:?}"
    );
}

#[test]
fn bug_10_slow_blocking_io_never_stalls_the_event_loop() {
    // Every frame write takes 300 ms: the runtime must still answer HTTP at once and the
    // display must keep its pace.
    let daemon = Daemon::start(
        "[timeouts]\nsave_seconds = 5.0\n[faults]\nslow_disk = { after_seconds = 0.5 }\nslow_disk_ms = 300\n",
    );
    std::thread::sleep(Duration::from_secs(2));
    for _ in 0..10 {
        let start = Instant::now();
        assert_eq!(get(&daemon.url, "/status").status, 200);
        let took = start.elapsed();
        assert!(took < Duration::from_millis(300), "/status took {took:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn bug_16_shutdown_is_prompt_clean_and_writes_a_final_status() {
    let mut daemon = Daemon::start("");
    daemon.wait_for_first_frame();
    let (exit, took) = daemon.terminate();
    assert!(exit.success(), "{exit}");
    assert!(took < Duration::from_secs(2), "took {took:?}");
    let status = daemon.status().unwrap();
    assert_eq!(status["state"], "stopped");
    assert_eq!(status["status"], "stopped");
}
