//! Creative direction end to end: status.json as the Rainmeter skin reads it, and seed
//! injections on the picture source, seen in the log, `dreamd.jsonl` and status.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::Daemon;

fn shared() -> PathBuf {
    std::env::var_os("DREAMD_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/models"))
}

/// The original skin's WebParser regex over its 11 keys: strings as `"([^"]+)"` (one empty
/// string and nothing matches), numbers as `([0-9.]+)` (an exponent such as `1e-5` breaks it).
fn rainmeter_regex() -> regex::Regex {
    let string = r#""([^"]+)""#;
    let number = r"([0-9.]+)";
    let keys: [(&str, &str); 11] = [
        ("frame_number", number),
        ("generation_time", number),
        ("status", string),
        ("current_mode", string),
        ("current_prompt", string),
        ("cache_size", number),
        ("uptime_hours", number),
        ("daemon_status", string),
        ("comfyui_status", string),
        ("controller_status", string),
        ("is_buffering", "(true|false)"),
    ];
    let body: Vec<String> = keys
        .iter()
        .map(|(k, v)| format!(r#""{k}":\s*{v}"#))
        .collect();
    // (?s) and lazy gaps: the skin's RegExp is "(?siU)" with .* between captures.
    regex::Regex::new(&format!("(?s){}", body.join(".*?"))).unwrap()
}

#[test]
fn every_status_json_matches_the_rainmeter_regex() {
    let daemon = Daemon::start("");
    let regex = rainmeter_regex();
    let until = Instant::now() + Duration::from_secs(4);
    let mut checked = 0;
    while Instant::now() < until {
        if let Ok(text) = std::fs::read_to_string(daemon.path("output/status.json")) {
            let captures = regex
                .captures(&text)
                .unwrap_or_else(|| panic!("the skin's regex does not match:\n{text}"));
            // Nothing the picture source has is empty: the prompt says what plays.
            assert_eq!(&captures[5], "procedural seed 42", "{text}");
            assert_eq!(&captures[4], "procedural");
            checked += 1;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(checked > 10);
}

#[test]
fn seed_injections_on_the_picture_source() {
    let models = shared();
    if !models.join("taesd/taesd_encoder.safetensors").is_file() {
        support::tool_missing("TAESD weights in ../shared/models (or $DREAMD_MODELS)");
        return;
    }
    let images = models.join("../images");
    let extra = format!(
        "width = 256\nheight = 128\ndecoder = \"taesd\"\nmodels_dir = {:?}\n\
         [keyframes]\nsource = \"images\"\nimages_dir = {:?}\n\
         [injection]\nwarmup_keyframes = 1\nseeds_dir = {:?}\nseed_cooldown = 0\n\
         seed_boost_probability = 1.0\nseed_boost_below = 1000\n",
        models.join("taesd"),
        images,
        images,
    );
    // The harness config ends inside [generation], so the first keys land there.
    let daemon = Daemon::start(&extra);
    let until = Instant::now() + Duration::from_secs(60);
    let status = loop {
        let status = daemon.status();
        if let Some(s) = &status {
            if s["direction"]["seed_injections"].as_u64().unwrap_or(0) >= 2 {
                break status.unwrap();
            }
        }
        assert!(
            Instant::now() < until,
            "no seed injections in 60 s: {status:?}\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let events = daemon.events();
    let injections: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["event"] == "injection")
        .collect();
    assert!(!injections.is_empty(), "no injection events");
    for e in &injections {
        assert_eq!(e["kind"], "seed");
        assert!(e["source_id"].as_str().is_some_and(|s| s.ends_with(".png")));
        assert_eq!(e["weight"], 0.85);
    }
    assert!(
        daemon.log().contains("seed injection of"),
        "{}",
        daemon.log()
    );
    // The cache is on for the picture source (it has an encoder) and persists in output/cache.
    assert!(status["cache_size"].as_u64().unwrap() >= 1, "{status}");
    assert!(daemon.path("output/cache/index.json").is_file());
    // Frames keep coming through injections.
    assert!(status["display"]["frames_displayed"].as_u64().unwrap() > 0);
    let text = std::fs::read_to_string(daemon.path("output/status.json")).unwrap();
    assert!(rainmeter_regex().is_match(&text), "{text}");
}

/// A keyframe without a picture (procedural) is decoded once: the director decodes it to look
/// at it (collapse, cache), and the pair ending at it takes that picture as its keyframe frame
/// instead of decoding the latent again, so its batch is the in-betweens only.
#[test]
fn latent_keyframes_are_decoded_once() {
    let models = shared();
    if !models.join("taesd/taesd_encoder.safetensors").is_file() {
        support::tool_missing("TAESD weights in ../shared/models (or $DREAMD_MODELS)");
        return;
    }
    let extra = format!(
        "width = 128\nheight = 64\ndecoder = \"taesd\"\nmodels_dir = {:?}\n\
         [keyframes]\nsource = \"procedural\"\n",
        models.join("taesd"),
    );
    let daemon = Daemon::start(&extra);
    let until = Instant::now() + Duration::from_secs(60);
    let pairs = loop {
        let pairs: Vec<serde_json::Value> = daemon
            .events()
            .into_iter()
            .filter(|e| e["event"] == "pair" && e["outcome"] == "ok")
            .collect();
        if pairs.len() >= 5 {
            break pairs;
        }
        assert!(
            Instant::now() < until,
            "fewer than 5 pairs in 60 s\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let taken = pairs
        .iter()
        .filter(|p| p["batch_size"].as_u64().unwrap() + 1 == p["frames"].as_u64().unwrap())
        .count();
    for p in &pairs {
        assert!(
            p["batch_size"].as_u64().unwrap() + 1 >= p["frames"].as_u64().unwrap(),
            "a pair decoded fewer pictures than its in-betweens: {p}"
        );
    }
    // The first pairs may start before the director has looked at their keyframe.
    assert!(
        taken >= pairs.len() - 2,
        "{taken} of {} pairs took the director's picture: {pairs:?}",
        pairs.len()
    );
}
