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
