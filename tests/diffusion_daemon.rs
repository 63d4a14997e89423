//! The real daemon binary with `keyframes.source = "diffusion"` on the tiny random SD 1.x
//! pipeline (`../shared/models/tiny-sd`): it loads the model in process, dreams keyframes in
//! latent space (each img2img of the last one's latent), plays frames, and writes `keyframe`
//! events carrying the prompt, seed and strength.
//!
//! The tiny UNet's latent is 4×8×16, so the picture is 128×64 with the preview decoder.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::Daemon;

fn models() -> PathBuf {
    std::env::var_os("DREAMD_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/models"))
}

#[test]
fn the_daemon_dreams_in_process_on_the_tiny_pipeline() {
    let pipeline = models().join("tiny-sd/pipeline");
    if !pipeline.join("unet").is_dir() {
        support::tool_missing(
            "the tiny SD pipeline in ../shared/models/tiny-sd (or $DREAMD_MODELS)",
        );
        return;
    }
    let extra = format!(
        "width = 128\nheight = 64\ndecoder = \"preview\"\n\
         [keyframes]\nsource = \"diffusion\"\nimages_dir = \"no-such-folder\"\n\
         [diffusion]\nmodel_dir = {pipeline:?}\nmodel = \"auto\"\nsteps = 4\nstrength = 0.5\n\
         guidance = 7.5\nseed = 11\ndtype = \"f32\"\n"
    );
    let daemon = Daemon::start(&extra);
    let until = Instant::now() + Duration::from_secs(60);
    let status = loop {
        let status = daemon.status();
        if let Some(s) = &status {
            if s["keyframes_generated"].as_u64().unwrap_or(0) >= 3
                && s["display"]["frames_displayed"].as_u64().unwrap_or(0) >= 8
            {
                break status.unwrap();
            }
        }
        assert!(
            Instant::now() < until,
            "three diffusion keyframes and frames within 60 s: {status:?}\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status["generation"]["source"], "diffusion", "{status}");
    let events = daemon.events();
    let made: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["event"] == "keyframe" && e["origin"] == "diffusion")
        .collect();
    assert!(made.len() >= 2, "{events:?}");
    for e in &made {
        // Keyframe 0 is txt2img (denoise 1); every later one img2img of the one before.
        let denoise = if e["index"] == 0 { 1.0 } else { 0.5 };
        assert_eq!(e["denoise"], denoise, "{e}");
        assert_eq!(e["seed"], 11 + e["index"].as_u64().unwrap(), "{e}");
        assert!(e["prompt"].as_str().is_some_and(|p| !p.is_empty()), "{e}");
    }
    assert!(!daemon.log().contains("panicked"), "{}", daemon.log());
}

/// status.json's `current_prompt` and `theme` are those of the keyframe on screen, not of the
/// keyframe being made a buffer ahead: every status document is checked against the `keyframe`
/// events (the prompt each keyframe was made with, and its sequence number).
#[test]
fn status_names_the_prompt_of_the_keyframe_on_screen() {
    let pipeline = models().join("tiny-sd/pipeline");
    if !pipeline.join("unet").is_dir() {
        support::tool_missing(
            "the tiny SD pipeline in ../shared/models/tiny-sd (or $DREAMD_MODELS)",
        );
        return;
    }
    // Eight themes, one per keyframe (the screen's lag of about nine keyframes never lands on
    // the same theme as the keyframe being made); the test buffer (4 s at 8 fps) is about six keyframes deep, so
    // the screen trails generation.
    let themes: String = (0..8)
        .map(|i| format!("[[prompts.themes]]\nname = \"theme {i}\"\nprompt = \"picture {i}\"\n"))
        .collect();
    let extra = format!(
        "width = 128\nheight = 64\ndecoder = \"preview\"\n\
         [keyframes]\nsource = \"diffusion\"\nimages_dir = \"no-such-folder\"\n\
         [diffusion]\nmodel_dir = {pipeline:?}\nsteps = 2\nstrength = 0.5\nseed = 3\n\
         [prompts]\nrotate_every = 1\n[prompts.modifiers]\nenabled = false\n{themes}"
    );
    let daemon = Daemon::start(&extra);
    let until = Instant::now() + Duration::from_secs(60);
    let mut checked = 0;
    let mut behind = 0;
    while checked < 12 {
        assert!(
            Instant::now() < until,
            "12 status documents with a frame on screen within 60 s ({checked})\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(150));
        let Some(status) = daemon.status() else {
            continue;
        };
        let Some(shown) = status["display"]["current_sequence"].as_u64() else {
            continue;
        };
        // Checked once generation is well ahead of the screen.
        if status["buffer_seconds"].as_f64().unwrap_or(0.0) < 2.0 {
            continue;
        }
        let events = daemon.events();
        let made: Vec<&serde_json::Value> = events
            .iter()
            .filter(|e| e["event"] == "keyframe" && e["outcome"] == "ok")
            .collect();
        let Some(on_screen) = made
            .iter()
            .filter(|e| e["seq"].as_u64().is_some_and(|seq| seq <= shown))
            .max_by_key(|e| e["seq"].as_u64())
        else {
            continue;
        };
        // The newest keyframe when the document was written, and its prompt.
        let generated = status["keyframes_generated"].as_u64().unwrap_or(0);
        let newest = made
            .iter()
            .find(|e| e["index"].as_u64() == generated.checked_sub(1))
            .unwrap_or(on_screen);
        if newest["prompt"] != on_screen["prompt"] {
            behind += 1;
        }
        assert_eq!(
            status["current_prompt"], on_screen["prompt"],
            "frame {shown} shows keyframe {}; status: {status}",
            on_screen["index"]
        );
        assert_eq!(status["theme"], on_screen["theme"], "{status}");
        checked += 1;
    }
    assert!(
        behind > 0,
        "the keyframe being made never had another prompt than the one on screen, so nothing \
         was tested"
    );
}

/// Editing `[diffusion]` while the daemon runs is applied: the source is built again and the
/// keyframes after the reload are made at the new strength.
#[test]
fn a_diffusion_edit_is_applied_on_reload() {
    let pipeline = models().join("tiny-sd/pipeline");
    if !pipeline.join("unet").is_dir() {
        support::tool_missing(
            "the tiny SD pipeline in ../shared/models/tiny-sd (or $DREAMD_MODELS)",
        );
        return;
    }
    let extra = |strength: f64| {
        format!(
            "width = 128\nheight = 64\ndecoder = \"preview\"\n\
             [keyframes]\nsource = \"diffusion\"\nimages_dir = \"no-such-folder\"\n\
             [diffusion]\nmodel_dir = {pipeline:?}\nsteps = 4\nstrength = {strength}\n"
        )
    };
    let daemon = Daemon::start(&extra(0.5));
    daemon.wait_for_first_frame();
    let text = std::fs::read_to_string(daemon.path("dreamd.toml")).unwrap();
    let edited = text.replace("strength = 0.5", "strength = 0.75");
    assert_ne!(text, edited);
    let tmp = daemon.path("dreamd.toml.new");
    std::fs::write(&tmp, edited).unwrap();
    std::fs::rename(&tmp, daemon.path("dreamd.toml")).unwrap();
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let at_new_strength = daemon
            .events()
            .iter()
            .filter(|e| e["event"] == "keyframe" && e["denoise"] == 0.75)
            .count();
        if at_new_strength >= 2 {
            break;
        }
        assert!(
            Instant::now() < until,
            "no keyframe at the new strength within 30 s\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        daemon.log().contains("reloaded: applied [keyframes]"),
        "{}",
        daemon.log()
    );
}
