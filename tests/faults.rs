//! Fault injection end to end: for each `[faults]` kind, the real daemon keeps the display
//! moving, reports `degraded` with the reason, counts the failure in status.json and the logs,
//! and recovers by itself when the fault's window closes.

mod support;

use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{field, get, Daemon};

/// The fault is active from 2 s to 5 s after start-up.
const WINDOW: &str = "{ after_seconds = 2.0, for_seconds = 3.0 }";
const RUN: Duration = Duration::from_secs(11);
/// 8 fps: a frame is due every 125 ms; a pending slot is held one interval, then skipped.
const HOLD_DEADLINE: Duration = Duration::from_millis(250);

struct Sample {
    at: Duration,
    status: Value,
}

struct Observed {
    samples: Vec<Sample>,
    /// Longest time `current_frame.png` went unchanged after the first frame.
    longest_frame_gap: Duration,
}

fn observe(daemon: &Daemon) -> Observed {
    let start = Instant::now();
    let mut samples = Vec::new();
    let mut last_inode = None;
    let mut last_change = None;
    let mut longest_frame_gap = Duration::ZERO;
    let current = daemon.path("output/current_frame.png");
    while start.elapsed() < RUN {
        let now = start.elapsed();
        if let Ok(meta) = std::fs::metadata(&current) {
            if last_inode != Some(meta.ino()) {
                if let Some(previous) = last_change {
                    longest_frame_gap = longest_frame_gap.max(now - previous);
                }
                last_inode = Some(meta.ino());
                last_change = Some(now);
            }
        }
        if samples
            .last()
            .is_none_or(|s: &Sample| now - s.at >= Duration::from_millis(100))
        {
            if let Some(status) = daemon.status() {
                samples.push(Sample { at: now, status });
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Observed {
        samples,
        longest_frame_gap,
    }
}

/// Runs the daemon with `fault` (a `[faults]` line) and checks every promise; `stages[0]` is
/// where the failure is counted, `reason` what last_error must say, and last_error may name any
/// of `stages` (a write fault fails both the frames' saves and current_frame.png's publish, and
/// last_error is whichever failed last).
fn scenario(fault: &str, extra: &str, stages: &[&str], reason: &str, file_keeps_moving: bool) {
    let stage = stages[0];
    let config = format!(
        "[timeouts]\nkeyframe_seconds = 1.0\ndecode_seconds = 1.0\nsave_seconds = 1.0\n\
         [health]\ndegraded_seconds = 1.5\n[faults]\n{fault} = {WINDOW}\n{extra}\n"
    );
    let daemon = Daemon::start(&config);
    let seen = observe(&daemon);
    let log = daemon.log();
    let samples = &seen.samples;
    assert!(samples.len() > 50, "too few status samples\n{log}");

    // Degraded, with the reason, while the fault is on.
    let degraded: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.status["state"] == "degraded")
        .collect();
    assert!(!degraded.is_empty(), "never degraded\n{log}");
    let during = degraded
        .iter()
        .find(|s| {
            stages
                .iter()
                .any(|stage| field(&s.status, "last_error/stage") == *stage)
                && field(&s.status, "last_error/message")
                    .as_str()
                    .is_some_and(|m| m.contains(reason))
        })
        .unwrap_or_else(|| {
            panic!(
                "no degraded status names {stages:?}: {reason}; last: {}",
                degraded[degraded.len() - 1].status
            )
        });
    assert_eq!(during.status["status"], "degraded", "legacy key follows");
    assert!(
        during.at >= Duration::from_millis(1900),
        "degraded before the fault: {:?}",
        during.at
    );

    // The count is in status.json and the reason in the logs.
    let last = &samples[samples.len() - 1].status;
    let failures = field(last, &format!("failures/{stage}")).as_u64().unwrap();
    assert!(failures > 0, "failures.{stage} = 0: {last}");
    let metrics = get(&daemon.url, "/metrics").text();
    let counted = metrics.lines().any(|line| {
        line.starts_with("dreamd_failures_total{")
            && line.contains(&format!("stage=\"{stage}\""))
            && line
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .is_some_and(|v| v > 0.0)
    });
    assert!(counted, "no failures for {stage} in /metrics:\n{metrics}");
    let events = daemon.events();
    let logged = events.iter().any(|e| {
        e["fields"]["error"]
            .as_str()
            .is_some_and(|m| m.contains(reason))
    }) || log.contains(reason);
    assert!(logged, "the reason {reason:?} is not in the logs\n{log}");

    // The display never stopped: frames kept being shown at the target rate.
    let after_gate = samples
        .iter()
        .find(|s| s.status["display"]["frames_displayed"].as_u64() > Some(8))
        .expect("playback started");
    let shown = |s: &Sample| {
        s.status["display"]["frames_displayed"]
            .as_u64()
            .unwrap_or(0)
    };
    let elapsed = (last_sample(samples).at - after_gate.at).as_secs_f64();
    let rate = (shown(last_sample(samples)) - shown(after_gate)) as f64 / elapsed;
    assert!(rate > 8.0 * 0.85, "display ran at {rate:.2} fps\n{log}");
    assert!(
        samples
            .iter()
            .filter(|s| s.at > after_gate.at)
            .all(|s| s.status["state"] != "buffering"),
        "the buffer ran dry\n{log}"
    );
    if file_keeps_moving {
        assert!(
            seen.longest_frame_gap <= HOLD_DEADLINE + Duration::from_millis(150),
            "current_frame.png stood still for {:?}",
            seen.longest_frame_gap
        );
    }

    // Recovered by itself: playing again, generating again, no new failures.
    assert_eq!(last["state"], "playing", "{last}\n{log}");
    let at = |t: f64| {
        samples
            .iter()
            .find(|s| s.at.as_secs_f64() >= t)
            .unwrap_or_else(|| last_sample(samples))
    };
    let made = |s: &Sample| {
        s.status["generation"]["interpolated_frames"]
            .as_u64()
            .unwrap()
    };
    assert!(
        made(last_sample(samples)) > made(at(7.5)),
        "no frames made after the fault cleared\n{log}"
    );
    assert_eq!(
        field(&at(9.0).status, &format!("failures/{stage}")),
        field(last, &format!("failures/{stage}")),
        "failures still growing after the fault cleared"
    );
}

fn last_sample(samples: &[Sample]) -> &Sample {
    &samples[samples.len() - 1]
}

#[test]
fn decoder_error_degrades_then_recovers() {
    scenario(
        "decoder_error",
        "",
        &["decode"],
        "faults.decoder_error",
        true,
    );
}

#[test]
fn decoder_hang_times_out_degrades_then_recovers() {
    scenario("decoder_hang", "", &["decode"], "timed out", true);
}

#[test]
fn keyframe_error_degrades_then_recovers() {
    scenario(
        "keyframe_error",
        "",
        &["keyframe"],
        "faults.keyframe_error",
        true,
    );
}

#[test]
fn keyframe_hang_times_out_degrades_then_recovers() {
    scenario("keyframe_hang", "", &["keyframe"], "timed out", true);
}

#[test]
fn frame_write_failure_degrades_then_recovers() {
    // Frames still play from memory while their files cannot be written.
    scenario(
        "write_error",
        "",
        &["save", "publish"],
        "no space left on device",
        false,
    );
}

#[test]
fn slow_disk_times_out_saves_then_recovers() {
    scenario(
        "slow_disk",
        "slow_disk_ms = 400",
        &["save"],
        "timed out",
        false,
    );
}
