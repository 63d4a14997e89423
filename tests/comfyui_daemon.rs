//! The real daemon binary with `keyframes.source = "comfyui"` against the replaying ComfyUI:
//! it dreams (keyframes from ComfyUI, each an img2img of the last), reports `comfyui_status`,
//! carries prompt ids and themes in its `keyframe` events, and plays on through the fallback
//! when the server goes away, then dreams again when it returns.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dreamd::comfyui::replay::{Options, Replay};
use support::Daemon;

fn models() -> PathBuf {
    std::env::var_os("DREAMD_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/models"))
}

/// Waits (up to `limit`) until `check` holds for status.json; panics with the last one.
fn wait_for(
    daemon: &Daemon,
    limit: Duration,
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let until = Instant::now() + limit;
    loop {
        let status = daemon.status();
        if let Some(s) = &status {
            if check(s) {
                return status.unwrap();
            }
        }
        assert!(
            Instant::now() < until,
            "{what} within {limit:?}: {status:?}\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_daemon_dreams_through_comfyui_and_survives_its_absence() {
    if !dreamd::comfyui::protocol::recordings_dir()
        .join("ws.jsonl")
        .is_file()
    {
        dreamd::test_weights::skip("the ComfyUI recordings (../shared/comfyui/recordings, or $DREAMD_SHARED/comfyui/recordings)");
        return;
    }
    if !models().join("taesd/taesd_encoder.safetensors").is_file() {
        support::tool_missing("TAESD weights in ../shared/models (or $DREAMD_MODELS)");
        return;
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server: Replay = runtime.block_on(Replay::start(Options::default())).unwrap();
    let extra = format!(
        "width = 256\nheight = 128\ndecoder = \"taesd\"\nmodels_dir = {:?}\n\
         [keyframes]\nsource = \"comfyui\"\nimages_dir = \"no-such-folder\"\n\
         [comfyui]\nurl = {:?}\ntimeout_seconds = 10.0\nseed = 7\n",
        models().join("taesd"),
        server.url,
    );
    let daemon = Daemon::start(&extra);
    let status = wait_for(
        &daemon,
        Duration::from_secs(60),
        "three ComfyUI keyframes",
        |s| s["comfyui"]["keyframes_ok"].as_u64().unwrap_or(0) >= 3,
    );
    assert!(
        ["connected", "generating"].contains(&status["comfyui_status"].as_str().unwrap()),
        "{status}"
    );
    assert_eq!(status["generation"]["source"], "comfyui");
    // The prompt comes from the first default theme; the skin sees it.
    assert_eq!(status["theme"], "deep sea");
    assert!(status["current_prompt"]
        .as_str()
        .unwrap()
        .starts_with("bioluminescent"));
    // Every img2img after the first uploads the keyframe before it.
    assert!(!server.requests("POST", "/upload/image").is_empty());
    let events = daemon.events();
    let made: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["event"] == "keyframe" && e["origin"] == "comfyui")
        .collect();
    assert!(made.len() >= 2, "{events:?}");
    for e in &made {
        assert!(
            e["prompt_id"].as_str().is_some_and(|id| id.len() == 36),
            "{e}"
        );
        assert_eq!(e["theme"], "deep sea");
        // Keyframe 0 is txt2img (denoise 1); every later one img2img of the one before.
        let denoise = if e["index"] == 0 { 1.0 } else { 0.2 };
        assert_eq!(e["denoise"], denoise, "{e}");
    }

    // `next-theme` moves on from the next keyframe: the second default theme.
    let answer = support::post(&daemon.url, "/control/next-theme");
    assert_eq!(answer.status, 200, "{}", answer.text());
    let ok_now = status["comfyui"]["keyframes_ok"].as_u64().unwrap();
    let moved = wait_for(&daemon, Duration::from_secs(30), "the next theme", |s| {
        s["theme"] == "cloud cities" && s["comfyui"]["keyframes_ok"].as_u64().unwrap_or(0) > ok_now
    });
    assert!(
        moved["current_prompt"].as_str().unwrap().contains("cities")
            || moved["current_prompt"]
                .as_str()
                .unwrap()
                .contains("sky islands"),
        "{moved}"
    );
    let status = moved;

    // The server goes away: the daemon keeps playing from the fallback, degraded, and says so.
    server.kill();
    let shown = status["display"]["frames_displayed"].as_u64().unwrap();
    let down = wait_for(&daemon, Duration::from_secs(30), "unreachable", |s| {
        s["comfyui_status"] == "unreachable"
            && s["comfyui"]["keyframes_fallback"].as_u64().unwrap_or(0) >= 1
    });
    assert_eq!(down["state"], "degraded", "{down}");
    assert!(down["comfyui"]["reason"].as_str().is_some());
    wait_for(
        &daemon,
        Duration::from_secs(20),
        "frames through the outage",
        |s| s["display"]["frames_displayed"].as_u64().unwrap_or(0) > shown + 8,
    );

    // It comes back: dreaming resumes.
    runtime.block_on(server.restart()).unwrap();
    let ok_before = down["comfyui"]["keyframes_ok"].as_u64().unwrap();
    wait_for(&daemon, Duration::from_secs(40), "dreaming again", |s| {
        s["comfyui"]["keyframes_ok"].as_u64().unwrap_or(0) > ok_before
    });
}
