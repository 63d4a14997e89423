//! Hot reload against the real daemon: safe keys apply live, others are named as needing a
//! restart, and a bad edit is rejected while the running config stays.

mod support;

use std::time::{Duration, Instant};

use support::{field, Daemon};

/// The whole test config file with `extra` (as `Daemon::start` writes it).
fn full(extra: &str) -> String {
    support::config(&format!("{extra}\n[server]\nbind = \"127.0.0.1:0\"\n"))
}

/// Replaces the config the way an editor does (write elsewhere, rename over).
fn rewrite(daemon: &Daemon, text: &str) {
    let tmp = daemon.path("dreamd.toml.new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, daemon.path("dreamd.toml")).unwrap();
}

/// Waits up to `limit` for `check` on status.json.
fn wait_for(daemon: &Daemon, limit: Duration, check: impl Fn(&serde_json::Value) -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if daemon.status().is_some_and(|s| check(&s)) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn wait_for_log(daemon: &Daemon, limit: Duration, text: &str) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if daemon.log().contains(text) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn safe_keys_apply_live_and_others_need_a_restart() {
    let daemon = Daemon::start("");
    assert!(wait_for(&daemon, Duration::from_secs(5), |s| s["state"] == "playing"));
    assert!(wait_for_log(&daemon, Duration::from_secs(2), "for changes"));

    // target_fps 8 → 5, retention, and frames_per_pair (needs a restart).
    let edited = full("[output]\nkeep_frames = 12\n")
        .replace("target_fps = 8.0", "target_fps = 5.0")
        .replace("frames_per_pair = 4", "frames_per_pair = 6");
    rewrite(&daemon, &edited);
    assert!(
        wait_for(&daemon, Duration::from_secs(5), |s| {
            field(s, "display/target_fps") == 5.0
        }),
        "target_fps not applied\n{}",
        daemon.log()
    );
    assert!(wait_for_log(
        &daemon,
        Duration::from_secs(3),
        "needs a restart to apply: [generation]"
    ));
    let log = daemon.log();
    assert!(log.contains("display.target_fps"), "{log}");
    assert!(log.contains("output.keep_frames"), "{log}");
    // The display now paces at 5 fps.
    let shown = |s: &serde_json::Value| field(s, "display/frames_displayed").as_f64().unwrap();
    let before = daemon.status().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let after = daemon.status().unwrap();
    let rate = (shown(&after) - shown(&before)) / 3.0;
    assert!((4.0..6.0).contains(&rate), "{rate} fps after the reload");
    // Retention follows: at most 12 frames on disk (plus one being written).
    let frames = std::fs::read_dir(daemon.path("output/frames"))
        .unwrap()
        .count();
    assert!(frames <= 13, "{frames} frames kept");
}

#[test]
fn a_bad_edit_is_rejected_and_the_running_config_stays() {
    let daemon = Daemon::start("");
    assert!(wait_for(&daemon, Duration::from_secs(5), |s| s["state"] == "playing"));
    assert!(wait_for_log(&daemon, Duration::from_secs(2), "for changes"));
    rewrite(
        &daemon,
        &full("").replace("target_fps = 8.0", "target_fps = 0"),
    );
    assert!(
        wait_for_log(
            &daemon,
            Duration::from_secs(5),
            "config reload rejected, the running config stays"
        ),
        "{}",
        daemon.log()
    );
    assert!(daemon.log().contains("display.target_fps must be > 0"));
    rewrite(&daemon, "[display\ntarget_fps = 4");
    assert!(wait_for_log(
        &daemon,
        Duration::from_secs(5),
        "TOML parse error"
    ));
    let status = daemon.status().unwrap();
    assert_eq!(field(&status, "display/target_fps"), 8.0);
    assert_eq!(status["state"], "playing");
}

#[test]
fn clearing_a_fault_by_reload_ends_it() {
    let daemon = Daemon::start(
        "[timeouts]\ndecode_seconds = 1.0\n[health]\ndegraded_seconds = 1.0\n\
         [faults]\ndecoder_error = { after_seconds = 1.0 }\n",
    );
    assert!(
        wait_for(&daemon, Duration::from_secs(6), |s| s["state"]
            == "degraded"),
        "{}",
        daemon.log()
    );
    let cleared = full("[timeouts]\ndecode_seconds = 1.0\n[health]\ndegraded_seconds = 1.0\n");
    rewrite(&daemon, &cleared);
    assert!(
        wait_for(&daemon, Duration::from_secs(8), |s| s["state"] == "playing"),
        "{}",
        daemon.log()
    );
    assert!(
        daemon.log().contains("reloaded: applied [faults]"),
        "{}",
        daemon.log()
    );
}

/// How many times `text` is in the log.
fn count_in_log(daemon: &Daemon, text: &str) -> usize {
    daemon.log().matches(text).count()
}

/// Issue 18 (5): reading the file used to trigger the watcher again, so an unchanged file was
/// re-read many times a second and a broken edit logged its error ~3×/s for ever. Now a broken
/// edit is reported once, and a later real edit is applied.
#[test]
fn a_broken_edit_is_reported_once_and_reads_do_not_retrigger() {
    let daemon = Daemon::start("");
    assert!(wait_for_log(&daemon, Duration::from_secs(5), "for changes"));
    rewrite(
        &daemon,
        &full("").replace("target_fps = 8.0", "target_fps = -1.0"),
    );
    assert!(wait_for_log(
        &daemon,
        Duration::from_secs(5),
        "config reload rejected"
    ));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        count_in_log(&daemon, "config reload rejected"),
        1,
        "{}",
        daemon.log()
    );
    // Touching the file without changing it is not a change either.
    let text = std::fs::read_to_string(daemon.path("dreamd.toml")).unwrap();
    rewrite(&daemon, &text);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(count_in_log(&daemon, "config reload rejected"), 1);
    rewrite(
        &daemon,
        &full("").replace("target_fps = 8.0", "target_fps = 6.0"),
    );
    assert!(wait_for(&daemon, Duration::from_secs(5), |s| {
        field(s, "display/target_fps") == 6.0
    }));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        count_in_log(&daemon, "reloaded: applied"),
        1,
        "{}",
        daemon.log()
    );
}

/// Issue 18 (5, 6): a config replaced by a FIFO used to block the reload thread for ever (later
/// edits silently ignored), and a huge one burned a core. Both are refused, and the next real
/// edit is applied.
#[test]
fn a_fifo_or_huge_config_is_refused_and_later_edits_still_apply() {
    let daemon = Daemon::start("");
    assert!(wait_for_log(&daemon, Duration::from_secs(5), "for changes"));
    std::fs::remove_file(daemon.path("dreamd.toml")).unwrap();
    let status = std::process::Command::new("mkfifo")
        .arg(daemon.path("dreamd.toml"))
        .status()
        .unwrap();
    assert!(status.success());
    assert!(
        wait_for_log(&daemon, Duration::from_secs(5), "FIFO"),
        "{}",
        daemon.log()
    );
    rewrite(&daemon, &"# padding\n".repeat(200_000));
    assert!(
        wait_for_log(
            &daemon,
            Duration::from_secs(5),
            "more than the 1048576 allowed"
        ),
        "{}",
        daemon.log()
    );
    rewrite(
        &daemon,
        &full("").replace("target_fps = 8.0", "target_fps = 6.0"),
    );
    assert!(
        wait_for(&daemon, Duration::from_secs(5), |s| {
            field(s, "display/target_fps") == 6.0
        }),
        "the edit after the FIFO was not applied\n{}",
        daemon.log()
    );
}

/// Issue 18 (7): SIGHUP reads the config file at once.
#[test]
fn sighup_reloads_the_config() {
    let mut daemon = Daemon::start("");
    assert!(wait_for_log(&daemon, Duration::from_secs(5), "for changes"));
    let status = std::process::Command::new("kill")
        .args(["-HUP", &daemon.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(wait_for_log(
        &daemon,
        Duration::from_secs(5),
        "SIGHUP: reading"
    ));
    assert!(
        daemon.child.try_wait().unwrap().is_none(),
        "SIGHUP killed the daemon"
    );
    assert!(wait_for(&daemon, Duration::from_secs(5), |s| s["state"] == "playing"));
}
